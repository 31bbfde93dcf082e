//! Starting the admin gRPC server: tokens, TLS, services, reflection (v1 and v1alpha) and
//! health, on `[admin] listen`.
//!
//! Health (`grpc.health.v1.Health`) answers without a token, so load balancers and systemd
//! probes can use it; every other service, reflection included, needs a valid token.

use crate::admin::auth::{AuthInterceptor, TokenFileError, TokenStore, Tokens};
use crate::admin::pb;
use crate::config::Config;
use crate::routing::Synonyms;
use crate::store::Db;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Why the admin server could not start (the daemon then refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tokens file is missing, unsafe or malformed.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// A TLS file could not be read.
    #[error("{key} {path}: {source}")]
    TlsFile {
        /// The config key.
        key: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// tonic refused the TLS configuration.
    #[error("admin.tls: {0}")]
    Tls(String),
    /// The listener could not bind.
    #[error("cannot listen on admin.listen = {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reflection could not be built from the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// `admin.exchange_dir` cannot be created.
    #[error("admin.exchange_dir {path}: {source}")]
    ExchangeDir {
        /// The folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What every admin service shares.
#[derive(Clone)]
pub struct State {
    /// The index.
    pub db: Db,
    /// `[storage] data_dir`.
    pub data_dir: PathBuf,
    /// `[engine] models_dir`.
    pub models_dir: PathBuf,
    /// `[engine] default_bundle`: recorded for a set created or imported without a bundle.
    pub default_bundle: String,
    /// Upload limit in bytes.
    pub max_upload: usize,
    /// `[admin] max_upload_mb`, for messages.
    pub max_upload_mb: u64,
    /// Body-part synonyms for DryRun.
    pub synonyms: Synonyms,
    /// `[pipeline] sequence_mode`: what DryRun shows when neither rule nor set names a mode.
    pub sequence_mode: crate::config::SequenceMode,
    /// The engine: settled once it has loaded, to none when it could not.
    pub segmenter: crate::admin::EngineSlot,
    /// Turns true at shutdown: server streams (Watch) end, so graceful shutdown never waits on
    /// a client that watches forever.
    pub stop: watch::Receiver<bool>,
    /// The daemon's metrics (purges are counted there).
    pub metrics: crate::metrics::Metrics,
    /// `admin.exchange_dir`, canonical: where Import reads and Export writes (see
    /// [`crate::admin::folder::exchange_path`]).
    pub exchange_dir: PathBuf,
    /// Preview / Evaluate calls that may run the model at once (`admin.max_concurrent_inference`).
    pub inference: Arc<tokio::sync::Semaphore>,
    /// Jobs.Watch streams that may be open at once (`admin.max_watch_streams`).
    pub watches: Arc<tokio::sync::Semaphore>,
}

impl State {
    /// A slot of `pool` for one `what` call, or RESOURCE_EXHAUSTED naming the limit (review
    /// L9 / M7: a read-only token cannot pile up inference or index polling).
    pub fn slot(
        pool: &Arc<tokio::sync::Semaphore>,
        what: &str,
        key: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tonic::Status> {
        pool.clone().try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "{what}: as many run as admin.{key} allows; try again when one has finished"
            ))
        })
    }

    /// The bundle a set records: `name` trimmed or, when empty, `[engine] default_bundle`
    /// when installed, else the only installed bundle ([`crate::admin::bundles::default_for`]).
    pub fn bundle_or_default(&self, name: &str) -> String {
        crate::admin::bundles::recorded(name, &self.default_bundle, &self.models_dir)
    }

    /// What Import needs of this state ([`crate::admin::folder::Target`]).
    pub fn folder_target(&self) -> crate::admin::folder::Target {
        crate::admin::folder::Target {
            db: self.db.clone(),
            data_dir: self.data_dir.clone(),
            models_dir: self.models_dir.clone(),
            default_bundle: self.default_bundle.clone(),
            max_upload: self.max_upload,
            max_upload_mb: self.max_upload_mb,
        }
    }

    /// Like [`State::bundle_or_default`], refused unless the bundle is installed under
    /// `[engine] models_dir` (Create and Update of support sets).
    pub fn installed_bundle(
        &self,
        name: &str,
    ) -> Result<String, crate::admin::bundles::NotInstalled> {
        crate::admin::bundles::require(name, &self.default_bundle, &self.models_dir)
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("data_dir", &self.data_dir)
            .field("segmenter", &self.segmenter.get().map(|_| ()))
            .finish()
    }
}

fn read(key: &'static str, p: &std::path::Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(p).map_err(|source| StartError::TlsFile {
        key,
        path: p.display().to_string(),
        source,
    })
}

/// `admin.exchange_dir` (default `data_dir/exchange`), created and canonical.
fn exchange_dir(cfg: &Config, a: &crate::config::AdminConfig) -> Result<PathBuf, StartError> {
    let exchange = if a.exchange_dir.as_os_str().is_empty() {
        cfg.storage.data_dir.join("exchange")
    } else {
        a.exchange_dir.clone()
    };
    crate::store::private::create_dir_all(&exchange)
        .and_then(|_| std::fs::canonicalize(&exchange))
        .map_err(|source| StartError::ExchangeDir {
            path: exchange.display().to_string(),
            source,
        })
}

