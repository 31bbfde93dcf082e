//! How the CLI prints: aligned tables by default, JSON with `--json`.

use super::*;

pub(super) fn ts(t: &Option<prost_types::Timestamp>) -> String {
    let s = crate::admin::seconds(t);
    if s == 0.0 {
        return String::new();
    }
    // UTC, without a date library: civil-from-days (Howard Hinnant).
    let secs = s as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One line of `sets evaluate`'s text output for a flag (leading newline included): a pair's
/// mask flag, or (pair number 0) a set-level flag such as a poor set.
pub fn evaluate_flag_line(f: &pb::MaskFlag) -> String {
    if f.pair_number == 0 {
        let kind = match pb::FlagKind::try_from(f.kind) {
            Ok(pb::FlagKind::PoorSet) => "POOR SET",
            _ => "SET",
        };
        format!("\nFLAG {kind} object {}: {}", f.object_index, f.detail)
    } else {
        format!(
            "\nFLAG pair {} object {}: {}",
            f.pair_number, f.object_index, f.detail
        )
    }
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out += &line(w.iter().map(|n| "-".repeat(*n)).collect());
    for r in rows {
        out.push('\n');
        out += &line(r.clone());
    }
    out
}

pub(super) fn code_json(c: &Option<pb::Code>) -> Value {
    c.as_ref()
        .map(|c| json!({"scheme": c.scheme, "code": c.code, "meaning": c.meaning}))
        .unwrap_or(Value::Null)
}

pub(super) fn set_json(s: &pb::SupportSet) -> Value {
    json!({
        "name": s.name, "description": s.description, "version": s.version, "bundle": s.bundle,
        "sequence_mode": mode_text(&s.sequence_mode),
        "modality": s.modality, "body_part": s.body_part, "pair_count": s.pair_count,
        "created_at": ts(&s.created_at), "updated_at": ts(&s.updated_at),
        "objects": s.objects.iter().map(|o| json!({
            "index": o.index, "label": o.label, "category": code_json(&o.category),
            "type": code_json(&o.r#type), "color": o.color,
        })).collect::<Vec<_>>(),
        "pairs": s.pairs.iter().map(|p| json!({
            "number": p.number, "sop_instance_uid": p.sop_instance_uid,
            "sop_class_uid": p.sop_class_uid, "modality": p.modality, "rows": p.rows,
            "columns": p.columns, "image_sha256": p.image_sha256, "mask_pixels": p.mask_pixels,
            "mask_source": p.mask_source, "added_in_version": p.added_in_version,
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn set_text(s: &pb::SupportSet) -> String {
    let mut out = format!(
        "{} (version {})  bundle {}  match {} / {}  sequence mode {}\n{}\n\nobjects:\n",
        s.name,
        s.version,
        or_dash(&s.bundle),
        or_dash(&s.modality),
        or_dash(&s.body_part),
        mode_text(&s.sequence_mode),
        s.description
    );
    out += &table(
        &["#", "LABEL", "CATEGORY", "TYPE", "COLOR"],
        &s.objects
            .iter()
            .map(|o| {
                let c = |c: &Option<pb::Code>| {
                    c.as_ref()
                        .map(|c| format!("{} ({}:{})", c.meaning, c.scheme, c.code))
                        .unwrap_or_default()
                };
                vec![
                    o.index.to_string(),
                    o.label.clone(),
                    c(&o.category),
                    c(&o.r#type),
                    format!("{:?}", o.color),
                ]
            })
            .collect::<Vec<_>>(),
    );
    out += "\n\npairs:\n";
    out += &table(
        &[
            "#",
            "SOP INSTANCE UID",
            "MODALITY",
            "SIZE",
            "MASK PIXELS",
            "FROM",
            "SINCE",
        ],
        &s.pairs
            .iter()
            .map(|p| {
                vec![
                    p.number.to_string(),
                    p.sop_instance_uid.clone(),
                    p.modality.clone(),
                    format!("{}x{}", p.rows, p.columns),
                    p.mask_pixels
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    p.mask_source.clone(),
                    format!("v{}", p.added_in_version),
                ]
            })
            .collect::<Vec<_>>(),
    );
    out
}

/// A rule's or a set's sequence mode as the CLI prints it: the mode, or `inherit` when unset.
pub(super) fn mode_text(m: &Option<String>) -> &str {
    m.as_deref().unwrap_or(crate::sequence_mode::INHERIT)
}

pub(super) fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

pub(super) fn rule_json(r: &pb::Rule) -> Value {
    json!({
        "id": r.id, "priority": r.priority, "modality": r.modality, "body_part": r.body_part,
        "sop_class_uid": r.sop_class_uid, "series_description_regex": r.series_description_regex,
        "calling_ae": r.calling_ae, "support_set": r.support_set,
        "destination_ae": r.destination_ae, "stable_age_s": r.stable_age_s,
        "enabled": !r.disabled, "include_localizers": r.include_localizers,
        "description": r.description, "sequence_mode": mode_text(&r.sequence_mode),
    })
}

pub(super) fn job_json(j: &pb::Job) -> Value {
    json!({
        "id": j.id, "study_uid": j.study_uid, "state": j.state, "calling_ae": j.calling_ae,
        "instance_count": j.instance_count, "created_at": ts(&j.created_at),
        "updated_at": ts(&j.updated_at), "attempts": j.attempts, "error": j.error,
        "rule_id": j.rule_id, "support_set": j.support_set,
        "support_set_version": j.support_set_version, "bundle": j.bundle,
        "destination_ae": j.destination_ae,
        "sequence_mode": j.sequence_mode, "sequence_mode_from": j.sequence_mode_from,
        "events": j.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

pub(super) fn event_json(e: &pb::JobEvent) -> Value {
    json!({"job_id": e.job_id, "study_uid": e.study_uid, "state": e.state,
           "at": ts(&e.at), "detail": e.detail})
}

pub(super) fn print(args: &AdminArgs, v: Value, text: impl FnOnce() -> String) {
    if args.json {
        println!("{v}");
    } else {
        println!("{}", text());
    }
}

/// Where a dry run's results go, for people: the destination AE, or "the sender (AE X)" when
/// the rule sends back to whoever sent the study.
pub(super) fn destination_text(to_sender: bool, destination_ae: &str) -> String {
    match (to_sender, destination_ae.trim()) {
        (false, ae) => ae.to_string(),
        (true, "") => "the sender (its calling AE; give --calling-ae to name it)".into(),
        (true, ae) => format!("the sender (AE {ae})"),
    }
}
