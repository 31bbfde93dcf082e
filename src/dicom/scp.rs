//! The storage SCP: accepts associations from PACS peers, answers C-ECHO, and stores C-STORE
//! data sets durably in the spool and the index.
//!
//! Invariants: a C-STORE success is sent only after the instance's file and directory were
//! fsynced and its index row committed (for a new instance the three run side by side, see
//! [`Placed::Racing`]); a rejected or broken data set leaves nothing in the spool; one bad
//! association never disturbs the others. P-DATA is streamed to disk one PDU at a time; per
//! association at most one PDU plus the first 64 KiB of the data set (kept for validation)
//! are held in memory.

use crate::config::Config;
use crate::dicom::dimse::{self, field, status, Command};
use crate::dicom::{pdata, sop};
use crate::store::instances::{self, InstanceRecord, Recorded};
use crate::store::{spool, Db, Spool};
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, UserIdentity,
};
use dicom_ul::Pdu;
use sha2::{Digest, Sha256};

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, Semaphore};

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
    db: Db,
    spool: Spool,
    slots: Arc<Semaphore>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    locks: Vec<Mutex<()>>,
    dir_sync: spool::DirSyncer,
    /// Instances whose row went in as unsynced and whose fsync has since finished: the next
    /// index write takes them off the `unsynced` list (see [`instances::record_unsynced`]).
    synced: Arc<std::sync::Mutex<Vec<String>>>,
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
    #[error("upper layer: {0}")]
    Ul(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("local I/O: {0}")]
    Io(String),
}

/// Why a C-STORE was refused: the DIMSE status and Error Comment sent back.
#[derive(Debug)]
struct Refusal {
    status: u16,
    comment: String,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>) -> Refusal {
        Refusal {
            status,
            comment: comment.into(),
        }
    }
}

/// Access control: the called AE must be ours; with `require_known_peers`, the calling AE
/// must be a configured peer whose host is where the connection came from.
struct PeerAccess {
    cfg: Arc<Config>,
    peer_ip: IpAddr,
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            tracing::warn!(called = called_ae_title, calling = calling_ae_title, peer = %self.peer_ip, "rejected: called AE is not ours");
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.cfg.dicom.require_known_peers {
            let known = self
                .cfg
                .peer(calling_ae_title)
                .is_some_and(|p| host_matches(&p.host, self.peer_ip));
            if !known {
                tracing::warn!(calling = calling_ae_title, peer = %self.peer_ip, "rejected: calling AE / host is not a known peer");
                return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
            }
        }
        Ok(())
    }
}

