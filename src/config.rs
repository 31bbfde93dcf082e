//! TOML configuration: the daemon's public interface for operators and tests.
//!
//! Owns parsing, defaults and validation (`proxyseg config check`). It never touches the
//! network or the disk beyond reading the config file and statting the paths it names.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// `[admin]` table: the gRPC admin API (support sets, rules, jobs, models).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; loopback by default, so only local admins reach it without TLS.
    pub listen: String,
    /// Bearer tokens, one `name role token` per line (role `admin` or `readonly`); the file
    /// must not be readable by group or others (mode 0600).
    pub tokens_file: PathBuf,
    /// Optional TLS (and mutual TLS) for the admin listener.
    pub tls: Option<AdminTlsConfig>,
    /// Allows a non-loopback `listen` without `tls` (bearer tokens then cross the network in
    /// cleartext); false by default, so such a config is refused.
    pub allow_insecure_remote: bool,
    /// Wrong tokens from one address within `failed_auth_lockout_s` that lock it out.
    pub max_failed_auth: u32,
    /// Seconds over which failed authentications are counted, and that a lockout lasts.
    pub failed_auth_lockout_s: u64,
    /// Largest upload (one AddPair or Preview stream, one DryRun file), in MiB.
    pub max_upload_mb: u64,
    /// The one server folder SupportSets.Import reads from (besides the bundled sets under
    /// `engine.models_dir`) and Export writes into; a relative request path is taken inside
    /// it. Empty: `<storage.data_dir>/exchange`.
    pub exchange_dir: PathBuf,
    /// Seconds one RPC may run before it is cancelled (DEADLINE_EXCEEDED); a Watch stream,
    /// once opened, is not cut.
    pub rpc_timeout_s: u64,
    /// RPCs one client connection may have in flight; more wait for a free one.
    pub max_concurrent_rpcs: usize,
    /// Preview and Evaluate calls (they run the model) in flight at once, all clients
    /// together; one more is answered RESOURCE_EXHAUSTED.
    pub max_concurrent_inference: usize,
    /// Jobs.Watch streams open at once, all clients together; one more is answered
    /// RESOURCE_EXHAUSTED (each stream polls the index).
    pub max_watch_streams: usize,
    /// Body-part synonym groups for routing: `CANONICAL = ["ALIAS", ...]`, case-insensitive.
    pub body_part_synonyms: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:50051".into(),
            tokens_file: PathBuf::from("config/admin-tokens"),
            tls: None,
            allow_insecure_remote: false,
            max_failed_auth: 10,
            failed_auth_lockout_s: 60,
            max_upload_mb: 64,
            exchange_dir: PathBuf::new(),
            rpc_timeout_s: 600,
            max_concurrent_rpcs: 32,
            max_concurrent_inference: 2,
            max_watch_streams: 16,
            body_part_synonyms: default_synonyms(),
        }
    }
}

/// `[admin.tls]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// PEM certificate chain of the admin server.
    pub certificate: PathBuf,
    /// PEM private key of the admin server.
    pub private_key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The synonym groups used when `[admin]` does not set any ([`crate::routing::default_synonym_groups`]).
pub fn default_synonyms() -> std::collections::BTreeMap<String, Vec<String>> {
    crate::routing::default_synonym_groups()
}

/// `[dicom]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    /// Our AE title; the called AE of every incoming association must equal it.
    pub ae_title: String,
    /// Plain (non-TLS) listen address.
    pub listen: String,
    /// Maximum number of concurrent associations (plain + TLS together). A connection takes
    /// a slot only once its A-ASSOCIATE-RQ has passed the AE / host checks.
    pub max_associations: usize,
    /// Connections that have not yet sent an A-ASSOCIATE-RQ passing the AE / host checks
    /// (plain + TLS together). A new connection to a full pool closes the oldest one.
    pub max_pending_connections: usize,
    /// Seconds from connect until the whole A-ASSOCIATE-RQ (after the TLS handshake, for
    /// TLS) must have arrived; a connection still silent then is closed.
    pub association_request_timeout_s: u64,
    /// Maximum PDU length we accept and announce, in bytes.
    pub max_pdu: u32,
    /// Memory the associations' receive buffers may take together, in MiB: each reserves
    /// one PDU plus 64 KiB (whole MiB) before it reads its first message, and waits, without
    /// reading, while the others hold the budget (issue 16 item 1).
    pub max_buffered_mb: u64,
    /// Only peers listed in `[[dicom.peers]]` may associate (calling AE and source host).
    pub require_known_peers: bool,
    /// Seconds of silence before an association is aborted.
    pub read_timeout_s: u64,
    /// The longest one association may stay open, busy or not (review L10: a peer that keeps
    /// it alive with a message every few seconds holds a slot for ever otherwise). It is
    /// aborted between messages once over; a store in flight gets `read_timeout_s` more.
    pub max_association_s: u64,
    /// Seconds a single write to the peer may take.
    pub write_timeout_s: u64,
    /// Refuse new associations, and each C-STORE (0xA700), while free space in `data_dir` is
    /// below this many MiB.
    pub min_free_disk_mb: u64,
    /// Largest dataset accepted in one C-STORE, in MiB.
    pub max_object_mb: u64,
    /// Known peers: who may send, and where results for their studies go back.
    pub peers: Vec<PeerConfig>,
    /// Optional DICOM TLS listener.
    pub tls: Option<TlsConfig>,
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            ae_title: "PROXYSEG".into(),
            listen: "127.0.0.1:11112".into(),
            max_associations: 32,
            max_pending_connections: 16,
            association_request_timeout_s: 5,
            max_pdu: 65536,
            max_buffered_mb: 256,
            require_known_peers: true,
            read_timeout_s: 60,
            max_association_s: 3600,
            write_timeout_s: 60,
            min_free_disk_mb: 1024,
            max_object_mb: 2048,
            peers: Vec::new(),
            tls: None,
        }
    }
}

