//! One admitted association, from its receive buffers to its end: the message loop. Each
//! presentation data value is framed against the association's state into a [`Message`]
//! (command fragment, C-ECHO, C-STORE begin / continue / finish, an unsupported command);
//! every way the association ends is an [`Exit`], carried out in one place ([`Scp::end`]):
//! a data set being received is discarded, then A-RELEASE-RP or A-ABORT is sent where due.

use super::store::{Incoming, HEAD_BYTES};
use super::{AssocError, Scp};
use crate::dicom::dimse::{self, field, status, Command};
use crate::dicom::pdata::{self, Pdv};
use bytes::Bytes;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::pdu::{
    AbortRQSource, PDataValue, PDataValueType, PresentationContextNegotiated,
    PresentationContextResultReason,
};
use dicom_ul::Pdu;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit};

/// The largest command set accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// What one presentation data value means, once framed against the association's state.
#[derive(Debug)]
enum Message {
    /// Part of a command set; more fragments follow.
    CommandPart,
    /// A C-ECHO-RQ: answered at once.
    Echo(Command),
    /// A C-STORE-RQ with a data set: receiving begins.
    StoreBegin(Command),
    /// A fragment of the data set being received; more follow.
    StoreContinue(Bytes),
    /// The last fragment of the data set being received: store it and answer.
    StoreFinish(Bytes),
    /// Any other command, or a C-STORE-RQ without a data set: answered 0x0211 (unrecognized
    /// operation); a data set that follows it is read and dropped first.
    Unknown(Command),
}

impl Message {
    /// What a complete command set asks for.
    fn of_command(cmd: Command) -> Message {
        match cmd.field {
            field::C_ECHO_RQ => Message::Echo(cmd),
            field::C_STORE_RQ if cmd.has_dataset => Message::StoreBegin(cmd),
            _ => Message::Unknown(cmd),
        }
    }
}

/// The command set being reassembled from its fragments, and the presentation context its
/// data set must arrive on.
#[derive(Debug, Default)]
struct Framing {
    /// Command set bytes received so far.
    command: Vec<u8>,
    /// The presentation context of the last command fragment.
    context: Option<u8>,
}

impl Framing {
    /// Frames `pdv`; `in_data_set` says whether a data set is being received. A protocol
    /// violation comes back as its description (the association is then aborted).
    fn classify(&mut self, pdv: Pdv, in_data_set: bool) -> Result<Message, String> {
        match pdv.value_type {
            PDataValueType::Command => {
                if in_data_set {
                    return Err("command fragment inside a data set".into());
                }
                if self.command.len() + pdv.data.len() > MAX_COMMAND {
                    return Err("command set larger than 64 KiB".into());
                }
                self.context = Some(pdv.presentation_context_id);
                self.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return Ok(Message::CommandPart);
                }
                let bytes = std::mem::take(&mut self.command);
                let cmd = Command::parse(&bytes).map_err(|e| e.to_string())?;
                Ok(Message::of_command(cmd))
            }
            PDataValueType::Data => {
                if !in_data_set {
                    return Err("data set fragment without a command".into());
                }
                if self.context != Some(pdv.presentation_context_id) {
                    return Err("data set on another presentation context than its command".into());
                }
                Ok(if pdv.is_last {
                    Message::StoreFinish(pdv.data)
                } else {
                    Message::StoreContinue(pdv.data)
                })
            }
        }
    }

    /// A command set is partly received.
    fn mid_command(&self) -> bool {
        !self.command.is_empty()
    }
}

/// How an association ends ([`Scp::end`] carries it out).
#[derive(Debug)]
enum Exit {
    /// The daemon stops and the association is between messages: A-ABORT.
    Shutdown,
    /// The peer asked for release: A-RELEASE-RP.
    Released,
    /// The peer sent A-ABORT.
    PeerAborted(AbortRQSource),
    /// A protocol violation, a silent peer, or the lifetime limit: A-ABORT, then the error.
    Abort(AssocError),
    /// The connection failed, or a local error: nothing more is sent.
    Broken(AssocError),
}

/// Errors raised while answering a message: the connection is not usable any more.
impl From<AssocError> for Exit {
    fn from(e: AssocError) -> Exit {
        Exit::Broken(e)
    }
}

/// A protocol violation: the association is aborted.
fn violation(what: String) -> Exit {
    Exit::Abort(AssocError::Protocol(what))
}

