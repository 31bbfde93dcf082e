//! `proxyseg serve`: wires config, spool, index, SCP listeners, the assembler, the pipeline
//! workers, delivery and the retention sweeper together, speaks sd_notify, and shuts down
//! gracefully on SIGTERM / SIGINT.

use crate::config::Config;
use crate::dicom::scp::Scp;
use crate::pipeline::assemble::{self, Heartbeat};
use crate::store::{instances, jobs, Db, Spool};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod scrape;
use scrape::{describe_metrics, serve_metrics};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("storage.data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Spool problem.
    #[error(transparent)]
    Spool(#[from] crate::store::SpoolError),
    /// Index problem.
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] crate::dicom::tls::TlsError),
    /// The admin API could not start (tokens file, TLS, port).
    #[error(transparent)]
    Admin(#[from] crate::admin::StartError),
    /// TLS material for delivery is unusable.
    #[error(transparent)]
    DeliveryTls(#[from] crate::dicom::scu::ScuTlsError),
    /// A listener could not bind.
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs the daemon until SIGTERM or SIGINT. The handlers are installed before anything
/// starts, so a signal that comes while the engine loads (seconds on CPU, minutes when
/// TensorRT builds its engines) stops the daemon as gracefully as one that comes later:
/// in-flight stores finish, the clean-shutdown marker is written, and the load is abandoned.
pub async fn serve(cfg: Config) -> Result<(), StartError> {
    let mut signal = std::pin::pin!(shutdown_signal());
    if let Some(running) = start_unless(cfg, signal.as_mut()).await? {
        signal.await;
        running.stop().await;
    }
    Ok(())
}

/// A started daemon: every listener and worker running.
pub struct Running {
    /// Where the plain DICOM listener is bound (useful with port 0); `None` when
    /// `dicom.listen` is empty (DICOM TLS only).
    pub dicom_addr: Option<std::net::SocketAddr>,
    /// The pipeline (engine, catalog) the workers use.
    pub pipeline: Arc<crate::pipeline::worker::Pipeline>,
    parts: Parts,
}

impl Running {
    /// Graceful stop: in-flight stores finish, idle associations are aborted, workers end
    /// after their current step; then the clean-shutdown marker is written.
    pub async fn stop(self) {
        self.parts.stop().await;
    }
}

/// What a stop has to end, from the moment DICOM is served.
struct Parts {
    stop_tx: watch::Sender<bool>,
    servers: tokio::task::JoinSet<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    marker: std::path::PathBuf,
    scp: Arc<Scp>,
    delivery_stats: Arc<crate::pipeline::deliver::DeliveryStats>,
}

impl Parts {
    async fn stop(mut self) {
        tracing::info!("shutdown requested: finishing in-flight stores");
        crate::ops::notify("STOPPING=1");
        let _ = self.stop_tx.send(true);
        while self.servers.join_next().await.is_some() {}
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = crate::store::private::create(&self.marker).and_then(|f| f.sync_all()) {
            tracing::warn!(error = %e, "cannot write the clean-shutdown marker");
        }
        tracing::info!(
            stored = self.scp.stats.stored.load(Ordering::Relaxed),
            failed = self.scp.stats.failed.load(Ordering::Relaxed),
            delivered = self.delivery_stats.delivered.load(Ordering::Relaxed),
            "stopped"
        );
    }
}

/// The log line once every part is up (engine loaded or refused, admin API, metrics,
/// workers); DICOM is served earlier, from "accepting associations" on.
pub const STARTED: &str = "started: engine, admin API, metrics and workers are up";

/// Starts every part of the daemon and returns once all of them are up. DICOM associations
/// and `/metrics` are served from before the engine loads (see the comment there).
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    match start_unless(cfg, std::pin::pin!(std::future::pending())).await? {
        Some(running) => Ok(running),
        None => unreachable!("a pending shutdown never comes"),
    }
}

/// [`start`], unless `shutdown` resolves while the engine loads: then what was already
/// serving stops gracefully (as [`Running::stop`]) and None comes back.
pub async fn start_unless(
    cfg: Config,
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Option<Running>, StartError> {
    let early = serve_store(cfg).await?;
    let engine = tokio::select! {
        engine = load_engine(&early.cfg, &early.cfg.storage.data_dir) => engine,
        () = shutdown => {
            tracing::info!("shutdown requested while the engine loads: the load is abandoned");
            early.parts.stop().await;
            return Ok(None);
        }
    };
    Ok(Some(finish_start(early, engine).await))
}

/// What runs before the engine loads: ingest, delivery, the watchdog, `/metrics` and the
/// admin API.
struct Early {
    cfg: Arc<Config>,
    db: Db,
    metrics: crate::metrics::Metrics,
    stop_rx: watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
    catalog: Arc<dyn crate::pipeline::catalog::Catalog>,
    /// The admin API's handle on the engine, settled once it has loaded.
    engine_slot: crate::admin::EngineSlot,
    /// Set once the pipeline exists (the watchdog and the scrape read it).
    started: Arc<std::sync::OnceLock<Arc<crate::pipeline::worker::Pipeline>>>,
    dicom_addr: Option<std::net::SocketAddr>,
    parts: Parts,
}

/// Opens the store and serves DICOM, delivery, `/metrics` and the admin API; sends READY.
async fn serve_store(mut cfg: Config) -> Result<Early, StartError> {
    prepare_data_dir(&mut cfg)?;
    let cfg = Arc::new(cfg);
    let (spool, db, marker) = open_store(&cfg.storage.data_dir).await?;

    let metrics = crate::metrics::Metrics::new();
    describe_metrics(&metrics);
    let scp = Scp::new(cfg.clone(), db.clone(), spool, metrics.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    resolve_peer_hosts(&scp, stop_rx.clone()).await;
    let mut servers = tokio::task::JoinSet::new();
    let (listeners, dicom_addr) = bind_dicom(&cfg).await?;

    let beat = Arc::new(Heartbeat::default());
    let assembler = spawn_assembler(&cfg, &db, &beat, stop_rx.clone());

    let scu = crate::dicom::scu::Scu::new(&cfg).map_err(StartError::DeliveryTls)?;
    let delivery_stats = Arc::new(crate::pipeline::deliver::DeliveryStats::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    let deliverer = tokio::spawn(crate::pipeline::deliver::run(
        db.clone(),
        scu,
        cfg.delivery.clone(),
        delivery_stats.clone(),
        wake.clone(),
        stop_rx.clone(),
    ));

    // Storing needs the spool and the index, not the engine: DICOM is served before the
    // engine loads, which takes seconds on CPU and, with TensorRT building its engines on a
    // first start, minutes. A PACS that routes studies right after a restart is answered
    // instead of timing out in the accept backlog; its studies wait as jobs in the index and
    // run once the pipeline workers start.
    for (l, tls) in listeners {
        servers.spawn(scp.clone().serve(l, tls, stop_rx.clone()));
    }
    tracing::info!(addr = ?dicom_addr, "accepting associations");
    crate::ops::notify("READY=1\nSTATUS=accepting associations; loading the engine");
    let started = Arc::new(std::sync::OnceLock::new());
    if let Some(interval) = crate::ops::watchdog_interval() {
        spawn_watchdog(
            interval,
            beat.clone(),
            started.clone(),
            &cfg,
            stop_rx.clone(),
        );
    }
    // Scraped from now on: a monitor sees stores and queues while a long engine load runs.
    if !cfg.metrics.listen.is_empty() {
        serve_metrics(
            &cfg,
            &metrics,
            &scp,
            &db,
            &delivery_stats,
            &started,
            stop_rx.clone(),
        )
        .await?;
    }
    // The admin API too: curating support sets and rules needs only the store; Evaluate and
    // Preview answer UNAVAILABLE ("still loading") until the engine is settled below.
    let catalog = seed_catalog(&cfg, &db).await;
    let engine_slot = crate::admin::EngineSlot::default();
    crate::admin::start(
        cfg.clone(),
        db.clone(),
        engine_slot.clone(),
        metrics.clone(),
        &mut servers,
        stop_rx.clone(),
    )
    .await?;
    Ok(Early {
        cfg,
        db,
        metrics,
        stop_rx,
        wake,
        catalog,
        engine_slot,
        started,
        dicom_addr,
        parts: Parts {
            stop_tx,
            servers,
            tasks: vec![assembler, deliverer],
            marker,
            scp,
            delivery_stats,
        },
    })
}

/// Once the engine has loaded (or could not): the admin API's engine, the pipeline workers
/// and retention; logs [`STARTED`].
async fn finish_start(
    mut early: Early,
    engine: Result<crate::engine::Engine, Arc<crate::engine::EngineError>>,
) -> Running {
    let (cfg, db, metrics, stop_rx) = (&early.cfg, &early.db, &early.metrics, &early.stop_rx);
    let engine_status = match &engine {
        Ok(_) => "accepting associations; engine ready".to_string(),
        Err(e) => format!("accepting associations; engine unavailable: {e}"),
    };
    early.engine_slot.settle(engine_segmenter(&engine, cfg));
    let catalog = early.catalog.clone();
    let pipeline = Arc::new(crate::pipeline::worker::Pipeline {
        cfg: cfg.clone(),
        db: db.clone(),
        engine,
        catalog,
        metrics: metrics.clone(),
        wake_delivery: early.wake.clone(),
        busy_since: Default::default(),
        memory: crate::memory::MemoryBudget::new(
            cfg.pipeline.memory_budget_mb(),
            "pipeline.memory_budget_mb",
        ),
    });
    early
        .parts
        .tasks
        .push(tokio::spawn(crate::pipeline::worker::run(
            pipeline.clone(),
            stop_rx.clone(),
        )));
    let retention = spawn_retention(cfg, db, metrics, stop_rx.clone());
    early.parts.tasks.extend(retention);
    let _ = early.started.set(pipeline.clone());
    tracing::info!("{STARTED}");
    crate::ops::notify(&format!("STATUS={engine_status}"));
    Running {
        dicom_addr: early.dicom_addr,
        pipeline,
        parts: early.parts,
    }
}

/// Seeds the bundled support sets into the store (admin API on or off: the store is the one
/// place the pipeline reads support sets and rules from) and returns the pipeline's catalog
/// over it.
async fn seed_catalog(cfg: &Config, db: &Db) -> Arc<dyn crate::pipeline::catalog::Catalog> {
    crate::admin::seed::at_start(&crate::admin::folder::Target::from_config(cfg, db.clone())).await;
    Arc::new(crate::pipeline::catalog::StoreCatalog::new(
        db.clone(),
        cfg.storage.data_dir.clone(),
        crate::routing::Synonyms::of(cfg),
        cfg.engine.default_bundle.clone(),
        cfg.pipeline.sequence_mode,
    ))
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is
/// first polled: from then on neither signal kills the process outright.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Creates the data dir (0700) and makes `storage.data_dir` its one canonical spelling.
fn prepare_data_dir(cfg: &mut Config) -> Result<(), StartError> {
    // PHI at rest: files 0600 and dirs 0700 are set explicitly where the daemon creates them;
    // the umask covers what other code (SEG writer, engine caches, SQLite journals) creates.
    crate::store::private::restrict_umask();
    let configured = cfg.storage.data_dir.clone();
    // One spelling of the data dir, whatever the config says and wherever the daemon was
    // started: every path the index stores is absolute and canonical (review M3).
    cfg.storage.data_dir = crate::store::private::create_dir_all(&configured)
        .and_then(|_| crate::store::private::tighten(&configured))
        .and_then(|_| std::fs::canonicalize(&configured))
        .map_err(|source| StartError::DataDir {
            path: configured.display().to_string(),
            source,
        })?;
    Ok(())
}

/// Peers configured by host name: resolved once before the listener is up, then kept fresh
/// by a task of their own; admission never waits on DNS.
async fn resolve_peer_hosts(scp: &Arc<Scp>, stop_rx: watch::Receiver<bool>) {
    let hosts = scp.peer_hosts();
    for name in hosts.refresh().await {
        tracing::warn!(host = %name, "a configured peer host name does not resolve: its associations are rejected until it does");
    }
    tokio::spawn(hosts.keep_fresh(stop_rx));
}

/// What the admin API's Preview and Evaluate run on, when the engine loaded.
fn engine_segmenter(
    engine: &Result<crate::engine::Engine, Arc<crate::engine::EngineError>>,
    cfg: &Config,
) -> Option<Arc<dyn crate::admin::Segmenter>> {
    engine.as_ref().ok().map(|e| {
        Arc::new(crate::admin::segment::EngineSegmenter::new(
            e.clone(),
            tokio::runtime::Handle::current(),
            cfg.engine.default_bundle.clone(),
        )) as Arc<dyn crate::admin::Segmenter>
    })
}

/// The retention sweeper (`[retention]`), unless it is disabled.
fn spawn_retention(
    cfg: &Config,
    db: &Db,
    metrics: &crate::metrics::Metrics,
    stop_rx: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.retention.enabled {
        tracing::warn!("retention.enabled = false: received studies and results are kept until an admin purges them");
        return None;
    }
    Some(tokio::spawn(crate::pipeline::retention::run(
        db.clone(),
        cfg.storage.data_dir.clone(),
        cfg.retention.clone(),
        metrics.clone(),
        stop_rx,
    )))
}

/// The assembler: marks each peer's part of a study complete once it is quiet.
fn spawn_assembler(
    cfg: &Config,
    db: &Db,
    beat: &Arc<Heartbeat>,
    stop_rx: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(assemble::run(
        db.clone(),
        Duration::from_secs_f64(cfg.pipeline.stable_age_s),
        Duration::from_secs_f64(cfg.pipeline.max_receiving_s),
        Duration::from_millis(cfg.pipeline.scan_interval_ms),
        beat.clone(),
        stop_rx,
    ))
}

/// Opens the spool and the index and reconciles them after a stop: temp files of
/// unacknowledged instances go, index rows written under another spelling of the data dir are
/// re-pointed, rows whose file was not durable are dropped; after a crash (no clean-shutdown
/// marker) unindexed spool files are moved aside and rows without a file dropped; the trash
/// of interrupted purges is emptied. Returns the spool, the index and the marker's path.
async fn open_store(
    data_dir: &std::path::Path,
) -> Result<(Spool, Db, std::path::PathBuf), StartError> {
    let (spool, removed) = Spool::open(data_dir)?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed temp files of instances that were never acknowledged"
        );
    }
    let db = Db::open(&data_dir.join("proxyseg.sqlite"))?;
    let root = spool.root().to_path_buf();
    let repointed = db.write(move |c| instances::repoint_into(c, &root)).await?;
    if repointed > 0 {
        tracing::warn!(
            repointed,
            spool = %spool.root().display(),
            "index rows named the spool by another path: re-pointed to the same files"
        );
    }
    // Rows committed while their file's fsync still ran (none after a clean stop): keep the
    // ones whose file is intact; the others were never acknowledged.
    let unverified = db
        .write(|c| instances::verify_unsynced(c, crate::store::spool::dataset_digest))
        .await?;
    for (uid, path) in &unverified {
        tracing::warn!(sop = %uid, path = %path, "removed an instance whose file was not durable when the daemon stopped (never acknowledged)");
    }
    // After a crash, files renamed into the spool whose index row never committed (moved
    // aside to spool/.orphans), and rows whose file's directory entry never became durable,
    // were never acknowledged. A clean shutdown leaves a marker that skips this walk.
    let marker = data_dir.join(".clean-shutdown");
    if marker.exists() {
        let _ = std::fs::remove_file(&marker);
    } else {
        let indexed: std::collections::HashSet<std::path::PathBuf> = db.read(|c| {
            let mut st = c.prepare("SELECT path FROM instances")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(std::path::PathBuf::from)).collect()
        })?;
        let moved_aside = spool.sweep_orphans(&indexed)?;
        let dropped = db.write(instances::drop_missing).await?;
        for (uid, path) in &dropped {
            tracing::warn!(sop = %uid, path = %path, "removed an index row whose file is missing (never acknowledged)");
        }
        tracing::info!(
            moved_aside,
            dropped_rows = dropped.len(),
            "checked the spool and the index after an unclean stop"
        );
    }
    // The trash of purges a stop or crash interrupted (store::retention): committed or not,
    // their files go (rows still naming them were dropped above, or are purged next pass).
    let stale = crate::store::retention::stale_trash(data_dir);
    if !stale.is_empty() {
        tokio::task::spawn_blocking(move || {
            let r = crate::store::retention::remove_trash(&stale);
            tracing::info!(
                files = r.files,
                bytes = r.bytes,
                "emptied the trash of interrupted purges"
            );
        });
    }
    let open = db.read(jobs::unfinished)?;
    let indexed = db.read(crate::store::instances::count)?;
    tracing::info!(
        instances = indexed,
        unfinished_jobs = open.len(),
        "index opened"
    );
    for (id, study, state) in &open {
        tracing::info!(job = id, study = %study, state = state.as_str(), "resuming job");
    }
    Ok((spool, db, marker))
}

/// Binds `addr`, the value of config key `key` (named in the error).
async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            key,
            addr: addr.to_string(),
            source,
        })
}