/// True when `host` (an IP or a name) designates `ip`.
fn host_matches(host: &str, ip: IpAddr) -> bool {
    let canon = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let ip = canon(ip);
    if let Ok(h) = host.parse::<IpAddr>() {
        return canon(h) == ip;
    }
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map(|mut it| it.any(|a| canon(a.ip()) == ip))
        .unwrap_or(false)
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
        let dir_sync = spool::DirSyncer::start(mode, spool.root());
        Ok(Arc::new(Scp {
            slots: Arc::new(Semaphore::new(cfg.dicom.max_associations)),
            cfg,
            db,
            spool,
            tls,
            locks: (0..64).map(|_| Mutex::new(())).collect(),
            dir_sync,
            synced: Default::default(),
            metrics,
            stats: ScpStats::default(),
        }))
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
                        tasks.spawn(async move { scp.handle_connection(stream, addr, tls, sd).await });
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

    async fn handle_connection(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        tls: bool,
        shutdown: watch::Receiver<bool>,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %addr, max = self.cfg.dicom.max_associations, "rejected: too many associations");
            reject_raw(
                stream,
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                tls,
            )
            .await;
            return;
        };
        let reserve = self.cfg.dicom.min_free_disk_mb * 1024 * 1024;
        match spool::free_bytes(self.spool.root()) {
            Ok(free) if free < reserve => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = %addr, free_mb = free / 1048576, reserve_mb = self.cfg.dicom.min_free_disk_mb, "rejected: free disk below the reserve");
                reject_raw(
                    stream,
                    AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
                    tls,
                )
                .await;
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read free disk space"),
            _ => {}
        }
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let result = if tls {
            self.run_tls(stream, addr, shutdown).await
        } else {
            self.run_plain(stream, addr, shutdown).await
        };
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        match result {
            Err(e) if Self::is_probe(&e) => {
                tracing::debug!(peer = %addr, "connection closed before association")
            }
            Err(e) => tracing::warn!(peer = %addr, error = %e, "association ended with an error"),
            Ok(()) => {}
        }
    }

    fn options(
        &self,
        peer_ip: IpAddr,
    ) -> ServerAssociationOptions<
        'static,
        PeerAccess,
        dicom_ul::association::server::DefaultNegotiation,
    > {
        let d = &self.cfg.dicom;
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(PeerAccess {
                cfg: self.cfg.clone(),
                peer_ip,
            })
            .ae_title(d.ae_title.clone())
            .with_abstract_syntax(uids::VERIFICATION)
            .max_pdu_length(d.max_pdu)
            .strict(true)
            .read_timeout(Duration::from_secs(d.read_timeout_s))
            .write_timeout(Duration::from_secs(d.write_timeout_s));
        for sc in sop::STORAGE_SOP_CLASSES {
            o = o.with_abstract_syntax(*sc);
        }
        for ts in sop::TRANSFER_SYNTAXES {
            o = o.with_transfer_syntax(*ts);
        }
        if let Some(t) = &self.tls {
            o = o.tls_config(t.clone());
        }
        o
    }

    async fn run_plain(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), AssocError> {
        let opts = self.options(addr.ip());
        let limit = Duration::from_secs(self.cfg.dicom.read_timeout_s);
        // A second descriptor on the same connection: when negotiation ends in an
        // A-ASSOCIATE-RJ, dicom-ul drops its socket right after writing the PDU; holding this
        // one lets us wait for the requestor to close first (PS3.8 ARTIM), so a busy peer
        // reads the rejection instead of a reset connection.
        let keep = stream
            .into_std()
            .and_then(|s| s.try_clone().map(|k| (s, k)));
        let (stream, keep) = match keep {
            Ok((s, k)) => (
                TcpStream::from_std(s).map_err(|e| AssocError::Io(e.to_string()))?,
                Some(k),
            ),
            Err(e) => return Err(AssocError::Io(e.to_string())),
        };
        let established = tokio::time::timeout(limit, opts.establish_async(stream)).await;
        match established {
            Ok(Ok(assoc)) => {
                drop(keep);
                self.run_association(assoc, addr, shutdown).await
            }
            Ok(Err(e)) => {
                let rejected = matches!(e, dicom_ul::association::Error::Rejected { .. });
                let err = self.establish_failed(addr, e);
                if let (true, Some(k)) = (rejected || err.to_string().contains("rejected"), keep) {
                    linger_until_peer_closes(k).await;
                }
                Err(err)
            }
            Err(_) => Err(AssocError::Timeout(limit)),
        }
    }

    async fn run_tls(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), AssocError> {
        let opts = self.options(addr.ip());
        let limit = Duration::from_secs(self.cfg.dicom.read_timeout_s);
        let assoc = tokio::time::timeout(limit, opts.establish_tls_async(stream))
            .await
            .map_err(|_| AssocError::Timeout(limit))?
            .map_err(|e| self.establish_failed(addr, e))?;
        self.run_association(assoc, addr, shutdown).await
    }

    fn establish_failed(&self, addr: SocketAddr, e: dicom_ul::association::Error) -> AssocError {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        AssocError::Establish(format!("{addr}: {e}"))
    }

    /// Port probes (load balancers, monitoring) connect and close without a word: not worth
    /// a warning.
    fn is_probe(e: &AssocError) -> bool {
        matches!(e, AssocError::Establish(m) if m.ends_with("connection closed by peer"))
    }

    async fn run_association<S>(
        &self,
        assoc: dicom_ul::association::server::AsyncServerAssociation<S>,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), AssocError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        use tracing::Instrument;
        self.stats.associations.fetch_add(1, Ordering::Relaxed);
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        let span = tracing::info_span!("assoc", peer = %addr, calling = %calling);
        self.association_loop(assoc, addr, shutdown, calling)
            .instrument(span)
            .await
    }

    /// Serves one association's messages until release, abort, timeout or shutdown.
    async fn association_loop<S>(
        &self,
        mut assoc: dicom_ul::association::server::AsyncServerAssociation<S>,
        addr: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
        calling: String,
    ) -> Result<(), AssocError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        tracing::info!(
            contexts = assoc.presentation_contexts().len(),
            "association accepted"
        );
        let limit = Duration::from_secs(self.cfg.dicom.read_timeout_s);
        let mut cmd_buf: Vec<u8> = Vec::new();
        let mut cmd_ctx: Option<u8> = None;
        let mut incoming: Option<Incoming> = None;
        let mut store_started = std::time::Instant::now();
        let mut pending: std::collections::VecDeque<pdata::Pdv> = Default::default();
        let max_pdu = assoc.acceptor_max_pdu_length();
        loop {
            if *shutdown.borrow() && incoming.is_none() && cmd_buf.is_empty() {
                tracing::info!("shutting down: aborting idle association");
                let _ = assoc.abort().await;
                return Ok(());
            }
            let pdv = match pending.pop_front() {
                Some(p) => p,
                None => {
                    let pdu = tokio::select! {
                        r = tokio::time::timeout(limit, pdata::receive(&mut assoc, max_pdu)) => match r {
                            Err(_) => {
                                if let Some(inc) = incoming.take() { inc.discard(&self.spool); }
                                let _ = assoc.abort().await;
                                return Err(AssocError::Timeout(limit));
                            }
                            Ok(Err(e)) => {
                                if let Some(inc) = incoming.take() { inc.discard(&self.spool); }
                                return Err(AssocError::Ul(e.to_string()));
                            }
                            Ok(Ok(pdu)) => pdu,
                        },
                        _ = shutdown.changed(), if incoming.is_none() && cmd_buf.is_empty() => continue,
                    };
                    let pdu = match pdu {
                        pdata::Received::PData(pdvs) => {
                            pending.extend(pdvs);
                            continue;
                        }
                        pdata::Received::Other(pdu) => pdu,
                    };
                    match pdu {
                        Pdu::PData { data } => {
                            pending.extend(data.into_iter().map(pdata::Pdv::from));
                            continue;
                        }
                        Pdu::ReleaseRQ => {
                            if let Some(inc) = incoming.take() {
                                inc.discard(&self.spool);
                                tracing::warn!(
                                    "release requested in the middle of a data set: discarded it"
                                );
                            }
                            assoc
                                .send(&Pdu::ReleaseRP)
                                .await
                                .map_err(|e| AssocError::Ul(e.to_string()))?;
                            tracing::info!("association released");
                            return Ok(());
                        }
                        Pdu::AbortRQ { source } => {
                            if let Some(inc) = incoming.take() {
                                inc.discard(&self.spool);
                            }
                            tracing::info!(?source, "association aborted by peer");
                            return Ok(());
                        }
                        other => {
                            if let Some(inc) = incoming.take() {
                                inc.discard(&self.spool);
                            }
                            let _ = assoc.abort().await;
                            return Err(AssocError::Protocol(format!(
                                "unexpected PDU {}",
                                other.short_description()
                            )));
                        }
                    }
                }
            };
            // One presentation data value at a time.
            let pc = assoc
                .presentation_contexts()
                .iter()
                .find(|p| {
                    p.id == pdv.presentation_context_id
                        && p.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
                })
                .cloned();
            let Some(pc) = pc else {
                if let Some(inc) = incoming.take() {
                    inc.discard(&self.spool);
                }
                let _ = assoc.abort().await;
                return Err(AssocError::Protocol(format!(
                    "P-DATA on presentation context {} which was not accepted",
                    pdv.presentation_context_id
                )));
            };
            match pdv.value_type {
                PDataValueType::Command => {
                    if incoming.is_some() {
                        if let Some(inc) = incoming.take() {
                            inc.discard(&self.spool);
                        }
                        let _ = assoc.abort().await;
                        return Err(AssocError::Protocol(
                            "command fragment inside a data set".into(),
                        ));
                    }
                    if cmd_buf.len() + pdv.data.len() > 64 * 1024 {
                        let _ = assoc.abort().await;
                        return Err(AssocError::Protocol(
                            "command set larger than 64 KiB".into(),
                        ));
                    }
                    cmd_ctx = Some(pdv.presentation_context_id);
                    cmd_buf.extend_from_slice(&pdv.data);
                    if !pdv.is_last {
                        continue;
                    }
                    let bytes = std::mem::take(&mut cmd_buf);
                    let cmd = match Command::parse(&bytes) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = assoc.abort().await;
                            return Err(AssocError::Protocol(e.to_string()));
                        }
                    };
                    match cmd.field {
                        field::C_ECHO_RQ => {
                            let rsp = dimse::echo_response(cmd.message_id, &cmd.sop_class_uid)
                                .map_err(|e| AssocError::Io(e.to_string()))?;
                            send_command(&mut assoc, pc.id, rsp).await?;
                            tracing::debug!(message_id = cmd.message_id, "C-ECHO answered");
                        }
                        field::C_STORE_RQ if cmd.has_dataset => {
                            store_started = std::time::Instant::now();
                            incoming = Some(
                                self.begin_store(
                                    cmd,
                                    &pc.abstract_syntax,
                                    &pc.transfer_syntax,
                                    &calling,
                                )
                                .map_err(|e| AssocError::Io(e.to_string()))?,
                            );
                        }
                        other => {
                            tracing::warn!(
                                command = format!("{other:#06x}"),
                                "unsupported DIMSE command"
                            );
                            if cmd.has_dataset {
                                // Swallow its data set, then answer.
                                incoming = Some(Incoming::swallow(cmd));
                            } else {
                                let rsp = dimse::store_response(
                                    cmd.message_id,
                                    &cmd.sop_class_uid,
                                    &cmd.sop_instance_uid,
                                    status::UNRECOGNIZED_OPERATION,
                                    Some("unsupported DIMSE command"),
                                )
                                .map_err(|e| AssocError::Io(e.to_string()))?;
                                send_command(&mut assoc, pc.id, rsp).await?;
                            }
                        }
                    }
                }
                PDataValueType::Data => {
                    let Some(inc) = incoming.as_mut() else {
                        let _ = assoc.abort().await;
                        return Err(AssocError::Protocol(
                            "data set fragment without a command".into(),
                        ));
                    };
                    if cmd_ctx != Some(pdv.presentation_context_id) {
                        if let Some(inc) = incoming.take() {
                            inc.discard(&self.spool);
                        }
                        let _ = assoc.abort().await;
                        return Err(AssocError::Protocol(
                            "data set on another presentation context than its command".into(),
                        ));
                    }
                    inc.write(&pdv.data, self.cfg.dicom.max_object_mb * 1024 * 1024);
                    if pdv.is_last {
                        let Some(inc) = incoming.take() else { continue };
                        let (st, comment, cmd) = self.finish_store(inc, &calling, addr.ip()).await;
                        let result = if st == status::SUCCESS {
                            "success"
                        } else {
                            "failure"
                        };
                        self.metrics
                            .inc("proxyseg_cstore_total", &[("result", result)]);
                        if st == status::SUCCESS {
                            self.metrics.observe(
                                "proxyseg_stage_seconds",
                                &[("stage", "ingest")],
                                store_started.elapsed().as_secs_f64(),
                            );
                        }
                        let rsp = dimse::store_response(
                            cmd.message_id,
                            &cmd.sop_class_uid,
                            &cmd.sop_instance_uid,
                            st,
                            comment.as_deref(),
                        )
                        .map_err(|e| AssocError::Io(e.to_string()))?;
                        send_command(&mut assoc, pc.id, rsp).await?;
                    }
                }
            }
        }
    }

    /// Opens the temp file for a C-STORE and writes its Part 10 preamble and meta group.
    fn begin_store(
        &self,
        cmd: Command,
        context_sop: &str,
        ts: &str,
        calling: &str,
    ) -> Result<Incoming, crate::store::SpoolError> {
        let context_sop = sop::trim_uid(context_sop).to_string();
        let ts = sop::trim_uid(ts).to_string();
        if cmd.sop_class_uid != context_sop {
            return Ok(Incoming::refused(
                cmd,
                Refusal::new(
                    status::SOP_CLASS_NOT_SUPPORTED,
                    format!(
                        "command SOP class {} differs from the presentation context's",
                        context_sop
                    ),
                ),
            ));
        }
        if !sop::is_valid_uid(&cmd.sop_instance_uid) {
            return Ok(Incoming::refused(
                cmd,
                Refusal::new(
                    status::CANNOT_UNDERSTAND,
                    "invalid Affected SOP Instance UID",
                ),
            ));
        }
        let (file, path) = self.spool.create_temp()?;
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(cmd.sop_class_uid.clone())
            .media_storage_sop_instance_uid(cmd.sop_instance_uid.clone())
            .transfer_syntax(ts.clone())
            .source_application_entity_title(calling.to_string())
            .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::IMPLEMENTATION_VERSION_NAME)
            .build();
        let mut inc = Incoming {
            cmd,
            ts,
            state: IncomingState::Writing {
                // PDVs at least this long (64 KiB PDUs) go straight to the file.
                file: std::io::BufWriter::with_capacity(32 * 1024, file),
                path,
                hash: Box::default(),
                head: Vec::new(),
                len: 0,
                offset: 0,
                written_back: 0,
            },
        };
        match meta {
            Ok(meta) => {
                if let IncomingState::Writing {
                    file, offset, head, ..
                } = &mut inc.state
                {
                    head.extend_from_slice(&PART10_PREAMBLE);
                    let r = meta
                        .write(&mut *head)
                        .map_err(|e| e.to_string())
                        .and_then(|_| file.write_all(head).map_err(|e| e.to_string()));
                    *offset = head.len() as u64;
                    if let Err(e) = r {
                        inc.fail(
                            &self.spool,
                            Refusal::new(
                                status::OUT_OF_RESOURCES,
                                format!("cannot write spool file: {e}"),
                            ),
                        );
                    }
                }
            }
            Err(e) => inc.fail(
                &self.spool,
                Refusal::new(
                    status::CANNOT_UNDERSTAND,
                    format!("bad meta information: {e}"),
                ),
            ),
        }
        Ok(inc)
    }

    /// Completes a C-STORE: fsync, validate, commit to spool and index. Returns the status,
    /// the error comment and the command to answer.
    async fn finish_store(
        &self,
        inc: Incoming,
        calling: &str,
        ip: IpAddr,
    ) -> (u16, Option<String>, Command) {
        let Incoming { cmd, ts, state } = inc;
        let (file, path, hash, head, len, offset) = match state {
            IncomingState::Writing {
                file,
                path,
                hash,
                head,
                len,
                offset,
                ..
            } => (file, path, hash, head, len, offset),
            IncomingState::Refused(r) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sop = %cmd.sop_instance_uid, status = format!("{:#06x}", r.status), reason = %r.comment, "C-STORE refused");
                return (r.status, Some(r.comment), cmd);
            }
            IncomingState::Swallow => {
                return (
                    status::UNRECOGNIZED_OPERATION,
                    Some("unsupported DIMSE command".into()),
                    cmd,
                );
            }
        };
        let digest = hash.finish();
        // Copies of one SOP Instance UID from concurrent associations are serialised from the
        // duplicate check to the index commit.
        let lock = &self.locks[lock_index(&cmd.sop_instance_uid, self.locks.len())];
        let _guard = lock.lock().await;
        let spool = self.spool.clone();
        let db = self.db.clone();
        let cmd2 = cmd.clone();
        let calling2 = calling.to_string();
        let dir_sync = self.dir_sync.clone();
        let synced = self.synced.clone();
        // One blocking step: validate, duplicate check, rename into place, fsync.
        let placed = tokio::task::spawn_blocking(move || {
            let received = ReceivedDataSet {
                file,
                temp: path,
                head,
                offset,
                len,
                digest,
            };
            place(
                &spool, &db, &dir_sync, &synced, received, &cmd2, &ts, calling2, ip,
            )
        })
        .await
        .unwrap_or_else(|e| {
            Err(Refusal::new(
                status::PROCESSING_FAILURE,
                format!("storage task failed: {e}"),
            ))
        });
        let placed = match placed {
            Ok(p) => p,
            Err(r) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sop = %cmd.sop_instance_uid, status = format!("{:#06x}", r.status), reason = %r.comment, "C-STORE refused");
                return (r.status, Some(r.comment), cmd);
            }
        };
        let rec = match placed {
            Placed::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sop = %cmd.sop_instance_uid, "identical duplicate: kept the stored copy");
                return (status::SUCCESS, None, cmd);
            }
            Placed::Replacement { rec } => *rec,
            Placed::Racing {
                rec,
                index,
                barrier,
                fsynced,
            } => {
                let r = self.settle(*rec, index, barrier, fsynced).await;
                return match r {
                    Ok(()) => (status::SUCCESS, None, cmd),
                    Err(r) => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(sop = %cmd.sop_instance_uid, reason = %r.comment, "C-STORE failed while committing");
                        (r.status, Some(r.comment), cmd)
                    }
                };
            }
        };
        match self.commit(rec).await {
            Ok(()) => (status::SUCCESS, None, cmd),
            Err(r) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop = %cmd.sop_instance_uid, reason = %r.comment, "C-STORE failed while committing");
                (r.status, Some(r.comment), cmd)
            }
        }
    }

    /// Makes a renamed replacement durable in its directory, then indexes it (the row then
    /// names the new copy). The barrier comes first, so the index never names a copy that
    /// might not be on disk while an acknowledged older copy exists.
    async fn commit(&self, rec: InstanceRecord) -> Result<(), Refusal> {
        let dest = PathBuf::from(&rec.path);
        let dir = dest.parent().unwrap_or(self.spool.root()).to_owned();
        let r = rec.clone();
        let outcome = match self.dir_sync.sync(&dir).await {
            Err(e) => Err(Refusal::new(
                status::OUT_OF_RESOURCES,
                format!("cannot fsync spool directory: {e}"),
            )),
            Ok(()) => self
                .db
                .write(move |c| instances::record(c, &r))
                .await
                .map_err(|e| Refusal::new(status::OUT_OF_RESOURCES, format!("index: {e}"))),
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(r) => {
                // Nothing names the new file: remove it (the stored copy and its row stay).
                self.spool.discard(&dest);
                return Err(r);
            }
        };
        self.stored(&rec, outcome);
        Ok(())
    }

    /// Waits for the three parts of a new instance's commit that run side by side (see
    /// [`Placed::Racing`]). Only when all succeeded is the instance acknowledged; if its file
    /// could not be made durable, or its row did not commit, row and file are removed.
    async fn settle(
        &self,
        rec: InstanceRecord,
        index: crate::store::db::Queued<Recorded>,
        barrier: spool::QueuedSync,
        fsynced: Result<(), String>,
    ) -> Result<(), Refusal> {
        let (indexed, barrier) = tokio::join!(index.wait(), barrier.wait());
        let uid = rec.sop_instance_uid.clone();
        // With syncfs the barrier is what made the file's bytes durable.
        let fsynced = match (self.dir_sync.mode(), &barrier) {
            (spool::Durability::Syncfs, Err(e)) => Err(e.clone()),
            _ => fsynced,
        };
        let failure = match (&fsynced, &indexed, &barrier) {
            (Err(e), _, _) => Some(format!("cannot fsync spool file: {e}")),
            (_, Err(e), _) => Some(format!("index: {e}")),
            (_, _, Err(e)) => Some(format!("cannot fsync spool directory: {e}")),
            _ => None,
        };
        if fsynced.is_ok() {
            self.synced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(uid.clone());
        }
        if let Some(comment) = failure {
            // Only a failed directory barrier leaves a durable file and its committed row in
            // place (consistent while the system runs; the sender retries). Otherwise nothing
            // may name the file any more.
            if fsynced.is_err() || indexed.is_err() {
                if indexed.is_ok() {
                    let path = rec.path.clone();
                    if let Err(e) = self
                        .db
                        .write(move |c| instances::forget(c, &uid, &path))
                        .await
                    {
                        tracing::error!(sop = %rec.sop_instance_uid, error = %e, "cannot remove the row of an instance that failed to store; the next start checks it");
                    }
                }
                self.spool.discard(Path::new(&rec.path));
            }
            return Err(Refusal::new(status::OUT_OF_RESOURCES, comment));
        }
        if let Ok(outcome) = indexed {
            self.stored(&rec, outcome);
        }
        Ok(())
    }

    /// Counts and logs a committed instance; removes the file a replaced copy leaves behind.
    fn stored(&self, rec: &InstanceRecord, outcome: Recorded) {
        let uid = &rec.sop_instance_uid;
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Recorded::New => {
                tracing::info!(sop = %uid, study = %rec.study_uid, modality = %rec.modality, bytes = rec.size_bytes, "stored")
            }
            Recorded::Replaced { old_path } => {
                tracing::warn!(sop = %uid, "a different copy of this instance arrived: replaced the stored one after the new one was durable");
                if let Some(old) = old_path {
                    if let Err(e) = std::fs::remove_file(&old) {
                        tracing::warn!(path = %old, error = %e, "cannot remove the replaced copy");
                    }
                }
            }
        }
    }
}