/// The server with its limits and, under `[admin.tls]`, its TLS identity and client CA.
fn server_builder(a: &crate::config::AdminConfig) -> Result<Server, StartError> {
    let builder = Server::builder()
        .timeout(std::time::Duration::from_secs(a.rpc_timeout_s))
        .concurrency_limit_per_connection(a.max_concurrent_rpcs);
    let Some(t) = &a.tls else {
        return Ok(builder);
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read("admin.tls.certificate", &t.certificate)?,
        read("admin.tls.private_key", &t.private_key)?,
    ));
    if let Some(ca) = &t.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read("admin.tls.client_ca", ca)?));
    }
    builder
        .tls_config(tls)
        .map_err(|e| StartError::Tls(e.to_string()))
}

/// Marks every admin service SERVING for `grpc.health.v1.Health`.
async fn report_serving(health: &tonic_health::server::HealthReporter) {
    use crate::admin::{audit, jobs, models, preview, rules, studies, support_sets};
    use pb::{audit_server::AuditServer, jobs_server::JobsServer};
    use pb::{models_server::ModelsServer, preview_server::PreviewServer};
    use pb::{rules_server::RulesServer, studies_server::StudiesServer};
    health
        .set_serving::<pb::support_sets_server::SupportSetsServer<support_sets::Svc>>()
        .await;
    health.set_serving::<RulesServer<rules::Svc>>().await;
    health.set_serving::<JobsServer<jobs::Svc>>().await;
    health.set_serving::<ModelsServer<models::Svc>>().await;
    health.set_serving::<PreviewServer<preview::Svc>>().await;
    health.set_serving::<AuditServer<audit::Svc>>().await;
    health.set_serving::<StudiesServer<studies::Svc>>().await;
}

/// Starts the admin server on `servers` when `[admin]` is configured; stops with `stop`.
/// Errors (unsafe tokens file, bad TLS files, port in use) happen before anything is served.
/// The bundled support sets are in the store already, admin API or not
/// ([`crate::admin::seed::at_start`], run by the daemon before).
pub async fn start(
    cfg: Arc<Config>,
    db: Db,
    segmenter: crate::admin::EngineSlot,
    metrics: crate::metrics::Metrics,
    servers: &mut tokio::task::JoinSet<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let Some(a) = cfg.admin.clone() else {
        return Ok(());
    };
    let tokens = TokenStore::new(Tokens::load(&a.tokens_file)?);
    servers.spawn(crate::admin::auth::watch_file(
        tokens.clone(),
        a.tokens_file.clone(),
        stop.clone(),
    ));
    let auth = AuthInterceptor {
        tokens,
        lockout: Arc::new(crate::admin::lockout::Lockout::new(
            a.max_failed_auth,
            std::time::Duration::from_secs(a.failed_auth_lockout_s),
        )),
    };
    let max_upload = (a.max_upload_mb as usize).saturating_mul(1024 * 1024);
    let exchange_dir = exchange_dir(&cfg, &a)?;
    let st = Arc::new(State {
        db,
        data_dir: cfg.storage.data_dir.clone(),
        models_dir: cfg.engine.models_dir.clone(),
        default_bundle: cfg.engine.default_bundle.clone(),
        max_upload,
        max_upload_mb: a.max_upload_mb,
        synonyms: crate::routing::Synonyms::of(&cfg),
        sequence_mode: cfg.pipeline.sequence_mode,
        segmenter,
        stop: stop.clone(),
        metrics,
        exchange_dir,
        inference: Arc::new(tokio::sync::Semaphore::new(a.max_concurrent_inference)),
        watches: Arc::new(tokio::sync::Semaphore::new(a.max_watch_streams)),
    });
    let mut builder = server_builder(&a)?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    use pb::audit_server::AuditServer;
    use pb::jobs_server::JobsServer;
    use pb::models_server::ModelsServer;
    use pb::preview_server::PreviewServer;
    use pb::rules_server::RulesServer;
    use pb::studies_server::StudiesServer;
    use pb::support_sets_server::SupportSetsServer;
    let limit = max_upload + 64 * 1024;
    let support = SupportSetsServer::new(crate::admin::support_sets::Svc::new(st.clone()))
        .max_decoding_message_size(limit);
    let rules = RulesServer::new(crate::admin::rules::Svc::new(st.clone()))
        .max_decoding_message_size(limit);
    let jobs = JobsServer::new(crate::admin::jobs::Svc::new(st.clone()));
    let models = ModelsServer::new(crate::admin::models::Svc::new(st.clone()));
    let audit = AuditServer::new(crate::admin::audit::Svc::new(st.clone()));
    let studies = StudiesServer::new(crate::admin::studies::Svc::new(st.clone()));
    let preview = PreviewServer::new(crate::admin::preview::Svc::new(st.clone()))
        .max_decoding_message_size(limit);
    report_serving(&health).await;
    let listener = TcpListener::bind(&a.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: a.listen.clone(),
            source,
        })?;
    let router = builder
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth.clone()))
        .add_service(InterceptedService::new(support, auth.clone()))
        .add_service(InterceptedService::new(rules, auth.clone()))
        .add_service(InterceptedService::new(jobs, auth.clone()))
        .add_service(InterceptedService::new(models, auth.clone()))
        .add_service(InterceptedService::new(audit, auth.clone()))
        .add_service(InterceptedService::new(studies, auth.clone()))
        .add_service(InterceptedService::new(preview, auth));
    tracing::info!(
        addr = %a.listen,
        tls = a.tls.is_some(),
        mutual = a.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "admin gRPC listener up"
    );
    if a.tls.is_none() && listener.local_addr().is_ok_and(|l| !l.ip().is_loopback()) {
        tracing::warn!(addr = %a.listen, "admin API off loopback without TLS (admin.allow_insecure_remote): bearer tokens cross the network in cleartext");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    servers.spawn(async move {
        let shutdown = async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "admin gRPC server stopped with an error");
        }
    });
    Ok(())
}
