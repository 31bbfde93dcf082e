//! `proxyseg serve`: wires config, spool, index, SCP listeners and the assembler together,
//! speaks sd_notify, and shuts down gracefully on SIGTERM / SIGINT.

use crate::config::Config;
use crate::dicom::scp::Scp;
use crate::pipeline::assemble::{self, Heartbeat};
use crate::store::{jobs, Db, Spool};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> Result<(), StartError> {
    let cfg = Arc::new(cfg);
    let data_dir = cfg.storage.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let (spool, removed) = Spool::open(&data_dir)?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed temp files of instances that were never acknowledged"
        );
    }
    let db = Db::open(&data_dir.join("proxyseg.sqlite"))?;
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

    let scp = Scp::new(cfg.clone(), db.clone(), spool)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let plain = TcpListener::bind(&cfg.dicom.listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "dicom.listen",
            addr: cfg.dicom.listen.clone(),
            source,
        })?;
    tracing::info!(addr = %cfg.dicom.listen, ae = %cfg.dicom.ae_title, "DICOM listener up");
    servers.spawn(scp.clone().serve(plain, false, stop_rx.clone()));
    if let Some(t) = &cfg.dicom.tls {
        let l = TcpListener::bind(&t.listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "dicom.tls.listen",
                addr: t.listen.clone(),
                source,
            })?;
        tracing::info!(addr = %t.listen, mutual = t.client_ca.is_some(), "DICOM TLS listener up");
        servers.spawn(scp.clone().serve(l, true, stop_rx.clone()));
    }

    // The engine's Segmenter (for Evaluate / Preview) is wired in when the engine merges.
    crate::admin::start(cfg.clone(), db.clone(), None, &mut servers, stop_rx.clone()).await?;

    let beat = Arc::new(Heartbeat::default());
    let stable = Duration::from_secs_f64(cfg.pipeline.stable_age_s);
    let every = Duration::from_millis(cfg.pipeline.scan_interval_ms);
    let assembler = tokio::spawn(assemble::run(
        db.clone(),
        stable,
        every,
        beat.clone(),
        stop_rx.clone(),
    ));

    crate::ops::notify("READY=1\nSTATUS=accepting associations");
    if let Some(interval) = crate::ops::watchdog_interval() {
        let beat = beat.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            // Fed only while the assembler keeps committing passes: a wedged database or
            // runtime stops the pings and systemd restarts us.
            let mut last = beat.passes.load(Ordering::Relaxed);
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tokio::select! { _ = stop.changed() => return, _ = tick.tick() => {} }
                let now = beat.passes.load(Ordering::Relaxed);
                if now != last {
                    crate::ops::notify("WATCHDOG=1");
                    last = now;
                } else {
                    tracing::warn!("watchdog not fed: no pipeline progress since the last ping");
                }
            }
        });
    }

    wait_for_signal().await;
    tracing::info!("shutdown requested: finishing in-flight stores");
    crate::ops::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    let _ = assembler.await;
    tracing::info!(
        stored = scp.stats.stored.load(Ordering::Relaxed),
        failed = scp.stats.failed.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