/// What the blocking part of a C-STORE did with the received file.
enum Placed {
    /// An identical copy is already stored: the temp file was removed.
    Duplicate,
    /// A different copy of a stored instance, renamed next to it (its bytes durable in
    /// fsync mode; not yet durable in its directory, not yet indexed).
    Replacement {
        /// The index row to write.
        rec: Box<InstanceRecord>,
    },
    /// A new instance, renamed into place; its index row (listed as unsynced) and its
    /// barrier (the directory fsync, or a syncfs that covers the file too) were queued
    /// before the file's fsync ran, so the three overlap. A crash before all three finished
    /// leaves at most a row whose file is incomplete; nobody was told it was stored, and the
    /// next start checks it against its digest ([`instances::verify_unsynced`]).
    Racing {
        /// The row being written.
        rec: Box<InstanceRecord>,
        /// The queued index write.
        index: crate::store::db::Queued<Recorded>,
        /// The queued directory barrier.
        barrier: spool::QueuedSync,
        /// How the file's fsync went.
        fsynced: Result<(), String>,
    },
}

/// The blocking part of a C-STORE: flush the temp file, validate it, check for a stored copy,
/// rename it into place, and (fsync mode) fsync it. A new instance queues its index row and
/// its barrier before that fsync ([`Placed::Racing`]); a replacement is fsynced before its
/// rename, and its barrier and row follow in [`Scp::commit`]. The temp file is removed on
/// failure.
#[allow(clippy::too_many_arguments)]
fn place(
    spool: &Spool,
    db: &Db,
    dir_sync: &spool::DirSyncer,
    synced: &Arc<std::sync::Mutex<Vec<String>>>,
    received: ReceivedDataSet,
    cmd: &Command,
    ts: &str,
    calling: String,
    ip: IpAddr,
) -> Result<Placed, Refusal> {
    let ReceivedDataSet {
        file,
        temp,
        head,
        offset,
        len,
        digest,
    } = received;
    let fsync_mode = dir_sync.mode() == spool::Durability::Fsync;
    let fsync = |file: &std::fs::File| {
        file.sync_all()
            .map_err(|e| format!("cannot fsync spool file: {e}"))
    };
    let r = (|| {
        let file = file.into_inner().map_err(|e| {
            Refusal::new(
                status::OUT_OF_RESOURCES,
                format!("cannot write spool file: {}", e.error()),
            )
        })?;
        // Preamble and meta group, then every data set byte received.
        let size = offset + len;
        // The tail's writeback runs while the data set is validated.
        spool::start_writeback(&file, 0, size);
        let mut rec = validate(&temp, &head, cmd, ts, offset, len)?;
        rec.calling_ae = calling;
        rec.source_host = ip.to_string();
        rec.size_bytes = size;
        rec.digest = digest;
        let dest = spool
            .final_path(&rec.study_uid, &rec.series_uid, &rec.sop_instance_uid)
            .map_err(|e| Refusal::new(status::DATASET_DOES_NOT_MATCH_SOP_CLASS, e.to_string()))?;
        rec.path = dest.to_string_lossy().into_owned();
        let existing = db
            .read(|c| instances::existing(c, &rec.sop_instance_uid))
            .map_err(|e| Refusal::new(status::OUT_OF_RESOURCES, e.to_string()))?;
        if let Some((stored, path)) = &existing {
            if spool::same_content(stored, Path::new(path), &rec.digest) {
                return Ok(None);
            }
            // A different copy goes to a new name, so the stored copy and its index row stay
            // consistent until the new row is committed; the old file is removed only after.
            if *path == rec.path {
                let hex = rec.digest.rsplit(':').next().unwrap_or_default();
                let short = &hex[..12.min(hex.len())];
                rec.path = dest
                    .with_extension(format!("{short}.dcm"))
                    .to_string_lossy()
                    .into_owned();
            }
            // A replacement's bytes are durable before it is renamed next to the copy it
            // replaces (with syncfs, the barrier after the rename covers them).
            if fsync_mode {
                fsync(&file).map_err(|e| Refusal::new(status::OUT_OF_RESOURCES, e))?;
            }
        }
        let rename = |to: &str| {
            spool
                .rename_into_place(&temp, Path::new(to))
                .map_err(|e| Refusal::new(status::OUT_OF_RESOURCES, e.to_string()))
        };
        rename(&rec.path)?;
        if existing.is_some() {
            return Ok(Some(Placed::Replacement { rec: Box::new(rec) }));
        }
        let row = rec.clone();
        let synced = synced.clone();
        let index = db.enqueue(move |c| {
            let done = std::mem::take(&mut *synced.lock().unwrap_or_else(|p| p.into_inner()));
            instances::record_unsynced(c, &row, &done)
        });
        let barrier = dir_sync.enqueue(dest.parent().unwrap_or(spool.root()));
        // With syncfs, the barrier covers the file's bytes as well.
        let fsynced = if fsync_mode { fsync(&file) } else { Ok(()) };
        Ok(Some(Placed::Racing {
            rec: Box::new(rec),
            index,
            barrier,
            fsynced,
        }))
    })();
    match r {
        Ok(Some(placed)) => Ok(placed),
        Ok(None) => {
            spool.discard(&temp);
            Ok(Placed::Duplicate)
        }
        Err(e) => {
            spool.discard(&temp);
            Err(e)
        }
    }
}

