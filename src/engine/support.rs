//! Support sets as the engine sees them: already-decoded images and per-object binary masks.
//!
//! Owns the in-memory shape of a support set and its checks against a bundle. It never reads
//! SQLite or SEG files: a stored set comes in already loaded (`store::support::load`) and
//! [`SupportSet::from_stored`] decodes its images, for the pipeline and the admin API alike
//! (the offline command has its own small loader in `offline.rs`).

use crate::dicom::pixels::Frame;

use super::bundle::Manifest;
use super::EngineError;

/// The one binary mask type (the store's): `rows x cols` bytes, non-zero = inside.
pub use crate::store::support::Mask;

/// One object (segment) the support set teaches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SupportObject {
    /// Segment label, e.g. "liver".
    pub label: String,
    /// Segmented property category (free text or a code meaning), if known.
    pub category: Option<String>,
    /// Segmented property type, if known.
    pub property_type: Option<String>,
    /// Display colour (RGB), if known.
    pub color: Option<[u8; 3]>,
}

/// One support pair: an image and one mask per object of the set (same order as `objects`).
#[derive(Debug, Clone, PartialEq)]
pub struct SupportPair {
    /// The image, as display values (see [`crate::dicom::pixels`]).
    pub image: Frame,
    /// One mask per object, each at the image's size; an empty mask means "not present".
    pub masks: Vec<Mask>,
}

/// A curated support set: the few-shot examples that prompt the model.
///
/// `name` + `version` identify its content: the engine computes the support context once per
/// (name, version, bundle) and reuses it from memory and from disk, so a store must bump the
/// version whenever pairs, masks or objects change.
#[derive(Debug, Clone, PartialEq)]
pub struct SupportSet {
    /// Unique name.
    pub name: String,
    /// Content version (any text; it changes whenever the content changes).
    pub version: String,
    /// The objects, in output order.
    pub objects: Vec<SupportObject>,
    /// The image + masks pairs.
    pub pairs: Vec<SupportPair>,
}

impl SupportSet {
    /// The engine's view of a stored support set version: the support images decoded with
    /// `dicom::pixels` (first frame), the masks copied, and `version` = `"{version}"` or
    /// `"{version}-{variant}"`, so derived subsets (leave-one-out) get their own
    /// support-context cache entry.
    pub fn from_stored(
        set: &crate::store::support::SupportSetData,
    ) -> Result<SupportSet, EngineError> {
        let bad = |number: u32, message: String| EngineError::SupportSet {
            name: set.name.clone(),
            message: format!("support pair {number}: {message}"),
        };
        let mut pairs = Vec::with_capacity(set.pairs.len());
        for p in &set.pairs {
            let image = crate::dicom::pixels::frames_from_file(&p.image_path)
                .map_err(|e| bad(p.number, e.to_string()))?
                .into_iter()
                .next()
                .ok_or_else(|| bad(p.number, "no frames".into()))?;
            pairs.push(SupportPair {
                image,
                masks: p.masks.clone(),
            });
        }
        Ok(SupportSet {
            name: set.name.clone(),
            version: if set.variant.is_empty() {
                set.version.to_string()
            } else {
                format!("{}-{}", set.version, set.variant)
            },
            objects: set
                .objects
                .iter()
                .map(|o| SupportObject {
                    label: o.label.clone(),
                    category: Some(o.category.meaning.clone()),
                    property_type: Some(o.property_type.meaning.clone()),
                    color: Some(o.color),
                })
                .collect(),
            pairs,
        })
    }

    /// Checks the set against a bundle's limits; the error names the set and what is wrong.
    pub fn check(&self, m: &Manifest) -> Result<(), EngineError> {
        let bad = |message: String| EngineError::SupportSet {
            name: self.name.clone(),
            message,
        };
        if self.pairs.is_empty() {
            return Err(EngineError::EmptySupportSet {
                name: self.name.clone(),
            });
        }
        if self.objects.is_empty() {
            return Err(bad("it defines no objects".into()));
        }
        if self.objects.len() > m.max_objects {
            return Err(bad(format!(
                "{} objects, but bundle {} accepts at most {}",
                self.objects.len(),
                m.name,
                m.max_objects
            )));
        }
        if self.pairs.len() > m.max_pairs {
            return Err(bad(format!(
                "{} pairs, but bundle {} accepts at most {}",
                self.pairs.len(),
                m.name,
                m.max_pairs
            )));
        }
        for (i, p) in self.pairs.iter().enumerate() {
            if p.masks.len() != self.objects.len() {
                return Err(bad(format!(
                    "pair {} has {} masks for {} objects",
                    i + 1,
                    p.masks.len(),
                    self.objects.len()
                )));
            }
            if !matches!(p.image.channels, 1 | 3)
                || p.image.rows == 0
                || p.image.cols == 0
                || p.image.data.len() != p.image.rows * p.image.cols * p.image.channels
            {
                return Err(bad(format!("pair {} image has a wrong buffer size", i + 1)));
            }
            for (k, mk) in p.masks.iter().enumerate() {
                if (mk.rows, mk.cols) != (p.image.rows, p.image.cols)
                    || mk.data.len() != mk.rows * mk.cols
                {
                    return Err(bad(format!(
                        "pair {} mask {} ({}) is {}x{} but its image is {}x{}",
                        i + 1,
                        k + 1,
                        self.objects[k].label,
                        mk.rows,
                        mk.cols,
                        p.image.rows,
                        p.image.cols
                    )));
                }
            }
        }
        for (k, o) in self.objects.iter().enumerate() {
            if self.pairs.iter().all(|p| p.masks[k].area() == 0) {
                return Err(bad(format!(
                    "object {:?} has an empty mask in every pair",
                    o.label
                )));
            }
        }
        Ok(())
    }
}
