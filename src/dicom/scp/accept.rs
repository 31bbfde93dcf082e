//! Admission: from an accepted TCP connection to an association that holds a slot. Owns the
//! pending pool of connections that have not yet asked for an association, the peek at the
//! first bytes of an A-ASSOCIATE-RQ (so strangers are turned away without a slot), the plain
//! and TLS negotiations, the raw A-ASSOCIATE-RJ sent when no slot or disk is left, and the
//! ARTIM linger after a rejection.

use super::{AssocError, Scp};
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource,
};
use dicom_ul::Pdu;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// An admitted association and the slot it holds.
type Admitted<S> = (OwnedSemaphorePermit, AsyncServerAssociation<S>);

/// The start of an A-ASSOCIATE-RQ (PS3.8 9.3.2): enough to decide admission.
#[derive(Debug)]
struct RequestHead {
    called: String,
    calling: String,
}

/// Bytes of an A-ASSOCIATE-RQ up to the end of its Calling AE Title.
const RQ_HEAD_LEN: usize = 42;

/// Waits until the first [`RQ_HEAD_LEN`] bytes of the connection have arrived and reads
/// them without consuming them (the negotiation reads them again). `Ok(None)`: the first PDU
/// is not an A-ASSOCIATE-RQ; an error: the connection closed or failed.
async fn peek_request(stream: &TcpStream) -> std::io::Result<Option<RequestHead>> {
    let mut buf = [0u8; RQ_HEAD_LEN];
    let mut wait = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[0] != 0x01 {
            return Ok(None);
        }
        if n >= 6 {
            let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if len + 6 < RQ_HEAD_LEN {
                return Ok(None);
            }
        }
        if n == RQ_HEAD_LEN {
            let ae = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
            return Ok(Some(RequestHead {
                called: ae(&buf[10..26]),
                calling: ae(&buf[26..42]),
            }));
        }
        // Part of it is here: peek returns at once until more arrives, so back off a little.
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// Connections that have not yet sent an A-ASSOCIATE-RQ that passed the AE / host checks
/// (`dicom.max_pending_connections` of them at most). They hold no association slot. When a
/// new connection arrives at a full pool, the oldest member is closed: a peer that sends its
/// request right after connecting (every real one does, within milliseconds) therefore
/// always gets its turn, however many silent connections are open, while the pool stays
/// bounded (a full pool that refused newcomers would let a handful of silent sockets lock
/// every peer out again).
pub struct PendingPool {
    max: usize,
    members: std::sync::Mutex<PendingMembers>,
    /// Evictions not yet logged, and when the last log line was written (rate-limited).
    evicted: AtomicU64,
    last_log: std::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Default)]
struct PendingMembers {
    next: u64,
    queue: std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
}

/// A connection's membership of the pending pool.
pub struct Pending {
    ticket: PendingTicket,
    /// Fires when the pool evicts this connection.
    evicted: tokio::sync::oneshot::Receiver<()>,
}

/// Leaves the pool when dropped.
struct PendingTicket {
    pool: Arc<PendingPool>,
    id: u64,
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        let mut m = self.pool.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = m.queue.iter().position(|(id, _)| *id == self.id) {
            m.queue.remove(i);
        }
    }
}

impl PendingPool {
    /// A pool of at most `max` members.
    pub fn new(max: usize) -> Arc<PendingPool> {
        Arc::new(PendingPool {
            max: max.max(1),
            members: Default::default(),
            evicted: AtomicU64::new(0),
            last_log: Default::default(),
        })
    }

    /// Adds a new connection, evicting the oldest member when the pool is full.
    pub fn enter(self: &Arc<Self>) -> Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        while m.queue.len() >= self.max {
            if let Some((_, oldest)) = m.queue.pop_front() {
                let _ = oldest.send(());
            }
        }
        let id = m.next;
        m.next += 1;
        m.queue.push_back((id, tx));
        Pending {
            ticket: PendingTicket {
                pool: self.clone(),
                id,
            },
            evicted: rx,
        }
    }

    /// Logs an eviction (at most one line per second, with the count since the last one).
    fn note_eviction(&self, addr: SocketAddr) {
        let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            self.evicted.fetch_sub(n, Ordering::Relaxed);
            tracing::warn!(peer = %addr, closed = n, max = self.max, "closed connections that sent no A-ASSOCIATE-RQ: dicom.max_pending_connections reached, the oldest go first");
        }
    }
}

