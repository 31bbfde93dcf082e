//! Routing rules in the store: the `rules` table (list, get, create, update, delete, each
//! audited), rule field checks, and the per-series headers of a stored study. The rules
//! themselves and routing are pure and live in [`crate::routing`] (re-exported here).

use crate::store::audit;
use rusqlite::{params, Connection, OptionalExtension, Row};

pub use crate::routing::{route, route_study, Rule, RuleSet, StudyHeader, Synonyms};

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
    if !rule.sop_class_uid.is_empty() && !crate::sop::is_accepted_sop_class(&rule.sop_class_uid) {
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
        sequence_mode: r.get(15)?,
    })
}

const COLUMNS: &str = "id, priority, modality, body_part, sop_class_uid, series_description_regex,
    calling_ae, support_set, destination_ae, stable_age_s, enabled, skip_localizers, description,
    created_at, updated_at, sequence_mode";

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
         description, created_at, updated_at, sequence_mode)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14)",
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
            now,
            rule.sequence_mode
        ],
    )?;
    let id = conn.last_insert_rowid();
    audit::record(
        conn,
        who,
        "rule.create",
        &format!("rule:{id}"),
        &format!(
            "-> support set {}{}",
            rule.support_set.trim(),
            mode_note(rule)
        ),
        now,
    )?;
    Ok(id)
}

/// What the audit row says of a rule's sequence mode: nothing when it inherits.
fn mode_note(rule: &Rule) -> String {
    rule.sequence_mode
        .map(|m| format!(", sequence_mode {m}"))
        .unwrap_or_default()
}

/// Replaces every field of rule `rule.id` and audits it (a changed sequence mode is named,
/// old -> new).
pub fn update(conn: &Connection, rule: &Rule, who: &str, now: f64) -> Result<(), RuleError> {
    let before = get(conn, rule.id)?;
    let rule = &normalized(rule);
    check(rule, set_exists(conn, &rule.support_set)?)?;
    conn.execute(
        "UPDATE rules SET priority = ?2, modality = ?3, body_part = ?4, sop_class_uid = ?5,
         series_description_regex = ?6, calling_ae = ?7, support_set = ?8, destination_ae = ?9,
         stable_age_s = ?10, enabled = ?11, skip_localizers = ?12, description = ?13,
         updated_at = ?14, sequence_mode = ?15 WHERE id = ?1",
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
            now,
            rule.sequence_mode
        ],
    )?;
    let mode = if before.sequence_mode == rule.sequence_mode {
        String::new()
    } else {
        let name = |m: Option<crate::config::SequenceMode>| {
            crate::sequence_mode::ModeSetting(m).to_string()
        };
        format!(
            ", sequence_mode {} -> {}",
            name(before.sequence_mode),
            name(rule.sequence_mode)
        )
    };
    audit::record(
        conn,
        who,
        "rule.update",
        &format!("rule:{}", rule.id),
        &format!("-> support set {}{mode}", rule.support_set.trim()),
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

    use crate::routing::tests::rule;

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
