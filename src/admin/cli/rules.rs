//! `rule ...`: routing rules, and what a study would be routed to.

use super::output::*;
use super::*;

/// `rule ...`.
#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// Add a routing rule.
    Add {
        /// Support set to use.
        #[arg(long)]
        support_set: String,
        /// Lower is tried first.
        #[arg(long, default_value_t = 100)]
        priority: i32,
        /// Modality.
        #[arg(long, default_value = "")]
        modality: String,
        /// Body Part Examined (synonyms apply).
        #[arg(long, default_value = "")]
        body_part: String,
        /// SOP Class UID.
        #[arg(long, default_value = "")]
        sop_class: String,
        /// Regex on the Series Description.
        #[arg(long, default_value = "")]
        series_regex: String,
        /// Calling AE title.
        #[arg(long, default_value = "")]
        calling_ae: String,
        /// Destination AE (default: back to the sender).
        #[arg(long, default_value = "")]
        destination: String,
        /// Stable age override in seconds.
        #[arg(long)]
        stable_age: Option<f64>,
        /// Also match localizers / scouts.
        #[arg(long)]
        include_localizers: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// How sequences (cine loops, volumes) are segmented: auto, memory, per-frame, or
        /// inherit (the support set's mode, else [pipeline] sequence_mode).
        #[arg(long)]
        sequence_mode: Option<ModeSetting>,
    },
    /// List rules in routing order.
    List,
    /// Change a rule in place (its id stays; audited as rule.update); fields not given keep
    /// their value.
    Update {
        /// Rule id.
        id: i64,
        /// Support set to use.
        #[arg(long)]
        support_set: Option<String>,
        /// Lower is tried first.
        #[arg(long)]
        priority: Option<i32>,
        /// Modality ("" = any).
        #[arg(long)]
        modality: Option<String>,
        /// Body Part Examined ("" = any; synonyms apply).
        #[arg(long)]
        body_part: Option<String>,
        /// SOP Class UID ("" = any).
        #[arg(long)]
        sop_class: Option<String>,
        /// Regex on the Series Description ("" = any).
        #[arg(long)]
        series_regex: Option<String>,
        /// Calling AE title ("" = any).
        #[arg(long)]
        calling_ae: Option<String>,
        /// Destination AE ("" = back to the sender).
        #[arg(long)]
        destination: Option<String>,
        /// Stable age override in seconds.
        #[arg(long, conflicts_with = "no_stable_age")]
        stable_age: Option<f64>,
        /// Drop the stable age override ([pipeline] stable_age_s applies).
        #[arg(long)]
        no_stable_age: bool,
        /// Also match localizers / scouts (true or false).
        #[arg(long)]
        include_localizers: Option<bool>,
        /// Enable (true) or disable (false) the rule.
        #[arg(long)]
        enabled: Option<bool>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// How sequences (cine loops, volumes) are segmented: auto, memory, per-frame, or
        /// inherit (the support set's mode, else [pipeline] sequence_mode).
        #[arg(long)]
        sequence_mode: Option<ModeSetting>,
    },
    /// Delete a rule.
    Delete {
        /// Rule id.
        id: i64,
    },
    /// Which rule a DICOM file (or given header fields) would get, and why.
    DryRun {
        /// DICOM file.
        file: Option<PathBuf>,
        /// Modality (without a file).
        #[arg(long, default_value = "")]
        modality: String,
        /// Body part (without a file).
        #[arg(long, default_value = "")]
        body_part: String,
        /// Series description (without a file).
        #[arg(long, default_value = "")]
        series_description: String,
        /// SOP Class UID (without a file).
        #[arg(long, default_value = "")]
        sop_class: String,
        /// Calling AE to assume.
        #[arg(long, default_value = "")]
        calling_ae: String,
    },
}

/// The rules service's client.
type Rules = RulesClient<Authed>;

/// Runs `rule ...`: one function per subcommand.
pub(super) async fn run(args: &AdminArgs, c: &mut Clients, cmd: &RuleCmd) -> Result<(), CliError> {
    let rules = &mut c.rules;
    match cmd {
        RuleCmd::Add { .. } => add(args, rules, cmd).await,
        RuleCmd::List => list(args, rules).await,
        RuleCmd::Update { .. } => update(args, rules, cmd).await,
        RuleCmd::Delete { id } => delete(args, rules, *id).await,
        RuleCmd::DryRun { .. } => dry_run(args, rules, cmd).await,
    }
}