/// One `[[dicom.peers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's AE title (calling AE when it sends to us; called AE when we send to it).
    pub ae_title: String,
    /// Host name or IP address; incoming associations must come from it.
    pub host: String,
    /// Port of the peer's own SCP, where results are delivered.
    pub port: u16,
    /// Deliver to this peer over DICOM TLS.
    #[serde(default)]
    pub tls: bool,
    /// The DNS name or IP address this peer's client certificate carries in its
    /// subjectAltName (review L3). When set, an association calling with this AE title is
    /// accepted only on the `[dicom.tls]` listener (with `client_ca`), from a certificate valid
    /// for this name; the plain listener refuses it.
    #[serde(default)]
    pub tls_identity: Option<String>,
}

impl PeerConfig {
    /// The peer's `tls_identity` as a name certificates are checked against.
    pub fn tls_name(&self) -> Option<Result<rustls_pki_types::ServerName<'static>, String>> {
        self.tls_identity.as_ref().map(|n| {
            rustls_pki_types::ServerName::try_from(n.trim().to_string())
                .map_err(|e| format!("{n:?} is not a DNS name or IP address: {e}"))
        })
    }
}

/// `[dicom.tls]` table: a second listener that speaks DICOM over TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// TLS listen address, e.g. "127.0.0.1:2762".
    pub listen: String,
    /// PEM certificate chain of this server.
    pub certificate: PathBuf,
    /// PEM private key of this server.
    pub private_key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[storage]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root of spool/, outbox/, cache/ and proxyseg.sqlite.
    pub data_dir: PathBuf,
    /// How an instance is made durable before its C-STORE success: "syncfs" (group commit:
    /// one syncfs of the spool filesystem covers every store waiting at that moment) or
    /// "fsync" (each file and its directory).
    pub durability: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("var"),
            durability: "fsync".into(),
        }
    }
}

/// `[pipeline]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// A study is complete when no instance arrived for this many seconds.
    pub stable_age_s: f64,
    /// A peer's part of a study that has been receiving this long is complete even if
    /// instances keep arriving (review L10: one instance every `stable_age_s` would otherwise
    /// hold it open for ever); what arrives later opens it again.
    pub max_receiving_s: f64,
    /// How often the assembler looks for stable studies, in milliseconds.
    pub scan_interval_ms: u64,
    /// Jobs waiting for inference at most (a flood of studies waits in SQLite, not in memory).
    pub queue: usize,
    /// Slices or frames decoded and segmented together (bounds memory for volumes and cine).
    pub chunk_frames: usize,
    /// A job segmenting longer than this many seconds counts as stalled: the systemd
    /// watchdog stops being fed, so systemd restarts the daemon (the job resumes).
    pub stall_timeout_s: u64,
    /// Segmentation starts a job may make. Each start is counted in SQLite before it begins;
    /// a job still unfinished after this many (the daemon died, was stopped or restarted by
    /// the watchdog while segmenting it each time) is dead-lettered: `failed`, with why.
    pub max_attempts: u32,
    /// Memory one job may take for pixels, in MiB: the masks of the series it segments, the
    /// instance being read and the frames in flight (the worker decodes frame by frame; see
    /// `dicom::pixels::series_bytes`). An instance that alone cannot fit is refused at
    /// C-STORE (0xA900); a series that cannot fails its job before anything is decoded.
    pub max_decoded_mb: u64,
    /// Memory all jobs together may take for pixels, in MiB (at least `max_decoded_mb`; unset:
    /// `max_decoded_mb`, see [`PipelineConfig::memory_budget_mb`]). A job waits, first come
    /// first served, until the jobs ahead of it give back enough.
    pub memory_budget_mb: Option<u64>,
    /// Loop guard backstop (review M2): at most this many jobs of one peer's part of a study
    /// are segmented within `loop_window_h`; a further job is recorded as unmatched with the
    /// reason. Bounds the SEGs a PACS that keeps routing a study back can cause.
    pub max_jobs_per_study: u32,
    /// The window of `max_jobs_per_study`, in hours.
    pub loop_window_h: f64,
    /// With a bundle that tracks frames (contract 2, SAM 2): `auto` (default) tracks
    /// multi-frame ultrasound and volumes through the memory bank and segments other series
    /// frame by frame; `memory` tracks every series; `per-frame` none (see
    /// `pipeline::sequence`). Contract-1 bundles always segment frame by frame.
    pub sequence_mode: SequenceMode,
}

/// `pipeline.sequence_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SequenceMode {
    /// Memory for multi-frame ultrasound and for volumes, frame by frame otherwise.
    #[default]
    Auto,
    /// Every series through the memory bank.
    Memory,
    /// Every frame on its own.
    PerFrame,
}

