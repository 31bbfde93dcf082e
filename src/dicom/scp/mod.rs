//! The storage SCP: accepts associations from PACS peers, answers C-ECHO, and stores C-STORE
//! data sets durably in the spool and the index.
//!
//! Invariants: a C-STORE success is sent only after the instance's file and directory were
//! fsynced and its index row committed (for a new instance the three run side by side, see
//! [`crate::store::ingest::Placed::Racing`]); a rejected or broken data set leaves nothing in
//! the spool; one bad association never disturbs the others. P-DATA is streamed to disk one
//! PDU at a time; per association at most one PDU plus the first 64 KiB of the data set (kept
//! for validation) are held in memory.
//!
//! Hostile input (issue 16): a connection holds an association slot only once its
//! A-ASSOCIATE-RQ has passed the AE / host checks; before that it lives in a small pending
//! pool with a short deadline ([`PendingPool`]). Nothing is ever reserved from a length a peer
//! declared: data sets are walked header by header against the bytes received
//! ([`crate::dicom::walk`], run by [`crate::dicom::validate`]), deflated ones are inflated
//! through that walk under `dicom.max_object_mb`, and command sets are parsed by a bounded
//! parser. Images whose decoded pixels would not fit `pipeline.max_decoded_mb` are refused.
//!
//! An instance belongs to the peer (calling AE and host) that stored it first: only that peer
//! may replace it. A different copy from another peer is refused with 0x0124 (refused: not
//! authorized) and nothing is stored or removed; an identical one is acknowledged and not
//! stored (review H4).
//!
//! One file per concern: `accept` (listeners, admission, the pending pool, raw rejections),
//! `access` (who may associate, and what the negotiation offers), `association` (one
//! association's messages), `store` (receiving a C-STORE and answering it); the durable part
//! of storing is [`crate::store::ingest`].

mod accept;
mod access;
mod association;
mod store;

pub use accept::{Pending, PendingPool};

use crate::config::Config;
use crate::dicom::peer_hosts::PeerHosts;
use crate::store::ingest::Ingest;
use crate::store::{spool, Db, Spool};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Counters the SCP keeps (exported as metrics later).
#[derive(Debug, Default)]
pub struct ScpStats {
    /// Associations accepted.
    pub associations: AtomicU64,
    /// Associations rejected (any reason).
    pub rejected: AtomicU64,
    /// Associations currently open.
    pub active: AtomicU64,
    /// Instances stored (new or replaced).
    pub stored: AtomicU64,
    /// Identical duplicates acknowledged without rewriting.
    pub duplicates: AtomicU64,
    /// C-STORE requests answered with a failure status.
    pub failed: AtomicU64,
}

/// Shared state of all associations.
pub struct Scp {
    cfg: Arc<Config>,
    /// Configured peer host names, resolved off the association path (review L2).
    hosts: PeerHosts,
    /// Where data sets are received (temp files) before [`Ingest`] places them.
    spool: Spool,
    /// The durable part of storing: duplicate check, rename, fsyncs, index.
    ingest: Ingest,
    slots: Arc<Semaphore>,
    /// `dicom.max_buffered_mb`: the receive buffers of all associations together.
    buffers: crate::memory::MemoryBudget,
    pending: Arc<PendingPool>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    metrics: crate::metrics::Metrics,
    /// Counters.
    pub stats: ScpStats,
}

/// Errors that end one association (never the daemon).
#[derive(Debug, thiserror::Error)]
enum AssocError {
    #[error("association negotiation failed: {0}")]
    Establish(String),
    #[error("peer silent for {0:?}")]
    Timeout(Duration),
    #[error("association open longer than dicom.max_association_s ({0:?})")]
    Lifetime(Duration),
    #[error("upper layer: {0}")]
    Ul(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("local I/O: {0}")]
    Io(String),
    #[error("receive buffers: {0}")]
    Buffers(String),
}

impl Scp {
    /// Creates the SCP over an open index and spool.
    pub fn new(
        cfg: Arc<Config>,
        db: Db,
        spool: Spool,
        metrics: crate::metrics::Metrics,
    ) -> Result<Arc<Scp>, crate::dicom::tls::TlsError> {
        let tls = cfg
            .dicom
            .tls
            .as_ref()
            .map(crate::dicom::tls::server_config)
            .transpose()?;
        let mode = if cfg.storage.durability == "fsync" {
            spool::Durability::Fsync
        } else {
            spool::Durability::Syncfs
        };
        let hosts = PeerHosts::new(cfg.dicom.peers.iter().map(|p| p.host.as_str()));
        Ok(Arc::new(Scp {
            hosts,
            slots: Arc::new(Semaphore::new(cfg.dicom.max_associations)),
            buffers: crate::memory::MemoryBudget::new(
                cfg.dicom.max_buffered_mb,
                "dicom.max_buffered_mb",
            ),
            pending: PendingPool::new(cfg.dicom.max_pending_connections),
            ingest: Ingest::new(spool.clone(), db, mode),
            cfg,
            spool,
            tls,
            metrics,
            stats: ScpStats::default(),
        }))
    }

    /// The resolver of configured peer host names: the daemon resolves them before it
    /// listens and keeps them fresh ([`PeerHosts::keep_fresh`]).
    pub fn peer_hosts(&self) -> PeerHosts {
        self.hosts.clone()
    }

    /// Accepts connections on `listener` until `shutdown` turns true; `tls` selects DICOM TLS.
    /// Returns after every association it started has ended.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let scp = self.clone();
                        let sd = shutdown.clone();
                        let pending = self.pending.enter();
                        tasks.spawn(async move { scp.handle_connection(stream, addr, tls, sd, pending).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Graceful: in-flight stores finish (their associations end after the current message).
        let grace = Duration::from_secs(30);
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("associations still open after {grace:?}: aborting them");
            tasks.abort_all();
        }
    }

    /// The spool's free bytes when they are below `dicom.min_free_disk_mb`; `None` while there
    /// is room (or when free space cannot be read, which is logged). Checked when an
    /// association opens and again for each C-STORE.
    fn free_below_reserve(&self) -> Option<u64> {
        let reserve = self.cfg.dicom.min_free_disk_mb * 1024 * 1024;
        match spool::free_bytes(self.spool.root()) {
            Ok(free) if free < reserve => Some(free),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read free disk space");
                None
            }
            Ok(_) => None,
        }
    }
}
