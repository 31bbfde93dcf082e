//! Support-set folders: the `supportset.toml` format the bundled demo sets use, for Import and
//! Export.
//!
//! ```toml
//! name = "fundus-demo"
//! description = "optic disc and cup"
//! bundle = "phantom-tiny"
//! [match]
//! modality = "OP"
//! body_part = "EYE"
//! [[objects]]
//! label = "optic disc"
//! category = { scheme = "SCT", code = "91723000", meaning = "Anatomical structure" }
//! type = { scheme = "SCT", code = "70555000", meaning = "Optic disc" }
//! color = [255, 200, 0]
//! [[pairs]]
//! image = "pairs/01/image.dcm"                # or a folder of slices: the lowest InstanceNumber
//! mask = "pairs/01/mask.seg.dcm"             # a DICOM SEG, one segment per object
//! # or: masks = ["pairs/01/mask-1.png", ...]  # one PNG per object
//! ```
//!
//! Import validates every pair before writing anything and records the whole set in one
//! transaction. Paths in the file must stay inside the folder. Export writes a version as such a
//! folder (SEG masks as they were uploaded, PNG masks as PNG).

use crate::admin::server::State;
use crate::admin::support_sets::{validate_pair, write_pair, MaskUpload};
use crate::admin::{change, internal, masks, read};
use crate::store::db;
use crate::store::support::{self, Code, ObjectDef, SetInfo, SetMeta, SupportError, PALETTE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tonic::Status;

/// `supportset.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SpecFile {
    /// Set name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Model bundle; empty: `[engine] default_bundle`, recorded in the imported set.
    #[serde(default)]
    pub bundle: String,
    /// Informational version of the folder (ignored on import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<toml::Value>,
    /// `[match]` hints.
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    /// `[[objects]]`.
    #[serde(default)]
    pub objects: Vec<ObjectSpec>,
    /// `[[pairs]]`.
    #[serde(default)]
    pub pairs: Vec<PairSpec>,
}

/// `[match]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MatchSpec {
    /// Modality.
    #[serde(default)]
    pub modality: String,
    /// Body part.
    #[serde(default)]
    pub body_part: String,
}

/// A code: a table, or plain text (then a local `99PROXYSEG` code).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CodeSpec {
    /// `{ scheme, code, meaning }`.
    Code {
        /// Scheme designator.
        scheme: String,
        /// Code value.
        code: String,
        /// Code meaning.
        meaning: String,
    },
    /// Free text.
    Text(String),
}

/// `[[objects]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ObjectSpec {
    /// Label.
    pub label: String,
    /// Category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<CodeSpec>,
    /// Type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub property_type: Option<CodeSpec>,
    /// `[r, g, b]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Vec<u8>>,
}

/// `[[pairs]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PairSpec {
    /// DICOM image, relative to the folder.
    pub image: String,
    /// DICOM SEG with one segment per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// One PNG per object, in object order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<Vec<String>>,
}

fn code(c: &Option<CodeSpec>) -> Code {
    match c {
        None => support::default_code(),
        Some(CodeSpec::Code {
            scheme,
            code,
            meaning,
        }) => Code {
            scheme: scheme.clone(),
            code: code.clone(),
            meaning: meaning.clone(),
        },
        Some(CodeSpec::Text(t)) => {
            let slug: String = t
                .to_uppercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(16)
                .collect();
            Code {
                scheme: "99PROXYSEG".into(),
                code: slug,
                meaning: t.clone(),
            }
        }
    }
}

