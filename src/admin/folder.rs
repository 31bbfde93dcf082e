//! Support-set folders (the `supportset.toml` format of [`crate::support_folder`], the one
//! parser of that file) into and out of the store: Import, Export, and the seeding of the
//! bundled sets at start ([`crate::admin::seed`]).
//!
//! Import validates every pair before writing anything and records the whole set in one
//! transaction (with, when seeding, the routing rule of its `[match]` table). Paths in the file
//! must stay inside the folder. Export writes a version as such a folder (SEG masks as they were
//! uploaded, PNG masks as PNG).

use crate::admin::server::State;
use crate::admin::support_sets::{validate_pair, write_pair, MaskUpload};
use crate::admin::{change, internal, masks, read};
use crate::routing::Rule;
use crate::store::db;
use crate::store::rules::RuleError;
use crate::store::support::{self, Code, ObjectDef, SetInfo, SetMeta, SupportError, PALETTE};
use crate::store::Db;
use crate::support_folder::{self, CodeSpec, MatchSpec, ObjectSpec, PairSpec, SupportSetSpec};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tonic::Status;

/// Where and how a folder is imported: the store, the data dir its pair files go to, the bundle
/// a set that names none records, and the upload limit every file is held to. The admin API
/// builds it from its state ([`State::folder_target`]); the daemon builds one to seed the
/// bundled sets whether or not the API listens.
#[derive(Debug, Clone)]
pub struct Target {
    /// The index.
    pub db: Db,
    /// `[storage] data_dir`: pair files go under `support/`.
    pub data_dir: PathBuf,
    /// `[engine] models_dir`: which bundles are installed.
    pub models_dir: PathBuf,
    /// `[engine] default_bundle`.
    pub default_bundle: String,
    /// Largest file, in bytes.
    pub max_upload: usize,
    /// The same in MiB (`admin.max_upload_mb`), for messages.
    pub max_upload_mb: u64,
}

impl Target {
    /// The daemon's target: `[storage] data_dir`, `[engine] models_dir` and `default_bundle`,
    /// and `admin.max_upload_mb` (its default without `[admin]`).
    pub fn from_config(cfg: &crate::config::Config, db: Db) -> Target {
        let max_upload_mb = cfg
            .admin
            .as_ref()
            .map_or(crate::config::AdminConfig::default().max_upload_mb, |a| {
                a.max_upload_mb
            });
        Target {
            db,
            data_dir: cfg.storage.data_dir.clone(),
            models_dir: cfg.engine.models_dir.clone(),
            default_bundle: cfg.engine.default_bundle.clone(),
            max_upload: (max_upload_mb as usize).saturating_mul(1024 * 1024),
            max_upload_mb,
        }
    }

    /// The bundle a set naming `name` records ([`crate::admin::bundles::recorded`]).
    pub fn bundle_or_default(&self, name: &str) -> String {
        crate::admin::bundles::recorded(name, &self.default_bundle, &self.models_dir)
    }
}

/// A folder's set, and when seeding its routing rule, could not be recorded.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    /// The set (or its audit row).
    #[error(transparent)]
    Set(#[from] SupportError),
    /// The seeded rule.
    #[error(transparent)]
    Rule(#[from] RuleError),
}

impl From<RecordError> for Status {
    fn from(e: RecordError) -> Status {
        match e {
            RecordError::Set(e) => e.into(),
            RecordError::Rule(e) => e.into(),
        }
    }
}

fn code(c: &Option<CodeSpec>) -> Code {
    support::code_of_spec(c.as_ref(), support::default_code())
}

fn code_spec(c: &Code) -> CodeSpec {
    CodeSpec::Code {
        scheme: c.scheme.clone(),
        code: c.value.clone(),
        meaning: c.meaning.clone(),
    }
}

fn invalid(m: String) -> Status {
    Status::invalid_argument(m)
}

/// Resolves a path from the spec inside `dir`, refusing absolute paths and `..`.
fn inside(dir: &Path, rel: &str, what: &str) -> Result<PathBuf, Status> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid(format!(
            "{what} {rel:?} must be a relative path inside the support-set folder"
        )));
    }
    Ok(dir.join(p))
}

