//! The admin store as the pipeline's [`Catalog`]: routing rules and versioned support sets from
//! SQLite, so what admins curate is what the pipeline segments with.
//!
//! A job records the support-set version it was routed to and [`Catalog::load`] returns exactly
//! that snapshot later, however the set changed in between (see `store::support`). On a first
//! start with an empty store the bundled folders (`models/*/support-sets/*`) are imported, each
//! with a rule from its `[match]` table, audited as token `seed`. Routing is
//! [`crate::routing`], the same function and synonym table as the bundled folders'.

use crate::admin::segment::engine_set;
use crate::pipeline::catalog::{Catalog, LoadedSupportSet, Route, StudyInfo};
use crate::routing::{self, Synonyms};
use crate::store::rules;
use crate::store::support;
use crate::store::Db;
use std::path::PathBuf;

/// Routing rules and support sets from the admin store.
#[derive(Debug, Clone)]
pub struct StoreCatalog {
    db: Db,
    data_dir: PathBuf,
    synonyms: Synonyms,
    default_bundle: String,
}

impl StoreCatalog {
    /// A catalog on the index and the data dir that holds `support/`; a stored set that names
    /// no bundle (recorded before sets got `[engine] default_bundle` at creation) runs on
    /// `default_bundle`.
    pub fn new(
        db: Db,
        data_dir: PathBuf,
        synonyms: Synonyms,
        default_bundle: String,
    ) -> StoreCatalog {
        StoreCatalog {
            db,
            data_dir,
            synonyms,
            default_bundle,
        }
    }
}

impl Catalog for StoreCatalog {
    fn route(&self, study: &StudyInfo) -> Result<Route, String> {
        let set = self
            .db
            .read(|c| rules::load(c, self.synonyms.clone()))
            .map_err(|e| e.to_string())?;
        let routed = routing::route_series(&set, &study.headers());
        let d = routed.decision;
        let Some(id) = d.rule else {
            return Ok(Route::Unmatched { reason: d.reason });
        };
        let rule = set
            .rules()
            .find(|r| r.id == id)
            .ok_or_else(|| format!("rule {id} vanished while routing"))?;
        // Every series whose own first matching rule is the winner is segmented.
        let series = study.series_uids(&routed.series);
        let name = rule.support_set.clone();
        let info = self
            .db
            .read(|c| Ok(support::get(c, &name, None)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("rule {id}: {e}"))?;
        if info.pairs.is_empty() {
            return Err(format!("support set {name} has no image/mask pairs yet"));
        }
        Ok(Route::Matched {
            rule_id: id,
            support_set: name,
            // "v<N>": the jobs column has INTEGER affinity and the worker reads it back as
            // text, so a bare number would come back as an integer it cannot read.
            version: format!("v{}", info.version),
            bundle: if info.meta.bundle.is_empty() {
                self.default_bundle.clone()
            } else {
                info.meta.bundle
            },
            destination_ae: (!rule.destination_ae.is_empty()).then(|| rule.destination_ae.clone()),
            series,
            skip_localizers: rule.skip_localizers,
            reason: d.reason,
        })
    }

    fn load(&self, name: &str, version: &str) -> Result<LoadedSupportSet, String> {
        let v: u32 = version
            .strip_prefix('v')
            .unwrap_or(version)
            .parse()
            .map_err(|_| {
                format!("support set {name}: version {version:?} is not a store version")
            })?;
        let data = self
            .db
            .read(|c| Ok(support::load(c, &self.data_dir, name, Some(v))))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let segments = data
            .objects
            .iter()
            .map(|o| crate::dicom::seg::SegmentDescription {
                label: o.label.clone(),
                category: crate::dicom::seg::Code::new(
                    o.category.scheme.clone(),
                    o.category.code.clone(),
                    o.category.meaning.clone(),
                ),
                type_: crate::dicom::seg::Code::new(
                    o.property_type.scheme.clone(),
                    o.property_type.code.clone(),
                    o.property_type.meaning.clone(),
                ),
                color_rgb: o.color,
                algorithm_name: "proxyseg PPG+SAM".into(),
            })
            .collect();
        let set = engine_set(&data).map_err(|e| e.0)?;
        Ok(LoadedSupportSet { set, segments })
    }
}
