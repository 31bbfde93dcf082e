//! DICOM TLS: builds the rustls server configuration for the `[dicom.tls]` listener, with
//! optional client-certificate verification (mutual TLS).

use crate::config::TlsConfig;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;

/// Errors while loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{key} ({path}): {message}")]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn pem_err(key: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::Pem {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| pem_err(key, path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(key, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The crypto provider every TLS endpoint of proxyseg uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration from `[dicom.tls]`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs("dicom.tls.certificate", &cfg.certificate)?;
    let key_data = std::fs::read(&cfg.private_key)
        .map_err(|e| pem_err("dicom.tls.private_key", &cfg.private_key, e))?;
    let key = rustls_pemfile::private_key(&mut &key_data[..])
        .map_err(|e| pem_err("dicom.tls.private_key", &cfg.private_key, e))?
        .ok_or_else(|| {
            pem_err(
                "dicom.tls.private_key",
                &cfg.private_key,
                "holds no PEM private key",
            )
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("dicom.tls.client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| pem_err("dicom.tls.client_ca", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}
