//! TOML configuration: the daemon's public interface for operators and tests.
//!
//! Owns parsing, defaults and validation (`proxyseg config check`). It never touches the
//! network or the disk beyond reading the config file and statting the paths it names.
//!
//! This file holds [`Config`] (one field per TOML table), loading and the problems it reports;
//! each group of tables has a file of its own (`dicom`, `storage`, `pipeline`, `engine`,
//! `delivery`, `observability`, `admin`), `validate` holds the checks, one step per table.

use serde::Deserialize;
use std::path::{Path, PathBuf};

mod admin;
mod delivery;
mod dicom;
mod engine;
mod observability;
mod pipeline;
mod storage;
#[cfg(test)]
mod tests;
mod validate;

pub use admin::{default_synonyms, AdminConfig, AdminTlsConfig};
pub use delivery::{DeliveryConfig, SegConfig};
pub use dicom::{check_ae_title, AeTitleError, DicomConfig, PeerConfig, TlsConfig, TlsNameError};
pub use engine::{check_bundle_name, BundleNameError, EngineConfig, DEFAULT_BUNDLE};
pub use observability::{LogConfig, MetricsConfig};
pub use pipeline::{PipelineConfig, SequenceMode, UnknownSequenceMode};
pub use storage::{RetentionConfig, StorageConfig, MAX_RETENTION_HOURS};

/// The whole daemon configuration, one struct per TOML table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[dicom]`: the DICOM listener and its peers.
    pub dicom: DicomConfig,
    /// `[storage]`: where spool, outbox and the SQLite index live.
    pub storage: StorageConfig,
    /// `[pipeline]`: study assembly and workers.
    pub pipeline: PipelineConfig,
    /// `[engine]`: ONNX Runtime and model bundles.
    pub engine: EngineConfig,
    /// `[seg]`: how DICOM SEG results are written.
    pub seg: SegConfig,
    /// `[delivery]`: sending results back (outbox, retries, TLS to peers).
    pub delivery: DeliveryConfig,
    /// `[log]`: logging format and filter.
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[retention]`: how long received studies, their results and delivery files are kept.
    pub retention: RetentionConfig,
    /// `[admin]`: the admin gRPC API; absent = no admin listener.
    pub admin: Option<AdminConfig>,
}

/// The tables the offline commands read ([`Config::load_offline`]).
pub const OFFLINE_TABLES: [&str; 4] = ["storage", "pipeline", "engine", "seg"];

/// A problem found in a config file, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `dicom.peers[1].port`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Errors while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path we tried.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown keys / wrong types.
    #[error("config {path} is not valid: {source}")]
    Parse {
        /// The path we read.
        path: PathBuf,
        /// The parser's error (it names the key and line).
        source: toml::de::Error,
    },
    /// Semantic problems, each with its key.
    #[error("config {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path we read.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads, parses and validates a config file (paths in it are used as written).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::read_checked(path, false, |_| true)
    }

    /// [`Config::load`] for the offline commands (`proxyseg segment`), which use only
    /// [`OFFLINE_TABLES`]: a problem elsewhere (an admin tokens file not written yet, no DICOM
    /// peer listed) does not stop them; the file must still parse.
    pub fn load_offline(path: &Path) -> Result<Config, ConfigError> {
        Config::read_checked(path, false, |p| {
            let table = p.key.split(['.', '[']).next().unwrap_or_default();
            OFFLINE_TABLES.contains(&table)
        })
    }

    /// What `proxyseg config check` runs: [`Config::load`]'s checks plus
    /// [`Config::deployment_problems`] (what must be installed beside the config), every
    /// problem in one [`ConfigError::Invalid`].
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        Config::read_checked(path, true, |_| true)
    }

    /// Reads and parses `path`, then collects [`Config::validate`]'s problems (and
    /// [`Config::deployment_problems`] with `deployment`).
    fn read_checked(
        path: &Path,
        deployment: bool,
        counts: impl Fn(&Problem) -> bool,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut problems = cfg.validate();
        if deployment {
            problems.extend(cfg.deployment_problems());
        }
        problems.retain(|p| counts(p));
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Problems with what the config expects to find installed, which do not stop the daemon
    /// (it serves what it finds and logs the rest) but which `proxyseg config check` reports as
    /// errors: the default bundle's folder (`models_dir/<engine.default_bundle>/manifest.toml`)
    /// must exist.
    pub fn deployment_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let e = &self.engine;
        if check_bundle_name(&e.default_bundle).is_ok() {
            let manifest = e.models_dir.join(&e.default_bundle).join("manifest.toml");
            if !manifest.is_file() {
                out.push(Problem {
                    key: "engine.default_bundle".into(),
                    message: format!(
                        "{:?} is not a bundle under engine.models_dir: {} does not exist \
                         (install the bundle, or name one that is there)",
                        e.default_bundle,
                        manifest.display()
                    ),
                });
            }
        }
        out
    }

    /// Parses TOML text without semantic validation.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Finds the peer with this AE title (trailing spaces ignored).
    pub fn peer(&self, ae_title: &str) -> Option<&PeerConfig> {
        let ae = ae_title.trim();
        self.dicom.peers.iter().find(|p| p.ae_title.trim() == ae)
    }
}