/// The presentation data values a PDU carries, or how it ends the association.
fn pdvs_of(pdu: Pdu) -> Result<Vec<Pdv>, Exit> {
    match pdu {
        Pdu::PData { data } => Ok(data.into_iter().map(Pdv::from).collect()),
        Pdu::ReleaseRQ => Err(Exit::Released),
        Pdu::AbortRQ { source } => Err(Exit::PeerAborted(source)),
        other => Err(violation(format!(
            "unexpected PDU {}",
            other.short_description()
        ))),
    }
}

/// Whether the association ends before its next message. At shutdown it ends once no
/// message is partly received (`mid_message`: a command set or a data set).
fn expired(
    shutting_down: bool,
    mid_message: bool,
    queued: bool,
    age: Duration,
    lifetime: Duration,
    grace: Duration,
) -> Option<Exit> {
    if shutting_down && !mid_message {
        return Some(Exit::Shutdown);
    }
    // Review L10: no association lives for ever. Between messages it ends at once; a
    // store in flight (not acknowledged: nothing is lost) gets read_timeout_s more.
    let idle = !mid_message && !queued;
    if age > lifetime && (idle || age > lifetime + grace) {
        return Some(Exit::Abort(AssocError::Lifetime(lifetime)));
    }
    None
}

/// The accepted presentation context `id`.
fn accepted_context(
    contexts: &[PresentationContextNegotiated],
    id: u8,
) -> Option<&PresentationContextNegotiated> {
    contexts
        .iter()
        .find(|p| p.id == id && p.reason == PresentationContextResultReason::Acceptance)
}

/// The state of one association's message loop.
struct Session {
    /// Calling AE title, trimmed.
    calling: String,
    addr: SocketAddr,
    framing: Framing,
    /// The C-STORE whose data set is being received.
    incoming: Option<Incoming>,
    /// When the current C-STORE began (for the ingest-stage metric).
    store_started: Instant,
    /// Presentation data values received and not yet handled.
    queue: VecDeque<Pdv>,
    opened: Instant,
    /// `dicom.read_timeout_s`.
    read_timeout: Duration,
    /// `dicom.max_association_s`.
    lifetime: Duration,
    max_pdu: u32,
}

impl Session {
    /// A command set or a data set is partly received.
    fn mid_message(&self) -> bool {
        self.incoming.is_some() || self.framing.mid_command()
    }
}

impl Scp {
    /// Serves an admitted association while it holds its slot.
    pub(super) async fn run_admitted<S>(
        &self,
        permit: OwnedSemaphorePermit,
        assoc: AsyncServerAssociation<S>,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let result = match self.reserve_buffers(addr).await {
            Ok(buffers) => {
                let r = self.run_association(assoc, addr, shutdown).await;
                drop(buffers);
                r
            }
            Err(e) => {
                // Nothing was read from it: the peer sends again later.
                let _ = assoc.abort().await;
                Err(e)
            }
        };
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        if let Err(e) = result {
            tracing::warn!(peer = %addr, error = %e, "association ended with an error");
        }
    }

    /// The association's receive buffers (one PDU plus the 64 KiB validation head) from
    /// `dicom.max_buffered_mb`, waiting up to `read_timeout_s` while other associations hold
    /// it: meanwhile nothing is read, so the peer's sends wait in TCP (back-pressure).
    async fn reserve_buffers(
        &self,
        addr: SocketAddr,
    ) -> Result<crate::memory::Reservation, AssocError> {
        let need = self.cfg.dicom.max_pdu as u64 + HEAD_BYTES as u64;
        let too_large = |e: crate::memory::TooLarge| AssocError::Buffers(e.to_string());
        if let Some(r) = self.buffers.try_reserve(need).map_err(too_large)? {
            return Ok(r);
        }
        tracing::info!(peer = %addr, in_use_mib = self.buffers.in_use_mib(), budget_mib = self.buffers.total_mib(), "association waits for receive-buffer memory (dicom.max_buffered_mb)");
        self.metrics.inc("proxyseg_buffer_waits_total", &[]);
        let limit = Duration::from_secs(self.cfg.dicom.read_timeout_s);
        match tokio::time::timeout(limit, self.buffers.reserve(need)).await {
            Ok(r) => r.map_err(too_large),
            Err(_) => Err(AssocError::Buffers(format!(
                "no receive-buffer memory within {} s: dicom.max_buffered_mb ({} MiB) is held by other associations",
                limit.as_secs(),
                self.buffers.total_mib()
            ))),
        }
    }

