//! Support sets in SQLite and on disk: objects, image + mask pairs, and their versions.
//!
//! # Versions are immutable snapshots (copy-on-write by validity ranges)
//!
//! Every change bumps the set's version. A running job records `(support_set, version)` and
//! must keep segmenting with exactly that content, even while an admin edits the set. We keep
//! every version by giving each object and pair row the range of versions that contain it,
//! `[since_version, until_version)` (`until_version` NULL = still current), plus one
//! `support_set_versions` row per version for the metadata (description, bundle, hints):
//!
//! - adding a pair inserts a row with `since_version = new`; removing one only sets its
//!   `until_version`; replacing objects closes the old rows and inserts new ones;
//! - pair files (`data_dir/support/<set name>/<unique>/image.dcm` + `masks.bin`) are written
//!   once, before the row that names them, and never modified;
//! - so version V is `since_version <= V AND (until_version IS NULL OR until_version > V)`.
//!
//! We chose this over copying all pairs per version because a change costs one row and no
//! file copy (support images can be large), and over content-addressed blobs because a pair's
//! folder stays readable by a person. The price is that removed pairs keep their files until the
//! set is deleted, which is refused while an unfinished job still uses the set.
//!
//! This module never talks to the network and never decides access: the admin layer checks
//! tokens and validates uploads before calling it. Every `fn(&Connection, ...)` here is meant to
//! run inside one `Db::write` transaction together with its audit row.

use crate::store::audit;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Largest number of objects a support set may define.
pub const MAX_OBJECTS: usize = 64;

/// Errors of support-set storage.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// No support set has this name (or not this version).
    #[error("support set {name:?} not found{}", version.map(|v| format!(" at version {v}")).unwrap_or_default())]
    NotFound {
        /// The name asked for.
        name: String,
        /// The version asked for, if any.
        version: Option<u32>,
    },
    /// The name is taken.
    #[error("support set {0:?} already exists")]
    Exists(String),
    /// Optimistic concurrency: the set changed since the caller read it.
    #[error("support set {name:?} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The set.
        name: String,
        /// The version the caller expected.
        expected: u32,
        /// The current version.
        actual: u32,
    },
    /// The set is still used.
    #[error("support set {name:?} is in use: {by}")]
    InUse {
        /// The set.
        name: String,
        /// Who uses it.
        by: String,
    },
    /// No pair with this number in the current version.
    #[error("support set {name:?} has no pair {number}")]
    NoSuchPair {
        /// The set.
        name: String,
        /// The pair number.
        number: u32,
    },
    /// Input that breaks a rule of the data model; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A pair file is missing or does not match its checksum.
    #[error("support set {name:?} pair {number}: {message}")]
    Corrupt {
        /// The set.
        name: String,
        /// The pair.
        number: u32,
        /// What is wrong.
        message: String,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl SupportError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupportError {
        let context = context.into();
        move |source| SupportError::Io { context, source }
    }
}

/// A coded concept: scheme designator, code value, code meaning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Code {
    /// Coding scheme designator, e.g. `SCT`.
    pub scheme: String,
    /// Code value.
    pub code: String,
    /// Code meaning.
    pub meaning: String,
}

/// One object (segment) of a support set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDef {
    /// Segment label.
    pub label: String,
    /// Segmented property category.
    pub category: Code,
    /// Segmented property type.
    pub property_type: Code,
    /// Display colour.
    pub color: [u8; 3],
}

/// Default colours for objects given without one.
pub const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Default SNOMED CT category / type for objects given without codes: "Tissue" / "Tissue".
pub fn default_code() -> Code {
    Code {
        scheme: "SCT".into(),
        code: "85756007".into(),
        meaning: "Tissue".into(),
    }
}

/// Metadata a version carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetMeta {
    /// Free text.
    pub description: String,
    /// Model bundle name.
    pub bundle: String,
    /// Modality hint.
    pub modality: String,
    /// Body part hint.
    pub body_part: String,
}