impl PipelineConfig {
    /// The memory all jobs share for pixels, in MiB: `memory_budget_mb`, else
    /// `max_decoded_mb` (one job's worth).
    pub fn memory_budget_mb(&self) -> u64 {
        self.memory_budget_mb.unwrap_or(self.max_decoded_mb)
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stable_age_s: 30.0,
            max_receiving_s: 3600.0,
            scan_interval_ms: 500,
            queue: 8,
            chunk_frames: 8,
            stall_timeout_s: 900,
            max_attempts: 3,
            max_decoded_mb: 4096,
            memory_budget_mb: None,
            max_jobs_per_study: 5,
            loop_window_h: 24.0,
            sequence_mode: SequenceMode::Auto,
        }
    }
}

/// `[engine]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Path of libonnxruntime.so; else ORT_DYLIB_PATH, else the wheel in `.venv`.
    pub onnxruntime: Option<PathBuf>,
    /// Execution providers in order of preference: "tensorrt", "cuda", "cpu".
    pub providers: Vec<String>,
    /// Folder holding one sub-folder per model bundle (`<name>/manifest.toml`).
    pub models_dir: PathBuf,
    /// Threads ONNX Runtime may use inside one graph run (0 = ORT default).
    pub intra_threads: usize,
    /// Number of inference jobs that run at the same time.
    pub workers: usize,
    /// Most frames per image_encoder run when the graph's batch is dynamic.
    pub batch: usize,
    /// The model bundle (folder name under `models_dir`) for a support set that names none:
    /// a bundled `supportset.toml` without `bundle`, a set created or imported through the
    /// admin API without one, `proxyseg segment` on such a folder. Sets that name a bundle
    /// keep it. `proxyseg config check` reports an error when `models_dir/<default_bundle>/`
    /// holds no `manifest.toml`; the daemon starts anyway and logs it.
    pub default_bundle: String,
}

/// The default of `[engine] default_bundle`: the LiteMedSAM bundle that ships with proxyseg.
pub const DEFAULT_BUNDLE: &str = "litemedsam-ppg";

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            onnxruntime: None,
            providers: vec!["tensorrt".into(), "cuda".into(), "cpu".into()],
            models_dir: PathBuf::from("models"),
            intra_threads: 0,
            workers: 1,
            batch: 4,
            default_bundle: DEFAULT_BUNDLE.into(),
        }
    }
}

/// `[seg]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegConfig {
    /// Leave out frames whose mask is empty (default false: many viewers misplace sparse SEGs).
    pub omit_empty_frames: bool,
    /// Manufacturer written into every SEG.
    pub manufacturer: String,
}

impl Default for SegConfig {
    fn default() -> Self {
        SegConfig {
            omit_empty_frames: false,
            manufacturer: "proxyseg".into(),
        }
    }
}

/// `[delivery]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Tries before a transiently failing delivery (peer down, timeouts) is dead-lettered.
    pub max_attempts: u32,
    /// Tries before a permanently failing delivery (association rejected for our AE, SOP class
    /// not supported, status 0xA7xx / 0xA9xx / 0xCxxx) is dead-lettered.
    pub max_permanent_attempts: u32,
    /// First retry delay in seconds; doubles per try, with +-20 % jitter.
    pub backoff_initial_s: f64,
    /// Longest retry delay in seconds.
    pub backoff_max_s: f64,
    /// Seconds for connecting, negotiating and each network read/write.
    pub timeout_s: u64,
    /// Deliveries running at the same time.
    pub concurrency: usize,
    /// How often (milliseconds) the outbox is polled for due deliveries.
    pub poll_interval_ms: u64,
    /// PEM CA bundle trusted for peers with `tls = true` (required when any peer uses TLS).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to TLS peers (mutual TLS), with `tls_private_key`.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of `tls_certificate`.
    pub tls_private_key: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 12,
            max_permanent_attempts: 3,
            backoff_initial_s: 5.0,
            backoff_max_s: 1800.0,
            timeout_s: 30,
            concurrency: 4,
            poll_interval_ms: 500,
            tls_ca: None,
            tls_certificate: None,
            tls_private_key: None,
        }
    }
}

/// `[metrics]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus text endpoint (`GET /metrics`); empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[retention]` table: when a study's PHI (received instances, SEG results, staged delivery
/// files, index rows) leaves the daemon. A study is due once all its work is finished (not
/// receiving, no unfinished job, no SEG waiting for delivery) and the time below has passed
/// since its last job settled; see [`crate::store::retention`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Run the retention sweeper (admin purges work either way).
    pub enabled: bool,
    /// Hours a study is kept once finished well: every SEG delivered, or nothing to deliver
    /// (no rule matched it). Also the time a delivered manual send (`proxyseg send`) is kept.
    pub keep_delivered_hours: f64,
    /// Hours a study is kept when a job of it failed (dead-lettered included) or a SEG
    /// delivery was dead-lettered, so an admin can look into it; also dead manual sends.
    /// At least `keep_delivered_hours`.
    pub keep_failed_hours: f64,
    /// Seconds between two sweeps.
    pub sweep_interval_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            keep_delivered_hours: 72.0,
            keep_failed_hours: 720.0,
            sweep_interval_s: 600,
        }
    }
}

/// Longest retention accepted, in hours (ten years).
pub const MAX_RETENTION_HOURS: f64 = 87_600.0;