/// How an error names a file of a folder being imported: relative to that folder, never by
/// its server path (review L7).
fn shown(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// The kind of an I/O error, without the path some of them carry.
fn io_kind(e: &std::io::Error) -> String {
    e.kind().to_string()
}

fn read_limited(dir: &Path, p: &Path, limit: usize, max_mb: u64) -> Result<Vec<u8>, Status> {
    let name = shown(dir, p);
    let len = std::fs::metadata(p)
        .map_err(|e| invalid(format!("cannot read {name}: {}", io_kind(&e))))?
        .len();
    if len as usize > limit {
        return Err(invalid(format!(
            "{name} exceeds admin.max_upload_mb = {max_mb} MiB"
        )));
    }
    std::fs::read(p).map_err(|e| invalid(format!("cannot read {name}: {}", io_kind(&e))))
}

/// A folder read and validated: the set's name, metadata, objects and pairs.
struct Loaded {
    name: String,
    meta: SetMeta,
    objects: Vec<ObjectDef>,
    pairs: Vec<crate::admin::support_sets::ValidPair>,
}

/// The objects of a spec, checked; missing colours from the palette.
fn objects_of(spec: &SupportSetSpec) -> Result<Vec<ObjectDef>, Status> {
    let objects = spec
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let color = match o.color.as_deref() {
                None => Ok(PALETTE[i % PALETTE.len()]),
                Some([r, g, b]) => Ok([*r, *g, *b]),
                Some(_) => Err(invalid(format!(
                    "{}: objects[{}].color must be [r, g, b]",
                    support_folder::FILE,
                    i + 1
                ))),
            }?;
            Ok(ObjectDef {
                label: o.label.trim().to_string(),
                category: code(&o.category),
                property_type: code(&o.property_type),
                color,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    support::check_objects(&objects)?;
    Ok(objects)
}

/// Reads the files of pair `p` of the folder, each within the upload limit (`total` counts
/// the folder's bytes).
fn read_pair(
    t: &Target,
    dir: &Path,
    p: &PairSpec,
    total: &mut usize,
) -> Result<(Vec<u8>, MaskUpload), Status> {
    let mut file = |rel: &str, what: &str| -> Result<Vec<u8>, Status> {
        let path = inside(dir, rel, what)?;
        let path = if what == "image" && path.is_dir() {
            crate::support_folder::first_source(&path).map_err(|e| invalid(e.to_string()))?
        } else {
            path
        };
        let bytes = read_limited(dir, &path, t.max_upload, t.max_upload_mb)?;
        *total += bytes.len();
        Ok(bytes)
    };
    let image = file(&p.image, "image")?;
    let upload = match (&p.mask, &p.masks) {
        (Some(seg), None) => MaskUpload::Seg(file(seg, "mask")?),
        (None, Some(list)) => {
            let mut m = BTreeMap::new();
            for (k, f) in list.iter().enumerate() {
                m.insert(k as u32 + 1, file(f, "masks")?);
            }
            MaskUpload::Png(m)
        }
        _ => {
            return Err(invalid(
                "give either `mask` (a DICOM SEG) or `masks` (one PNG per object)".into(),
            ))
        }
    };
    Ok((image, upload))
}

/// Validates a folder whose `supportset.toml` reads as `spec` (blocking): its objects and every
/// pair.
fn load_folder(
    t: &Target,
    dir: &Path,
    spec: SupportSetSpec,
    name_override: &str,
) -> Result<Loaded, Status> {
    let name = match name_override.trim() {
        "" => spec.name.trim().to_string(),
        over => over.to_string(),
    };
    support::check_name(&name)?;
    let objects = objects_of(&spec)?;
    let labels: Vec<String> = objects.iter().map(|o| o.label.clone()).collect();
    let mut total = 0usize;
    let mut pairs = Vec::with_capacity(spec.pairs.len());
    for (i, p) in spec.pairs.iter().enumerate() {
        let ctx = |s: Status| {
            let message = format!("{} pair {}: {}", support_folder::FILE, i + 1, s.message());
            Status::new(s.code(), message)
        };
        let (image, upload) = read_pair(t, dir, p, &mut total).map_err(ctx)?;
        if total > t.max_upload.saturating_mul(64) {
            return Err(invalid(format!(
                "the folder holds more than 64 x admin.max_upload_mb = {} MiB",
                64 * t.max_upload_mb
            )));
        }
        pairs.push(validate_pair(image, upload, &labels).map_err(|e| ctx(e.into()))?);
    }
    let meta = SetMeta {
        description: spec.description,
        bundle: t.bundle_or_default(&spec.bundle),
        modality: spec.match_.modality.trim().to_uppercase(),
        body_part: spec.match_.body_part.trim().to_uppercase(),
        sequence_mode: spec.sequence_mode,
    };
    Ok(Loaded {
        name,
        meta,
        objects,
        pairs,
    })
}

/// Which way a folder crosses the exchange directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Import reads it: inside `admin.exchange_dir`, or a bundled set under `engine.models_dir`.
    Read,
    /// Export writes it: inside `admin.exchange_dir` only; the folder itself may not exist yet.
    Write,
}

/// The server path an Import or Export request names, if the daemon may use it: a relative
/// path is taken inside `admin.exchange_dir`; the result, with every symbolic link and `..`
/// resolved, must lie inside that folder (or, to read, inside `engine.models_dir`, where the
/// bundled sets ship). Otherwise PERMISSION_DENIED naming the folders (issue 16 item 6: an
/// admin token cannot read or write arbitrary server files through the daemon).
pub fn exchange_path(st: &State, requested: &str, way: Exchange) -> Result<PathBuf, Status> {
    if requested.trim().is_empty() {
        return Err(invalid(match way {
            Exchange::Read => "path must name a folder holding supportset.toml".into(),
            Exchange::Write => "path must name the folder to write".into(),
        }));
    }
    let p = Path::new(requested.trim());
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        st.exchange_dir.join(p)
    };
    let resolved = match way {
        Exchange::Read => std::fs::canonicalize(&p).ok(),
        // The target may not exist yet: resolve its parent, keep a plain last component.
        Exchange::Write => match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) if name != ".." => {
                std::fs::canonicalize(parent).ok().map(|d| d.join(name))
            }
            _ => None,
        },
    };
    let mut allowed = vec![st.exchange_dir.clone()];
    if way == Exchange::Read {
        allowed.extend(std::fs::canonicalize(&st.models_dir).ok());
    }
    match resolved {
        Some(r) if allowed.iter().any(|a| r.starts_with(a) && r != *a) => Ok(r),
        Some(_) => {
            let (what, besides) = match way {
                Exchange::Read => ("Import reads", " or the bundled sets of engine.models_dir"),
                Exchange::Write => ("Export writes", ""),
            };
            Err(Status::permission_denied(format!(
                "{what} only inside admin.exchange_dir{besides}: copy the folder there, and name it relative to it"
            )))
        }
        None => Err(Status::not_found(format!(
            "{requested}: no such folder on the server (relative paths are taken inside admin.exchange_dir)"
        ))),
    }
}