/// A data set fully received into its temp file.
struct ReceivedDataSet {
    file: std::io::BufWriter<std::fs::File>,
    temp: PathBuf,
    /// The file's first bytes (see `IncomingState::Writing::head`).
    head: Vec<u8>,
    /// Where the data set starts in the file.
    offset: u64,
    /// Data set length.
    len: u64,
    /// Digest of the data set bytes.
    digest: String,
}

/// The C-STORE being received on an association.
struct Incoming {
    cmd: Command,
    ts: String,
    state: IncomingState,
}

enum IncomingState {
    /// Streaming into a temp file.
    Writing {
        file: std::io::BufWriter<std::fs::File>,
        path: PathBuf,
        /// Digest of the data set bytes (boxed: the hasher state is over 500 bytes).
        hash: Box<spool::DatasetHasher>,
        /// The file's first bytes: preamble, meta group and up to [`HEAD_BYTES`] of the data
        /// set, so that most data sets are validated without reading the file back.
        head: Vec<u8>,
        /// Data set bytes received so far.
        len: u64,
        /// Where the data set starts in the file (after preamble and meta group).
        offset: u64,
        /// File bytes already handed to the kernel's writeback while receiving, so that the
        /// final fsync waits only for the tail (measured here: 0.45 -> 0.28 ms for 0.5 MB,
        /// 6.5 -> 0.3 ms for 8 MB); see [`Incoming::write`].
        written_back: u64,
    },
    /// Already refused: the rest of the data set is read and dropped, then the refusal sent.
    Refused(Refusal),
    /// An unsupported command's data set: read and dropped.
    Swallow,
}

