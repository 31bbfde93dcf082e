//! The storage SCU: sends one Part 10 file to a peer with C-STORE (plain or DICOM TLS) and
//! classifies the outcome for the outbox: delivered, transient or permanent failure.
//!
//! The data set is sent as stored (no transcoding): only the file's own transfer syntax is
//! proposed.

use crate::dicom::dimse::{self, field, Command};
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{
    AssociationRJResult, PDataValue, PDataValueType, PresentationContextResultReason,
};
use dicom_ul::Pdu;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

/// What a delivery attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Stored by the peer (status 0x0000 or a warning 0xB000 / 0xB006 / 0xB007).
    Delivered {
        /// The status the peer answered.
        status: u16,
    },
    /// Worth retrying (peer down, timeout, transient rejection, 0xA7xx out of resources).
    Transient {
        /// Why.
        reason: String,
        /// DIMSE status, when one came back.
        status: Option<u16>,
    },
    /// Will not succeed by retrying soon (AE rejected, SOP class refused, 0xA9xx / 0xCxxx).
    Permanent {
        /// Why.
        reason: String,
        /// DIMSE status, when one came back.
        status: Option<u16>,
    },
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Called AE title.
    pub ae_title: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Use DICOM TLS.
    pub tls: bool,
}

/// Our side of outgoing associations.
#[derive(Clone)]
pub struct Scu {
    calling_ae: String,
    timeout: Duration,
    max_pdu: u32,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Errors building the SCU's TLS client configuration.
#[derive(Debug, thiserror::Error)]
#[error("{key} ({path}): {message}")]
pub struct ScuTlsError {
    key: &'static str,
    path: String,
    message: String,
}

impl Scu {
    /// Creates the SCU from `[dicom]` and `[delivery]`.
    pub fn new(cfg: &crate::config::Config) -> Result<Scu, ScuTlsError> {
        let d = &cfg.delivery;
        let tls = match &d.tls_ca {
            None => None,
            Some(ca) => Some(client_tls(
                ca,
                d.tls_certificate.as_deref(),
                d.tls_private_key.as_deref(),
            )?),
        };
        Ok(Scu {
            calling_ae: cfg.dicom.ae_title.clone(),
            timeout: Duration::from_secs(d.timeout_s),
            max_pdu: cfg.dicom.max_pdu,
            tls,
        })
    }

    /// Sends the file at `path` to `dest` and classifies the result. Never panics; every
    /// failure becomes a [`Attempt::Transient`] or [`Attempt::Permanent`] with a reason.
    pub async fn send_file(&self, path: &Path, dest: &Destination) -> Attempt {
        let file = match read_part10(path) {
            Ok(f) => f,
            Err(e) => {
                return Attempt::Permanent {
                    reason: e,
                    status: None,
                }
            }
        };
        match tokio::time::timeout(self.timeout * 4, self.send(&file, dest)).await {
            Ok(a) => a,
            Err(_) => Attempt::Transient {
                reason: format!("no answer within {:?}", self.timeout * 4),
                status: None,
            },
        }
    }

