//! Routing rules: which support set and destination a study gets.
//!
//! Owns the `rules` table and the pure routing function [`route`] that the pipeline calls for
//! each completed study (and the admin API's DryRun). Routing never fails: a study that no rule
//! claims gets a decision without a rule (the job becomes `unmatched`), with the reason.
//!
//! Rules are tried by ascending `priority`, then `id`; the first enabled rule whose every
//! non-empty criterion matches wins. Modality and Body Part Examined compare case-insensitively,
//! body parts through the configured synonym groups (`[admin.body_part_synonyms]`, e.g.
//! `EYE = ["RETINA", "FUNDUS"]`).

use crate::store::audit;
use regex::Regex;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;

/// Errors of rule storage.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No rule with this id.
    #[error("rule {0} not found")]
    NotFound(i64),
    /// A field is not valid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// A routing rule row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    /// Row id (0 before insertion).
    pub id: i64,
    /// Lower is tried first.
    pub priority: i32,
    /// Modality to match (empty = any).
    pub modality: String,
    /// Body Part Examined to match (empty = any).
    pub body_part: String,
    /// SOP Class UID to match (empty = any).
    pub sop_class_uid: String,
    /// Regex searched in the Series Description (empty = any).
    pub series_description_regex: String,
    /// Calling AE to match (empty = any).
    pub calling_ae: String,
    /// Support set to use.
    pub support_set: String,
    /// Destination AE (empty = back to the sender).
    pub destination_ae: String,
    /// Stable age override in seconds.
    pub stable_age_s: Option<f64>,
    /// Disabled rules are skipped.
    pub enabled: bool,
    /// Do not match localizers / scouts.
    pub skip_localizers: bool,
    /// Free text.
    pub description: String,
    /// Creation time.
    pub created_at: f64,
    /// Last change.
    pub updated_at: f64,
}

/// The header fields routing looks at (from the study's first instance, or per series).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StudyHeader {
    /// Modality.
    pub modality: String,
    /// Body Part Examined.
    pub body_part: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Series Description.
    pub series_description: String,
    /// Calling AE title of the sender.
    pub calling_ae: String,
    /// Image Type values.
    pub image_type: Vec<String>,
}

impl StudyHeader {
    /// True for localizer / scout images: ImageType holds LOCALIZER, or the Series Description
    /// says scout, localizer, topogram or surview.
    pub fn is_localizer(&self) -> bool {
        let d = self.series_description.to_lowercase();
        self.image_type
            .iter()
            .any(|t| t.trim().eq_ignore_ascii_case("LOCALIZER"))
            || ["scout", "localizer", "localiser", "topogram", "surview"]
                .iter()
                .any(|w| d.contains(w))
    }
}

/// Body-part synonym groups: every alias maps to its group's canonical name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synonyms {
    canonical: HashMap<String, String>,
}

impl Synonyms {
    /// From `canonical -> aliases` (case-insensitive).
    pub fn new<'a>(groups: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>) -> Synonyms {
        let mut canonical = HashMap::new();
        for (name, aliases) in groups {
            let c = name.trim().to_uppercase();
            for a in aliases {
                canonical.insert(a.trim().to_uppercase(), c.clone());
            }
            canonical.insert(c.clone(), c);
        }
        Synonyms { canonical }
    }

    /// The canonical upper-case name of a body part.
    pub fn canonical(&self, body_part: &str) -> String {
        let u = body_part.trim().to_uppercase();
        self.canonical.get(&u).cloned().unwrap_or(u)
    }
}

/// Enabled and disabled rules in routing order, with compiled regexes and the synonyms.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<(Rule, Option<Regex>)>,
    synonyms: Synonyms,
}

impl RuleSet {
    /// Builds a rule set; rules are sorted by (priority, id). A rule whose regex does not
    /// compile (only possible if the table was edited by hand) never matches.
    pub fn new(mut rules: Vec<Rule>, synonyms: Synonyms) -> RuleSet {
        rules.sort_by_key(|r| (r.priority, r.id));
        let rules = rules
            .into_iter()
            .map(|r| {
                let re = (!r.series_description_regex.is_empty())
                    .then(|| Regex::new(&r.series_description_regex).ok())
                    .flatten();
                (r, re)
            })
            .collect();
        RuleSet { rules, synonyms }
    }

