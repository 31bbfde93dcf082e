//! Durable ingest: how a received, validated instance becomes stored. This module owns the
//! store side of a C-STORE: the duplicate and ownership check against the index, the rename
//! of the temp file into place, the fsyncs (file and directory, or one `syncfs`), the index
//! row, and the clean-up when any of them fails.
//!
//! Order (unchanged from when it lived in the SCP): the temp file is fsynced, renamed into
//! place, its directory made durable and its row committed; only then does the caller hear
//! success, so no C-STORE success precedes durable data. For a new instance the index row
//! and the directory barrier are queued before the file's fsync runs, so the three overlap
//! ([`Placed::Racing`], finished by [`Ingest::settle`]); a replacement is fsynced before its
//! rename and its barrier and row follow ([`Ingest::commit`]).
//!
//! Errors are [`IngestError`]: the SCP (`dicom::scp`) maps each to a DIMSE status and an
//! Error Comment; the error's text itself (which may name server paths) is for the log only
//! (review L7).

use crate::store::db::{Db, Queued};
use crate::store::instances;
use crate::store::spool::{self, DirSyncer, Durability, QueuedSync, Spool};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

pub use crate::store::instances::{InstanceRecord, Recorded};

/// Why an instance was not stored. The text is the detail for the log; what the peer reads
/// is chosen by the SCP from the variant.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The instance's UIDs make no spool path.
    #[error("{0}")]
    NoPath(String),
    /// The file could not be written or renamed into place.
    #[error("{0}")]
    NotWritten(String),
    /// The file or its directory could not be made durable.
    #[error("{0}")]
    NotDurable(String),
    /// The index could not be read or written.
    #[error("{0}")]
    NotIndexed(String),
    /// A different copy of an instance another peer stored: only that peer may replace it
    /// (review H4). Nothing was stored or removed.
    #[error(
        "a different copy of an instance {owner_ae} ({owner_host}) stored: {sender_ae} ({sender_host}) may not replace it"
    )]
    NotYours {
        /// Calling AE title of the peer that stored the instance.
        owner_ae: String,
        /// Host of the peer that stored the instance.
        owner_host: String,
        /// Calling AE title of the sender of this copy.
        sender_ae: String,
        /// Host of the sender of this copy.
        sender_host: String,
    },
}

/// What [`Ingest::place`] did with the received file.
pub enum Placed {
    /// An identical copy is already stored: the temp file was removed.
    Duplicate {
        /// The calling AE that stored it, when that is another peer than the sender (the
        /// copy is acknowledged, and stays that peer's).
        owner: Option<String>,
    },
    /// A different copy of a stored instance, renamed next to it (its bytes durable in
    /// fsync mode; not yet durable in its directory, not yet indexed): finish it with
    /// [`Ingest::commit`].
    Replacement(Box<InstanceRecord>),
    /// A new instance, renamed into place; its index row (listed as unsynced) and its
    /// barrier (the directory fsync, or a syncfs that covers the file too) were queued
    /// before the file's fsync ran, so the three overlap. A crash before all three finished
    /// leaves at most a row whose file is incomplete; nobody was told it was stored, and the
    /// next start checks it against its digest ([`instances::verify_unsynced`]). Finish it
    /// with [`Ingest::settle`].
    Racing(Racing),
}

/// The three parts of a new instance's commit that run side by side ([`Placed::Racing`]).
pub struct Racing {
    /// The row being written.
    rec: Box<InstanceRecord>,
    /// The queued index write.
    index: Queued<Recorded>,
    /// The queued directory barrier.
    barrier: QueuedSync,
    /// How the file's fsync went.
    fsynced: Result<(), String>,
}

/// A committed instance: its row and what recording it did.
#[derive(Debug)]
pub struct Committed {
    /// The index row as written.
    pub rec: InstanceRecord,
    /// New, or which copy it replaced.
    pub outcome: Recorded,
}

/// The store side of receiving instances: the spool, the index and the durability barriers,
/// shared by every association (cheap to clone).
#[derive(Clone)]
pub struct Ingest {
    spool: Spool,
    db: Db,
    dir_sync: DirSyncer,
    /// Instances whose row went in as unsynced and whose fsync has since finished: the next
    /// index write takes them off the `unsynced` list (see [`instances::record_unsynced`]).
    synced: Arc<std::sync::Mutex<Vec<String>>>,
    /// Copies of one SOP Instance UID are serialised by one of these ([`Ingest::serialise`]).
    locks: Arc<[tokio::sync::Mutex<()>]>,
}

/// How many locks serialise copies of one SOP Instance UID.
const LOCKS: usize = 64;