/// Binds the plain DICOM listener (unless `dicom.listen` is empty) and the TLS one; returns
/// them (with whether each is TLS) and the plain one's address.
async fn bind_dicom(
    cfg: &Config,
) -> Result<(Vec<(TcpListener, bool)>, Option<std::net::SocketAddr>), StartError> {
    let mut listeners = Vec::new();
    let mut dicom_addr = None;
    if cfg.dicom.listen.is_empty() {
        tracing::info!("no plain DICOM listener (dicom.listen is empty): DICOM TLS only");
    } else {
        let plain = bind("dicom.listen", &cfg.dicom.listen).await?;
        tracing::info!(addr = %cfg.dicom.listen, ae = %cfg.dicom.ae_title, "DICOM listener up");
        dicom_addr = Some(plain.local_addr().map_err(|source| StartError::Bind {
            key: "dicom.listen",
            addr: cfg.dicom.listen.clone(),
            source,
        })?);
        listeners.push((plain, false));
    }
    if let Some(t) = &cfg.dicom.tls {
        let l = bind("dicom.tls.listen", &t.listen).await?;
        tracing::info!(addr = %t.listen, mutual = t.client_ca.is_some(), "DICOM TLS listener up");
        listeners.push((l, true));
    }
    Ok((listeners, dicom_addr))
}