    /// The rules in routing order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(r, _)| r)
    }
}

/// One rule's verdict in a routing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The rule.
    pub rule_id: i64,
    /// Whether it matched.
    pub matched: bool,
    /// Why (first failing criterion, or "all criteria match").
    pub reason: String,
}

/// The outcome of routing one study.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecision {
    /// The winning rule, or None: the study is `unmatched`.
    pub rule: Option<i64>,
    /// Support set to use.
    pub support_set: Option<String>,
    /// Destination AE (the rule's, or the calling AE when the rule names none).
    pub destination: Option<String>,
    /// Stable age override of the winning rule.
    pub stable_age_s: Option<f64>,
    /// Why: the rule and its criteria, or why nothing matched.
    pub reason: String,
    /// Every rule considered, in order (rules after the winner are not listed).
    pub considered: Vec<Verdict>,
}

fn check_rule(
    rule: &Rule,
    re: Option<&Regex>,
    h: &StudyHeader,
    syn: &Synonyms,
) -> Result<String, String> {
    if !rule.enabled {
        return Err("disabled".into());
    }
    let mut why = Vec::new();
    if !rule.modality.is_empty() {
        if !rule.modality.trim().eq_ignore_ascii_case(h.modality.trim()) {
            return Err(format!(
                "modality {:?} is not {:?}",
                h.modality.trim(),
                rule.modality
            ));
        }
        why.push(format!("modality {}", rule.modality));
    }
    if !rule.body_part.is_empty() {
        let want = syn.canonical(&rule.body_part);
        let got = syn.canonical(&h.body_part);
        if want != got {
            return Err(format!(
                "body part {:?} is not {:?} (or a synonym)",
                h.body_part.trim(),
                rule.body_part
            ));
        }
        why.push(format!(
            "body part {} ~ {}",
            h.body_part.trim(),
            rule.body_part
        ));
    }
    if !rule.sop_class_uid.is_empty() {
        if crate::dicom::sop::trim_uid(&h.sop_class_uid) != rule.sop_class_uid.trim() {
            return Err(format!(
                "SOP class {} is not {}",
                crate::dicom::sop::trim_uid(&h.sop_class_uid),
                rule.sop_class_uid
            ));
        }
        why.push("SOP class".into());
    }
    if !rule.series_description_regex.is_empty() {
        match re {
            Some(re) if re.is_match(&h.series_description) => why.push(format!(
                "series description ~ /{}/",
                rule.series_description_regex
            )),
            Some(_) => {
                return Err(format!(
                    "series description {:?} does not match /{}/",
                    h.series_description, rule.series_description_regex
                ))
            }
            None => return Err("its series description regex does not compile".into()),
        }
    }
    if !rule.calling_ae.is_empty() {
        if rule.calling_ae.trim() != h.calling_ae.trim() {
            return Err(format!(
                "calling AE {:?} is not {:?}",
                h.calling_ae.trim(),
                rule.calling_ae
            ));
        }
        why.push(format!("calling AE {}", rule.calling_ae));
    }
    if rule.skip_localizers && h.is_localizer() {
        return Err("the image is a localizer / scout and the rule skips them".into());
    }
    if why.is_empty() {
        why.push("matches everything".into());
    }
    Ok(why.join(", "))
}