    async fn send(&self, file: &Part10, dest: &Destination) -> Attempt {
        let ts = vec![file.transfer_syntax.clone()];
        let opts = ClientAssociationOptions::new()
            .calling_ae_title(self.calling_ae.clone())
            .called_ae_title(dest.ae_title.clone())
            .with_presentation_context(file.sop_class.clone(), ts)
            .max_pdu_length(self.max_pdu)
            .read_timeout(self.timeout)
            .write_timeout(self.timeout)
            .connection_timeout(self.timeout);
        let addr = (dest.host.as_str(), dest.port);
        if dest.tls {
            let Some(tls) = &self.tls else {
                return Attempt::Permanent {
                    reason: format!(
                        "peer {} wants TLS but delivery.tls_ca is not set",
                        dest.ae_title
                    ),
                    status: None,
                };
            };
            let opts = opts.tls_config(tls.clone()).server_name(&dest.host);
            match opts.establish_tls_async(addr).await {
                Ok(a) => store_on(a, file, dest).await,
                Err(e) => classify_establish(e),
            }
        } else {
            match opts.establish_async(addr).await {
                Ok(a) => store_on(a, file, dest).await,
                Err(e) => classify_establish(e),
            }
        }
    }
}

/// A Part 10 file split into what C-STORE needs.
struct Part10 {
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    dataset: Vec<u8>,
}

fn read_part10(path: &Path) -> Result<Part10, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() < 144 || &bytes[128..132] != b"DICM" {
        return Err(format!("{} is not a DICOM Part 10 file", path.display()));
    }
    let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| format!("{}: bad file meta: {e}", path.display()))?;
    // The meta group ends where its group length says.
    let group_len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    let start = 144 + group_len;
    if start > bytes.len() {
        return Err(format!(
            "{}: file meta group runs past the end",
            path.display()
        ));
    }
    let trim = |s: &str| crate::dicom::sop::trim_uid(s).to_string();
    Ok(Part10 {
        sop_class: trim(&meta.media_storage_sop_class_uid),
        sop_instance: trim(&meta.media_storage_sop_instance_uid),
        transfer_syntax: trim(&meta.transfer_syntax),
        dataset: bytes[start..].to_vec(),
    })
}

fn classify_establish(e: dicom_ul::association::Error) -> Attempt {
    use dicom_ul::association::Error as E;
    match &e {
        E::Rejected { association_rj, .. } => {
            let reason = format!("association rejected: {}", association_rj.source);
            if association_rj.result == AssociationRJResult::Permanent {
                Attempt::Permanent { reason, status: None }
            } else {
                Attempt::Transient { reason, status: None }
            }
        }
        E::NoAcceptedPresentationContexts { .. } => Attempt::Permanent { reason: "the peer accepts none of the proposed presentation contexts (SOP class / transfer syntax not supported)".into(), status: None },
        _ => Attempt::Transient { reason: format!("cannot associate: {e}"), status: None },
    }
}

async fn store_on<S>(
    mut assoc: dicom_ul::association::client::AsyncClientAssociation<S>,
    file: &Part10,
    dest: &Destination,
) -> Attempt
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|p| p.reason == PresentationContextResultReason::Acceptance)
        .cloned();
    let Some(pc) = pc else {
        let _ = assoc.abort().await;
        return Attempt::Permanent {
            reason: format!(
                "{} does not accept SOP class {} in transfer syntax {}",
                dest.ae_title, file.sop_class, file.transfer_syntax
            ),
            status: None,
        };
    };
    let message_id = (rand::random::<u16>() % 60000) + 1;
    let cmd = match dimse::store_request(message_id, &file.sop_class, &file.sop_instance) {
        Ok(c) => c,
        Err(e) => {
            return Attempt::Permanent {
                reason: e.to_string(),
                status: None,
            }
        }
    };
    let send = |data: Vec<u8>, command: bool, last: bool| Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc.id,
            value_type: if command {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: last,
            data,
        }],
    };
    if let Err(e) = assoc.send(&send(cmd, true, true)).await {
        return Attempt::Transient {
            reason: format!("sending command: {e}"),
            status: None,
        };
    }
    let max = (assoc.acceptor_max_pdu_length().max(4096) as usize)
        .saturating_sub(12)
        .max(1024);
    let chunks: Vec<&[u8]> = if file.dataset.is_empty() {
        vec![&[][..]]
    } else {
        file.dataset.chunks(max).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        if let Err(e) = assoc.send(&send(chunk.to_vec(), false, i + 1 == n)).await {
            return Attempt::Transient {
                reason: format!("sending data set: {e}"),
                status: None,
            };
        }
    }
    let mut buf = Vec::new();
    let status = loop {
        match assoc.receive().await {
            Ok(Pdu::PData { data }) => {
                let mut done = false;
                for v in data
                    .into_iter()
                    .filter(|v| v.value_type == PDataValueType::Command)
                {
                    buf.extend_from_slice(&v.data);
                    done |= v.is_last;
                }
                if done {
                    match (
                        Command::parse_response_field(&buf),
                        dimse::response_status(&buf),
                    ) {
                        (Some(field::C_STORE_RSP), Ok(st)) => break st,
                        (f, st) => {
                            let _ = assoc.abort().await;
                            return Attempt::Transient {
                                reason: format!("unexpected response (command {f:?}, {st:?})"),
                                status: None,
                            };
                        }
                    }
                }
            }
            Ok(Pdu::AbortRQ { .. }) => {
                return Attempt::Transient {
                    reason: "peer aborted the association".into(),
                    status: None,
                }
            }
            Ok(other) => {
                let _ = assoc.abort().await;
                return Attempt::Transient {
                    reason: format!("unexpected PDU {}", other.short_description()),
                    status: None,
                };
            }
            Err(e) => {
                return Attempt::Transient {
                    reason: format!("waiting for the response: {e}"),
                    status: None,
                }
            }
        }
    };
    let _ = assoc.release().await;
    classify_status(status.0, status.1)
}