/// Loads ONNX Runtime and the model bundles, off the runtime (blocking work). A missing
/// runtime or bad bundle never stops ingest: jobs then fail with the reason.
async fn load_engine(
    cfg: &Config,
    data_dir: &std::path::Path,
) -> Result<crate::engine::Engine, Arc<crate::engine::EngineError>> {
    // The engine: a missing ONNX Runtime or bad bundle never stops ingest; jobs then fail
    // with the reason, and the daemon keeps receiving.
    // Loading ONNX Runtime and creating sessions is blocking work: keep it off the runtime.
    let (ecfg, edir) = (cfg.engine.clone(), data_dir.to_path_buf());
    let loaded = tokio::task::spawn_blocking(move || crate::engine::Engine::new(&ecfg, &edir))
        .await
        .unwrap_or_else(|e| Err(crate::engine::EngineError::Internal(e.to_string())));
    match loaded {
        Ok(e) => {
            tracing::info!(library = %e.library().display(), bundles = ?e.bundle_names(), "engine ready");
            for r in e.refused() {
                tracing::error!(bundle = %r.dir.display(), reason = %r.reason, "model bundle refused");
            }
            if !e.bundle_names().contains(&cfg.engine.default_bundle) {
                tracing::warn!(
                    default_bundle = %cfg.engine.default_bundle,
                    "engine.default_bundle is not served: support sets that name no bundle will fail"
                );
            }
            Ok(e)
        }
        Err(e) => {
            tracing::error!(error = %e, "engine unavailable: studies will be stored and their jobs failed");
            Err(Arc::new(e))
        }
    }
}

