//! The catalog the pipeline asks for routing decisions and support sets.
//!
//! [`Catalog`] is the boundary between the pipeline and whoever curates support sets: the
//! admin store (support sets and rules in SQLite) or, without one, [`FolderCatalog`], which
//! serves the `supportset.toml` folders bundled with the models (`models/*/support-sets/*`)
//! and routes by their `[match]` table; a folder that names no `bundle` runs on
//! `[engine] default_bundle`. Both route with [`crate::routing`] and the one synonym table, a
//! folder's `[match]` being the rule the admin store seeds from it
//! ([`Rule::bundled`]), so a study routes the same whether the admin API is on or off.

use crate::dicom::seg::{Code, SegmentDescription};
use crate::engine::SupportSet;
use crate::routing::{route_series, Rule, RuleSet, StudyHeader, Synonyms};
use std::path::{Path, PathBuf};

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

    /// The UIDs of the series at `indexes` (from [`route_series`] over [`StudyInfo::headers`]).
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

/// Routing and support sets, as the pipeline needs them.
pub trait Catalog: Send + Sync {
    /// Decides what to do with a complete study.
    fn route(&self, study: &StudyInfo) -> Result<Route, String>;
    /// Loads a support set at the version a job recorded.
    fn load(&self, name: &str, version: &str) -> Result<LoadedSupportSet, String>;
}

/// Support sets from `models_dir/*/support-sets/*/supportset.toml`, routed by `[match]`.
#[derive(Debug, Clone)]
pub struct FolderCatalog {
    dirs: Vec<PathBuf>,
    default_bundle: String,
    synonyms: Synonyms,
}

impl FolderCatalog {
    /// Finds every bundled support-set folder under `models_dir`; a folder whose
    /// `supportset.toml` names no `bundle` runs on `default_bundle` (`[engine] default_bundle`).
    /// Body parts match through `synonyms` (`Config::body_part_synonyms`).
    pub fn discover(models_dir: &Path, default_bundle: &str, synonyms: Synonyms) -> FolderCatalog {
        let pattern = format!(
            "{}/*/support-sets/*/supportset.toml",
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
        FolderCatalog {
            dirs,
            default_bundle: default_bundle.to_string(),
            synonyms,
        }
    }

    /// The folders found.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn spec(dir: &Path) -> Option<crate::engine::offline::SupportSetSpec> {
        let text = std::fs::read_to_string(dir.join("supportset.toml")).ok()?;
        toml::from_str(&text).ok()
    }
}

fn code_of(v: Option<&toml::Value>, fallback: &str) -> Code {
    match v {
        Some(toml::Value::Table(t)) => {
            let get = |k: &str| t.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let scheme = get("scheme");
            Code {
                scheme: if scheme.is_empty() {
                    "SCT".into()
                } else {
                    scheme
                },
                value: get("code"),
                meaning: get("meaning"),
            }
        }
        Some(toml::Value::String(s)) => Code::sct("91723000", s),
        _ => Code::sct("91723000", fallback),
    }
}

impl Catalog for FolderCatalog {
    fn route(&self, study: &StudyInfo) -> Result<Route, String> {
        // One rule per folder with a `[match]` table, in folder order: rule id = index + 1.
        let mut rules = Vec::new();
        for (i, dir) in self.dirs.iter().enumerate() {
            let Some(spec) = Self::spec(dir) else {
                continue;
            };
            let Some(m) = &spec.match_ else { continue };
            let get = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("");
            rules.push(Rule {
                id: i as i64 + 1,
                ..Rule::bundled(&spec.name, get("modality"), get("body_part"))
            });
        }
        let rules = RuleSet::new(rules, self.synonyms.clone());
        let routed = route_series(&rules, &study.headers());
        let Some(id) = routed.decision.rule else {
            return Ok(Route::Unmatched {
                reason: format!("no bundled support set matches: {}", routed.decision.reason),
            });
        };
        let dir = &self.dirs[(id - 1) as usize];
        let spec = Self::spec(dir).ok_or_else(|| {
            format!(
                "{} changed while routing",
                dir.join("supportset.toml").display()
            )
        })?;
        let (set, _) = crate::engine::offline::load_support_set(dir).map_err(|e| e.to_string())?;
        Ok(Route::Matched {
            rule_id: 0,
            support_set: set.name.clone(),
            version: set.version.clone(),
            bundle: spec
                .bundle
                .clone()
                .filter(|b| !b.trim().is_empty())
                .unwrap_or_else(|| self.default_bundle.clone()),
            destination_ae: None,
            series: study.series_uids(&routed.series),
            skip_localizers: true,
            reason: format!(
                "bundled support set {}: {}",
                set.name, routed.decision.reason
            ),
        })
    }