/// Maps a C-STORE response status to an outbox outcome (PS3.4 B.2.3).
pub fn classify_status(status: u16, comment: Option<String>) -> Attempt {
    let why = |kind: &str| {
        format!(
            "{kind} status {status:#06x}{}",
            comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )
    };
    match status {
        0x0000 | 0xB000 | 0xB006 | 0xB007 => Attempt::Delivered { status },
        s if s & 0xFF00 == 0xA700 => Attempt::Transient {
            reason: why("out of resources"),
            status: Some(s),
        },
        s if s & 0xFF00 == 0xA900 || s & 0xF000 == 0xC000 || s == 0x0122 || s == 0x0124 => {
            Attempt::Permanent {
                reason: why("refused"),
                status: Some(s),
            }
        }
        s => Attempt::Transient {
            reason: why("failure"),
            status: Some(s),
        },
    }
}

fn client_tls(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, ScuTlsError> {
    let err = |key: &'static str, path: &Path, m: String| ScuTlsError {
        key,
        path: path.display().to_string(),
        message: m,
    };
    let ca_pem = std::fs::read(ca).map_err(|e| err("delivery.tls_ca", ca, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let c = c.map_err(|e| err("delivery.tls_ca", ca, e.to_string()))?;
        roots
            .add(c)
            .map_err(|e| err("delivery.tls_ca", ca, e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::dicom::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("delivery.tls_ca", ca, e.to_string()))?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain: Vec<_> = rustls_pemfile::certs(
                &mut &std::fs::read(c)
                    .map_err(|e| err("delivery.tls_certificate", c, e.to_string()))?[..],
            )
            .collect::<Result<_, _>>()
            .map_err(|e| err("delivery.tls_certificate", c, e.to_string()))?;
            let key = rustls_pemfile::private_key(
                &mut &std::fs::read(k)
                    .map_err(|e| err("delivery.tls_private_key", k, e.to_string()))?[..],
            )
            .map_err(|e| err("delivery.tls_private_key", k, e.to_string()))?
            .ok_or_else(|| err("delivery.tls_private_key", k, "holds no private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err("delivery.tls_certificate", c, e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            classify_status(0, None),
            Attempt::Delivered { .. }
        ));
        assert!(matches!(
            classify_status(0xB000, None),
            Attempt::Delivered { .. }
        ));
        assert!(matches!(
            classify_status(0xA700, None),
            Attempt::Transient { .. }
        ));
        assert!(matches!(
            classify_status(0xA900, None),
            Attempt::Permanent { .. }
        ));
        assert!(matches!(
            classify_status(0xC123, Some("x".into())),
            Attempt::Permanent { .. }
        ));
        assert!(matches!(
            classify_status(0x0110, None),
            Attempt::Transient { .. }
        ));
    }
}