/// Feeds the systemd watchdog every `interval / 2` while the pipeline makes progress.
fn spawn_watchdog(
    interval: Duration,
    beat: Arc<Heartbeat>,
    pipeline: Arc<std::sync::OnceLock<Arc<crate::pipeline::worker::Pipeline>>>,
    cfg: &Config,
    stop_rx: watch::Receiver<bool>,
) {
    let pl = pipeline;
    let stall = Duration::from_secs(cfg.pipeline.stall_timeout_s);
    let mut stop = stop_rx;
    tokio::spawn(async move {
        // Fed only while the pipeline makes progress: the assembler keeps committing
        // (database and runtime alive) and no job is stuck in inference. Otherwise the
        // pings stop and systemd restarts us; unfinished jobs resume from SQLite. While the
        // engine loads (no pipeline yet) the assembler's passes alone feed it.
        let mut last = beat.passes.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! { _ = stop.changed() => return, _ = tick.tick() => {} }
            let now = beat.passes.load(Ordering::Relaxed);
            if now == last {
                tracing::warn!("watchdog not fed: the assembler made no pass since the last ping");
            } else if pl.get().is_some_and(|p| p.stalled(stall)) {
                tracing::error!(
                    limit_s = stall.as_secs(),
                    "watchdog not fed: a job has been segmenting for too long"
                );
            } else {
                crate::ops::notify("WATCHDOG=1");
            }
            last = now;
        }
    });
}