/// `[log]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "human" or "json".
    pub format: String,
    /// tracing EnvFilter directive; RUST_LOG overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
            filter: "info,ort=warn".into(),
        }
    }
}

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
    #[error("config {path} is not valid: {message}")]
    Parse {
        /// The path we read.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
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
    /// Reads, parses and validates a config file. Relative paths in it are resolved against
    /// the directory that holds the config file's parent (the project root for `config/x.toml`)
    /// only if they do not exist relative to the working directory; see [`Config::resolve_paths`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// What `proxyseg config check` runs: [`Config::load`]'s checks plus
    /// [`Config::deployment_problems`] (what must be installed beside the config), every
    /// problem in one [`ConfigError::Invalid`].
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let mut problems = cfg.validate();
        problems.extend(cfg.deployment_problems());
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
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Every semantic problem, each naming its key. Empty means valid. One step per table.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(Problem {
                key: key.to_string(),
                message,
            })
        };
        self.check_dicom(&mut bad);
        self.check_dicom_tls(&mut bad);
        self.check_storage(&mut bad);
        self.check_pipeline(&mut bad);
        self.check_engine(&mut bad);
        self.check_delivery(&mut bad);
        self.check_metrics(&mut bad);
        self.check_retention(&mut bad);
        self.check_log(&mut bad);
        self.check_admin(&mut bad);
        out
    }

    /// Checks the `[dicom]` table, its peers and its TLS listener.
    fn check_dicom(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        if let Err(m) = check_ae_title(&d.ae_title) {
            bad("dicom.ae_title", m);
        }
        if d.listen.is_empty() {
            // Review L3: the plain listener can be turned off when DICOM TLS is the only way in.
            if d.tls.is_none() {
                bad(
                    "dicom.listen",
                    "is empty (no plain listener) but there is no [dicom.tls] listener: nobody could send".into(),
                );
            }
        } else if d.listen.parse::<SocketAddr>().is_err() {
            bad(
                "dicom.listen",
                format!("{:?} is not an IP:port address", d.listen),
            );
        }
        if d.max_associations == 0 {
            bad("dicom.max_associations", "must be at least 1".into());
        }
        if !(1..=4096).contains(&d.max_pending_connections) {
            bad(
                "dicom.max_pending_connections",
                format!("{} is outside 1..=4096", d.max_pending_connections),
            );
        }
        if !(1..=120).contains(&d.association_request_timeout_s) {
            bad(
                "dicom.association_request_timeout_s",
                format!("{} is outside 1..=120", d.association_request_timeout_s),
            );
        }
        if !(4096..=16 * 1024 * 1024).contains(&d.max_pdu) {
            bad(
                "dicom.max_pdu",
                format!("{} is outside 4096..=16777216", d.max_pdu),
            );
        }
        if d.read_timeout_s == 0 {
            bad("dicom.read_timeout_s", "must be at least 1".into());
        }
        if !(1..=7 * 86_400).contains(&d.max_association_s) {
            bad(
                "dicom.max_association_s",
                "must be within 1..=604800".into(),
            );
        }
        if d.write_timeout_s == 0 {
            bad("dicom.write_timeout_s", "must be at least 1".into());
        }
        let per_association = crate::memory::MemoryBudget::mib_of(d.max_pdu as u64 + 65536);
        if d.max_buffered_mb < per_association || d.max_buffered_mb > 1 << 20 {
            bad(
                "dicom.max_buffered_mb",
                format!(
                    "{} must hold at least one association's buffers ({per_association} MiB for dicom.max_pdu {} + 64 KiB) and at most 1048576",
                    d.max_buffered_mb, d.max_pdu
                ),
            );
        }
        if d.max_object_mb == 0 {
            bad("dicom.max_object_mb", "must be at least 1".into());
        }
        if d.require_known_peers && d.peers.is_empty() {
            bad(
                "dicom.require_known_peers",
                "is true but no [[dicom.peers]] are listed: nobody could send".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in d.peers.iter().enumerate() {
            if let Err(m) = check_ae_title(&p.ae_title) {
                bad(&format!("dicom.peers[{i}].ae_title"), m);
            }
            if p.host.trim().is_empty() {
                bad(
                    &format!("dicom.peers[{i}].host"),
                    "must not be empty".into(),
                );
            }
            if p.port == 0 {
                bad(&format!("dicom.peers[{i}].port"), "must not be 0".into());
            }
            match p.tls_name() {
                Some(Err(m)) => bad(&format!("dicom.peers[{i}].tls_identity"), m),
                Some(Ok(_)) if d.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) => bad(
                    &format!("dicom.peers[{i}].tls_identity"),
                    "needs [dicom.tls] with client_ca: without client certificates nobody could prove it".into(),
                ),
                _ => {}
            }
            if !seen.insert(p.ae_title.trim().to_string()) {
                bad(
                    &format!("dicom.peers[{i}].ae_title"),
                    format!("{:?} is listed twice", p.ae_title),
                );
            }
        }
    }

    /// Checks `[dicom.tls]`.
    fn check_dicom_tls(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        if let Some(t) = &d.tls {
            if t.listen.parse::<SocketAddr>().is_err() {
                bad(
                    "dicom.tls.listen",
                    format!("{:?} is not an IP:port address", t.listen),
                );
            } else if t.listen == d.listen {
                bad("dicom.tls.listen", "must differ from dicom.listen".into());
            }
            for (key, p) in [
                ("dicom.tls.certificate", Some(&t.certificate)),
                ("dicom.tls.private_key", Some(&t.private_key)),
                ("dicom.tls.client_ca", t.client_ca.as_ref()),
            ] {
                if let Some(p) = p {
                    if !p.is_file() {
                        bad(key, format!("{} is not a readable file", p.display()));
                    }
                }
            }
        }
    }

    /// Checks `[storage]`.
    fn check_storage(&self, bad: &mut dyn FnMut(&str, String)) {
        if !matches!(self.storage.durability.as_str(), "syncfs" | "fsync") {
            bad(
                "storage.durability",
                format!(
                    "{:?} is not \"syncfs\" or \"fsync\"",
                    self.storage.durability
                ),
            );
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            bad("storage.data_dir", "must not be empty".into());
        }
    }

    /// Checks `[pipeline]`: study assembly, attempts and memory budgets.
    fn check_pipeline(&self, bad: &mut dyn FnMut(&str, String)) {
        if !(self.pipeline.stable_age_s.is_finite() && self.pipeline.stable_age_s >= 0.0) {
            bad("pipeline.stable_age_s", "must be a number >= 0".into());
        }
        if !(self.pipeline.max_receiving_s.is_finite()
            && self.pipeline.max_receiving_s >= self.pipeline.stable_age_s
            && self.pipeline.max_receiving_s > 0.0)
        {
            bad(
                "pipeline.max_receiving_s",
                "must be a number > 0 and >= pipeline.stable_age_s".into(),
            );
        }
        if self.pipeline.queue == 0 {
            bad("pipeline.queue", "must be at least 1".into());
        }
        if self.pipeline.chunk_frames == 0 {
            bad("pipeline.chunk_frames", "must be at least 1".into());
        }
        if self.pipeline.scan_interval_ms == 0 {
            bad("pipeline.scan_interval_ms", "must be at least 1".into());
        }
        if !(1..=100).contains(&self.pipeline.max_attempts) {
            bad(
                "pipeline.max_attempts",
                format!("{} is outside 1..=100", self.pipeline.max_attempts),
            );
        }
        if !(1..=1000).contains(&self.pipeline.max_jobs_per_study) {
            bad(
                "pipeline.max_jobs_per_study",
                format!("{} is outside 1..=1000", self.pipeline.max_jobs_per_study),
            );
        }
        if !(self.pipeline.loop_window_h.is_finite() && self.pipeline.loop_window_h > 0.0) {
            bad(
                "pipeline.loop_window_h",
                "must be a positive number of hours".into(),
            );
        }
        if !(1..=1 << 20).contains(&self.pipeline.max_decoded_mb) {
            bad(
                "pipeline.max_decoded_mb",
                format!("{} is outside 1..=1048576", self.pipeline.max_decoded_mb),
            );
        }
        if let Some(total) = self.pipeline.memory_budget_mb {
            if total < self.pipeline.max_decoded_mb || total > 1 << 20 {
                bad(
                    "pipeline.memory_budget_mb",
                    format!(
                        "{total} must be between pipeline.max_decoded_mb ({}) and 1048576: a job allowed max_decoded_mb could otherwise never get its memory",
                        self.pipeline.max_decoded_mb
                    ),
                );
            }
        }
    }

    /// Checks `[engine]`.
    fn check_engine(&self, bad: &mut dyn FnMut(&str, String)) {
        for (i, p) in self.engine.providers.iter().enumerate() {
            if !matches!(p.as_str(), "tensorrt" | "cuda" | "cpu") {
                bad(
                    &format!("engine.providers[{i}]"),
                    format!("{p:?} is not one of \"tensorrt\", \"cuda\", \"cpu\""),
                );
            }
        }
        if self.engine.workers == 0 {
            bad("engine.workers", "must be at least 1".into());
        }
        if self.engine.batch == 0 {
            bad("engine.batch", "must be at least 1".into());
        }
        if let Err(m) = check_bundle_name(&self.engine.default_bundle) {
            bad("engine.default_bundle", m);
        }
    }

    /// Checks `[delivery]`: retries and TLS files.
    fn check_delivery(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        let dl = &self.delivery;
        if dl.max_attempts == 0 {
            bad("delivery.max_attempts", "must be at least 1".into());
        }
        if dl.max_permanent_attempts == 0 || dl.max_permanent_attempts > dl.max_attempts {
            bad(
                "delivery.max_permanent_attempts",
                "must be between 1 and delivery.max_attempts".into(),
            );
        }
        if !(dl.backoff_initial_s.is_finite() && dl.backoff_initial_s > 0.0) {
            bad("delivery.backoff_initial_s", "must be a number > 0".into());
        }
        if !(dl.backoff_max_s.is_finite() && dl.backoff_max_s >= dl.backoff_initial_s) {
            bad(
                "delivery.backoff_max_s",
                "must be >= delivery.backoff_initial_s".into(),
            );
        }
        if dl.timeout_s == 0 {
            bad("delivery.timeout_s", "must be at least 1".into());
        }
        if dl.concurrency == 0 {
            bad("delivery.concurrency", "must be at least 1".into());
        }
        if dl.poll_interval_ms == 0 {
            bad("delivery.poll_interval_ms", "must be at least 1".into());
        }
        if d.peers.iter().any(|p| p.tls) && dl.tls_ca.is_none() {
            bad(
                "delivery.tls_ca",
                "a peer has tls = true: name the CA that signs its certificate".into(),
            );
        }
        if dl.tls_certificate.is_some() != dl.tls_private_key.is_some() {
            bad(
                "delivery.tls_certificate",
                "tls_certificate and tls_private_key go together".into(),
            );
        }
        for (key, p) in [
            ("delivery.tls_ca", dl.tls_ca.as_ref()),
            ("delivery.tls_certificate", dl.tls_certificate.as_ref()),
            ("delivery.tls_private_key", dl.tls_private_key.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    bad(key, format!("{} is not a readable file", p.display()));
                }
            }
        }
    }

    /// Checks `[metrics]`.
    fn check_metrics(&self, bad: &mut dyn FnMut(&str, String)) {
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            bad(
                "metrics.listen",
                format!(
                    "{:?} is not an IP:port address (or \"\" to disable)",
                    self.metrics.listen
                ),
            );
        }
    }

    /// Checks `[retention]`.
    fn check_retention(&self, bad: &mut dyn FnMut(&str, String)) {
        let rt = &self.retention;
        for (key, hours) in [
            ("retention.keep_delivered_hours", rt.keep_delivered_hours),
            ("retention.keep_failed_hours", rt.keep_failed_hours),
        ] {
            if !(hours.is_finite() && (0.0..=MAX_RETENTION_HOURS).contains(&hours)) {
                bad(
                    key,
                    format!("{hours} is not a number of hours within 0..={MAX_RETENTION_HOURS}"),
                );
            }
        }
        if rt.keep_failed_hours < rt.keep_delivered_hours {
            bad(
                "retention.keep_failed_hours",
                format!(
                    "{} is shorter than retention.keep_delivered_hours ({}): failed studies are \
                     kept at least as long as delivered ones, for an admin to look into",
                    rt.keep_failed_hours, rt.keep_delivered_hours
                ),
            );
        }
        if !(1..=86_400).contains(&rt.sweep_interval_s) {
            bad(
                "retention.sweep_interval_s",
                format!("{} is outside 1..=86400", rt.sweep_interval_s),
            );
        }
    }

    /// Checks `[log]`.
    fn check_log(&self, bad: &mut dyn FnMut(&str, String)) {
        if !matches!(self.log.format.as_str(), "human" | "json") {
            bad(
                "log.format",
                format!("{:?} is not \"human\" or \"json\"", self.log.format),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            bad("log.filter", e.to_string());
        }
    }

    /// Checks `[admin]` and its TLS, tokens and synonyms.
    fn check_admin(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        if let Some(a) = &self.admin {
            match a.listen.parse::<SocketAddr>() {
                Err(_) => bad(
                    "admin.listen",
                    format!("{:?} is not an IP:port address", a.listen),
                ),
                Ok(_) if a.listen == d.listen => {
                    bad("admin.listen", "must differ from dicom.listen".into())
                }
                Ok(addr)
                    if !addr.ip().is_loopback() && a.tls.is_none() && !a.allow_insecure_remote =>
                {
                    bad(
                        "admin.listen",
                        format!(
                            "{addr} is not a loopback address and [admin.tls] is not set: bearer \
                             tokens would cross the network in cleartext; configure [admin.tls], \
                             or set admin.allow_insecure_remote = true to accept that"
                        ),
                    )
                }
                Ok(_) => {}
            }
            if !a.tokens_file.is_file() {
                bad(
                    "admin.tokens_file",
                    format!("{} is not a readable file", a.tokens_file.display()),
                );
            } else if let Ok(m) = std::fs::metadata(&a.tokens_file) {
                use std::os::unix::fs::PermissionsExt;
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bad(
                        "admin.tokens_file",
                        format!(
                            "{} has mode {mode:o}: it must not be readable by group or others (chmod 600)",
                            a.tokens_file.display()
                        ),
                    );
                }
            }
            if let Some(t) = &a.tls {
                for (key, p) in [
                    ("admin.tls.certificate", Some(&t.certificate)),
                    ("admin.tls.private_key", Some(&t.private_key)),
                    ("admin.tls.client_ca", t.client_ca.as_ref()),
                ] {
                    if let Some(p) = p {
                        if !p.is_file() {
                            bad(key, format!("{} is not a readable file", p.display()));
                        }
                    }
                }
            }
            if !(1..=86_400).contains(&a.rpc_timeout_s) {
                bad("admin.rpc_timeout_s", "must be within 1..=86400".into());
            }
            for (key, v) in [
                ("admin.max_concurrent_rpcs", a.max_concurrent_rpcs),
                ("admin.max_concurrent_inference", a.max_concurrent_inference),
                ("admin.max_watch_streams", a.max_watch_streams),
            ] {
                if !(1..=1024).contains(&v) {
                    bad(key, "must be within 1..=1024".into());
                }
            }
            if !(1..=1000).contains(&a.max_failed_auth) {
                bad("admin.max_failed_auth", "must be within 1..=1000".into());
            }
            if !(1..=86400).contains(&a.failed_auth_lockout_s) {
                bad(
                    "admin.failed_auth_lockout_s",
                    "must be within 1..=86400".into(),
                );
            }
            if !(1..=4096).contains(&a.max_upload_mb) {
                bad("admin.max_upload_mb", "must be within 1..=4096".into());
            }
            let mut owner = std::collections::HashMap::new();
            for (canon, aliases) in &a.body_part_synonyms {
                for name in aliases.iter().chain(std::iter::once(canon)) {
                    let n = name.trim().to_uppercase();
                    if n.is_empty() {
                        bad(
                            &format!("admin.body_part_synonyms.{canon}"),
                            "holds an empty name".into(),
                        );
                    } else if let Some(prev) = owner.insert(n.clone(), canon.clone()) {
                        if prev != *canon {
                            bad(
                                &format!("admin.body_part_synonyms.{canon}"),
                                format!("{n:?} is also listed under {prev:?}"),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Body-part synonyms for routing: `[admin] body_part_synonyms`, or the defaults.
    /// Both catalogs (admin store and bundled folders) route with this one table.
    pub fn body_part_synonyms(&self) -> crate::routing::Synonyms {
        match &self.admin {
            Some(a) => crate::routing::Synonyms::new(a.body_part_synonyms.iter()),
            None => crate::routing::Synonyms::default(),
        }
    }

    /// Finds the peer with this AE title (trailing spaces ignored).
    pub fn peer(&self, ae_title: &str) -> Option<&PeerConfig> {
        let ae = ae_title.trim();
        self.dicom.peers.iter().find(|p| p.ae_title.trim() == ae)
    }
}

/// A bundle name as `[engine] default_bundle` takes it: a plain folder name under
/// `models_dir` (no path separators, not `.` or `..`).
pub fn check_bundle_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must name a bundle (a folder under engine.models_dir)".into());
    }
    if name != name.trim() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(format!(
            "{name:?} is not a plain folder name under engine.models_dir"
        ));
    }
    Ok(())
}

/// Checks the DICOM AE title rules: 1..=16 characters of the default repertoire, no
/// backslash or control characters, not only spaces.
pub fn check_ae_title(ae: &str) -> Result<(), String> {
    let t = ae.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if ae.len() > 16 {
        return Err(format!("{ae:?} is longer than 16 characters"));
    }
    if ae
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\')
    {
        return Err(format!(
            "{ae:?} holds characters not allowed in an AE title"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_a_peer() {
        let c = Config::parse("").unwrap();
        let p = c.validate();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "dicom.require_known_peers");
    }

    #[test]
    fn every_problem_names_its_key() {
        let c = Config::parse(
            r#"
            [dicom]
            ae_title = "WAY-TOO-LONG-AE-TITLE"
            listen = "nowhere"
            max_pdu = 10
            [[dicom.peers]]
            ae_title = "PACS"
            host = "127.0.0.1"
            port = 0
            [[dicom.peers]]
            ae_title = "PACS"
            host = ""
            port = 104
            [engine]
            providers = ["gpu"]
            "#,
        )
        .unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "dicom.ae_title",
                "dicom.listen",
                "dicom.max_pdu",
                "dicom.peers[0].port",
                "dicom.peers[1].host",
                "dicom.peers[1].ae_title",
                "engine.providers[0]"
            ]
        );
    }

    #[test]
    fn issue_16_limits_have_defaults_and_bounds() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.dicom.max_pending_connections, 16);
        assert_eq!(c.dicom.association_request_timeout_s, 5);
        let c = Config::parse(
            "[dicom]\nmax_pending_connections = 0\nassociation_request_timeout_s = 0\n",
        )
        .unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert!(
            keys.contains(&"dicom.max_pending_connections".to_string())
                && keys.contains(&"dicom.association_request_timeout_s".to_string()),
            "{keys:?}"
        );
        let c = Config::parse("[pipeline]\nmax_attempts = 0\nmax_decoded_mb = 0\n").unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert!(
            keys.contains(&"pipeline.max_attempts".to_string())
                && keys.contains(&"pipeline.max_decoded_mb".to_string()),
            "{keys:?}"
        );
        let c = Config::parse("").unwrap();
        assert_eq!(
            (
                c.pipeline.max_attempts,
                c.pipeline.max_decoded_mb,
                c.pipeline.memory_budget_mb()
            ),
            (3, 4096, 4096)
        );
        // Review L3: an identity needs client certificates; no listener at all is refused.
        let c = Config::parse(
            "[dicom]\nlisten = \"\"\n[[dicom.peers]]\nae_title = \"A\"\nhost = \"127.0.0.1\"\nport = 1\ntls_identity = \"pacs.example\"\n",
        )
        .unwrap();
        let p: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert!(
            p.contains(&"dicom.listen".to_string())
                && p.contains(&"dicom.peers[0].tls_identity".to_string()),
            "{p:?}"
        );
        let c = Config::parse(
            "[[dicom.peers]]\nae_title = \"A\"\nhost = \"127.0.0.1\"\nport = 1\ntls_identity = \"not a name!\"\n",
        )
        .unwrap();
        assert!(c
            .validate()
            .iter()
            .any(|p| p.key == "dicom.peers[0].tls_identity"
                && p.message.contains("not a DNS name or IP address")));
        // The shared budget follows max_decoded_mb unless set, and may not be smaller.
        let c = Config::parse("[pipeline]\nmax_decoded_mb = 8192\n").unwrap();
        assert_eq!(c.pipeline.memory_budget_mb(), 8192);
        assert!(
            !c.validate().iter().any(|p| p.key.starts_with("pipeline.")),
            "{:?}",
            c.validate()
        );
        let c =
            Config::parse("[pipeline]\nmax_decoded_mb = 2048\nmemory_budget_mb = 1024\n").unwrap();
        let p = c.validate();
        assert!(
            p.iter().any(|p| p.key == "pipeline.memory_budget_mb"
                && p.message.contains("max_decoded_mb (2048)")),
            "{p:?}"
        );
        let c = Config::parse("[dicom]\nassociation_request_timeout_s = 121\n").unwrap();
        assert!(c
            .validate()
            .iter()
            .any(|p| p.key == "dicom.association_request_timeout_s"));
    }

    #[test]
    fn retention_has_defaults_and_bounds() {
        let c = Config::parse("").unwrap();
        let r = &c.retention;
        assert!(r.enabled);
        assert_eq!(
            (
                r.keep_delivered_hours,
                r.keep_failed_hours,
                r.sweep_interval_s
            ),
            (72.0, 720.0, 600)
        );
        let keys = |toml: &str| -> Vec<String> {
            Config::parse(toml)
                .unwrap()
                .validate()
                .into_iter()
                .map(|p| p.key)
                .filter(|k| k.starts_with("retention"))
                .collect()
        };
        // Zero is allowed: purge as soon as the study is finished.
        assert!(keys("[retention]\nkeep_delivered_hours = 0\nkeep_failed_hours = 0\n").is_empty());
        assert_eq!(
            keys("[retention]\nkeep_delivered_hours = -1\nsweep_interval_s = 0\n"),
            [
                "retention.keep_delivered_hours",
                "retention.sweep_interval_s"
            ]
        );
        assert_eq!(
            keys("[retention]\nkeep_delivered_hours = 100\nkeep_failed_hours = 10\n"),
            ["retention.keep_failed_hours"]
        );
        assert_eq!(
            keys("[retention]\nkeep_delivered_hours = nan\nkeep_failed_hours = inf\n"),
            [
                "retention.keep_delivered_hours",
                "retention.keep_failed_hours"
            ]
        );
        let e = Config::parse("[retention]\nkeep_hours = 1\n").unwrap_err();
        assert!(e.contains("keep_hours"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::parse("[dicom]\naetitle = \"X\"\n").unwrap_err();
        assert!(e.contains("aetitle"), "{e}");
    }

    #[test]
    fn admin_section_defaults_and_problems() {
        let c = Config::parse("[admin]\n").unwrap();
        let a = c.admin.as_ref().unwrap();
        assert_eq!(a.listen, "127.0.0.1:50051");
        assert_eq!(c.body_part_synonyms().canonical("retina"), "EYE");
        let c = Config::parse(
            r#"
            [admin]
            listen = "everywhere"
            tokens_file = "/nonexistent/tokens"
            max_upload_mb = 0
            [admin.body_part_synonyms]
            EYE = ["RETINA"]
            HEAD = ["retina"]
            "#,
        )
        .unwrap();
        let keys: Vec<String> = c
            .validate()
            .into_iter()
            .map(|p| p.key)
            .filter(|k| k.starts_with("admin"))
            .collect();
        assert_eq!(
            keys,
            [
                "admin.listen",
                "admin.tokens_file",
                "admin.max_upload_mb",
                "admin.body_part_synonyms.HEAD"
            ]
        );
    }

    #[test]
    fn default_bundle_is_a_folder_under_models_dir() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.engine.default_bundle, "litemedsam-ppg");
        let models = tempfile::tempdir().unwrap();
        let cfg = |name: &str| {
            Config::parse(&format!(
                "[engine]\nmodels_dir = {:?}\ndefault_bundle = {name:?}\n",
                models.path().display().to_string()
            ))
            .unwrap()
        };
        // Missing folder: not a load problem (the daemon starts and logs it), a check problem.
        let c = cfg("my-bundle");
        assert!(c
            .validate()
            .iter()
            .all(|p| p.key != "engine.default_bundle"));
        let p = c.deployment_problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "engine.default_bundle");
        assert!(
            p[0].message
                .contains("\"my-bundle\" is not a bundle under engine.models_dir"),
            "{}",
            p[0]
        );
        // A folder without a manifest is no bundle either; with one, all is well.
        std::fs::create_dir_all(models.path().join("my-bundle")).unwrap();
        assert_eq!(c.deployment_problems().len(), 1);
        std::fs::write(models.path().join("my-bundle/manifest.toml"), "").unwrap();
        assert!(c.deployment_problems().is_empty());
        // Names that are not plain folder names are load problems.
        for bad in ["", "../up", "a/b", " x"] {
            let keys: Vec<String> = cfg(bad).validate().into_iter().map(|p| p.key).collect();
            assert!(
                keys.contains(&"engine.default_bundle".to_string()),
                "{bad:?}: {keys:?}"
            );
        }
    }

    #[test]
    fn peer_lookup_ignores_padding() {
        let c = Config::parse(
            "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n",
        )
        .unwrap();
        assert!(c.peer("PACS  ").is_some());
        assert!(c.peer("OTHER").is_none());
    }
}