    async fn run_association<S>(
        &self,
        assoc: AsyncServerAssociation<S>,
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
        mut assoc: AsyncServerAssociation<S>,
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
        let mut s = Session {
            calling,
            addr,
            framing: Framing::default(),
            incoming: None,
            store_started: Instant::now(),
            queue: VecDeque::new(),
            opened: Instant::now(),
            read_timeout: Duration::from_secs(self.cfg.dicom.read_timeout_s),
            lifetime: Duration::from_secs(self.cfg.dicom.max_association_s),
            max_pdu: assoc.acceptor_max_pdu_length(),
        };
        let exit = loop {
            if let Err(exit) = self.step(&mut assoc, &mut s, &mut shutdown).await {
                break exit;
            }
        };
        self.end(assoc, s.incoming.take(), exit).await
    }

    /// Handles the next presentation data value, or receives the next PDU when none is
    /// queued. `Err`: how the association ends.
    async fn step<S>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        s: &mut Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let shutting_down = *shutdown.borrow();
        let (mid, queued) = (s.mid_message(), !s.queue.is_empty());
        let age = s.opened.elapsed();
        if let Some(exit) = expired(shutting_down, mid, queued, age, s.lifetime, s.read_timeout) {
            return Err(exit);
        }
        let Some(pdv) = s.queue.pop_front() else {
            return self.receive(assoc, s, shutdown).await;
        };
        // One presentation data value at a time.
        let id = pdv.presentation_context_id;
        let Some(pc) = accepted_context(assoc.presentation_contexts(), id).cloned() else {
            return Err(violation(format!(
                "P-DATA on presentation context {id} which was not accepted"
            )));
        };
        let message = s
            .framing
            .classify(pdv, s.incoming.is_some())
            .map_err(violation)?;
        self.handle(assoc, s, &pc, message).await
    }

    /// Waits (up to `read_timeout_s`) for the next PDU and queues its presentation data
    /// values. While no message is partly received, a shutdown interrupts the wait.
    async fn receive<S>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        s: &mut Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let interruptible = !s.mid_message();
        let received = tokio::select! {
            r = tokio::time::timeout(s.read_timeout, pdata::receive(assoc, s.max_pdu)) => r,
            _ = shutdown.changed(), if interruptible => return Ok(()),
        };
        let pdvs = match received {
            Err(_) => return Err(Exit::Abort(AssocError::Timeout(s.read_timeout))),
            Ok(Err(e)) => return Err(Exit::Broken(AssocError::Ul(e.to_string()))),
            Ok(Ok(pdata::Received::PData(pdvs))) => pdvs,
            Ok(Ok(pdata::Received::Other(pdu))) => pdvs_of(pdu)?,
        };
        s.queue.extend(pdvs);
        Ok(())
    }

    /// Acts on one message.
    async fn handle<S>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        s: &mut Session,
        pc: &PresentationContextNegotiated,
        message: Message,
    ) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let io = |e: dimse::DimseError| AssocError::Io(e.to_string());
        match message {
            Message::CommandPart => {}
            Message::Echo(cmd) => {
                let rsp = dimse::echo_response(cmd.message_id, &cmd.sop_class_uid).map_err(io)?;
                send_command(assoc, pc.id, rsp).await?;
                tracing::debug!(message_id = cmd.message_id, "C-ECHO answered");
            }
            Message::StoreBegin(cmd) => {
                s.store_started = Instant::now();
                let inc = self
                    .begin_store(cmd, &pc.abstract_syntax, &pc.transfer_syntax, &s.calling)
                    .map_err(|e| AssocError::Io(e.to_string()))?;
                s.incoming = Some(inc);
            }
            Message::StoreContinue(data) => self.receive_fragment(s, &data),
            Message::StoreFinish(data) => {
                self.receive_fragment(s, &data);
                if let Some(inc) = s.incoming.take() {
                    let ip = s.addr.ip();
                    self.answer_store(assoc, pc.id, inc, &s.calling, ip, s.store_started)
                        .await?;
                }
            }
            Message::Unknown(cmd) => {
                tracing::warn!(
                    command = format!("{:#06x}", cmd.field),
                    "unsupported DIMSE command"
                );
                if cmd.has_dataset {
                    // Swallow its data set, then answer.
                    s.incoming = Some(Incoming::swallow(cmd));
                } else {
                    let rsp = dimse::store_response(
                        cmd.message_id,
                        &cmd.sop_class_uid,
                        &cmd.sop_instance_uid,
                        status::UNRECOGNIZED_OPERATION,
                        Some("unsupported DIMSE command"),
                    )
                    .map_err(io)?;
                    send_command(assoc, pc.id, rsp).await?;
                }
            }
        }
        Ok(())
    }

    /// Appends a data set fragment to the C-STORE being received.
    fn receive_fragment(&self, s: &mut Session, data: &[u8]) {
        if let Some(inc) = s.incoming.as_mut() {
            inc.write(data, self.cfg.dicom.max_object_mb * 1024 * 1024);
        }
    }

    /// Ends the association as `exit` says. The one exit: a data set being received is
    /// discarded (nothing of it is stored), then A-RELEASE-RP or A-ABORT is sent where due.
    async fn end<S>(
        &self,
        mut assoc: AsyncServerAssociation<S>,
        incoming: Option<Incoming>,
        exit: Exit,
    ) -> Result<(), AssocError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if let Some(inc) = incoming {
            inc.discard(&self.spool);
            if matches!(exit, Exit::Released) {
                tracing::warn!("release requested in the middle of a data set: discarded it");
            }
        }
        match exit {
            Exit::Shutdown => {
                tracing::info!("shutting down: aborting idle association");
                let _ = assoc.abort().await;
                Ok(())
            }
            Exit::Released => {
                assoc
                    .send(&Pdu::ReleaseRP)
                    .await
                    .map_err(|e| AssocError::Ul(e.to_string()))?;
                tracing::info!("association released");
                Ok(())
            }
            Exit::PeerAborted(source) => {
                tracing::info!(?source, "association aborted by peer");
                Ok(())
            }
            Exit::Abort(e) => {
                let _ = assoc.abort().await;
                Err(e)
            }
            Exit::Broken(e) => Err(e),
        }
    }
}