impl Incoming {
    fn refused(cmd: Command, r: Refusal) -> Incoming {
        Incoming {
            cmd,
            ts: String::new(),
            state: IncomingState::Refused(r),
        }
    }

    fn swallow(cmd: Command) -> Incoming {
        Incoming {
            cmd,
            ts: String::new(),
            state: IncomingState::Swallow,
        }
    }

    /// Appends a data fragment; on a local failure or an oversized data set, switches to
    /// refusing (the temp file is removed at once).
    fn write(&mut self, data: &[u8], max_len: u64) {
        let failure = match &mut self.state {
            IncomingState::Writing {
                file,
                hash,
                head,
                len,
                offset,
                written_back,
                ..
            } => {
                *len += data.len() as u64;
                if *len > max_len {
                    Some(Refusal::new(
                        status::OUT_OF_RESOURCES,
                        format!(
                            "data set larger than dicom.max_object_mb ({} MiB)",
                            max_len / 1048576
                        ),
                    ))
                } else {
                    hash.update(data);
                    let room = (*offset as usize + HEAD_BYTES).saturating_sub(head.len());
                    head.extend_from_slice(&data[..room.min(data.len())]);
                    let r = file.write_all(data);
                    if r.is_ok() {
                        // Bytes past the BufWriter are in the page cache: start their writeback.
                        let flushed = *offset + *len - file.buffer().len() as u64;
                        if flushed - *written_back >= WRITEBACK_STEP {
                            spool::start_writeback(file.get_ref(), *written_back, flushed);
                            *written_back = flushed;
                        }
                    }
                    r.err().map(|e| {
                        Refusal::new(
                            status::OUT_OF_RESOURCES,
                            format!("cannot write spool file: {e}"),
                        )
                    })
                }
            }
            _ => None,
        };
        if let Some(r) = failure {
            self.fail_in_place(r);
        }
    }