/// One stored pair, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct PairInfo {
    /// Stable number within the set.
    pub number: u32,
    /// SOP Instance UID of the image.
    pub sop_instance_uid: String,
    /// SOP Class UID of the image.
    pub sop_class_uid: String,
    /// Modality of the image.
    pub modality: String,
    /// Image rows.
    pub rows: u32,
    /// Image columns.
    pub cols: u32,
    /// Folder of the pair's files, relative to the data dir.
    pub dir: String,
    /// SHA-256 of image.dcm.
    pub image_sha256: String,
    /// SHA-256 of masks.bin.
    pub masks_sha256: String,
    /// Foreground pixels per object.
    pub mask_pixels: Vec<u64>,
    /// `png` or `seg`.
    pub mask_source: String,
    /// Version that added it.
    pub since_version: u32,
}

/// A support set at one version, as listed (no pixel data).
#[derive(Debug, Clone, PartialEq)]
pub struct SetInfo {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// The version described.
    pub version: u32,
    /// The set's current version (equal to `version` unless an old one was asked for).
    pub current_version: u32,
    /// Metadata of that version.
    pub meta: SetMeta,
    /// Objects of that version, in order.
    pub objects: Vec<ObjectDef>,
    /// Pairs of that version, by number.
    pub pairs: Vec<PairInfo>,
    /// Creation time of the set.
    pub created_at: f64,
    /// Time of that version.
    pub updated_at: f64,
}

/// A binary mask at its image's size: `rows x cols` bytes, row-major, 0 = outside, 1 = inside.
/// Same layout as the engine's `Mask`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row-major 0/1 bytes.
    pub data: Vec<u8>,
}

impl Mask {
    /// Number of pixels inside.
    pub fn area(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }

    /// Bit-packs the mask (LSB first, as DICOM SEG does), padded to whole bytes.
    pub fn pack(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.data.len().div_ceil(8)];
        for (i, &v) in self.data.iter().enumerate() {
            if v != 0 {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        out
    }

    /// Inverse of [`Mask::pack`].
    pub fn unpack(rows: usize, cols: usize, packed: &[u8]) -> Option<Mask> {
        let n = rows * cols;
        if packed.len() != n.div_ceil(8) {
            return None;
        }
        let data = (0..n).map(|i| (packed[i / 8] >> (i % 8)) & 1).collect();
        Some(Mask { rows, cols, data })
    }
}

/// One pair with its masks loaded, for the engine: the image stays a file path (the engine
/// decodes pixels its own way).
#[derive(Debug, Clone, PartialEq)]
pub struct SupportPairData {
    /// Stable pair number.
    pub number: u32,
    /// Absolute path of the DICOM image.
    pub image_path: PathBuf,
    /// SOP Instance UID of the image.
    pub sop_instance_uid: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// One mask per object, in object order.
    pub masks: Vec<Mask>,
}

/// A support set version with its masks, ready for the engine.
///
/// The engine caches the support context per `(name, version, variant)`: `variant` is empty
/// for the set as stored and names a derived subset otherwise (leave-one-out evaluation uses
/// `"loo-<pair number>"`), so subsets never reuse the full set's cache entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SupportSetData {
    /// Set name.
    pub name: String,
    /// Version (immutable content).
    pub version: u32,
    /// Empty, or the name of a derived subset (see above).
    pub variant: String,
    /// Model bundle to run.
    pub bundle: String,
    /// Objects in output order.
    pub objects: Vec<ObjectDef>,
    /// Pairs by number.
    pub pairs: Vec<SupportPairData>,
}

/// Checks a support-set name: 1..=64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
/// Names become folder names, so this is also what keeps them inside the data dir.
pub fn check_name(name: &str) -> Result<(), SupportError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SupportError::Invalid(format!(
            "name {name:?} is not valid: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .)"
        )))
    }
}