impl Ingest {
    /// Ingest into `spool` and `db`, making files durable as `mode` says (starts the
    /// directory-sync thread).
    pub fn new(spool: Spool, db: Db, mode: Durability) -> Ingest {
        let dir_sync = DirSyncer::start(mode, spool.root());
        Ingest {
            spool,
            db,
            dir_sync,
            synced: Default::default(),
            locks: (0..LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Serialises copies of one SOP Instance UID (from concurrent associations): hold the
    /// guard from [`Ingest::place`] to the end of [`Ingest::commit`] / [`Ingest::settle`].
    pub async fn serialise(&self, sop_instance_uid: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks[lock_index(sop_instance_uid, self.locks.len())]
            .lock()
            .await
    }

    /// The blocking part of storing: check for a stored copy, rename the temp file into
    /// place, and (fsync mode) fsync it. A new instance queues its index row and its barrier
    /// before that fsync ([`Placed::Racing`]); a replacement is fsynced before its rename,
    /// and its barrier and row follow in [`Ingest::commit`]. The temp file is removed on
    /// failure and for a duplicate.
    ///
    /// `file` is the flushed temp file at `temp`; `rec` is the validated record with its
    /// sender, size and digest filled in (its path is set here).
    pub fn place(
        &self,
        file: std::fs::File,
        temp: &Path,
        rec: InstanceRecord,
    ) -> Result<Placed, IngestError> {
        match self.place_file(file, temp, rec) {
            Ok(placed @ Placed::Duplicate { .. }) => {
                self.spool.discard(temp);
                Ok(placed)
            }
            Ok(placed) => Ok(placed),
            Err(e) => {
                self.spool.discard(temp);
                Err(e)
            }
        }
    }

    /// [`Ingest::place`] without the clean-up of the temp file.
    fn place_file(
        &self,
        file: std::fs::File,
        temp: &Path,
        mut rec: InstanceRecord,
    ) -> Result<Placed, IngestError> {
        let fsync_mode = self.dir_sync.mode() == Durability::Fsync;
        let fsync = |file: &std::fs::File| {
            file.sync_all()
                .map_err(|e| format!("cannot fsync spool file: {e}"))
        };
        let dest = self
            .spool
            .final_path(&rec.study_uid, &rec.series_uid, &rec.sop_instance_uid)
            .map_err(|e| IngestError::NoPath(e.to_string()))?;
        rec.path = dest.to_string_lossy().into_owned();
        let existing = self
            .db
            .read_ingest(|c| instances::existing(c, &rec.sop_instance_uid))
            .map_err(|e| IngestError::NotIndexed(e.to_string()))?;
        if let Some(stored) = &existing {
            let path = &stored.path;
            let same = spool::same_content(&stored.digest, Path::new(path), &rec.digest);
            // Only the peer that stored an instance may replace it (review H4): a copy from
            // another calling AE or host is refused, or, when identical, acknowledged without
            // being stored (the instance stays with its first sender, whose job it is part of).
            if !stored.sent_by(&rec.calling_ae, &rec.source_host) {
                if same {
                    return Ok(Placed::Duplicate {
                        owner: Some(stored.calling_ae.clone()),
                    });
                }
                return Err(IngestError::NotYours {
                    owner_ae: stored.calling_ae.clone(),
                    owner_host: stored.source_host.clone(),
                    sender_ae: rec.calling_ae.clone(),
                    sender_host: rec.source_host.clone(),
                });
            }
            if same {
                return Ok(Placed::Duplicate { owner: None });
            }
            // A different copy goes to a new name, so the stored copy and its index row stay
            // consistent until the new row is committed; the old file is removed only after.
            // The name's "r" keeps it apart from every UID-named file (digits and dots only):
            // "<sop>.<12 digits>.dcm" would be the path of instance "<sop>.<12 digits>" and
            // the rename would replace that instance silently (review L5).
            if *path == rec.path {
                let hex = rec.digest.rsplit(':').next().unwrap_or_default();
                let short = &hex[..12.min(hex.len())];
                rec.path = dest
                    .with_extension(format!("r{short}.dcm"))
                    .to_string_lossy()
                    .into_owned();
            }
            // A replacement's bytes are durable before it is renamed next to the copy it
            // replaces (with syncfs, the barrier after the rename covers them).
            if fsync_mode {
                fsync(&file).map_err(IngestError::NotDurable)?;
            }
        }
        self.spool
            .rename_into_place(temp, Path::new(&rec.path))
            .map_err(|e| IngestError::NotWritten(e.to_string()))?;
        if existing.is_some() {
            return Ok(Placed::Replacement(Box::new(rec)));
        }
        let row = rec.clone();
        let synced = self.synced.clone();
        let index = self.db.enqueue(move |c| {
            let done = std::mem::take(&mut *synced.lock().unwrap_or_else(|p| p.into_inner()));
            instances::record_unsynced(c, &row, &done)
        });
        let barrier = self
            .dir_sync
            .enqueue(dest.parent().unwrap_or(self.spool.root()));
        // With syncfs, the barrier covers the file's bytes as well.
        let fsynced = if fsync_mode { fsync(&file) } else { Ok(()) };
        Ok(Placed::Racing(Racing {
            rec: Box::new(rec),
            index,
            barrier,
            fsynced,
        }))
    }

    /// Makes a renamed replacement durable in its directory, then indexes it (the row then
    /// names the new copy). The barrier comes first, so the index never names a copy that
    /// might not be on disk while an acknowledged older copy exists. On failure the new file
    /// is removed (the stored copy and its row stay).
    pub async fn commit(&self, rec: InstanceRecord) -> Result<Committed, IngestError> {
        let dest = std::path::PathBuf::from(&rec.path);
        let dir = dest.parent().unwrap_or(self.spool.root()).to_owned();
        let r = rec.clone();
        let outcome = match self.dir_sync.sync(&dir).await {
            Err(e) => Err(IngestError::NotDurable(format!(
                "cannot fsync spool directory: {e}"
            ))),
            Ok(()) => self
                .db
                .write(move |c| instances::record(c, &r))
                .await
                .map_err(|e| IngestError::NotIndexed(format!("index: {e}"))),
        };
        match outcome {
            Ok(outcome) => Ok(Committed { rec, outcome }),
            Err(e) => {
                // Nothing names the new file: remove it (the stored copy and its row stay).
                self.spool.discard(&dest);
                Err(e)
            }
        }
    }

    /// Waits for the three parts of a new instance's commit that run side by side (see
    /// [`Placed::Racing`]). Only when all succeeded is the instance committed; if its file
    /// could not be made durable, or its row did not commit, row and file are removed.
    pub async fn settle(&self, racing: Racing) -> Result<Committed, IngestError> {
        let Racing {
            rec,
            index,
            barrier,
            fsynced,
        } = racing;
        let (indexed, barrier) = tokio::join!(index.wait(), barrier.wait());
        let uid = rec.sop_instance_uid.clone();
        // With syncfs the barrier is what made the file's bytes durable.
        let fsynced = match (self.dir_sync.mode(), &barrier) {
            (Durability::Syncfs, Err(e)) => Err(e.to_string()),
            _ => fsynced,
        };
        let failure = match (&fsynced, &indexed, &barrier) {
            (Err(e), _, _) => Some(IngestError::NotDurable(format!(
                "cannot fsync spool file: {e}"
            ))),
            (_, Err(e), _) => Some(IngestError::NotIndexed(format!("index: {e}"))),
            (_, _, Err(e)) => Some(IngestError::NotDurable(format!(
                "cannot fsync spool directory: {e}"
            ))),
            _ => None,
        };
        if fsynced.is_ok() {
            self.synced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(uid.clone());
        }
        if let Some(failure) = failure {
            // Only a failed directory barrier leaves a durable file and its committed row in
            // place (consistent while the system runs; the sender retries). Otherwise nothing
            // may name the file any more.
            if fsynced.is_err() || indexed.is_err() {
                if indexed.is_ok() {
                    self.forget(&rec).await;
                }
                self.spool.discard(Path::new(&rec.path));
            }
            return Err(failure);
        }
        match indexed {
            Ok(outcome) => Ok(Committed { rec: *rec, outcome }),
            // Unreachable: a failed index write is a failure above.
            Err(e) => Err(IngestError::NotIndexed(format!("index: {e}"))),
        }
    }

    /// Removes the committed row of an instance whose file failed to store.
    async fn forget(&self, rec: &InstanceRecord) {
        let uid = rec.sop_instance_uid.clone();
        let path = rec.path.clone();
        if let Err(e) = self
            .db
            .write(move |c| instances::forget(c, &uid, &path))
            .await
        {
            tracing::error!(sop = %rec.sop_instance_uid, error = %e, "cannot remove the row of an instance that failed to store; the next start checks it");
        }
    }

    /// Removes the file a replaced copy left behind (once the replacement is committed).
    pub fn remove_replaced(&self, old_path: &str) {
        if let Err(e) = std::fs::remove_file(old_path) {
            tracing::warn!(path = %old_path, error = %e, "cannot remove the replaced copy");
        }
    }
}

/// Which of `n` locks serialises `uid`.
fn lock_index(uid: &str, n: usize) -> usize {
    let h = Sha256::digest(uid.as_bytes());
    (h[0] as usize) % n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instances::test_record;
    use std::io::Write;

    struct Fixture {
        _dir: tempfile::TempDir,
        ingest: Ingest,
        spool: Spool,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let db = Db::open(&dir.path().join("index.sqlite")).unwrap();
        Fixture {
            ingest: Ingest::new(spool.clone(), db, Durability::Fsync),
            spool,
            _dir: dir,
        }
    }

    /// A temp file holding `bytes` and the record of an instance "1.2.3" sent by `calling`
    /// with digest `digest`.
    fn received(
        f: &Fixture,
        bytes: &[u8],
        calling: &str,
        digest: &str,
    ) -> (std::fs::File, std::path::PathBuf, InstanceRecord) {
        let (mut file, temp) = f.spool.create_temp().unwrap();
        file.write_all(bytes).unwrap();
        let rec = InstanceRecord {
            calling_ae: calling.into(),
            digest: digest.into(),
            size_bytes: bytes.len() as u64,
            ..test_record("1.2.3", "1.2.4", 100.0)
        };
        (file, temp, rec)
    }

    async fn store(f: &Fixture, calling: &str, digest: &str) -> Result<Placed, IngestError> {
        let (file, temp, rec) = received(f, digest.as_bytes(), calling, digest);
        let placed = f.ingest.place(file, &temp, rec);
        if !matches!(placed, Ok(Placed::Racing(_)) | Ok(Placed::Replacement(_))) {
            assert!(!temp.exists(), "the temp file is removed");
        }
        placed
    }

    #[tokio::test]
    async fn new_duplicate_foreign_and_replacement() {
        let f = fixture();
        // New: renamed into place, then settled (row and barrier).
        let Ok(Placed::Racing(racing)) = store(&f, "PACS", "xxh3-128:aa").await else {
            panic!("a new instance races its row, barrier and fsync");
        };
        let done = f.ingest.settle(racing).await.unwrap();
        assert_eq!(done.outcome, Recorded::New);
        assert!(Path::new(&done.rec.path).is_file());
        assert!(done.rec.path.ends_with("1.2.3.dcm"));

        // The same bytes again from the same peer: a duplicate, nothing stored.
        let placed = store(&f, "PACS", "xxh3-128:aa").await;
        assert!(matches!(placed, Ok(Placed::Duplicate { owner: None })));

        // The same bytes from another peer: acknowledged, stays the first peer's (H4).
        let placed = store(&f, "OTHER", "xxh3-128:aa").await;
        assert!(matches!(placed, Ok(Placed::Duplicate { owner: Some(o) }) if o == "PACS"));

        // A different copy from another peer: refused, nothing replaced (H4).
        let placed = store(&f, "OTHER", "xxh3-128:bb").await;
        let Err(e @ IngestError::NotYours { .. }) = placed else {
            panic!("another peer's different copy is refused");
        };
        assert!(e.to_string().contains("PACS"));
        assert_eq!(std::fs::read(&done.rec.path).unwrap(), b"xxh3-128:aa");

        // A different copy from the owner: renamed next to the stored one (L5), committed,
        // and the old file is named for removal.
        let Ok(Placed::Replacement(rec)) = store(&f, "PACS", "xxh3-128:bbccddeeff0011").await
        else {
            panic!("the owner's different copy replaces the stored one");
        };
        assert!(
            rec.path.ends_with("1.2.3.rbbccddeeff00.dcm"),
            "{}",
            rec.path
        );
        let committed = f.ingest.commit(*rec).await.unwrap();
        let Recorded::Replaced { old_path, .. } = committed.outcome else {
            panic!("the row now names the replacement");
        };
        assert_eq!(old_path.as_deref(), Some(done.rec.path.as_str()));
    }

    #[test]
    fn a_uid_that_makes_no_path_is_refused_and_its_temp_file_removed() {
        let f = fixture();
        let (file, temp, mut rec) = received(&f, b"x", "PACS", "xxh3-128:aa");
        rec.series_uid = "../etc".into();
        let placed = f.ingest.place(file, &temp, rec);
        assert!(matches!(placed, Err(IngestError::NoPath(_))));
        assert!(!temp.exists());
    }

    #[test]
    fn copies_of_one_uid_share_a_lock() {
        assert_eq!(lock_index("1.2.3", LOCKS), lock_index("1.2.3", LOCKS));
        assert!(lock_index("1.2.3", LOCKS) < LOCKS);
    }
}
