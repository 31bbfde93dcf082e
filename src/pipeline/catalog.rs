//! The catalog the pipeline asks for routing decisions and support sets: the store.
//!
//! [`StoreCatalog`] routes with the rules in SQLite (`store::rules`) through [`crate::routing`]
//! and its one synonym table, and loads versioned support sets (`store::support`), so what
//! admins curate is what the pipeline segments with. The bundled folders
//! (`models/*/support-sets/*`) reach it only through the store: the daemon seeds them, each
//! with the rule of its `[match]` table, at start whether or not the admin API listens
//! (`admin::seed`). A job records the support-set version it was routed to and
//! [`Catalog::load`] returns exactly that snapshot later, however the set changed in between.
//! [`Catalog`] is the seam the worker uses (and tests may fake).

use crate::config::SequenceMode;
use crate::dicom::seg::SegmentDescription;
use crate::engine::{EngineError, SupportSet};
use crate::routing::{self, StudyHeader, Synonyms};
use crate::sequence_mode::{self, ChosenMode};
use crate::store::support::{self, ObjectDef, SupportError};
use crate::store::{rules, Db, DbError};
use std::path::PathBuf;

/// What the router knows about one series of a study.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    /// Series Instance UID.
    pub series_uid: String,
    /// Modality.
    pub modality: String,
    /// Body Part Examined.
    pub body_part: String,
    /// SOP Class UID of its instances (first seen).
    pub sop_class_uid: String,
    /// Series Description.
    pub series_description: String,
}

/// What the router knows about a study.
#[derive(Debug, Clone)]
pub struct StudyInfo {
    /// Study Instance UID.
    pub study_uid: String,
    /// Calling AE of the sender.
    pub calling_ae: String,
    /// Its series.
    pub series: Vec<SeriesInfo>,
}

impl StudyInfo {
    /// One routing header per series, in series order. Image Type is not indexed, so
    /// localizers are recognised by their series description.
    pub fn headers(&self) -> Vec<StudyHeader> {
        self.series
            .iter()
            .map(|s| StudyHeader {
                modality: s.modality.clone(),
                body_part: s.body_part.clone(),
                sop_class_uid: s.sop_class_uid.clone(),
                series_description: s.series_description.clone(),
                calling_ae: self.calling_ae.clone(),
                image_type: Vec::new(),
            })
            .collect()
    }