    fn fail_in_place(&mut self, r: Refusal) {
        let old = std::mem::replace(&mut self.state, IncomingState::Refused(r));
        if let IncomingState::Writing { path, file, .. } = old {
            drop(file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temp file");
            }
        }
    }

    fn fail(&mut self, _spool: &Spool, r: Refusal) {
        self.fail_in_place(r);
    }

    /// Drops whatever was written (association ended mid data set).
    fn discard(self, spool: &Spool) {
        if let IncomingState::Writing { path, file, .. } = self.state {
            drop(file);
            spool.discard(&path);
            tracing::warn!(sop = %self.cmd.sop_instance_uid, "association ended mid data set: nothing stored");
        }
    }
}

/// How many received bytes accumulate before their writeback is started.
const WRITEBACK_STEP: u64 = 256 * 1024;

/// How much of each data set is kept in memory for validation.
const HEAD_BYTES: usize = 64 * 1024;

fn lock_index(uid: &str, n: usize) -> usize {
    let h = Sha256::digest(uid.as_bytes());
    (h[0] as usize) % n
}

async fn send_command<S>(
    assoc: &mut dicom_ul::association::server::AsyncServerAssociation<S>,
    pc_id: u8,
    bytes: Vec<u8>,
) -> Result<(), AssocError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: bytes,
        }],
    };
    assoc
        .send(&pdu)
        .await
        .map_err(|e| AssocError::Ul(e.to_string()))
}