/// Sends one command set (a response) on presentation context `pc_id`.
pub(super) async fn send_command<S>(
    assoc: &mut AsyncServerAssociation<S>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pdv(value_type: PDataValueType, context: u8, is_last: bool, data: &[u8]) -> Pdv {
        Pdv {
            presentation_context_id: context,
            value_type,
            is_last,
            data: Bytes::copy_from_slice(data),
        }
    }

    /// A command set (Implicit VR Little Endian) with the elements the SCP reads.
    fn command_bytes(field: u16, has_dataset: bool) -> Vec<u8> {
        encode_command(&Command {
            field,
            message_id: 7,
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: "1.2.3".into(),
            has_dataset,
        })
    }

    fn encode_command(cmd: &Command) -> Vec<u8> {
        fn element(out: &mut Vec<u8>, tag: (u16, u16), value: &[u8]) {
            out.extend_from_slice(&tag.0.to_le_bytes());
            out.extend_from_slice(&tag.1.to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        let uid = |u: &str| {
            let mut v = u.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(0);
            }
            v
        };
        let mut body = Vec::new();
        element(&mut body, (0, 0x0002), &uid(&cmd.sop_class_uid));
        element(&mut body, (0, 0x0100), &cmd.field.to_le_bytes());
        element(&mut body, (0, 0x0110), &cmd.message_id.to_le_bytes());
        let dataset: u16 = if cmd.has_dataset { 0x0000 } else { 0x0101 };
        element(&mut body, (0, 0x0800), &dataset.to_le_bytes());
        element(&mut body, (0, 0x1000), &uid(&cmd.sop_instance_uid));
        let mut out = Vec::new();
        element(&mut out, (0, 0x0000), &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_complete_command_says_what_it_asks_for() {
        let mut f = Framing::default();
        let echo = command_bytes(field::C_ECHO_RQ, false);
        let m = f.classify(pdv(PDataValueType::Command, 1, true, &echo), false);
        assert!(matches!(m, Ok(Message::Echo(c)) if c.message_id == 7));

        let store = command_bytes(field::C_STORE_RQ, true);
        let m = f.classify(pdv(PDataValueType::Command, 3, true, &store), false);
        assert!(matches!(m, Ok(Message::StoreBegin(c)) if c.sop_instance_uid == "1.2.3"));

        // A C-STORE-RQ without a data set, and any other command, are not served.
        let bare = command_bytes(field::C_STORE_RQ, false);
        let m = f.classify(pdv(PDataValueType::Command, 3, true, &bare), false);
        assert!(matches!(m, Ok(Message::Unknown(_))));
        let find = command_bytes(0x0020, true);
        let m = f.classify(pdv(PDataValueType::Command, 3, true, &find), false);
        assert!(matches!(m, Ok(Message::Unknown(c)) if c.has_dataset));
    }

    #[test]
    fn a_command_in_fragments_is_reassembled() {
        let mut f = Framing::default();
        let echo = command_bytes(field::C_ECHO_RQ, false);
        let (a, b) = echo.split_at(10);
        let m = f.classify(pdv(PDataValueType::Command, 1, false, a), false);
        assert!(matches!(m, Ok(Message::CommandPart)));
        assert!(f.mid_command());
        let m = f.classify(pdv(PDataValueType::Command, 1, true, b), false);
        assert!(matches!(m, Ok(Message::Echo(_))));
        assert!(!f.mid_command());
    }

    #[test]
    fn data_set_fragments_continue_then_finish_a_store() {
        let mut f = Framing::default();
        let store = command_bytes(field::C_STORE_RQ, true);
        f.classify(pdv(PDataValueType::Command, 3, true, &store), false)
            .unwrap();
        let m = f.classify(pdv(PDataValueType::Data, 3, false, b"ab"), true);
        assert!(matches!(m, Ok(Message::StoreContinue(d)) if &d[..] == b"ab"));
        let m = f.classify(pdv(PDataValueType::Data, 3, true, b"cd"), true);
        assert!(matches!(m, Ok(Message::StoreFinish(d)) if &d[..] == b"cd"));
    }

    #[test]
    fn framing_violations_are_named() {
        let mut f = Framing::default();
        let err = |r: Result<Message, String>| r.err().unwrap_or_default();
        let data = pdv(PDataValueType::Data, 1, true, b"x");
        assert_eq!(
            err(f.classify(data, false)),
            "data set fragment without a command"
        );
        let store = command_bytes(field::C_STORE_RQ, true);
        f.classify(pdv(PDataValueType::Command, 3, true, &store), false)
            .unwrap();
        let elsewhere = pdv(PDataValueType::Data, 5, true, b"x");
        assert_eq!(
            err(f.classify(elsewhere, true)),
            "data set on another presentation context than its command"
        );
        let inside = pdv(PDataValueType::Command, 3, true, &store);
        assert_eq!(
            err(f.classify(inside, true)),
            "command fragment inside a data set"
        );
        let mut f = Framing::default();
        let big = vec![0u8; MAX_COMMAND];
        assert!(matches!(
            f.classify(pdv(PDataValueType::Command, 1, false, &big), false),
            Ok(Message::CommandPart)
        ));
        assert_eq!(
            err(f.classify(pdv(PDataValueType::Command, 1, true, b"x"), false)),
            "command set larger than 64 KiB"
        );
        let mut f = Framing::default();
        let junk = pdv(PDataValueType::Command, 1, true, b"not a command");
        assert!(f.classify(junk, false).is_err());
    }

    #[test]
    fn pdus_other_than_p_data_end_the_association() {
        let data = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Data,
                is_last: true,
                data: vec![1, 2],
            }],
        };
        assert!(matches!(pdvs_of(data), Ok(v) if v.len() == 1));
        assert!(matches!(pdvs_of(Pdu::ReleaseRQ), Err(Exit::Released)));
        let abort = Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        };
        assert!(matches!(pdvs_of(abort), Err(Exit::PeerAborted(_))));
        assert!(matches!(
            pdvs_of(Pdu::ReleaseRP),
            Err(Exit::Abort(AssocError::Protocol(m))) if m.starts_with("unexpected PDU")
        ));
    }

    /// Review L10: past its lifetime an association ends between messages at once; a message
    /// in flight gets the read timeout more. Shutdown waits for the message in flight.
    #[test]
    fn lifetime_and_shutdown_end_an_association_between_messages() {
        let s = Duration::from_secs;
        let (life, grace) = (s(100), s(10));
        let lifetime = |e: Option<Exit>| matches!(e, Some(Exit::Abort(AssocError::Lifetime(_))));
        assert!(expired(false, false, false, s(50), life, grace).is_none());
        assert!(lifetime(expired(false, false, false, s(101), life, grace)));
        assert!(expired(false, true, false, s(105), life, grace).is_none());
        assert!(expired(false, false, true, s(105), life, grace).is_none());
        assert!(lifetime(expired(false, true, false, s(111), life, grace)));
        assert!(matches!(
            expired(true, false, true, s(1), life, grace),
            Some(Exit::Shutdown)
        ));
        assert!(expired(true, true, false, s(1), life, grace).is_none());
    }
}
