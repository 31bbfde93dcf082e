//! `[admin]` and `[admin.tls]`: the admin gRPC API's listener, tokens, limits and the
//! body-part synonyms routing uses.

use serde::Deserialize;
use std::path::PathBuf;

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

/// The body-part synonym groups used when `[admin]` sets none: `canonical -> aliases`
/// (routing builds its table from them, [`crate::routing::Synonyms`]).
pub fn default_synonyms() -> std::collections::BTreeMap<String, Vec<String>> {
    [
        ("EYE", &["RETINA", "FUNDUS", "OPHTHALMIC"][..]),
        ("PROSTATE", &["PELVIS_PROSTATE"][..]),
        ("PELVIS", &["UTERUS", "FETUS"][..]),
        ("CHEST", &["THORAX", "LUNG"][..]),
        ("ABDOMEN", &["ABD"][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect()
}
