//! Support sets in SQLite: creating, reading, updating and deleting sets, adding and removing
//! pairs, each change a new version (validity ranges, see the module doc of
//! [`crate::store::support`]) with its audit row.

use super::{
    check_name, check_objects, Code, NewPair, ObjectDef, PairInfo, SetInfo, SetMeta, SetUpdate,
    SupportError,
};
use crate::store::audit;
use rusqlite::{params, Connection, OptionalExtension};

fn set_row(conn: &Connection, name: &str) -> Result<(i64, u32), SupportError> {
    conn.query_row(
        "SELECT id, version FROM support_sets WHERE name = ?1",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| SupportError::NotFound {
        name: name.into(),
        version: None,
    })
}

/// The id of a set, if it exists (to stage pair files under its folder before the change).
pub fn set_id(conn: &Connection, name: &str) -> Result<i64, SupportError> {
    Ok(set_row(conn, name)?.0)
}

fn check_expected(name: &str, expected: u32, actual: u32) -> Result<(), SupportError> {
    if expected != 0 && expected != actual {
        return Err(SupportError::VersionMismatch {
            name: name.into(),
            expected,
            actual,
        });
    }
    Ok(())
}

fn insert_objects(
    conn: &Connection,
    set_id: i64,
    version: u32,
    objects: &[ObjectDef],
) -> rusqlite::Result<()> {
    for (i, o) in objects.iter().enumerate() {
        conn.execute(
            "INSERT INTO support_objects (set_id, since_version, idx, label, category_scheme,
             category_code, category_meaning, type_scheme, type_code, type_meaning, color_r,
             color_g, color_b) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                set_id,
                version,
                i as i64 + 1,
                o.label.trim(),
                o.category.scheme,
                o.category.value,
                o.category.meaning,
                o.property_type.scheme,
                o.property_type.value,
                o.property_type.meaning,
                o.color[0],
                o.color[1],
                o.color[2]
            ],
        )?;
    }
    Ok(())
}

fn insert_version(
    conn: &Connection,
    set_id: i64,
    version: u32,
    meta: &SetMeta,
    who: &str,
    change: &str,
    now: f64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO support_set_versions (set_id, version, description, bundle, modality,
         body_part, created_at, created_by, change, sequence_mode)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            set_id,
            version,
            meta.description,
            meta.bundle,
            meta.modality,
            meta.body_part,
            now,
            who,
            change,
            meta.sequence_mode
        ],
    )?;
    Ok(())
}

/// Starts a new version `v+1` of set `id` carrying `meta`; returns the new version.
fn bump(
    conn: &Connection,
    set_id: i64,
    version: u32,
    meta: &SetMeta,
    who: &str,
    change: &str,
    now: f64,
) -> rusqlite::Result<u32> {
    let next = version + 1;
    conn.execute(
        "UPDATE support_sets SET version = ?2, updated_at = ?3 WHERE id = ?1",
        params![set_id, next, now],
    )?;
    insert_version(conn, set_id, next, meta, who, change, now)?;
    Ok(next)
}

/// Creates set `name` at version 1 and audits it. Returns its id.
pub fn create(
    conn: &Connection,
    name: &str,
    meta: &SetMeta,
    objects: &[ObjectDef],
    who: &str,
    now: f64,
) -> Result<i64, SupportError> {
    check_name(name)?;
    check_objects(objects)?;
    if set_row(conn, name).is_ok() {
        return Err(SupportError::Exists(name.into()));
    }
    conn.execute(
        "INSERT INTO support_sets (name, version, created_at, updated_at) VALUES (?1, 1, ?2, ?2)",
        params![name, now],
    )?;
    let id = conn.last_insert_rowid();
    insert_version(conn, id, 1, meta, who, "created", now)?;
    insert_objects(conn, id, 1, objects)?;
    audit::record(
        conn,
        who,
        "support_set.create",
        &format!("support_set:{name}"),
        &format!("version 1, {} object(s)", objects.len()),
        now,
    )?;
    Ok(id)
}

const IN_VERSION: &str = "since_version <= ?2 AND (until_version IS NULL OR until_version > ?2)";

fn objects_at(conn: &Connection, set_id: i64, version: u32) -> rusqlite::Result<Vec<ObjectDef>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT label, category_scheme, category_code, category_meaning, type_scheme, type_code,
         type_meaning, color_r, color_g, color_b FROM support_objects
         WHERE set_id = ?1 AND {IN_VERSION} ORDER BY idx"
    ))?;
    let rows = stmt.query_map(params![set_id, version], |r| {
        Ok(ObjectDef {
            label: r.get(0)?,
            category: Code {
                scheme: r.get(1)?,
                value: r.get(2)?,
                meaning: r.get(3)?,
            },
            property_type: Code {
                scheme: r.get(4)?,
                value: r.get(5)?,
                meaning: r.get(6)?,
            },
            color: [r.get(7)?, r.get(8)?, r.get(9)?],
        })
    })?;
    rows.collect()
}

