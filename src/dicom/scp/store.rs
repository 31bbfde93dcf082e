//! The C-STORE handler: opening a data set's temp file ([`Scp::begin_store`]), streaming its
//! fragments into it ([`Incoming`]), validating it, handing it to [`crate::store::ingest`]
//! (duplicate and ownership check, rename, fsyncs, index) and answering with the DIMSE status
//! and Error Comment each outcome calls for ([`Refusal`]). No success is sent before ingest
//! reports the instance durable.

use super::association::send_command;
use super::{AssocError, Scp};
use crate::dicom::dimse::{self, status, Command};
use crate::dicom::sop;
use crate::dicom::validate::{self, Limits};
use crate::store::ingest::{Committed, IngestError, Placed, Recorded};
use crate::store::{spool, Spool};
use dicom_object::FileMetaTableBuilder;
use dicom_ul::association::server::AsyncServerAssociation;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a C-STORE was refused: the DIMSE status and Error Comment sent back, and for a
/// failure of the daemon's own storage the error itself, which only the log sees.
#[derive(Debug)]
pub(super) struct Refusal {
    status: u16,
    comment: String,
    detail: Option<String>,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>) -> Refusal {
        Refusal {
            status,
            comment: comment.into(),
            detail: None,
        }
    }

    /// A failure of the daemon's own storage (spool I/O, index): the peer reads only `what`
    /// (0xA700), never the error's server paths; the error goes to the log (review L7).
    fn internal(what: &'static str, detail: impl std::fmt::Display) -> Refusal {
        Refusal {
            status: status::OUT_OF_RESOURCES,
            comment: what.to_string(),
            detail: Some(detail.to_string()),
        }
    }

    /// What the log says: the error itself where there is one.
    fn log_reason(&self) -> &str {
        self.detail.as_deref().unwrap_or(&self.comment)
    }
}

/// A data set that failed validation is refused with its status and comment as they are.
impl From<validate::Invalid> for Refusal {
    fn from(v: validate::Invalid) -> Refusal {
        Refusal::new(v.status, v.comment)
    }
}

/// What the peer reads when ingest fails: storage failures are 0xA700 with a fixed comment
/// (review L7), another peer's instance 0x0124 (review H4), a UID that makes no spool path
/// 0xA900 with the reason.
impl From<IngestError> for Refusal {
    fn from(e: IngestError) -> Refusal {
        match e {
            IngestError::NoPath(reason) => {
                Refusal::new(status::DATASET_DOES_NOT_MATCH_SOP_CLASS, reason)
            }
            IngestError::NotWritten(_) => Refusal::internal(NOT_WRITTEN, e),
            IngestError::NotDurable(_) => Refusal::internal(NOT_DURABLE, e),
            IngestError::NotIndexed(_) => Refusal::internal(NOT_INDEXED, e),
            IngestError::NotYours { .. } => Refusal {
                status: status::NOT_AUTHORIZED,
                comment: NOT_YOURS.into(),
                detail: Some(e.to_string()),
            },
        }
    }
}

/// Error Comments of storage failures (review L7: no server paths reach peers).
const NOT_WRITTEN: &str = "storage error: instance not written";
const NOT_DURABLE: &str = "storage error: instance not made durable";
const NOT_INDEXED: &str = "storage error: instance not indexed";
/// Error Comment of a copy refused because another peer stored the instance (review H4).
const NOT_YOURS: &str = "SOP instance stored earlier by another peer: not replaced";

/// How many received bytes accumulate before their writeback is started.
const WRITEBACK_STEP: u64 = 256 * 1024;

/// How much of each data set is kept in memory for validation.
pub(super) const HEAD_BYTES: usize = 64 * 1024;

/// 128-byte zero preamble followed by the "DICM" prefix of a Part 10 file.
const PART10_PREAMBLE: [u8; 132] = {
    let mut p = [0u8; 132];
    p[128] = b'D';
    p[129] = b'I';
    p[130] = b'C';
    p[131] = b'M';
    p
};