/// Reads the A-ASSOCIATE-RQ (bounded) and answers A-ASSOCIATE-RJ (transient, service
/// provider presentation) without negotiating. TLS connections are simply closed.
async fn reject_raw(
    mut stream: TcpStream,
    reason: AssociationRJServiceProviderPresentationReason,
    tls: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if tls {
        return;
    }
    let read = async {
        let mut head = [0u8; 6];
        stream.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]).min(1 << 20) as u64;
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut (&mut stream).take(len), &mut sink).await?;
        std::io::Result::Ok(head[0])
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(0x01)) => {}
        _ => return,
    }
    let pdu = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(reason),
    });
    let mut buf = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut buf, &pdu).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&buf)).await;
        // Let the requestor read the rejection and close first (ARTIM), then close ours.
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// After an A-ASSOCIATE-RJ: waits (at most 2 s, the ARTIM timer) for the requestor to close
/// the connection, then closes ours.
async fn linger_until_peer_closes(sock: std::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = TcpStream::from_std(sock) else {
        return;
    };
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Largest Rows or Columns we accept.
const MAX_DIM: u32 = 32768;
/// Largest Number of Frames we accept.
const MAX_FRAMES: u64 = 100_000;

/// Parses the stored file's header (everything before Pixel Data, never the pixels, so a
/// 2 GiB multi-frame costs no memory) and checks it against its command and presentation
/// context; builds the index record on success. `offset` is where the data set starts in the
/// file and `len` how many data set bytes were received.
fn validate(
    path: &Path,
    head: &[u8],
    cmd: &Command,
    ts: &str,
    offset: u64,
    len: u64,
) -> Result<InstanceRecord, Refusal> {
    let deflated = ts == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    if !deflated {
        if let Some(checked) = validate_head(head, cmd, ts, offset, len) {
            return checked;
        }
    }
    let opts = OpenFileOptions::new();
    // A deflated data set cannot be scanned in place: it is parsed whole (they are small).
    let opts = if deflated {
        opts
    } else {
        opts.read_until(tags::PIXEL_DATA)
    };
    let obj = opts
        .open_file(path)
        .map_err(|e| unparsable(e.to_string()))?;
    let pixel = if deflated {
        pixel_header_in_object(&obj)
    } else {
        pixel_header_in_file(path, ts, offset, len)?
    };
    inspect(&obj, pixel, cmd, ts)
}

/// [`validate`] from the file's first bytes alone, when they are the whole file or reach
/// the Pixel Data header; `None` sends the caller to the file.
fn validate_head(
    head: &[u8],
    cmd: &Command,
    ts: &str,
    offset: u64,
    len: u64,
) -> Option<Result<InstanceRecord, Refusal>> {
    let complete = head.len() as u64 == offset + len;
    let data = head.get(offset as usize..)?;
    let pixel = match pixel_header_from(data, ts, len) {
        Ok(Some(p)) => Some(p),
        Ok(None) if complete => None,
        Err(e) if complete => return Some(Err(e)),
        _ => return None,
    };
    let obj = match OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(head)
    {
        Ok(obj) => obj,
        Err(e) if complete => return Some(Err(unparsable(e.to_string()))),
        Err(_) => return None,
    };
    Some(inspect(&obj, pixel, cmd, ts))
}

/// The refusal for a data set that does not parse.
fn unparsable(m: String) -> Refusal {
    Refusal::new(
        status::CANNOT_UNDERSTAND,
        format!("data set does not parse: {m}"),
    )
}

/// Checks a parsed data set (read up to its Pixel Data) against its command and its pixel
/// header, and makes its index row.
fn inspect(
    obj: &dicom_object::DefaultDicomObject,
    pixel: Option<PixelHeader>,
    cmd: &Command,
    ts: &str,
) -> Result<InstanceRecord, Refusal> {
    let text = |tag: Tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
            .unwrap_or_default()
    };
    let int = |tag: Tag| -> Option<i64> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<i64>().ok())
    };
    let sop_class = text(tags::SOP_CLASS_UID);
    let sop_instance = text(tags::SOP_INSTANCE_UID);
    if sop_class != cmd.sop_class_uid {
        return Err(Refusal::new(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!(
                "SOPClassUID {sop_class:?} differs from the command's {}",
                cmd.sop_class_uid
            ),
        ));
    }
    if sop_instance != cmd.sop_instance_uid {
        return Err(Refusal::new(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID differs from the command's",
        ));
    }
    let study = text(tags::STUDY_INSTANCE_UID);
    let series = text(tags::SERIES_INSTANCE_UID);
    for (name, v) in [("StudyInstanceUID", &study), ("SeriesInstanceUID", &series)] {
        if !sop::is_valid_uid(v) {
            return Err(Refusal::new(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                format!("missing or invalid {name}"),
            ));
        }
    }
    if let Some(pixel) = pixel {
        check_pixels(obj, ts, pixel)?;
    }
    Ok(InstanceRecord {
        sop_instance_uid: sop_instance,
        sop_class_uid: sop_class,
        study_uid: study,
        series_uid: series,
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        modality: text(tags::MODALITY),
        body_part: text(tags::BODY_PART_EXAMINED),
        series_description: text(tags::SERIES_DESCRIPTION),
        series_number: int(tags::SERIES_NUMBER),
        instance_number: int(tags::INSTANCE_NUMBER),
        transfer_syntax: ts.to_string(),
        calling_ae: String::new(),
        source_host: String::new(),
        size_bytes: 0,
        digest: String::new(),
        path: String::new(),
        received_at: crate::store::db::now(),
    })
}

/// What the Pixel Data element looks like, without its value.
#[derive(Debug, Clone, Copy)]
enum PixelHeader {
    /// Native pixels: declared length and the bytes actually left in the data set.
    Native { declared: u64, available: u64 },
    /// Encapsulated (compressed) pixels, with the number of fragments when known.
    Encapsulated { fragments: Option<usize> },
}