/// Imports a support-set folder as a new set, audited as `who`: everything validated first,
/// files written, then one transaction (create + every pair); on failure the written files are
/// removed.
pub async fn import(
    t: &Target,
    dir: PathBuf,
    name_override: &str,
    who: &str,
) -> Result<SetInfo, Status> {
    let spec = read_spec(&dir)?;
    Ok(import_spec(t, dir, spec, name_override, who, None).await?.0)
}

/// Reads a folder's `supportset.toml` ([`support_folder::read`]) as INVALID_ARGUMENT.
pub(crate) fn read_spec(dir: &Path) -> Result<SupportSetSpec, Status> {
    support_folder::read(dir)
        .map(|(spec, _)| spec)
        .map_err(|e| invalid(e.to_string()))
}

/// [`import`] of a folder already read as `spec`; with `rule` (the seeding: the rule's
/// description), the routing rule of the spec's `[match]` table ([`Rule::bundled`]) is created
/// in the same transaction. Returns the set and that rule's id.
pub(crate) async fn import_spec(
    t: &Target,
    dir: PathBuf,
    spec: SupportSetSpec,
    name_override: &str,
    who: &str,
    rule: Option<String>,
) -> Result<(SetInfo, Option<i64>), Status> {
    let source = dir.display().to_string();
    let t2 = t.clone();
    let over = name_override.to_string();
    let (loaded, new_pairs) = tokio::task::spawn_blocking(move || {
        let loaded = load_folder(&t2, &dir, spec, &over)?;
        let name = &loaded.name;
        let exists = t2
            .db
            .read(|c| Ok(support::set_id(c, name).is_ok()))
            .map_err(internal)?;
        if exists {
            return Err(Status::from(SupportError::Exists(name.clone())));
        }
        let mut new_pairs: Vec<support::NewPair> = Vec::new();
        for v in &loaded.pairs {
            match write_pair(&t2.data_dir, name, v) {
                Ok(p) => new_pairs.push(p),
                Err(e) => {
                    let dirs: Vec<String> = new_pairs.iter().map(|p| p.dir.clone()).collect();
                    support::remove_pair_dirs(&t2.data_dir, name, &dirs);
                    return Err(e.into());
                }
            }
        }
        Ok((loaded, new_pairs))
    })
    .await
    .map_err(internal)??;
    let Loaded {
        name,
        meta,
        objects,
        ..
    } = loaded;
    let dirs: Vec<String> = new_pairs.iter().map(|p| p.dir.clone()).collect();
    let rule = rule.map(|description| Rule {
        description,
        ..Rule::bundled(&name, &meta.modality, &meta.body_part)
    });
    let (n2, who, now) = (name.clone(), who.to_string(), db::now());
    let r = change(&t.db, move |c| -> Result<Option<i64>, RecordError> {
        let id = support::create(c, &n2, &meta, &objects, &who, now)?;
        for p in &new_pairs {
            support::add_pair(c, &n2, id, 0, p, &who, now)?;
        }
        crate::store::audit::record(
            c,
            &who,
            "support_set.import",
            &format!("support_set:{n2}"),
            &format!("from {source}, {} pair(s)", new_pairs.len()),
            now,
        )
        .map_err(SupportError::from)?;
        Ok(match &rule {
            Some(rule) => Some(crate::store::rules::create(c, rule, &who, now)?),
            None => None,
        })
    })
    .await;
    match r {
        Ok(rule_id) => Ok((read(&t.db, |c| support::get(c, &name, None))?, rule_id)),
        Err(e) => {
            support::remove_pair_dirs(&t.data_dir, &name, &dirs);
            Err(e)
        }
    }
}