    fn load(&self, name: &str, version: &str) -> Result<LoadedSupportSet, String> {
        for dir in &self.dirs {
            let Some(spec) = Self::spec(dir) else {
                continue;
            };
            if spec.name != name {
                continue;
            }
            let (set, spec) =
                crate::engine::offline::load_support_set(dir).map_err(|e| e.to_string())?;
            if set.version != version {
                return Err(format!("support set {name} is now at version {} (job needs {version}); bundled folders keep no history", set.version));
            }
            let segments = describe_segments(&spec);
            return Ok(LoadedSupportSet { set, segments });
        }
        Err(format!(
            "support set {name:?} not found among {} bundled folders",
            self.dirs.len()
        ))
    }
}

/// The SEG segment descriptions of a `supportset.toml`'s objects (codes, colours), in order.
pub fn describe_segments(spec: &crate::engine::offline::SupportSetSpec) -> Vec<SegmentDescription> {
    spec.objects
        .iter()
        .map(|o| {
            let color = o
                .color
                .as_deref()
                .filter(|c| c.len() == 3)
                .map(|c| [c[0], c[1], c[2]])
                .unwrap_or([255, 0, 0]);
            SegmentDescription {
                label: o.label.clone(),
                category: code_of(o.category.as_ref(), "Anatomical Structure"),
                type_: code_of(o.property_type.as_ref(), &o.label),
                color_rgb: color,
                algorithm_name: "proxyseg PPG+SAM".into(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            let to = dst.join(p.file_name().unwrap());
            if p.is_dir() {
                copy_dir(&p, &to);
            } else {
                std::fs::copy(&p, &to).unwrap();
            }
        }
    }

    /// A bundled folder without `bundle` runs on the configured default; one that names
    /// `phantom-tiny` keeps it.
    #[test]
    fn folders_that_name_no_bundle_get_the_default() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/phantom-tiny/support-sets/mr-prostate");
        let models = tempfile::tempdir().unwrap();
        let named = models.path().join("phantom-tiny/support-sets/mr-prostate");
        copy_dir(&src, &named);
        let study = |body_part: &str| StudyInfo {
            study_uid: "1.2.3".into(),
            calling_ae: "PACS".into(),
            series: vec![SeriesInfo {
                series_uid: "1.2.3.4".into(),
                modality: "MR".into(),
                body_part: body_part.into(),
                sop_class_uid: String::new(),
                series_description: String::new(),
            }],
        };
        let bundle_of = |c: &FolderCatalog| match c.route(&study("PROSTATE")).unwrap() {
            Route::Matched { bundle, .. } => bundle,
            other => panic!("{other:?}"),
        };
        let c = FolderCatalog::discover(models.path(), "my-default", Synonyms::default());
        assert_eq!(bundle_of(&c), "phantom-tiny");
        // The same folder without its `bundle` line.
        let toml_path = named.join("supportset.toml");
        let text = std::fs::read_to_string(&toml_path).unwrap();
        assert!(text.contains("bundle = \"phantom-tiny\"\n"), "{text}");
        std::fs::write(&toml_path, text.replace("bundle = \"phantom-tiny\"\n", "")).unwrap();
        assert_eq!(bundle_of(&c), "my-default");
        assert_eq!(
            bundle_of(&FolderCatalog::discover(
                models.path(),
                "litemedsam-ppg",
                Synonyms::default()
            )),
            "litemedsam-ppg"
        );
    }
}