impl Scp {
    /// Opens the temp file for a C-STORE and writes its Part 10 preamble and meta group.
    pub(super) fn begin_store(
        &self,
        cmd: Command,
        context_sop: &str,
        ts: &str,
        calling: &str,
    ) -> Result<Incoming, crate::store::SpoolError> {
        let ts = sop::trim_uid(ts).to_string();
        if let Some(refusal) = self.refuse_early(&cmd, context_sop) {
            return Ok(Incoming::refused(cmd, refusal));
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
                        inc.fail(Refusal::new(
                            status::OUT_OF_RESOURCES,
                            format!("cannot write spool file: {e}"),
                        ));
                    }
                }
            }
            Err(e) => inc.fail(Refusal::new(
                status::CANNOT_UNDERSTAND,
                format!("bad meta information: {e}"),
            )),
        }
        Ok(inc)
    }

    /// The refusals decided from the command alone, before anything is written: a SOP class
    /// other than the presentation context's, an invalid SOP Instance UID, a full disk.
    fn refuse_early(&self, cmd: &Command, context_sop: &str) -> Option<Refusal> {
        let context_sop = sop::trim_uid(context_sop);
        if cmd.sop_class_uid != context_sop {
            return Some(Refusal::new(
                status::SOP_CLASS_NOT_SUPPORTED,
                format!("command SOP class {context_sop} differs from the presentation context's"),
            ));
        }
        if !sop::is_valid_uid(&cmd.sop_instance_uid) {
            return Some(Refusal::new(
                status::CANNOT_UNDERSTAND,
                "invalid Affected SOP Instance UID",
            ));
        }
        // Free disk is checked per instance, not only when the association opened: one
        // association may otherwise fill the disk. 0xA700 (out of resources) is transient, so
        // the peer retries later; its data set is read and discarded, never written.
        if let Some(free) = self.free_below_reserve() {
            tracing::error!(sop = %cmd.sop_instance_uid, free_mb = free / 1048576, reserve_mb = self.cfg.dicom.min_free_disk_mb, "C-STORE refused: free disk below the reserve");
            return Some(Refusal::new(
                status::OUT_OF_RESOURCES,
                "out of disk space: free space is below the reserve",
            ));
        }
        None
    }

    /// Completes a C-STORE (see [`Scp::finish_store`]), counts it and sends its response on
    /// presentation context `pc_id`.
    pub(super) async fn answer_store<S>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        pc_id: u8,
        inc: Incoming,
        calling: &str,
        ip: IpAddr,
        started: std::time::Instant,
    ) -> Result<(), AssocError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (st, comment, cmd) = self.finish_store(inc, calling, ip).await;
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
                started.elapsed().as_secs_f64(),
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
        send_command(assoc, pc_id, rsp).await
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
        let received = match state {
            IncomingState::Writing {
                file,
                path,
                hash,
                head,
                len,
                offset,
                ..
            } => ReceivedDataSet {
                file,
                temp: path,
                head,
                offset,
                len,
                digest: hash.finish(),
                limits: Limits {
                    max_object: self.cfg.dicom.max_object_mb * 1024 * 1024,
                    max_decoded: self.cfg.pipeline.max_decoded_mb * 1024 * 1024,
                },
            },
            IncomingState::Refused(r) => return self.refused(cmd, r),
            IncomingState::Swallow => {
                return (
                    status::UNRECOGNIZED_OPERATION,
                    Some("unsupported DIMSE command".into()),
                    cmd,
                );
            }
        };
        // Copies of one SOP Instance UID from concurrent associations are serialised from the
        // duplicate check to the index commit.
        let _guard = self.ingest.serialise(&cmd.sop_instance_uid).await;
        let placed = match self.place(received, &cmd, ts, calling, ip).await {
            Ok(p) => p,
            Err(r) => return self.refused(cmd, r),
        };
        let committed = match placed {
            Placed::Duplicate { owner } => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                match owner {
                    None => {
                        tracing::info!(sop = %cmd.sop_instance_uid, "identical duplicate: kept the stored copy")
                    }
                    Some(owner) => {
                        tracing::warn!(sop = %cmd.sop_instance_uid, calling = %calling, peer = %ip, owner = %owner, "identical copy of an instance another peer stored: acknowledged, not stored (it stays with that peer's study)")
                    }
                }
                return (status::SUCCESS, None, cmd);
            }
            Placed::Replacement(rec) => self.ingest.commit(*rec).await,
            Placed::Racing(racing) => self.ingest.settle(racing).await,
        };
        match committed {
            Ok(committed) => {
                self.stored(committed);
                (status::SUCCESS, None, cmd)
            }
            Err(e) => {
                let r = Refusal::from(e);
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop = %cmd.sop_instance_uid, reason = %r.log_reason(), "C-STORE failed while committing");
                (r.status, Some(r.comment), cmd)
            }
        }
    }

    /// Counts, logs and answers a refused C-STORE.
    fn refused(&self, cmd: Command, r: Refusal) -> (u16, Option<String>, Command) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(sop = %cmd.sop_instance_uid, status = format!("{:#06x}", r.status), reason = %r.log_reason(), "C-STORE refused");
        (r.status, Some(r.comment), cmd)
    }

    /// One blocking step: flush the temp file, validate it, then let ingest check for a
    /// stored copy, rename it into place and fsync it. The temp file is removed on failure.
    async fn place(
        &self,
        received: ReceivedDataSet,
        cmd: &Command,
        ts: String,
        calling: &str,
        ip: IpAddr,
    ) -> Result<Placed, Refusal> {
        let ingest = self.ingest.clone();
        let spool = self.spool.clone();
        let cmd = cmd.clone();
        let calling = calling.to_string();
        tokio::task::spawn_blocking(move || {
            let temp = received.temp.clone();
            match received.validate(&cmd, &ts, calling, ip) {
                Ok((file, rec)) => ingest.place(file, &temp, rec).map_err(Refusal::from),
                Err(r) => {
                    spool.discard(&temp);
                    Err(r)
                }
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(Refusal::new(
                status::PROCESSING_FAILURE,
                format!("storage task failed: {e}"),
            ))
        })
    }

    /// Counts and logs a committed instance; removes the file a replaced copy leaves behind.
    fn stored(&self, Committed { rec, outcome }: Committed) {
        let uid = &rec.sop_instance_uid;
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Recorded::New => {
                tracing::info!(sop = %uid, study = %rec.study_uid, modality = %rec.modality, bytes = rec.size_bytes, "stored")
            }
            Recorded::Replaced {
                old_path,
                re_encoded,
            } => {
                if re_encoded {
                    tracing::info!(sop = %uid, transfer_syntax = %rec.transfer_syntax, "a re-encoded copy of this instance arrived (same content key): replaced the stored one after the new one was durable; not a new image");
                } else {
                    tracing::warn!(sop = %uid, "a different copy of this instance arrived: replaced the stored one after the new one was durable");
                }
                if let Some(old) = old_path {
                    self.ingest.remove_replaced(&old);
                }
            }
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
    /// What it is checked against.
    limits: Limits,
}

impl ReceivedDataSet {
    /// Flushes the temp file and validates it (blocking): the flushed file and the index
    /// record ingest needs, with its sender, size and digest.
    fn validate(
        self,
        cmd: &Command,
        ts: &str,
        calling: String,
        ip: IpAddr,
    ) -> Result<(std::fs::File, crate::store::ingest::InstanceRecord), Refusal> {
        let file = self.file.into_inner().map_err(|e| {
            Refusal::internal(
                NOT_WRITTEN,
                format!("cannot write spool file: {}", e.error()),
            )
        })?;
        // Preamble and meta group, then every data set byte received.
        let size = self.offset + self.len;
        // The tail's writeback runs while the data set is validated.
        spool::start_writeback(&file, 0, size);
        let mut rec = validate::validate(
            &self.temp,
            &self.head,
            cmd,
            ts,
            self.offset,
            self.len,
            self.limits,
        )?;
        rec.calling_ae = calling;
        rec.source_host = ip.to_string();
        rec.size_bytes = size;
        rec.digest = self.digest;
        Ok((file, rec))
    }
}

/// The C-STORE being received on an association.
pub(super) struct Incoming {
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

    /// An unsupported command whose data set is read and dropped before it is answered.
    pub(super) fn swallow(cmd: Command) -> Incoming {
        Incoming {
            cmd,
            ts: String::new(),
            state: IncomingState::Swallow,
        }
    }

    /// Appends a data fragment; on a local failure or an oversized data set, switches to
    /// refusing (the temp file is removed at once).
    pub(super) fn write(&mut self, data: &[u8], max_len: u64) {
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
                        Refusal::internal(NOT_WRITTEN, format!("cannot write spool file: {e}"))
                    })
                }
            }
            _ => None,
        };
        if let Some(r) = failure {
            self.fail(r);
        }
    }

    /// Switches to refusing with `r`, removing the temp file written so far.
    fn fail(&mut self, r: Refusal) {
        let old = std::mem::replace(&mut self.state, IncomingState::Refused(r));
        if let IncomingState::Writing { path, file, .. } = old {
            drop(file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temp file");
            }
        }
    }

    /// Drops whatever was written (association ended mid data set).
    pub(super) fn discard(self, spool: &Spool) {
        if let IncomingState::Writing { path, file, .. } = self.state {
            drop(file);
            spool.discard(&path);
            tracing::warn!(sop = %self.cmd.sop_instance_uid, "association ended mid data set: nothing stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_tell_the_peer_no_server_path() {
        let e = spool::SpoolError::Io {
            op: "create",
            path: "/var/lib/proxyseg/spool/.tmp/0f.part".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let r = Refusal::internal(NOT_WRITTEN, &e);
        assert_eq!(r.status, status::OUT_OF_RESOURCES);
        assert_eq!(r.comment, NOT_WRITTEN);
        assert!(
            r.comment.len() <= 64,
            "an Error Comment is at most 64 characters"
        );
        assert!(r
            .log_reason()
            .contains("/var/lib/proxyseg/spool/.tmp/0f.part"));
        let plain = Refusal::new(status::CANNOT_UNDERSTAND, "data set does not parse");
        assert_eq!(plain.log_reason(), "data set does not parse");
    }

    /// Each ingest failure reaches the peer as the status and comment it had before ingest
    /// moved to `store::ingest`; the detail (with its paths) only reaches the log.
    #[test]
    fn ingest_errors_map_to_their_status_and_comment() {
        let path = "/var/lib/proxyseg/spool/1.2/1.3/1.4.dcm";
        let cases = [
            (
                IngestError::NotWritten(format!("rename {path}: no space")),
                status::OUT_OF_RESOURCES,
                NOT_WRITTEN,
            ),
            (
                IngestError::NotDurable(format!("cannot fsync spool file: {path}")),
                status::OUT_OF_RESOURCES,
                NOT_DURABLE,
            ),
            (
                IngestError::NotIndexed(format!("index: {path}")),
                status::OUT_OF_RESOURCES,
                NOT_INDEXED,
            ),
        ];
        for (e, want_status, want_comment) in cases {
            let r = Refusal::from(e);
            assert_eq!((r.status, r.comment.as_str()), (want_status, want_comment));
            assert!(r.log_reason().contains(path));
        }

        let r = Refusal::from(IngestError::NotYours {
            owner_ae: "PACS".into(),
            owner_host: "10.0.0.1".into(),
            sender_ae: "OTHER".into(),
            sender_host: "10.0.0.2".into(),
        });
        assert_eq!(r.status, status::NOT_AUTHORIZED);
        assert_eq!(r.comment, NOT_YOURS);
        assert_eq!(
            r.log_reason(),
            "a different copy of an instance PACS (10.0.0.1) stored: OTHER (10.0.0.2) may not replace it"
        );

        let r = Refusal::from(IngestError::NoPath(
            "\"..\" is not a valid DICOM UID".into(),
        ));
        assert_eq!(r.status, status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
        assert_eq!(r.comment, "\"..\" is not a valid DICOM UID");
        assert_eq!(r.log_reason(), r.comment);

        for comment in [NOT_WRITTEN, NOT_DURABLE, NOT_INDEXED, NOT_YOURS] {
            assert!(
                comment.len() <= 64,
                "an Error Comment is at most 64 characters"
            );
        }
    }
}
