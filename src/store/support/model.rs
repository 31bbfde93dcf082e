//! The support-set domain: coded objects, version metadata, pairs as listed and as loaded for
//! the engine, binary masks, what an update or a new pair carries, and the rules names and
//! objects must follow.

use super::SupportError;
use std::path::PathBuf;

/// Largest number of objects a support set may define.
pub const MAX_OBJECTS: usize = 64;

/// A coded concept: the SEG's own type ([`crate::dicom::seg::Code`]: scheme designator, code
/// value, code meaning), so what is stored is what a SEG writes.
pub use crate::dicom::seg::Code;

/// The one reading of a `supportset.toml` code, for import and for the offline SEG writer
/// alike: a table as given; text as a private code (scheme `99PROXYSEG`, value the text's
/// upper-case slug of at most 16 characters, the text as meaning); absent as `default`.
pub fn code_of_spec(spec: Option<&crate::support_folder::CodeSpec>, default: Code) -> Code {
    use crate::support_folder::CodeSpec;
    match spec {
        None => default,
        Some(CodeSpec::Code {
            scheme,
            code,
            meaning,
        }) => Code::new(scheme.clone(), code.clone(), meaning.clone()),
        Some(CodeSpec::Text(t)) => {
            let slug: String = t
                .to_uppercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(16)
                .collect();
            Code::new("99PROXYSEG", slug, t.clone())
        }
    }
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
    /// How sequences are segmented with this set (None: inherit `pipeline.sequence_mode`; a
    /// rule's own mode wins, see [`crate::sequence_mode::choose`]).
    pub sequence_mode: Option<crate::config::SequenceMode>,
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

/// A binary mask at its image's size: `rows x cols` bytes, row-major, 0 = outside, non-zero =
/// inside. The one mask type: the engine re-exports it (`engine::Mask`).
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
    /// New sequence mode: `Some(None)` goes back to inheriting.
    pub sequence_mode: Option<Option<crate::config::SequenceMode>>,
    /// New objects.
    pub objects: Option<Vec<ObjectDef>>,
    /// Refuse unless the set is at this version (0 = any).
    pub expected_version: u32,
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
            if c.scheme.is_empty() || c.value.is_empty() || c.meaning.is_empty() {
                return Err(SupportError::Invalid(format!(
                    "objects[{}].{what} needs scheme, code and meaning",
                    i + 1
                )));
            }
        }
    }
    Ok(())
}