impl Scp {
    /// One accepted connection. Until its A-ASSOCIATE-RQ has passed the AE / host checks it
    /// is only a member of the pending pool (see [`PendingPool`]): it holds no association
    /// slot, must complete its request within `dicom.association_request_timeout_s`, and is
    /// closed at once when the pool overflows and it is the oldest member. Only then does it
    /// take one of the `dicom.max_associations` slots.
    pub(super) async fn handle_connection(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        tls: bool,
        shutdown: watch::Receiver<bool>,
        pending: Pending,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let limit = Duration::from_secs(self.cfg.dicom.association_request_timeout_s);
        let deadline = tokio::time::Instant::now() + limit;
        if tls {
            let admission = self.admit_tls(stream, addr, deadline, limit);
            self.admit_then_run(admission, pending, addr, shutdown)
                .await
        } else {
            let admission = self.admit_plain(stream, addr, deadline, limit);
            self.admit_then_run(admission, pending, addr, shutdown)
                .await
        }
    }

    /// Runs `admission` as a member of the pending pool (it ends early when the pool evicts
    /// the connection or the daemon stops), then leaves the pool and serves the association
    /// it admitted, if any.
    async fn admit_then_run<S>(
        &self,
        admission: impl std::future::Future<Output = Option<Admitted<S>>>,
        pending: Pending,
        addr: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Pending {
            ticket,
            mut evicted,
        } = pending;
        let admitted = tokio::select! {
            _ = &mut evicted => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                self.pending.note_eviction(addr);
                return;
            }
            _ = shutdown.changed() => return,
            a = admission => a,
        };
        drop(ticket);
        if let Some((permit, assoc)) = admitted {
            self.run_admitted(permit, assoc, addr, shutdown).await;
        }
    }

    /// A slot, unless every one is taken.
    fn take_slot(&self, addr: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %addr, max = self.cfg.dicom.max_associations, "rejected: too many associations");
        }
        permit
    }

    /// False (and logged) while free disk space is below `dicom.min_free_disk_mb`.
    fn disk_has_room(&self, addr: SocketAddr) -> bool {
        match self.free_below_reserve() {
            Some(free) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = %addr, free_mb = free / 1048576, reserve_mb = self.cfg.dicom.min_free_disk_mb, "rejected: free disk below the reserve");
                false
            }
            None => true,
        }
    }

    /// Plain TCP admission: waits (without reading) for the first bytes of the
    /// A-ASSOCIATE-RQ, checks its called and calling AE titles and the source host, and only
    /// then takes a slot and negotiates. Requests that fail the checks are answered
    /// A-ASSOCIATE-RJ by the negotiation itself, without a slot.
    async fn admit_plain(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> Option<Admitted<TcpStream>> {
        let head = match tokio::time::timeout_at(deadline, peek_request(&stream)).await {
            Err(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %addr, seconds = limit.as_secs(), "closed: no A-ASSOCIATE-RQ before dicom.association_request_timeout_s");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %addr, error = %e, "connection closed before association");
                return None;
            }
            Ok(Ok(None)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %addr, "closed: the first PDU is not an A-ASSOCIATE-RQ");
                return None;
            }
            Ok(Ok(Some(head))) => head,
        };
        let access = self.access(addr.ip(), false);
        if access.decide(&head.calling, &head.called).is_err() {
            // The negotiation rejects it with the right reason (and logs it); no slot.
            if let Err(e) = self.establish_plain(stream, addr, deadline, limit).await {
                tracing::debug!(peer = %addr, error = %e, "association request rejected");
            }
            return None;
        }
        let Some(permit) = self.take_slot(addr) else {
            reject_raw(
                stream,
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                deadline,
            )
            .await;
            return None;
        };
        if !self.disk_has_room(addr) {
            reject_raw(
                stream,
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
                deadline,
            )
            .await;
            return None;
        }
        match self.establish_plain(stream, addr, deadline, limit).await {
            Ok(assoc) => Some((permit, assoc)),
            Err(e) if Self::is_probe(&e) => {
                tracing::debug!(peer = %addr, "connection closed before association");
                None
            }
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "association negotiation failed");
                None
            }
        }
    }

    /// Negotiates a plain association, the whole A-ASSOCIATE-RQ due by `deadline`.
    async fn establish_plain(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> Result<AsyncServerAssociation<TcpStream>, AssocError> {
        let opts = self.options(addr.ip(), false);
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
        match tokio::time::timeout_at(deadline, opts.establish_async(stream)).await {
            Ok(Ok(assoc)) => {
                drop(keep);
                Ok(assoc)
            }
            Ok(Err(e)) => {
                let rejected = matches!(e, dicom_ul::association::Error::Rejected { .. });
                let err = self.establish_failed(addr, e);
                if let (true, Some(k)) = (rejected || err.to_string().contains("rejected"), keep) {
                    linger_until_peer_closes(k).await;
                }
                Err(err)
            }
            Err(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(AssocError::Timeout(limit))
            }
        }
    }

    /// TLS admission: the handshake and the A-ASSOCIATE-RQ (checked by the negotiation) are
    /// due by `deadline`; the slot is taken once the association is accepted, and an
    /// association over the limit is aborted at once.
    async fn admit_tls(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> Option<Admitted<dicom_ul::association::server::AsyncTlsStream>> {
        let opts = self.options(addr.ip(), true);
        let assoc = match tokio::time::timeout_at(deadline, opts.establish_tls_async(stream)).await
        {
            Err(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %addr, seconds = limit.as_secs(), "closed: no A-ASSOCIATE-RQ before dicom.association_request_timeout_s");
                return None;
            }
            Ok(Err(e)) => {
                let e = self.establish_failed(addr, e);
                if Self::is_probe(&e) {
                    tracing::debug!(peer = %addr, "connection closed before association");
                } else {
                    tracing::warn!(peer = %addr, error = %e, "association negotiation failed");
                }
                return None;
            }
            Ok(Ok(a)) => a,
        };
        let mut assoc = assoc;
        if let Err(why) = self.check_tls_identity(&mut assoc) {
            // Accepted by the negotiation (which cannot see the certificate), ended before
            // any message is read: nothing from it is stored.
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let calling = dicom_ul::association::Association::peer_ae_title(&assoc).to_string();
            tracing::warn!(peer = %addr, calling = %calling, reason = %why, "aborted: the client certificate is not the calling AE's tls_identity");
            let _ = assoc.abort().await;
            return None;
        }
        let permit = self.take_slot(addr);
        match permit {
            Some(p) if self.disk_has_room(addr) => Some((p, assoc)),
            _ => {
                let _ = assoc.abort().await;
                None
            }
        }
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
}

/// Reads the A-ASSOCIATE-RQ (bounded, due by `deadline`) and answers A-ASSOCIATE-RJ
/// (transient, service provider presentation) without negotiating (plain TCP only).
async fn reject_raw(
    mut stream: TcpStream,
    reason: AssociationRJServiceProviderPresentationReason,
    deadline: tokio::time::Instant,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut head = [0u8; 6];
        stream.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]).min(1 << 20) as u64;
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut (&mut stream).take(len), &mut sink).await?;
        std::io::Result::Ok(head[0])
    };
    match tokio::time::timeout_at(deadline, read).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A full pool closes its oldest member for a newcomer; a member that leaves frees its
    /// place.
    #[tokio::test]
    async fn a_full_pool_evicts_its_oldest_member() {
        let pool = PendingPool::new(2);
        let mut first = pool.enter();
        let mut second = pool.enter();
        let mut third = pool.enter();
        assert!(first.evicted.try_recv().is_ok(), "the oldest goes first");
        assert!(second.evicted.try_recv().is_err());
        drop(second);
        let mut fourth = pool.enter();
        assert!(third.evicted.try_recv().is_err(), "a place was free");
        assert!(fourth.evicted.try_recv().is_err());
    }
}