    /// The UIDs of the series at `indexes` (from [`routing::route_series`] over [`StudyInfo::headers`]).
    pub fn series_uids(&self, indexes: &[usize]) -> Vec<String> {
        indexes
            .iter()
            .filter_map(|&i| self.series.get(i).map(|s| s.series_uid.clone()))
            .collect()
    }
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Segment with this support set and send results to `destination_ae` (None: back to the
    /// sender).
    Matched {
        /// Rule id (0 for folder rules).
        rule_id: i64,
        /// Support-set name.
        support_set: String,
        /// Support-set version the job keeps even if the set changes meanwhile.
        version: String,
        /// Model bundle name.
        bundle: String,
        /// Destination AE, when the rule names one.
        destination_ae: Option<String>,
        /// Series this rule covers (others of the study are skipped).
        series: Vec<String>,
        /// Skip series whose Image Type says LOCALIZER.
        skip_localizers: bool,
        /// The sequence mode: the rule's, the set's or the config's.
        sequence_mode: ChosenMode,
        /// Why (for the job history).
        reason: String,
    },
    /// No rule matched: recorded, not an error.
    Unmatched {
        /// Why.
        reason: String,
    },
}

/// A support set ready for the engine, with the SEG descriptions of its objects.
#[derive(Debug, Clone)]
pub struct LoadedSupportSet {
    /// For the engine.
    pub set: SupportSet,
    /// One per object, in mask order.
    pub segments: Vec<SegmentDescription>,
}

/// Why routing or loading a support set failed (the job fails with it as its reason).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The index could not be read.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The winning rule is gone (deleted while routing).
    #[error("rule {0} vanished while routing")]
    RuleVanished(i64),
    /// The winning rule names a set the store cannot give.
    #[error("rule {rule}: {source}")]
    RuleSet {
        /// The rule.
        rule: i64,
        /// Why.
        source: SupportError,
    },
    /// The winning rule's set has no pairs to segment with.
    #[error("support set {0} has no image/mask pairs yet")]
    NoPairs(String),
    /// A job's recorded version is not one the store numbers (`v<N>`).
    #[error("support set {name}: version {version:?} is not a store version")]
    Version {
        /// The set.
        name: String,
        /// The version the job recorded.
        version: String,
    },
    /// The set (at that version) cannot be loaded.
    #[error(transparent)]
    Support(#[from] SupportError),
    /// Its images cannot be decoded for the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Routing and support sets, as the pipeline needs them.
pub trait Catalog: Send + Sync {
    /// Decides what to do with a complete study.
    fn route(&self, study: &StudyInfo) -> Result<Route, CatalogError>;
    /// Loads a support set at the version a job recorded.
    fn load(&self, name: &str, version: &str) -> Result<LoadedSupportSet, CatalogError>;
}

/// Routing rules and support sets from the store.
#[derive(Debug, Clone)]
pub struct StoreCatalog {
    db: Db,
    data_dir: PathBuf,
    synonyms: Synonyms,
    default_bundle: String,
    sequence_mode: SequenceMode,
}

impl StoreCatalog {
    /// A catalog on the index and the data dir that holds `support/`; body parts match through
    /// `synonyms` (`Config::body_part_synonyms`); a stored set that names no bundle (recorded
    /// before sets got `[engine] default_bundle` at creation) runs on `default_bundle`; a job
    /// whose rule and set name no sequence mode gets `sequence_mode` (`pipeline.sequence_mode`).
    pub fn new(
        db: Db,
        data_dir: PathBuf,
        synonyms: Synonyms,
        default_bundle: String,
        sequence_mode: SequenceMode,
    ) -> StoreCatalog {
        StoreCatalog {
            db,
            data_dir,
            synonyms,
            default_bundle,
            sequence_mode,
        }
    }
}

/// The version a job records for store version `v`: "v<N>", since the jobs column has INTEGER
/// affinity and the worker reads it back as text, so a bare number would come back as an
/// integer it cannot read.
fn job_version(v: u32) -> String {
    format!("v{v}")
}

impl Catalog for StoreCatalog {
    fn route(&self, study: &StudyInfo) -> Result<Route, CatalogError> {
        let set = self.db.read(|c| rules::load(c, self.synonyms.clone()))?;
        let routed = routing::route_series(&set, &study.headers());
        let d = routed.decision;
        let Some(id) = d.rule else {
            return Ok(Route::Unmatched { reason: d.reason });
        };
        let rule = set
            .rules()
            .find(|r| r.id == id)
            .ok_or(CatalogError::RuleVanished(id))?;
        // Every series whose own first matching rule is the winner is segmented.
        let series = study.series_uids(&routed.series);
        let name = rule.support_set.clone();
        let info = self
            .db
            .read(|c| Ok(support::get(c, &name, None)))?
            .map_err(|source| CatalogError::RuleSet { rule: id, source })?;
        if info.pairs.is_empty() {
            return Err(CatalogError::NoPairs(name));
        }
        Ok(Route::Matched {
            rule_id: id,
            support_set: name,
            version: job_version(info.version),
            bundle: if info.meta.bundle.is_empty() {
                self.default_bundle.clone()
            } else {
                info.meta.bundle
            },
            destination_ae: (!rule.destination_ae.is_empty()).then(|| rule.destination_ae.clone()),
            series,
            skip_localizers: rule.skip_localizers,
            sequence_mode: sequence_mode::choose(
                rule.sequence_mode,
                info.meta.sequence_mode,
                self.sequence_mode,
            ),
            reason: d.reason,
        })
    }

    fn load(&self, name: &str, version: &str) -> Result<LoadedSupportSet, CatalogError> {
        let v: u32 = version
            .strip_prefix('v')
            .unwrap_or(version)
            .parse()
            .map_err(|_| CatalogError::Version {
                name: name.to_string(),
                version: version.to_string(),
            })?;
        let data = self
            .db
            .read(|c| Ok(support::load(c, &self.data_dir, name, Some(v))))??;
        let segments = data.objects.iter().map(segment_of).collect();
        let set = SupportSet::from_stored(&data)?;
        Ok(LoadedSupportSet { set, segments })
    }
}

/// The SEG segment description of a stored object (the store keeps the SEG's own codes).
fn segment_of(o: &ObjectDef) -> SegmentDescription {
    SegmentDescription {
        label: o.label.clone(),
        category: o.category.clone(),
        type_: o.property_type.clone(),
        color_rgb: o.color,
        algorithm_name: "proxyseg PPG+SAM".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Rule;
    use crate::store::support::{NewPair, SetMeta};

    fn study(body_part: &str) -> StudyInfo {
        StudyInfo {
            study_uid: "1.2.3".into(),
            calling_ae: "PACS".into(),
            series: vec![SeriesInfo {
                series_uid: "1.2.3.4".into(),
                modality: "MR".into(),
                body_part: body_part.into(),
                sop_class_uid: String::new(),
                series_description: String::new(),
            }],
        }
    }

    /// A set routed by a bundled rule through the synonym table: the rule's id, the set's
    /// version as the job records it, `default_bundle` for a set that names none; a study no
    /// rule claims is unmatched; a set without pairs and a version the store never numbered
    /// are typed errors.
    #[tokio::test]
    async fn routes_and_loads_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let object = ObjectDef {
            label: "prostate".into(),
            category: support::default_code(),
            property_type: support::default_code(),
            color: [1, 2, 3],
        };
        let pair = NewPair {
            dir: "support/s/1".into(),
            sop_instance_uid: "1.2.9".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            modality: "MR".into(),
            rows: 2,
            cols: 2,
            image_sha256: String::new(),
            masks_sha256: String::new(),
            mask_pixels: vec![1],
            mask_source: "png",
        };
        let rule_id = db
            .write_typed(move |c| -> Result<i64, rules::RuleError> {
                let meta = SetMeta::default();
                let id = support::create(c, "s", &meta, std::slice::from_ref(&object), "t", 1.0)
                    .unwrap();
                support::add_pair(c, "s", id, 0, &pair, "t", 1.0).unwrap();
                support::create(c, "empty", &meta, &[object], "t", 1.0).unwrap();
                rules::create(c, &Rule::bundled("empty", "MR", "KNEE"), "t", 1.0)?;
                rules::create(c, &Rule::bundled("s", "MR", "PROSTATE"), "t", 1.0)
            })
            .await
            .unwrap();
        let c = StoreCatalog::new(
            db,
            dir.path().to_path_buf(),
            Synonyms::default(),
            "my-default".into(),
            SequenceMode::Auto,
        );
        match c.route(&study("pelvis_prostate")).unwrap() {
            Route::Matched {
                rule_id: id,
                support_set,
                version,
                bundle,
                destination_ae,
                series,
                sequence_mode,
                ..
            } => {
                assert_eq!((id, support_set.as_str()), (rule_id, "s"));
                assert_eq!(
                    sequence_mode,
                    sequence_mode::choose(None, None, SequenceMode::Auto),
                    "neither the rule nor the set names a mode"
                );
                assert_eq!((version.as_str(), bundle.as_str()), ("v2", "my-default"));
                assert_eq!(
                    (destination_ae, series),
                    (None, vec!["1.2.3.4".to_string()])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.route(&study("CHEST")).unwrap(),
            Route::Unmatched { .. }
        ));
        // The set's own mode wins over the config's, the rule's over both (as stored).
        let mode = |r: Route| match r {
            Route::Matched { sequence_mode, .. } => sequence_mode,
            other => panic!("{other:?}"),
        };
        c.db.write_typed(|conn| {
            let up = support::SetUpdate {
                sequence_mode: Some(Some(SequenceMode::Memory)),
                ..Default::default()
            };
            support::update(conn, "s", &up, "t", 2.0)
        })
        .await
        .unwrap();
        assert_eq!(
            mode(c.route(&study("pelvis_prostate")).unwrap()).to_string(),
            "memory (from support set)"
        );
        c.db.write_typed(move |conn| {
            let mut r = rules::get(conn, rule_id)?;
            r.sequence_mode = Some(SequenceMode::PerFrame);
            rules::update(conn, &r, "t", 3.0)
        })
        .await
        .unwrap();
        assert_eq!(
            mode(c.route(&study("pelvis_prostate")).unwrap()).to_string(),
            "per-frame (from rule)"
        );
        let e = c.route(&study("KNEE")).unwrap_err();
        assert!(
            matches!(&e, CatalogError::NoPairs(n) if n == "empty"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "support set empty has no image/mask pairs yet"
        );
        let e = c.load("s", "sha256:0123").unwrap_err();
        assert!(matches!(e, CatalogError::Version { .. }), "{e}");
        assert!(matches!(
            c.load("nope", "v1").unwrap_err(),
            CatalogError::Support(SupportError::NotFound { .. })
        ));
    }
}