fn pairs_at(conn: &Connection, set_id: i64, version: u32) -> rusqlite::Result<Vec<PairInfo>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT number, sop_instance_uid, sop_class_uid, modality, rows, cols, dir, image_sha256,
         masks_sha256, mask_pixels, mask_source, since_version FROM support_pairs
         WHERE set_id = ?1 AND {IN_VERSION} ORDER BY number"
    ))?;
    let rows = stmt.query_map(params![set_id, version], |r| {
        let px: String = r.get(9)?;
        Ok(PairInfo {
            number: r.get(0)?,
            sop_instance_uid: r.get(1)?,
            sop_class_uid: r.get(2)?,
            modality: r.get(3)?,
            rows: r.get(4)?,
            cols: r.get(5)?,
            dir: r.get(6)?,
            image_sha256: r.get(7)?,
            masks_sha256: r.get(8)?,
            mask_pixels: px
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(0))
                .collect(),
            mask_source: r.get(10)?,
            since_version: r.get(11)?,
        })
    })?;
    rows.collect()
}

/// Set `name` at `version` (None = current), with objects and pairs.
pub fn get(conn: &Connection, name: &str, version: Option<u32>) -> Result<SetInfo, SupportError> {
    let (id, current): (i64, u32) = set_row(conn, name)?;
    let created_at: f64 = conn.query_row(
        "SELECT created_at FROM support_sets WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    let v = version.unwrap_or(current);
    let meta_row = conn
        .query_row(
            "SELECT description, bundle, modality, body_part, created_at, sequence_mode
             FROM support_set_versions WHERE set_id = ?1 AND version = ?2",
            params![id, v],
            |r| {
                Ok((
                    SetMeta {
                        description: r.get(0)?,
                        bundle: r.get(1)?,
                        modality: r.get(2)?,
                        body_part: r.get(3)?,
                        sequence_mode: r.get(5)?,
                    },
                    r.get::<_, f64>(4)?,
                ))
            },
        )
        .optional()?;
    let (meta, updated_at) = meta_row.ok_or_else(|| SupportError::NotFound {
        name: name.into(),
        version: Some(v),
    })?;
    Ok(SetInfo {
        id,
        name: name.into(),
        version: v,
        current_version: current,
        meta,
        objects: objects_at(conn, id, v)?,
        pairs: pairs_at(conn, id, v)?,
        created_at,
        updated_at,
    })
}

/// The current version of set `name`: what the pipeline records on a job when it matches, so
/// the job keeps segmenting with that snapshot.
pub fn current_version(conn: &Connection, name: &str) -> Result<u32, SupportError> {
    Ok(set_row(conn, name)?.1)
}

/// Every set at its current version, by name.
pub fn list(conn: &Connection) -> Result<Vec<SetInfo>, SupportError> {
    let names: Vec<String> = conn
        .prepare("SELECT name FROM support_sets ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    names.iter().map(|n| get(conn, n, None)).collect()
}

/// Applies an update as a new version; returns it.
pub fn update(
    conn: &Connection,
    name: &str,
    up: &SetUpdate,
    who: &str,
    now: f64,
) -> Result<u32, SupportError> {
    let cur = get(conn, name, None)?;
    check_expected(name, up.expected_version, cur.version)?;
    let mut meta = cur.meta.clone();
    let mut changed = Vec::new();
    for (field, new, old) in [
        ("description", &up.description, &mut meta.description),
        ("bundle", &up.bundle, &mut meta.bundle),
        ("modality", &up.modality, &mut meta.modality),
        ("body_part", &up.body_part, &mut meta.body_part),
    ] {
        if let Some(v) = new {
            if v != old {
                *old = v.clone();
                changed.push(field.to_string());
            }
        }
    }
    if let Some(mode) = up.sequence_mode {
        if mode != meta.sequence_mode {
            let name = |m| crate::sequence_mode::ModeSetting(m).to_string();
            changed.push(format!(
                "sequence_mode {} -> {}",
                name(meta.sequence_mode),
                name(mode)
            ));
            meta.sequence_mode = mode;
        }
    }
    if let Some(objs) = &up.objects {
        check_objects(objs)?;
        if objs.len() != cur.objects.len() && !cur.pairs.is_empty() {
            return Err(SupportError::Invalid(format!(
                "objects: the set has {} pair(s) with {} mask(s) each; the number of objects can \
                 only change while it has no pairs (remove them first)",
                cur.pairs.len(),
                cur.objects.len()
            )));
        }
        if *objs != cur.objects {
            changed.push("objects".into());
        }
    }
    if changed.is_empty() {
        return Ok(cur.version);
    }
    let change = format!("updated {}", changed.join(", "));
    let v = bump(conn, cur.id, cur.version, &meta, who, &change, now)?;
    if let Some(objs) = &up.objects {
        conn.execute(
            "UPDATE support_objects SET until_version = ?2 WHERE set_id = ?1 AND until_version IS NULL",
            params![cur.id, v],
        )?;
        insert_objects(conn, cur.id, v, objs)?;
    }
    audit::record(
        conn,
        who,
        "support_set.update",
        &format!("support_set:{name}"),
        &format!("version {v}: {change}"),
        now,
    )?;
    Ok(v)
}

/// Deletes set `name` (all versions) unless a rule or an unfinished job uses it. Returns the
/// pair folders (relative to the data dir) whose files the caller removes after the commit.
pub fn delete(
    conn: &Connection,
    name: &str,
    who: &str,
    now: f64,
) -> Result<Vec<String>, SupportError> {
    let (id, version) = set_row(conn, name)?;
    let rules: Vec<i64> = conn
        .prepare("SELECT id FROM rules WHERE support_set = ?1 ORDER BY id")?
        .query_map([name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !rules.is_empty() {
        return Err(SupportError::InUse {
            name: name.into(),
            by: format!("routing rule(s) {rules:?}; delete or change them first"),
        });
    }
    let jobs: Vec<i64> = conn
        .prepare(
            "SELECT id FROM jobs WHERE support_set = ?1
             AND state NOT IN ('delivered', 'failed', 'unmatched') ORDER BY id",
        )?
        .query_map([name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !jobs.is_empty() {
        return Err(SupportError::InUse {
            name: name.into(),
            by: format!("unfinished job(s) {jobs:?}"),
        });
    }
    let dirs: Vec<String> = conn
        .prepare("SELECT dir FROM support_pairs WHERE set_id = ?1")?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    conn.execute("DELETE FROM support_sets WHERE id = ?1", [id])?;
    audit::record(
        conn,
        who,
        "support_set.delete",
        &format!("support_set:{name}"),
        &format!("was at version {version}"),
        now,
    )?;
    Ok(dirs)
}

/// Records a pair as a new version of set `set_id` (which must still be named `name`). Returns
/// (new version, pair number).
pub fn add_pair(
    conn: &Connection,
    name: &str,
    set_id: i64,
    expected_version: u32,
    pair: &NewPair,
    who: &str,
    now: f64,
) -> Result<(u32, u32), SupportError> {
    let cur = get(conn, name, None)?;
    if cur.id != set_id {
        return Err(SupportError::NotFound {
            name: name.into(),
            version: None,
        });
    }
    check_expected(name, expected_version, cur.version)?;
    if pair.mask_pixels.len() != cur.objects.len() {
        return Err(SupportError::Invalid(format!(
            "masks: {} mask(s) given, the set has {} object(s)",
            pair.mask_pixels.len(),
            cur.objects.len()
        )));
    }
    if let Some(p) = cur
        .pairs
        .iter()
        .find(|p| p.sop_instance_uid == pair.sop_instance_uid)
    {
        return Err(SupportError::Invalid(format!(
            "image: SOP Instance UID {} is already pair {} of this set",
            pair.sop_instance_uid, p.number
        )));
    }
    let number: u32 = conn.query_row(
        "SELECT next_pair FROM support_sets WHERE id = ?1",
        [set_id],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE support_sets SET next_pair = next_pair + 1 WHERE id = ?1",
        [set_id],
    )?;
    let change = format!("added pair {number}");
    let v = bump(conn, set_id, cur.version, &cur.meta, who, &change, now)?;
    let px = pair
        .mask_pixels
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    conn.execute(
        "INSERT INTO support_pairs (set_id, number, since_version, sop_instance_uid, sop_class_uid,
         modality, rows, cols, dir, image_sha256, masks_sha256, mask_pixels, mask_source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            set_id,
            number,
            v,
            pair.sop_instance_uid,
            pair.sop_class_uid,
            pair.modality,
            pair.rows,
            pair.cols,
            pair.dir,
            pair.image_sha256,
            pair.masks_sha256,
            px,
            pair.mask_source
        ],
    )?;
    audit::record(
        conn,
        who,
        "support_set.add_pair",
        &format!("support_set:{name}"),
        &format!(
            "version {v}: pair {number} ({}, {}x{}, masks from {})",
            pair.sop_instance_uid, pair.rows, pair.cols, pair.mask_source
        ),
        now,
    )?;
    Ok((v, number))
}

/// Removes pair `number` from the current version (its files stay for older versions).
pub fn remove_pair(
    conn: &Connection,
    name: &str,
    number: u32,
    expected_version: u32,
    who: &str,
    now: f64,
) -> Result<u32, SupportError> {
    let cur = get(conn, name, None)?;
    check_expected(name, expected_version, cur.version)?;
    if !cur.pairs.iter().any(|p| p.number == number) {
        return Err(SupportError::NoSuchPair {
            name: name.into(),
            number,
        });
    }
    let change = format!("removed pair {number}");
    let v = bump(conn, cur.id, cur.version, &cur.meta, who, &change, now)?;
    conn.execute(
        "UPDATE support_pairs SET until_version = ?3 WHERE set_id = ?1 AND number = ?2",
        params![cur.id, number, v],
    )?;
    audit::record(
        conn,
        who,
        "support_set.remove_pair",
        &format!("support_set:{name}"),
        &format!("version {v}: {change}"),
        now,
    )?;
    Ok(v)
}
