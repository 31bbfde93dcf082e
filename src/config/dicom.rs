//! `[dicom]`, `[[dicom.peers]]` and `[dicom.tls]`: the DICOM listeners, their limits and the
//! known peers; the AE title rules.

use serde::Deserialize;
use std::path::PathBuf;

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
    pub fn tls_name(&self) -> Option<Result<rustls_pki_types::ServerName<'static>, TlsNameError>> {
        self.tls_identity.as_ref().map(|n| {
            rustls_pki_types::ServerName::try_from(n.trim().to_string()).map_err(|source| {
                TlsNameError {
                    name: n.clone(),
                    source,
                }
            })
        })
    }
}

/// A peer's `tls_identity` that no certificate could carry.
#[derive(Debug, thiserror::Error)]
#[error("{name:?} is not a DNS name or IP address: {source}")]
pub struct TlsNameError {
    /// The configured text.
    pub name: String,
    /// rustls' reason.
    pub source: rustls_pki_types::InvalidDnsNameError,
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

/// Why a text is not a valid AE title.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeTitleError {
    /// Empty, or only spaces.
    #[error("must not be empty")]
    Empty,
    /// More than 16 characters.
    #[error("{0:?} is longer than 16 characters")]
    TooLong(String),
    /// Non-ASCII, control characters or a backslash.
    #[error("{0:?} holds characters not allowed in an AE title")]
    BadCharacters(String),
}

/// Checks the DICOM AE title rules: 1..=16 characters of the default repertoire, no
/// backslash or control characters, not only spaces.
pub fn check_ae_title(ae: &str) -> Result<(), AeTitleError> {
    let t = ae.trim();
    if t.is_empty() {
        return Err(AeTitleError::Empty);
    }
    if ae.len() > 16 {
        return Err(AeTitleError::TooLong(ae.to_owned()));
    }
    if ae
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\')
    {
        return Err(AeTitleError::BadCharacters(ae.to_owned()));
    }
    Ok(())
}
