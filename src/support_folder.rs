//! The support-set folder format: a `supportset.toml` beside its image and mask files, as the
//! model bundles ship them (`models/*/support-sets/*`) and as the admin API imports and exports
//! them. The one parser of that file: the seeding and Import / Export (`admin::folder`) and the
//! offline command (`engine::offline`) all read it through [`read`].
//!
//! ```toml
//! name = "fundus-demo"
//! description = "optic disc and cup"
//! bundle = "phantom-tiny"                     # empty or absent: [engine] default_bundle
//! sequence_mode = "per-frame"                 # auto | memory | per-frame; absent: inherit
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
//! # or: masks = ["pairs/01/mask-1.png", ...]  # one PNG per object (Import only)
//! ```
//!
//! Pure format and discovery: nothing here validates images or masks, or touches the store.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name of a support-set folder's description.
pub const FILE: &str = "supportset.toml";

/// `supportset.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SupportSetSpec {
    /// Set name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Model bundle it was curated for; empty: `[engine] default_bundle`.
    #[serde(default)]
    pub bundle: String,
    /// Explicit content version. The offline command uses it as the set's version (a hash of
    /// the folder's content when absent); Import ignores it (the store numbers versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<toml::Value>,
    /// How sequences are segmented with the set (`auto`, `memory`, `per-frame`); absent:
    /// inherit `pipeline.sequence_mode` (a routing rule's own mode wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_mode: Option<crate::config::SequenceMode>,
    /// `[match]`: the routing rule a bundled folder is seeded with.
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    /// `[[objects]]`.
    #[serde(default)]
    pub objects: Vec<ObjectSpec>,
    /// `[[pairs]]`.
    #[serde(default)]
    pub pairs: Vec<PairSpec>,
}

impl SupportSetSpec {
    /// The bundle the file names, trimmed; None when it names none.
    pub fn bundle(&self) -> Option<&str> {
        Some(self.bundle.trim()).filter(|b| !b.is_empty())
    }
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

/// A code: a table, or plain text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

impl CodeSpec {
    /// The code meaning, or the text (what the engine and people read; the store and the SEG
    /// keep the whole code, `store::support::code_of_spec`).
    pub fn meaning(&self) -> &str {
        match self {
            CodeSpec::Code { meaning, .. } => meaning,
            CodeSpec::Text(t) => t,
        }
    }
}

/// `[[objects]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ObjectSpec {
    /// Segment label.
    pub label: String,
    /// Segmented property category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<CodeSpec>,
    /// Segmented property type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub property_type: Option<CodeSpec>,
    /// `[r, g, b]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Vec<u8>>,
}

/// `[[pairs]]`: paths relative to the folder.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PairSpec {
    /// DICOM image, or a folder of slices (the lowest InstanceNumber is the annotated one).
    pub image: String,
    /// DICOM SEG with one segment per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// One PNG per object, in object order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<Vec<String>>,
}

/// Why a folder's `supportset.toml` could not be read. The messages name the file, never the
/// folder's server path (callers that may show it add it).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read supportset.toml: {}", .0.kind())]
    Read(#[source] std::io::Error),
    /// The file is not a valid description.
    #[error("supportset.toml is not valid: {0}")]
    Invalid(#[source] toml::de::Error),
}

/// Reads `dir/supportset.toml`: the parsed description and the file's text (the offline
/// command hashes it into the set's version).
pub fn read(dir: &Path) -> Result<(SupportSetSpec, String), SpecError> {
    let text = std::fs::read_to_string(dir.join(FILE)).map_err(SpecError::Read)?;
    let spec = toml::from_str(&text).map_err(SpecError::Invalid)?;
    Ok((spec, text))
}

/// The support-set folders bundled with the model bundles under `models_dir`
/// (`models_dir/*/support-sets/*` holding a `supportset.toml`), sorted by path.
pub fn bundled(models_dir: &Path) -> Vec<PathBuf> {
    let pattern = format!(
        "{}/*/support-sets/*/{FILE}",
        glob::Pattern::escape(&models_dir.to_string_lossy())
    );
    let mut dirs: Vec<PathBuf> = glob::glob(&pattern)
        .map(|g| {
            g.flatten()
                .filter_map(|p| p.parent().map(Path::to_path_buf))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The annotated image of a support pair: `path` itself when it is a file; for a folder of
/// slices, the `.dcm` file with the lowest Instance Number (ties, and files without one, by
/// file name).
pub fn first_source(path: &Path) -> Result<PathBuf, SourceError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(SourceError::Missing(path.to_owned()));
    }
    let rd = std::fs::read_dir(path).map_err(|source| SourceError::List {
        path: path.to_owned(),
        source,
    })?;
    let mut best: Option<(i64, PathBuf)> = None;
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "dcm") {
            continue;
        }
        let n = instance_number(&p).unwrap_or(i64::MAX);
        if best.as_ref().is_none_or(|(bn, bp)| (n, &p) < (*bn, bp)) {
            best = Some((n, p));
        }
    }
    best.map(|b| b.1)
        .ok_or_else(|| SourceError::NoDicom(path.to_owned()))
}

/// The Instance Number of a DICOM file (its header only is read).
fn instance_number(path: &Path) -> Option<i64> {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .ok()?;
    obj.element_opt(dicom_dictionary_std::tags::INSTANCE_NUMBER)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<i64>().ok())
}

/// Why a pair's `image` names no file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither a file nor a folder.
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// The folder could not be listed.
    #[error("{}: {source}", path.display())]
    List {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The folder holds no `.dcm` file.
    #[error("{} holds no .dcm files", .0.display())]
    NoDicom(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mask_forms_text_codes_and_the_bundled_folders() {
        let s: SupportSetSpec = toml::from_str(
            r#"
            name = "x"
            bundle = " phantom-tiny "
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
        assert_eq!(s.bundle(), Some("phantom-tiny"));
        assert_eq!(
            (s.match_.modality.as_str(), s.match_.body_part.as_str()),
            ("OP", "")
        );
        assert_eq!(
            s.objects[0].category,
            Some(CodeSpec::Text("Anatomical structure".into()))
        );
        assert!(matches!(
            &s.objects[0].property_type,
            Some(CodeSpec::Code { code, .. }) if code == "70555000"
        ));
        assert!(s.pairs[1].mask.is_none() && s.pairs[1].masks.is_some());
        let none: SupportSetSpec = toml::from_str("name = \"y\"\nbundle = \"  \"\n").unwrap();
        assert_eq!(none.bundle(), None);
        assert_eq!(s.sequence_mode, None, "absent: inherit");
        let per_frame: SupportSetSpec =
            toml::from_str("name = \"z\"\nsequence_mode = \"per-frame\"\n").unwrap();
        assert_eq!(
            per_frame.sequence_mode,
            Some(crate::config::SequenceMode::PerFrame)
        );
        let bad = toml::from_str::<SupportSetSpec>("name = \"z\"\nsequence_mode = \"often\"\n");
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("per-frame"), "the allowed values are named: {e}");

        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let found = bundled(&models);
        assert!(
            found
                .iter()
                .any(|d| d.ends_with("phantom-tiny/support-sets/mr-prostate")),
            "{found:?}"
        );
        let (spec, text) = read(&found[0]).unwrap();
        assert!(!spec.name.is_empty() && text.contains(&spec.name));
        let e = read(&models).unwrap_err();
        assert!(matches!(e, SpecError::Read(_)), "{e}");
        assert!(bundled(&models.join("nowhere")).is_empty());
    }
}