/// `rule add`.
async fn add(args: &AdminArgs, rules: &mut Rules, cmd: &RuleCmd) -> Result<(), CliError> {
    let RuleCmd::Add {
        support_set,
        priority,
        modality,
        body_part,
        sop_class,
        series_regex,
        calling_ae,
        destination,
        stable_age,
        include_localizers,
        disabled,
        description,
        sequence_mode,
    } = cmd
    else {
        unreachable!("run dispatches only `rule add` here");
    };
    let r = rules
        .create(pb::CreateRuleRequest {
            rule: Some(pb::Rule {
                priority: *priority,
                modality: modality.clone(),
                body_part: body_part.clone(),
                sop_class_uid: sop_class.clone(),
                series_description_regex: series_regex.clone(),
                calling_ae: calling_ae.clone(),
                support_set: support_set.clone(),
                destination_ae: destination.clone(),
                stable_age_s: *stable_age,
                disabled: *disabled,
                include_localizers: *include_localizers,
                description: description.clone(),
                sequence_mode: sequence_mode.map(|m| m.to_string()),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    print(args, rule_json(&r), || format!("created rule {}", r.id));
    Ok(())
}

/// `rule list`: a table of the rules in routing order.
async fn list(args: &AdminArgs, rules: &mut Rules) -> Result<(), CliError> {
    let l = rules.list(pb::ListRulesRequest {}).await?.into_inner();
    print(
        args,
        Value::Array(l.rules.iter().map(rule_json).collect()),
        || {
            table(
                &[
                    "ID",
                    "PRIO",
                    "ON",
                    "MODALITY",
                    "BODY PART",
                    "SERIES /RE/",
                    "FROM AE",
                    "SUPPORT SET",
                    "TO AE",
                    "STABLE",
                    "SEQUENCE",
                ],
                &l.rules
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.priority.to_string(),
                            if r.disabled { "no" } else { "yes" }.into(),
                            or_dash(&r.modality).into(),
                            or_dash(&r.body_part).into(),
                            or_dash(&r.series_description_regex).into(),
                            or_dash(&r.calling_ae).into(),
                            r.support_set.clone(),
                            if r.destination_ae.is_empty() {
                                "(sender)".into()
                            } else {
                                r.destination_ae.clone()
                            },
                            r.stable_age_s
                                .map(|s| format!("{s}s"))
                                .unwrap_or_else(|| "-".into()),
                            mode_text(&r.sequence_mode).into(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            )
        },
    );
    Ok(())
}

/// `rule update`: the rule as listed, with the fields given changed, sent back whole.
async fn update(args: &AdminArgs, rules: &mut Rules, cmd: &RuleCmd) -> Result<(), CliError> {
    let RuleCmd::Update {
        id,
        support_set,
        priority,
        modality,
        body_part,
        sop_class,
        series_regex,
        calling_ae,
        destination,
        stable_age,
        no_stable_age,
        include_localizers,
        enabled,
        description,
        sequence_mode,
    } = cmd
    else {
        unreachable!("run dispatches only `rule update` here");
    };
    let mut r = rules
        .list(pb::ListRulesRequest {})
        .await?
        .into_inner()
        .rules
        .into_iter()
        .find(|r| r.id == *id)
        .ok_or_else(|| Status::not_found(format!("rule {id} not found")))?;
    let set = |field: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            *field = v.clone();
        }
    };
    set(&mut r.support_set, support_set);
    set(&mut r.modality, modality);
    set(&mut r.body_part, body_part);
    set(&mut r.sop_class_uid, sop_class);
    set(&mut r.series_description_regex, series_regex);
    set(&mut r.calling_ae, calling_ae);
    set(&mut r.destination_ae, destination);
    set(&mut r.description, description);
    r.priority = priority.unwrap_or(r.priority);
    if *no_stable_age {
        r.stable_age_s = None;
    } else if stable_age.is_some() {
        r.stable_age_s = *stable_age;
    }
    r.include_localizers = include_localizers.unwrap_or(r.include_localizers);
    r.disabled = enabled.map_or(r.disabled, |e| !e);
    if let Some(m) = sequence_mode {
        r.sequence_mode = m.0.map(|m| m.to_string());
    }
    let r = rules
        .update(pb::UpdateRuleRequest { rule: Some(r) })
        .await?
        .into_inner();
    print(args, rule_json(&r), || format!("updated rule {}", r.id));
    Ok(())
}

/// `rule delete`.
async fn delete(args: &AdminArgs, rules: &mut Rules, id: i64) -> Result<(), CliError> {
    rules.delete(pb::DeleteRuleRequest { id }).await?;
    print(args, json!({"deleted": id}), || {
        format!("deleted rule {id}")
    });
    Ok(())
}

/// `rule dry-run`: which rule a DICOM file (or the header fields given) would get, and why.
async fn dry_run(args: &AdminArgs, rules: &mut Rules, cmd: &RuleCmd) -> Result<(), CliError> {
    let RuleCmd::DryRun {
        file,
        modality,
        body_part,
        series_description,
        sop_class,
        calling_ae,
    } = cmd
    else {
        unreachable!("run dispatches only `rule dry-run` here");
    };
    let input = match file {
        Some(f) => pb::dry_run_request::Input::Dicom(read_file(f)?),
        None => pb::dry_run_request::Input::Header(pb::StudyHeader {
            modality: modality.clone(),
            body_part: body_part.clone(),
            sop_class_uid: sop_class.clone(),
            series_description: series_description.clone(),
            calling_ae: calling_ae.clone(),
            image_type: Vec::new(),
        }),
    };
    let r = rules
        .dry_run(pb::DryRunRequest {
            input: Some(input),
            calling_ae: calling_ae.clone(),
        })
        .await?
        .into_inner();
    let v = json!({
        "matched": r.matched, "rule_id": r.rule_id, "support_set": r.support_set,
        "support_set_version": r.support_set_version,
        "destination_ae": r.destination_ae, "reason": r.reason,
        "stable_age_s": r.stable_age_s, "to_sender": r.to_sender,
        "sequence_mode": r.sequence_mode, "sequence_mode_from": r.sequence_mode_from,
        "sequence_note": r.sequence_note,
        "considered": r.considered.iter().map(|c| json!({"rule_id": c.rule_id, "matched": c.matched, "reason": c.reason})).collect::<Vec<_>>(),
    });
    print(args, v, || {
        let mut s = if r.matched {
            format!(
                "rule {} -> support set {} (version {}) -> {}\n",
                r.rule_id,
                r.support_set,
                r.support_set_version,
                destination_text(r.to_sender, &r.destination_ae)
            )
        } else {
            "unmatched\n".to_string()
        };
        if r.matched {
            s += &format!(
                "sequence mode: {} (from {})\n",
                r.sequence_mode, r.sequence_mode_from
            );
            if !r.sequence_note.is_empty() {
                s += &format!("note: {}\n", r.sequence_note);
            }
        }
        s += &format!("why: {}", r.reason);
        s
    });
    Ok(())
}