/// Checks objects: at least one, at most [`MAX_OBJECTS`], unique non-empty labels.
pub fn check_objects(objects: &[ObjectDef]) -> Result<(), SupportError> {
    if objects.is_empty() {
        return Err(SupportError::Invalid(
            "objects: a support set needs at least one object".into(),
        ));
    }
    if objects.len() > MAX_OBJECTS {
        return Err(SupportError::Invalid(format!(
            "objects: {} objects, at most {MAX_OBJECTS} allowed",
            objects.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, o) in objects.iter().enumerate() {
        if o.label.trim().is_empty() {
            return Err(SupportError::Invalid(format!(
                "objects[{}].label must not be empty",
                i + 1
            )));
        }
        if o.label.len() > 64 {
            return Err(SupportError::Invalid(format!(
                "objects[{}].label is longer than 64 characters",
                i + 1
            )));
        }
        if !seen.insert(o.label.trim().to_lowercase()) {
            return Err(SupportError::Invalid(format!(
                "objects[{}].label {:?} is used twice",
                i + 1,
                o.label
            )));
        }
        for (what, c) in [("category", &o.category), ("type", &o.property_type)] {
            if c.scheme.is_empty() || c.code.is_empty() || c.meaning.is_empty() {
                return Err(SupportError::Invalid(format!(
                    "objects[{}].{what} needs scheme, code and meaning",
                    i + 1
                )));
            }
        }
    }
    Ok(())
}

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
                o.category.code,
                o.category.meaning,
                o.property_type.scheme,
                o.property_type.code,
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
         body_part, created_at, created_by, change) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            set_id,
            version,
            meta.description,
            meta.bundle,
            meta.modality,
            meta.body_part,
            now,
            who,
            change
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
                code: r.get(2)?,
                meaning: r.get(3)?,
            },
            property_type: Code {
                scheme: r.get(4)?,
                code: r.get(5)?,
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
            "SELECT description, bundle, modality, body_part, created_at FROM support_set_versions
             WHERE set_id = ?1 AND version = ?2",
            params![id, v],
            |r| {
                Ok((
                    SetMeta {
                        description: r.get(0)?,
                        bundle: r.get(1)?,
                        modality: r.get(2)?,
                        body_part: r.get(3)?,
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

/// What an update changes (None = keep).
#[derive(Debug, Clone, Default)]
pub struct SetUpdate {
    /// New description.
    pub description: Option<String>,
    /// New bundle.
    pub bundle: Option<String>,
    /// New modality hint.
    pub modality: Option<String>,
    /// New body part hint.
    pub body_part: Option<String>,
    /// New objects.
    pub objects: Option<Vec<ObjectDef>>,
    /// Refuse unless the set is at this version (0 = any).
    pub expected_version: u32,
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

/// A pair whose files are already written (and fsynced) under `dir`, to be recorded.
#[derive(Debug, Clone)]
pub struct NewPair {
    /// Folder relative to the data dir, holding image.dcm and masks.bin.
    pub dir: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Modality.
    pub modality: String,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// SHA-256 of image.dcm.
    pub image_sha256: String,
    /// SHA-256 of masks.bin.
    pub masks_sha256: String,
    /// Foreground pixels per object.
    pub mask_pixels: Vec<u64>,
    /// `png` or `seg`.
    pub mask_source: &'static str,
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

/// SHA-256 of bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Encodes masks as `masks.bin`: each mask bit-packed ([`Mask::pack`]), concatenated.
pub fn encode_masks(masks: &[Mask]) -> Vec<u8> {
    masks.iter().flat_map(|m| m.pack()).collect()
}

/// Decodes `masks.bin` holding `k` masks of `rows x cols`.
pub fn decode_masks(bytes: &[u8], k: usize, rows: usize, cols: usize) -> Option<Vec<Mask>> {
    let each = (rows * cols).div_ceil(8);
    if bytes.len() != each * k {
        return None;
    }
    bytes
        .chunks(each.max(1))
        .take(k)
        .map(|c| Mask::unpack(rows, cols, c))
        .collect()
}

/// Loads set `name` at `version` (None = current) with its masks, verifying every file's
/// checksum: what the pipeline and the engine call for a job's `(support_set, version)`.
pub fn load(
    conn: &Connection,
    data_dir: &Path,
    name: &str,
    version: Option<u32>,
) -> Result<SupportSetData, SupportError> {
    let info = get(conn, name, version)?;
    let k = info.objects.len();
    let mut pairs = Vec::with_capacity(info.pairs.len());
    for p in &info.pairs {
        let corrupt = |message: String| SupportError::Corrupt {
            name: name.into(),
            number: p.number,
            message,
        };
        let dir = data_dir.join(&p.dir);
        let masks_path = dir.join("masks.bin");
        let bytes = std::fs::read(&masks_path)
            .map_err(|e| corrupt(format!("cannot read {}: {e}", masks_path.display())))?;
        if sha256_hex(&bytes) != p.masks_sha256 {
            return Err(corrupt(format!(
                "{} does not match its checksum",
                masks_path.display()
            )));
        }
        let masks = decode_masks(&bytes, k, p.rows as usize, p.cols as usize).ok_or_else(|| {
            corrupt(format!(
                "{} has the wrong size for {k} masks",
                masks_path.display()
            ))
        })?;
        let image_path = dir.join("image.dcm");
        if !image_path.is_file() {
            return Err(corrupt(format!("{} is missing", image_path.display())));
        }
        pairs.push(SupportPairData {
            number: p.number,
            image_path,
            sop_instance_uid: p.sop_instance_uid.clone(),
            rows: p.rows as usize,
            cols: p.cols as usize,
            masks,
        });
    }
    Ok(SupportSetData {
        name: info.name,
        version: info.version,
        variant: String::new(),
        bundle: info.meta.bundle,
        objects: info.objects,
        pairs,
    })
}

/// Writes a pair's files into a new folder `support/<set name>/<unique>` under `data_dir`
/// (temp folder, fsync, rename, fsync parent), before the row that names it is committed.
/// Returns the folder relative to `data_dir`. `extra` holds further files to keep (e.g. the
/// original SEG). The unique part keeps a deleted and re-created set from reusing folders.
pub fn write_pair_files(
    data_dir: &Path,
    set_name: &str,
    image: &[u8],
    masks_bin: &[u8],
    extra: &[(&str, &[u8])],
) -> Result<String, SupportError> {
    use std::io::Write;
    check_name(set_name)?;
    let parent = data_dir.join("support").join(set_name);
    super::private::create_dir_all(&parent)
        .map_err(SupportError::io(format!("creating {}", parent.display())))?;
    let unique = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        hex::encode(rand::random::<[u8; 6]>())
    );
    let tmp = parent.join(format!(".{unique}.tmp"));
    super::private::create_dir(&tmp)
        .map_err(SupportError::io(format!("creating {}", tmp.display())))?;
    let write_all = || -> Result<(), SupportError> {
        let files: Vec<(&str, &[u8])> = [("image.dcm", image), ("masks.bin", masks_bin)]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        for (name, bytes) in files {
            let p = tmp.join(name);
            let mut f = super::private::create(&p)
                .map_err(SupportError::io(format!("creating {}", p.display())))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(SupportError::io(format!("writing {}", p.display())))?;
        }
        std::fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(SupportError::io(format!("syncing {}", tmp.display())))
    };
    if let Err(e) = write_all() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let fin = parent.join(&unique);
    std::fs::rename(&tmp, &fin)
        .map_err(SupportError::io(format!("renaming to {}", fin.display())))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(SupportError::io(format!("syncing {}", parent.display())))?;
    Ok(format!("support/{set_name}/{unique}"))
}

/// Removes a deleted set's pair folders (after the deletion committed), then the set's folder
/// if it is empty. Failures are logged: leftover files are harmless.
pub fn remove_pair_dirs(data_dir: &Path, set_name: &str, dirs: &[String]) {
    for d in dirs {
        if let Err(e) = std::fs::remove_dir_all(data_dir.join(d)) {
            tracing::warn!(dir = %d, error = %e, "cannot remove a deleted support pair's files");
        }
    }
    if check_name(set_name).is_ok() {
        let _ = std::fs::remove_dir(data_dir.join("support").join(set_name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

    fn obj(label: &str) -> ObjectDef {
        ObjectDef {
            label: label.into(),
            category: default_code(),
            property_type: default_code(),
            color: PALETTE[0],
        }
    }

    fn pair(dir: &str, sop: &str, px: Vec<u64>) -> NewPair {
        NewPair {
            dir: dir.into(),
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            modality: "CT".into(),
            rows: 4,
            cols: 4,
            image_sha256: "00".into(),
            masks_sha256: "00".into(),
            mask_pixels: px,
            mask_source: "png",
        }
    }

    #[test]
    fn mask_packing_round_trips() {
        let m = Mask {
            rows: 3,
            cols: 5,
            data: (0..15).map(|i| (i % 3 == 0) as u8).collect(),
        };
        let p = m.pack();
        assert_eq!(p.len(), 2);
        assert_eq!(Mask::unpack(3, 5, &p), Some(m.clone()));
        let two = encode_masks(&[m.clone(), m.clone()]);
        assert_eq!(decode_masks(&two, 2, 3, 5), Some(vec![m.clone(), m]));
        assert_eq!(decode_masks(&two, 3, 3, 5), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("fundus-demo_1.2").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn old_versions_keep_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let meta = SetMeta {
            bundle: "phantom-tiny".into(),
            ..Default::default()
        };
        db.write_blocking(move |c| {
            create(c, "s", &meta, &[obj("a")], "t", 1.0).map_err(|e| panic!("{e}"))
        })
        .unwrap();
        let (v2, n1) = db
            .write_blocking(|c| {
                let id = set_id(c, "s").unwrap();
                Ok(add_pair(c, "s", id, 1, &pair("d1", "1.1", vec![3]), "t", 2.0).unwrap())
            })
            .unwrap();
        let (v3, n2) = db
            .write_blocking(|c| {
                let id = set_id(c, "s").unwrap();
                Ok(add_pair(c, "s", id, 0, &pair("d2", "1.2", vec![5]), "t", 3.0).unwrap())
            })
            .unwrap();
        assert_eq!((v2, n1, v3, n2), (2, 1, 3, 2));
        // A stale expected version is refused and changes nothing.
        let stale = db
            .write_blocking(|c| Ok(remove_pair(c, "s", 1, 2, "t", 4.0)))
            .unwrap();
        assert!(matches!(stale, Err(SupportError::VersionMismatch { .. })));
        let v4 = db
            .write_blocking(|c| Ok(remove_pair(c, "s", 1, 3, "t", 4.0).unwrap()))
            .unwrap();
        let v5 = db
            .write_blocking(|c| {
                let up = SetUpdate {
                    objects: Some(vec![obj("renamed")]),
                    ..Default::default()
                };
                Ok(update(c, "s", &up, "t", 5.0).unwrap())
            })
            .unwrap();
        assert_eq!((v4, v5), (4, 5));
        let at = |v| db.read(|c| Ok(get(c, "s", Some(v)).unwrap())).unwrap();
        let nums = |s: &SetInfo| s.pairs.iter().map(|p| p.number).collect::<Vec<_>>();
        assert_eq!(nums(&at(2)), [1]);
        assert_eq!(nums(&at(3)), [1, 2]);
        assert_eq!(nums(&at(4)), [2]);
        assert_eq!(at(4).objects[0].label, "a");
        assert_eq!(at(5).objects[0].label, "renamed");
        assert_eq!(at(1).meta.bundle, "phantom-tiny");
        let audits = db.read(crate::store::audit::count).unwrap();
        assert_eq!(audits, 5);
        // Changing the number of objects while pairs exist is refused.
        let more = db
            .write_blocking(|c| {
                let up = SetUpdate {
                    objects: Some(vec![obj("x"), obj("y")]),
                    ..Default::default()
                };
                Ok(update(c, "s", &up, "t", 6.0))
            })
            .unwrap();
        assert!(matches!(more, Err(SupportError::Invalid(_))));
    }
}