/// Routes one study: the first matching rule, or an unmatched decision with the reason.
pub fn route(rules: &RuleSet, header: &StudyHeader) -> RouteDecision {
    let mut considered = Vec::new();
    for (rule, re) in &rules.rules {
        match check_rule(rule, re.as_ref(), header, &rules.synonyms) {
            Ok(why) => {
                considered.push(Verdict {
                    rule_id: rule.id,
                    matched: true,
                    reason: why.clone(),
                });
                let destination = if rule.destination_ae.trim().is_empty() {
                    header.calling_ae.trim().to_string()
                } else {
                    rule.destination_ae.trim().to_string()
                };
                return RouteDecision {
                    rule: Some(rule.id),
                    support_set: Some(rule.support_set.clone()),
                    destination: Some(destination),
                    stable_age_s: rule.stable_age_s,
                    reason: format!("rule {} (priority {}): {why}", rule.id, rule.priority),
                    considered,
                };
            }
            Err(why) => considered.push(Verdict {
                rule_id: rule.id,
                matched: false,
                reason: why,
            }),
        }
    }
    let reason = if considered.is_empty() {
        "no routing rules are defined".to_string()
    } else {
        format!(
            "no rule matched ({})",
            considered
                .iter()
                .map(|v| format!("rule {}: {}", v.rule_id, v.reason))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    RouteDecision {
        rule: None,
        support_set: None,
        destination: None,
        stable_age_s: None,
        reason,
        considered,
    }
}

/// Routes a study from the headers of its series (one per series, in series order): the
/// series whose winning rule comes first in routing order decides. SEG series (our own results
/// coming back, or anyone's) are never routed. Unmatched when no series matches.
pub fn route_study(rules: &RuleSet, series: &[StudyHeader]) -> RouteDecision {
    let order: HashMap<i64, usize> = rules.rules().enumerate().map(|(i, r)| (r.id, i)).collect();
    let mut best: Option<RouteDecision> = None;
    let mut why = Vec::new();
    for h in series {
        if crate::dicom::sop::trim_uid(&h.sop_class_uid)
            == dicom_dictionary_std::uids::SEGMENTATION_STORAGE
        {
            why.push("a SEG series is never segmented".to_string());
            continue;
        }
        let d = route(rules, h);
        match d.rule {
            Some(id) => {
                let better = best
                    .as_ref()
                    .and_then(|b| b.rule)
                    .is_none_or(|b| order.get(&id) < order.get(&b));
                if better {
                    best = Some(d);
                }
            }
            None => why.push(d.reason),
        }
    }
    best.unwrap_or_else(|| RouteDecision {
        rule: None,
        support_set: None,
        destination: None,
        stable_age_s: None,
        reason: if why.is_empty() {
            "the study has no series".into()
        } else {
            why.dedup();
            why.join(" | ")
        },
        considered: Vec::new(),
    })
}

/// One routing header per series of a study, from the instance index (the first instance of
/// each series by instance number), in series-number order. `image_type` is not indexed, so
/// localizers are recognised by their series description here.
pub fn study_series_headers(
    conn: &Connection,
    study_uid: &str,
) -> rusqlite::Result<Vec<StudyHeader>> {
    let mut stmt = conn.prepare(
        "SELECT modality, body_part, sop_class_uid, series_description, calling_ae
         FROM instances i WHERE study_uid = ?1 AND sop_instance_uid = (
             SELECT sop_instance_uid FROM instances j
             WHERE j.study_uid = i.study_uid AND j.series_uid = i.series_uid
             ORDER BY j.instance_number IS NULL, j.instance_number, j.received_at LIMIT 1)
         ORDER BY series_number IS NULL, series_number, series_uid",
    )?;
    let rows = stmt.query_map([study_uid], |r| {
        Ok(StudyHeader {
            modality: r.get(0)?,
            body_part: r.get(1)?,
            sop_class_uid: r.get(2)?,
            series_description: r.get(3)?,
            calling_ae: r.get(4)?,
            image_type: Vec::new(),
        })
    })?;
    rows.collect()
}

/// Checks a rule's fields; `support_set_exists` says whether its set exists.
pub fn check(rule: &Rule, support_set_exists: bool) -> Result<(), RuleError> {
    let bad = |m: String| Err(RuleError::Invalid(m));
    if rule.support_set.trim().is_empty() {
        return bad("support_set must name a support set".into());
    }
    if !support_set_exists {
        return bad(format!("support_set {:?} does not exist", rule.support_set));
    }
    if !rule.series_description_regex.is_empty() {
        if let Err(e) = regex::RegexBuilder::new(&rule.series_description_regex)
            .size_limit(1 << 20)
            .build()
        {
            return bad(format!("series_description_regex is not valid: {e}"));
        }
    }
    for (field, ae) in [
        ("calling_ae", &rule.calling_ae),
        ("destination_ae", &rule.destination_ae),
    ] {
        if !ae.is_empty() {
            if let Err(m) = crate::config::check_ae_title(ae) {
                return bad(format!("{field}: {m}"));
            }
        }
    }
    if !rule.sop_class_uid.is_empty()
        && !crate::dicom::sop::is_accepted_sop_class(&rule.sop_class_uid)
    {
        return bad(format!(
            "sop_class_uid {} is not a storage SOP class proxyseg accepts",
            rule.sop_class_uid
        ));
    }
    if let Some(s) = rule.stable_age_s {
        if !(s.is_finite() && s >= 0.0) {
            return bad("stable_age_s must be a number >= 0".into());
        }
    }
    if rule.modality.len() > 16 || rule.body_part.len() > 64 {
        return bad("modality or body_part is too long".into());
    }
    Ok(())
}

fn from_row(r: &Row) -> rusqlite::Result<Rule> {
    Ok(Rule {
        id: r.get(0)?,
        priority: r.get(1)?,
        modality: r.get(2)?,
        body_part: r.get(3)?,
        sop_class_uid: r.get(4)?,
        series_description_regex: r.get(5)?,
        calling_ae: r.get(6)?,
        support_set: r.get(7)?,
        destination_ae: r.get(8)?,
        stable_age_s: r.get(9)?,
        enabled: r.get(10)?,
        skip_localizers: r.get(11)?,
        description: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
    })
}

const COLUMNS: &str = "id, priority, modality, body_part, sop_class_uid, series_description_regex,
    calling_ae, support_set, destination_ae, stable_age_s, enabled, skip_localizers, description,
    created_at, updated_at";

/// Every rule in routing order.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Rule>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM rules ORDER BY priority, id"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

/// One rule.
pub fn get(conn: &Connection, id: i64) -> Result<Rule, RuleError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM rules WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or(RuleError::NotFound(id))
}

/// Loads the rule set the pipeline routes with.
pub fn load(conn: &Connection, synonyms: Synonyms) -> rusqlite::Result<RuleSet> {
    Ok(RuleSet::new(list(conn)?, synonyms))
}

/// Trims every field and upper-cases modality and body part (they compare case-insensitively;
/// stored upper-case they read like the DICOM values).
pub fn normalized(rule: &Rule) -> Rule {
    Rule {
        modality: rule.modality.trim().to_uppercase(),
        body_part: rule.body_part.trim().to_uppercase(),
        sop_class_uid: rule.sop_class_uid.trim().to_string(),
        calling_ae: rule.calling_ae.trim().to_string(),
        support_set: rule.support_set.trim().to_string(),
        destination_ae: rule.destination_ae.trim().to_string(),
        ..rule.clone()
    }
}

fn set_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM support_sets WHERE name = ?1",
        [name.trim()],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Inserts a rule (after [`check`]) and audits it; returns its id.
pub fn create(conn: &Connection, rule: &Rule, who: &str, now: f64) -> Result<i64, RuleError> {
    let rule = &normalized(rule);
    check(rule, set_exists(conn, &rule.support_set)?)?;
    conn.execute(
        "INSERT INTO rules (priority, modality, body_part, sop_class_uid, series_description_regex,
         calling_ae, support_set, destination_ae, stable_age_s, enabled, skip_localizers,
         description, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
        params![
            rule.priority,
            rule.modality.trim(),
            rule.body_part.trim(),
            rule.sop_class_uid.trim(),
            rule.series_description_regex,
            rule.calling_ae.trim(),
            rule.support_set.trim(),
            rule.destination_ae.trim(),
            rule.stable_age_s,
            rule.enabled,
            rule.skip_localizers,
            rule.description,
            now
        ],
    )?;
    let id = conn.last_insert_rowid();
    audit::record(
        conn,
        who,
        "rule.create",
        &format!("rule:{id}"),
        &format!("-> support set {}", rule.support_set.trim()),
        now,
    )?;
    Ok(id)
}

/// Replaces every field of rule `rule.id` and audits it.
pub fn update(conn: &Connection, rule: &Rule, who: &str, now: f64) -> Result<(), RuleError> {
    get(conn, rule.id)?;
    let rule = &normalized(rule);
    check(rule, set_exists(conn, &rule.support_set)?)?;
    conn.execute(
        "UPDATE rules SET priority = ?2, modality = ?3, body_part = ?4, sop_class_uid = ?5,
         series_description_regex = ?6, calling_ae = ?7, support_set = ?8, destination_ae = ?9,
         stable_age_s = ?10, enabled = ?11, skip_localizers = ?12, description = ?13,
         updated_at = ?14 WHERE id = ?1",
        params![
            rule.id,
            rule.priority,
            rule.modality.trim(),
            rule.body_part.trim(),
            rule.sop_class_uid.trim(),
            rule.series_description_regex,
            rule.calling_ae.trim(),
            rule.support_set.trim(),
            rule.destination_ae.trim(),
            rule.stable_age_s,
            rule.enabled,
            rule.skip_localizers,
            rule.description,
            now
        ],
    )?;
    audit::record(
        conn,
        who,
        "rule.update",
        &format!("rule:{}", rule.id),
        "",
        now,
    )?;
    Ok(())
}

/// Deletes a rule and audits it.
pub fn delete(conn: &Connection, id: i64, who: &str, now: f64) -> Result<(), RuleError> {
    let r = get(conn, id)?;
    conn.execute("DELETE FROM rules WHERE id = ?1", [id])?;
    audit::record(
        conn,
        who,
        "rule.delete",
        &format!("rule:{id}"),
        &format!("was -> support set {}", r.support_set),
        now,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: i64, priority: i32, modality: &str, body: &str, set: &str) -> Rule {
        Rule {
            id,
            priority,
            modality: modality.into(),
            body_part: body.into(),
            support_set: set.into(),
            enabled: true,
            skip_localizers: true,
            ..Default::default()
        }
    }

    fn header(modality: &str, body: &str) -> StudyHeader {
        StudyHeader {
            modality: modality.into(),
            body_part: body.into(),
            calling_ae: "PACS".into(),
            ..Default::default()
        }
    }

    fn eye_synonyms() -> Synonyms {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "EYE".to_string(),
            vec!["RETINA".to_string(), "fundus".to_string()],
        );
        Synonyms::new(m.iter())
    }

    #[test]
    fn priority_then_id_and_synonyms() {
        let rs = RuleSet::new(
            vec![
                rule(3, 10, "OP", "eye", "fundus"),
                rule(1, 20, "", "", "catch-all"),
                rule(2, 10, "ct", "chest", "lungs"),
            ],
            eye_synonyms(),
        );
        let d = route(&rs, &header("OP", "Retina"));
        assert_eq!(d.rule, Some(3));
        assert_eq!(d.support_set.as_deref(), Some("fundus"));
        assert_eq!(d.destination.as_deref(), Some("PACS"));
        assert_eq!(
            d.considered.len(),
            2,
            "rule 2 (same priority, lower id) was tried first"
        );
        let d = route(&rs, &header("CT", "CHEST"));
        assert_eq!(d.rule, Some(2));
        assert_eq!(d.considered[0].rule_id, 2, "equal priority: lower id first");
        let d = route(&rs, &header("MR", "KNEE"));
        assert_eq!(d.rule, Some(1));
    }

    #[test]
    fn unmatched_is_a_decision_with_reasons() {
        let mut r = rule(1, 1, "CT", "", "x");
        r.series_description_regex = "(?i)abdomen".into();
        r.calling_ae = "PACS".into();
        let mut disabled = rule(2, 2, "", "", "y");
        disabled.enabled = false;
        let rs = RuleSet::new(vec![r, disabled], Synonyms::default());
        let mut h = header("CT", "");
        h.series_description = "Thorax 1mm".into();
        let d = route(&rs, &h);
        assert_eq!(d.rule, None);
        assert!(
            d.reason.contains("does not match /(?i)abdomen/"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("rule 2: disabled"), "{}", d.reason);
        h.series_description = "ABDOMEN venous".into();
        assert_eq!(route(&rs, &h).rule, Some(1));
        h.calling_ae = "OTHER".into();
        assert_eq!(route(&rs, &h).rule, None);
        assert_eq!(
            route(&RuleSet::default(), &h).reason,
            "no routing rules are defined"
        );
    }

    #[test]
    fn localizers_are_skipped_on_request() {
        let mut keep = rule(1, 1, "CT", "", "x");
        keep.skip_localizers = true;
        let rs = RuleSet::new(vec![keep], Synonyms::default());
        let mut h = header("CT", "");
        h.image_type = vec!["ORIGINAL".into(), "PRIMARY".into(), "LOCALIZER".into()];
        assert_eq!(route(&rs, &h).rule, None);
        h.image_type.clear();
        h.series_description = "Topogram 0.6".into();
        assert_eq!(route(&rs, &h).rule, None);
        h.series_description = "Abdomen".into();
        assert_eq!(route(&rs, &h).rule, Some(1));
    }

    #[test]
    fn studies_route_by_their_best_series_and_never_route_seg() {
        let rs = RuleSet::new(
            vec![rule(1, 1, "CT", "", "ct"), rule(2, 5, "MR", "", "mr")],
            Synonyms::default(),
        );
        let mut scout = header("CT", "");
        scout.series_description = "Scout".into();
        let mr = header("MR", "");
        let d = route_study(&rs, &[scout.clone(), mr.clone()]);
        assert_eq!(
            d.rule,
            Some(2),
            "the CT scout is skipped, the MR series matches"
        );
        let ct = header("CT", "");
        assert_eq!(route_study(&rs, &[mr.clone(), ct]).rule, Some(1));
        let mut seg = header("SEG", "");
        seg.sop_class_uid = "1.2.840.10008.5.1.4.1.1.66.4".into();
        let d = route_study(&rs, &[seg]);
        assert_eq!(d.rule, None);
        assert!(d.reason.contains("SEG series"), "{}", d.reason);
        assert_eq!(route_study(&rs, &[]).reason, "the study has no series");
    }

    #[test]
    fn series_headers_come_from_the_index() {
        use crate::store::instances::{record, test_record, InstanceRecord};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Db::open(&dir.path().join("t.sqlite")).unwrap();
        let rec = |sop: &str, series: &str, n: i64, desc: &str| InstanceRecord {
            series_uid: series.into(),
            series_description: desc.into(),
            series_number: Some(n),
            ..test_record(sop, "1.5", 1.0)
        };
        for r in [
            rec("1.1", "9.2", 2, "Thorax"),
            rec("1.2", "9.1", 1, "Scout"),
            rec("1.3", "9.2", 2, "Thorax"),
        ] {
            db.write_blocking(move |c| record(c, &r)).unwrap();
        }
        let h = db.read(|c| study_series_headers(c, "1.5")).unwrap();
        assert_eq!(
            h.iter()
                .map(|h| h.series_description.as_str())
                .collect::<Vec<_>>(),
            ["Scout", "Thorax"]
        );
        assert_eq!(h[1].calling_ae, "PACS");
        assert_eq!(h[1].body_part, "CHEST");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut r = rule(0, 1, "CT", "", "x");
        assert!(
            matches!(check(&r, false), Err(RuleError::Invalid(m)) if m.contains("does not exist"))
        );
        r.series_description_regex = "(".into();
        assert!(
            matches!(check(&r, true), Err(RuleError::Invalid(m)) if m.contains("series_description_regex"))
        );
        r.series_description_regex.clear();
        r.destination_ae = "WAY-TOO-LONG-AE-TITLE".into();
        assert!(
            matches!(check(&r, true), Err(RuleError::Invalid(m)) if m.contains("destination_ae"))
        );
        r.destination_ae.clear();
        r.sop_class_uid = "1.2.3".into();
        assert!(
            matches!(check(&r, true), Err(RuleError::Invalid(m)) if m.contains("sop_class_uid"))
        );
    }
}