fn code_spec(c: &Code) -> CodeSpec {
    CodeSpec::Code {
        scheme: c.scheme.clone(),
        code: c.code.clone(),
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

/// Reads and validates a folder (blocking): the spec, its objects and every pair.
fn load_folder(
    st: &State,
    dir: &Path,
    name_override: &str,
) -> Result<
    (
        String,
        SetMeta,
        Vec<ObjectDef>,
        Vec<crate::admin::support_sets::ValidPair>,
    ),
    Status,
> {
    let toml_path = dir.join("supportset.toml");
    let toml_name = "supportset.toml";
    let text = std::fs::read_to_string(&toml_path)
        .map_err(|e| invalid(format!("cannot read {toml_name}: {}", io_kind(&e))))?;
    let spec: SpecFile =
        toml::from_str(&text).map_err(|e| invalid(format!("{toml_name} is not valid: {e}")))?;
    let name = if name_override.trim().is_empty() {
        spec.name.trim().to_string()
    } else {
        name_override.trim().to_string()
    };
    support::check_name(&name)?;
    let objects: Vec<ObjectDef> = spec
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let color = match o.color.as_deref() {
                None => Ok(PALETTE[i % PALETTE.len()]),
                Some([r, g, b]) => Ok([*r, *g, *b]),
                Some(_) => Err(invalid(format!(
                    "{toml_name}: objects[{}].color must be [r, g, b]",
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
        .collect::<Result<_, Status>>()?;
    support::check_objects(&objects)?;
    let labels: Vec<String> = objects.iter().map(|o| o.label.clone()).collect();
    let mut total = 0usize;
    let mut pairs = Vec::with_capacity(spec.pairs.len());
    for (i, p) in spec.pairs.iter().enumerate() {
        let ctx = |s: Status| {
            Status::new(
                s.code(),
                format!("{toml_name} pair {}: {}", i + 1, s.message()),
            )
        };
        let image_path = inside(dir, &p.image, "image").map_err(ctx)?;
        let image_path = if image_path.is_dir() {
            crate::engine::offline::first_source(&image_path).map_err(|m| ctx(invalid(m)))?
        } else {
            image_path
        };
        let image = read_limited(dir, &image_path, st.max_upload, st.max_upload_mb).map_err(ctx)?;
        total += image.len();
        let upload = match (&p.mask, &p.masks) {
            (Some(seg), None) => {
                let bytes = read_limited(
                    dir,
                    &inside(dir, seg, "mask").map_err(ctx)?,
                    st.max_upload,
                    st.max_upload_mb,
                )
                .map_err(ctx)?;
                total += bytes.len();
                MaskUpload::Seg(bytes)
            }
            (None, Some(list)) => {
                let mut m = BTreeMap::new();
                for (k, f) in list.iter().enumerate() {
                    let bytes = read_limited(
                        dir,
                        &inside(dir, f, "masks").map_err(ctx)?,
                        st.max_upload,
                        st.max_upload_mb,
                    )
                    .map_err(ctx)?;
                    total += bytes.len();
                    m.insert(k as u32 + 1, bytes);
                }
                MaskUpload::Png(m)
            }
            _ => {
                return Err(ctx(invalid(
                    "give either `mask` (a DICOM SEG) or `masks` (one PNG per object)".into(),
                )))
            }
        };
        if total > st.max_upload.saturating_mul(64) {
            return Err(invalid(format!(
                "the folder holds more than 64 x admin.max_upload_mb = {} MiB",
                64 * st.max_upload_mb
            )));
        }
        let valid = validate_pair(image, upload, &labels).map_err(|e| ctx(e.into()))?;
        pairs.push(valid);
    }
    let meta = SetMeta {
        description: spec.description,
        bundle: st.bundle_or_default(&spec.bundle),
        modality: spec.match_.modality.trim().to_uppercase(),
        body_part: spec.match_.body_part.trim().to_uppercase(),
    };
    Ok((name, meta, objects, pairs))
}

/// Imports a support-set folder as a new set: everything validated first, files written, then
/// one transaction (create + every pair); on failure the written files are removed.
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

pub async fn import(
    st: &Arc<State>,
    dir: PathBuf,
    name_override: &str,
    who: &str,
) -> Result<SetInfo, Status> {
    let source = dir.display().to_string();
    let st2 = st.clone();
    let over = name_override.to_string();
    let (name, dirs, new_pairs, meta, objects) = tokio::task::spawn_blocking(move || {
        let (name, meta, objects, valid) = load_folder(&st2, &dir, &over)?;
        let exists = st2
            .db
            .read(|c| Ok(support::set_id(c, &name).is_ok()))
            .map_err(internal)?;
        if exists {
            return Err(Status::from(SupportError::Exists(name)));
        }
        let mut new_pairs = Vec::new();
        for v in &valid {
            match write_pair(&st2, &name, v) {
                Ok(p) => new_pairs.push(p),
                Err(e) => {
                    let dirs: Vec<String> = new_pairs
                        .iter()
                        .map(|p: &support::NewPair| p.dir.clone())
                        .collect();
                    support::remove_pair_dirs(&st2.data_dir, &name, &dirs);
                    return Err(e.into());
                }
            }
        }
        let dirs: Vec<String> = new_pairs.iter().map(|p| p.dir.clone()).collect();
        Ok((name, dirs, new_pairs, meta, objects))
    })
    .await
    .map_err(internal)??;
    let n2 = name.clone();
    let who = who.to_string();
    let now = db::now();
    let r = change(&st.db, move |c| -> Result<(), SupportError> {
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
        )?;
        Ok(())
    })
    .await;
    if let Err(e) = r {
        support::remove_pair_dirs(&st.data_dir, &name, &dirs);
        return Err(e);
    }
    read(&st.db, |c| support::get(c, &name, None))
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
    let spec = SpecFile {
        name: info.name.clone(),
        description: info.meta.description.clone(),
        bundle: info.meta.bundle.clone(),
        version: Some(toml::Value::Integer(info.version as i64)),
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
    fn spec_parses_both_mask_forms_and_text_codes() {
        let s: SpecFile = toml::from_str(
            r#"
            name = "x"
            bundle = "phantom-tiny"
            [match]
            modality = "OP"
            [[objects]]
            label = "disc"
            category = "Anatomical structure"
            type = { scheme = "SCT", code = "70555000", meaning = "Optic disc" }
            color = [1, 2, 3]
            [[pairs]]
            image = "pairs/01/image.dcm"
            mask = "pairs/01/mask.seg.dcm"
            [[pairs]]
            image = "pairs/02/image.dcm"
            masks = ["pairs/02/mask-1.png"]
            "#,
        )
        .unwrap();
        assert_eq!(s.pairs.len(), 2);
        assert_eq!(code(&s.objects[0].category).scheme, "99PROXYSEG");
        assert_eq!(code(&s.objects[0].property_type).code, "70555000");
        assert!(inside(Path::new("/d"), "../etc/passwd", "image").is_err());
        assert!(inside(Path::new("/d"), "/etc/passwd", "image").is_err());
        assert!(inside(Path::new("/d"), "pairs/01/image.dcm", "image").is_ok());
    }
}