/// A reader that counts the bytes its consumer took.
struct Counting<R> {
    inner: R,
    taken: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n as u64);
        Ok(n)
    }
}

/// Walks the data set's tokens up to the top-level Pixel Data header and reports its
/// declared length against the bytes that really follow (catches truncated data sets such as
/// pydicom's MR_truncated without reading any pixel).
fn pixel_header_in_file(
    path: &Path,
    ts: &str,
    offset: u64,
    len: u64,
) -> Result<Option<PixelHeader>, Refusal> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| unparsable(e.to_string()))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| unparsable(e.to_string()))?;
    pixel_header_from(std::io::BufReader::new(f), ts, len)
}

/// [`pixel_header_in_file`] over any source positioned at the start of the data set.
fn pixel_header_from(
    source: impl std::io::Read,
    ts: &str,
    len: u64,
) -> Result<Option<PixelHeader>, Refusal> {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_parser::dataset::{read::DataSetReader, DataToken};
    let Some(syntax) = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts) else {
        return Err(unparsable(format!("unknown transfer syntax {ts}")));
    };
    let taken = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let source = Counting {
        inner: source,
        taken: taken.clone(),
    };
    let reader =
        DataSetReader::new_with_ts(source, syntax).map_err(|e| unparsable(e.to_string()))?;
    let mut depth = 0i32;
    for token in reader {
        match token.map_err(|e| unparsable(e.to_string()))? {
            DataToken::SequenceStart { .. } => depth += 1,
            DataToken::SequenceEnd if depth > 0 => depth -= 1,
            DataToken::PixelSequenceStart if depth == 0 => {
                return Ok(Some(PixelHeader::Encapsulated { fragments: None }));
            }
            DataToken::ElementHeader(h) if depth == 0 && h.tag == tags::PIXEL_DATA => {
                let declared = h.len.get().map(u64::from).unwrap_or(u64::MAX);
                let available = len.saturating_sub(taken.get());
                return Ok(Some(PixelHeader::Native {
                    declared,
                    available,
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The same answer for a data set already fully in memory (deflated transfer syntax).
fn pixel_header_in_object(obj: &dicom_object::DefaultDicomObject) -> Option<PixelHeader> {
    let pixel = obj.element_opt(tags::PIXEL_DATA).ok().flatten()?;
    Some(match pixel.value() {
        dicom_core::DicomValue::PixelSequence(seq) => PixelHeader::Encapsulated {
            fragments: Some(seq.fragments().len()),
        },
        dicom_core::DicomValue::Primitive(v) => {
            let n = v.calculate_byte_len() as u64;
            PixelHeader::Native {
                declared: n,
                available: n,
            }
        }
        dicom_core::DicomValue::Sequence(_) => PixelHeader::Native {
            declared: 0,
            available: 0,
        },
    })
}

/// Checks image dimensions and, for native (uncompressed) pixel data, that its length agrees
/// with Rows x Columns x Samples x Bits Allocated x Frames.
fn check_pixels(
    obj: &dicom_object::DefaultDicomObject,
    ts: &str,
    pixel: PixelHeader,
) -> Result<(), Refusal> {
    let bad = |m: String| Refusal::new(status::DATASET_DOES_NOT_MATCH_SOP_CLASS, m);
    let u = |tag: Tag, name: &str| -> Result<u64, Refusal> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u64>().ok())
            .ok_or_else(|| {
                bad(format!(
                    "Pixel Data present but {name} missing or not a number"
                ))
            })
    };
    let rows = u(tags::ROWS, "Rows")?;
    let cols = u(tags::COLUMNS, "Columns")?;
    let spp = u(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bits = u(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let frames = match obj.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(e) => e
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("NumberOfFrames is not a number".into()))?,
        None => 1,
    };
    if rows == 0 || cols == 0 || rows > MAX_DIM as u64 || cols > MAX_DIM as u64 {
        return Err(bad(format!("absurd image size {rows}x{cols}")));
    }
    if !matches!(spp, 1 | 3 | 4) {
        return Err(bad(format!("SamplesPerPixel {spp} is not 1, 3 or 4")));
    }
    if !matches!(bits, 1 | 8 | 16 | 32 | 64) {
        return Err(bad(format!(
            "BitsAllocated {bits} is not 1, 8, 16, 32 or 64"
        )));
    }
    if frames == 0 || frames > MAX_FRAMES {
        return Err(bad(format!("absurd NumberOfFrames {frames}")));
    }
    let _ = ts;
    match pixel {
        PixelHeader::Native {
            declared,
            available,
        } => {
            if declared > available {
                return Err(Refusal::new(
                    status::CANNOT_UNDERSTAND,
                    format!("data set does not parse: Pixel Data declares {declared} bytes but only {available} follow"),
                ));
            }
            // YBR_FULL_422 stores two luminance and two chroma samples per two pixels.
            let photometric = obj
                .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let samples = if spp == 3 && photometric == "YBR_FULL_422" {
                2
            } else {
                spp
            };
            let expected = (rows * cols * samples * bits * frames).div_ceil(8);
            if declared != expected && declared != expected + (expected % 2) {
                return Err(bad(format!(
                    "Pixel Data holds {declared} bytes; Rows x Columns x Samples x Bits x Frames needs {expected}"
                )));
            }
        }
        PixelHeader::Encapsulated { fragments: Some(0) } => {
            return Err(bad("encapsulated Pixel Data has no fragments".into()));
        }
        PixelHeader::Encapsulated { .. } => {}
    }
    Ok(())
}

/// 128-byte zero preamble followed by the "DICM" prefix of a Part 10 file.
const PART10_PREAMBLE: [u8; 132] = {
    let mut p = [0u8; 132];
    p[128] = b'D';
    p[129] = b'I';
    p[130] = b'C';
    p[131] = b'M';
    p
};