/// Exports a version as a folder at `path` (which must not exist, or be empty). Returns the
/// version and the files written, relative to `path`.
pub async fn export(
    st: &Arc<State>,
    name: &str,
    version: Option<u32>,
    out: PathBuf,
) -> Result<(u32, Vec<String>), Status> {
    let info = read(&st.db, |c| support::get(c, name, version))?;
    let data_dir = st.data_dir.clone();
    let set = read(&st.db, |c| {
        support::load(c, &data_dir, name, Some(info.version))
    })?;
    let r = tokio::task::spawn_blocking(move || write_folder(&info, &set, &data_dir, &out))
        .await
        .map_err(internal)?;
    r.map_err(|e| match e {
        ExportError::Target(m) => Status::failed_precondition(m),
        ExportError::Io(m) => internal(m),
    })
}

enum ExportError {
    Target(String),
    Io(String),
}

fn write_folder(
    info: &SetInfo,
    set: &support::SupportSetData,
    data_dir: &Path,
    out: &Path,
) -> Result<(u32, Vec<String>), ExportError> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ExportError::Target(
            "the export folder exists and is not empty: name a new one".into(),
        ));
    }
    let io = |what: &Path| {
        let shown = what.display().to_string();
        move |e: std::io::Error| ExportError::Io(format!("{shown}: {e}"))
    };
    let mut files = Vec::new();
    let mut pairs = Vec::new();
    for (i, (p, data)) in info.pairs.iter().zip(&set.pairs).enumerate() {
        let rel = format!("pairs/{:02}", i + 1);
        let pd = out.join(&rel);
        std::fs::create_dir_all(&pd).map_err(io(&pd))?;
        let src = data_dir.join(&p.dir);
        std::fs::copy(src.join("image.dcm"), pd.join("image.dcm")).map_err(io(&pd))?;
        files.push(format!("{rel}/image.dcm"));
        let seg = src.join("mask.seg.dcm");
        let spec = if p.mask_source == "seg" && seg.is_file() {
            std::fs::copy(&seg, pd.join("mask.seg.dcm")).map_err(io(&seg))?;
            files.push(format!("{rel}/mask.seg.dcm"));
            PairSpec {
                image: format!("{rel}/image.dcm"),
                mask: Some(format!("{rel}/mask.seg.dcm")),
                masks: None,
            }
        } else {
            let mut list = Vec::new();
            for (k, m) in data.masks.iter().enumerate() {
                let f = format!("{rel}/mask-{}.png", k + 1);
                std::fs::write(out.join(&f), masks::mask_png(m)).map_err(io(&pd))?;
                files.push(f.clone());
                list.push(f);
            }
            PairSpec {
                image: format!("{rel}/image.dcm"),
                mask: None,
                masks: Some(list),
            }
        };
        pairs.push(spec);
    }
    let spec = SupportSetSpec {
        name: info.name.clone(),
        description: info.meta.description.clone(),
        bundle: info.meta.bundle.clone(),
        version: Some(toml::Value::Integer(info.version as i64)),
        sequence_mode: info.meta.sequence_mode,
        match_: MatchSpec {
            modality: info.meta.modality.clone(),
            body_part: info.meta.body_part.clone(),
        },
        objects: info
            .objects
            .iter()
            .map(|o| ObjectSpec {
                label: o.label.clone(),
                category: Some(code_spec(&o.category)),
                property_type: Some(code_spec(&o.property_type)),
                color: Some(o.color.to_vec()),
            })
            .collect(),
        pairs,
    };
    let text = toml::to_string(&spec).map_err(|e| ExportError::Io(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    std::fs::write(out.join("supportset.toml"), text).map_err(io(out))?;
    files.insert(0, "supportset.toml".into());
    Ok((info.version, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_codes_and_paths_inside_the_folder() {
        let text = Some(CodeSpec::Text("Anatomical structure".into()));
        assert_eq!(code(&text).scheme, "99PROXYSEG");
        assert_eq!(code(&text).value, "ANATOMICAL_STRUC");
        let table = Some(CodeSpec::Code {
            scheme: "SCT".into(),
            code: "70555000".into(),
            meaning: "Optic disc".into(),
        });
        assert_eq!(code(&table).value, "70555000");
        assert_eq!(code(&None), support::default_code());
        assert!(inside(Path::new("/d"), "../etc/passwd", "image").is_err());
        assert!(inside(Path::new("/d"), "/etc/passwd", "image").is_err());
        assert!(inside(Path::new("/d"), "pairs/01/image.dcm", "image").is_ok());
    }
}
