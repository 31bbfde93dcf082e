//! The spool: one Part 10 file per received instance, under `data_dir/spool/`.
//!
//! Files are written to `spool/.tmp/`, fsynced, renamed into
//! `spool/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`, and the directories fsynced. A file
//! only exists under its final name once its bytes are durable; a rename over an older copy
//! replaces it atomically, so the older copy is never lost before the new one is safe.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Errors from the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we did.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A UID that would not make a safe path component.
    #[error("{0:?} is not a valid DICOM UID")]
    BadUid(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io { op, path, source }
}

/// Where [`Spool::sweep_orphans`] moves unindexed files, under the spool root.
pub const ORPHANS: &str = ".orphans";

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    /// Opens the spool under `data_dir`, creating it, and deletes leftover temp files (they
    /// were never acknowledged, so nobody is owed them). Returns how many were removed.
    pub fn open(data_dir: &Path) -> Result<(Spool, usize), SpoolError> {
        let root = data_dir.join("spool");
        let tmp = root.join(".tmp");
        super::private::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        super::private::tighten(&root).map_err(io("chmod", &root))?;
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io("list", &tmp))? {
            let entry = entry.map_err(io("list", &tmp))?;
            fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
            removed += 1;
        }
        sync_dir(&tmp)?;
        Ok((Spool { root }, removed))
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a new temp file for an incoming instance.
    pub fn create_temp(&self) -> Result<(File, PathBuf), SpoolError> {
        let name = format!("{:032x}.part", rand::random::<u128>());
        let path = self.root.join(".tmp").join(name);
        let f = super::private::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("create", &path))?;
        Ok((f, path))
    }

    /// Where an instance lives once committed.
    pub fn final_path(&self, study: &str, series: &str, sop: &str) -> Result<PathBuf, SpoolError> {
        for uid in [study, series, sop] {
            if !crate::sop::is_valid_uid(uid) {
                return Err(SpoolError::BadUid(uid.to_string()));
            }
        }
        Ok(self
            .root
            .join(study)
            .join(series)
            .join(format!("{sop}.dcm")))
    }

    /// Moves a fully written and fsynced temp file to `dest`. New study / series directories
    /// are made durable here; the caller must then make the rename itself durable with
    /// [`DirSyncer::sync`] on `dest`'s directory before acknowledging anything. (The temp
    /// directory is not fsynced: after a crash a stale temp name is deleted at startup.)
    pub fn rename_into_place(&self, temp: &Path, dest: &Path) -> Result<(), SpoolError> {
        let series_dir = dest
            .parent()
            .ok_or_else(|| SpoolError::BadUid(dest.display().to_string()))?;
        if !series_dir.is_dir() {
            let study_dir = series_dir.parent().unwrap_or(&self.root);
            let study_new = !study_dir.is_dir();
            super::private::create_dir_all(series_dir).map_err(io("create", series_dir))?;
            if study_new {
                sync_dir(&self.root)?;
            }
            sync_dir(study_dir)?;
        }
        fs::rename(temp, dest).map_err(io("rename into", dest))
    }

    /// [`Spool::rename_into_place`] followed by an immediate directory fsync (for callers
    /// outside the SCP's batched path).
    pub fn commit(&self, temp: &Path, dest: &Path) -> Result<(), SpoolError> {
        self.rename_into_place(temp, dest)?;
        sync_dir(dest.parent().unwrap_or(&self.root))
    }

    /// Moves spool files that no index row names (left by a crash between rename and index
    /// commit: never acknowledged) into `spool/.orphans/`, where an admin can still find them;
    /// nothing is unlinked on the strength of a path comparison (review M3). `indexed` holds
    /// every indexed path, under this spool's root ([`crate::store::instances::repoint_into`]
    /// runs first). Returns the count moved.
    pub fn sweep_orphans(
        &self,
        indexed: &std::collections::HashSet<PathBuf>,
    ) -> Result<usize, SpoolError> {
        let quarantine = self.root.join(ORPHANS);
        let mut moved = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
                let entry = entry.map_err(io("list", &dir))?;
                let p = entry.path();
                if p.file_name().is_some_and(|n| n == ".tmp" || n == ORPHANS) {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else if !indexed.contains(&p) {
                    super::private::create_dir_all(&quarantine)
                        .map_err(io("create", &quarantine))?;
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    let dest = quarantine.join(format!("{:016x}-{name}", rand::random::<u64>()));
                    tracing::warn!(path = %p.display(), to = %dest.display(), "moved an unindexed spool file aside (never acknowledged)");
                    fs::rename(&p, &dest).map_err(io("move aside", &p))?;
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            sync_dir(&quarantine)?;
        }
        Ok(moved)
    }

    /// Deletes a temp file that will not be committed.
    pub fn discard(&self, temp: &Path) {
        if let Err(e) = fs::remove_file(temp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %temp.display(), error = %e, "cannot remove temp file");
            }
        }
    }
}

/// How acknowledged instances are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync each file, then its directory after the rename (directory fsyncs are shared by
    /// concurrent stores into the same series).
    Fsync,
    /// Group commit: after the rename, one `syncfs` of the spool's filesystem covers every
    /// store waiting at that moment (file data and directory entries). No acknowledgement
    /// precedes it.
    Syncfs,
}

/// Why a durability barrier did not return success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// `syncfs` of the spool's filesystem failed.
    #[error("syncfs {path}: {source}")]
    Syncfs {
        /// The spool root.
        path: PathBuf,
        /// The OS error (shared by every waiter of the batch).
        source: std::sync::Arc<std::io::Error>,
    },
    /// The directory fsync failed.
    #[error(transparent)]
    Directory(std::sync::Arc<SpoolError>),
    /// The syncing thread is gone (it could not start, or the daemon is stopping).
    #[error("dir-sync thread stopped")]
    Stopped,
}

type SyncReply = tokio::sync::oneshot::Sender<Result<(), SyncError>>;

/// Batches durability barriers: every request waiting when the thread wakes shares one
/// `syncfs` (or one fsync per distinct directory). Answers only after the barrier returned.
#[derive(Debug, Clone)]
pub struct DirSyncer {
    tx: std::sync::mpsc::Sender<(PathBuf, SyncReply)>,
    mode: Durability,
}

impl DirSyncer {
    /// Starts the syncing thread; `root` names the filesystem for [`Durability::Syncfs`].
    pub fn start(mode: Durability, root: &Path) -> DirSyncer {
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, SyncReply)>();
        let root = root.to_owned();
        let spawned = std::thread::Builder::new()
            .name("dir-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    match mode {
                        Durability::Syncfs => {
                            let r = syncfs(&root).map_err(|e| SyncError::Syncfs {
                                path: root.clone(),
                                source: std::sync::Arc::new(e),
                            });
                            for (_, reply) in batch {
                                let _ = reply.send(r.clone());
                            }
                        }
                        Durability::Fsync => {
                            let mut done: std::collections::HashMap<
                                PathBuf,
                                Result<(), SyncError>,
                            > = Default::default();
                            for (dir, reply) in batch {
                                let r = done
                                    .entry(dir.clone())
                                    .or_insert_with(|| {
                                        sync_dir(&dir).map_err(|e| {
                                            SyncError::Directory(std::sync::Arc::new(e))
                                        })
                                    })
                                    .clone();
                                let _ = reply.send(r);
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the dir-sync thread");
        }
        DirSyncer { tx, mode }
    }

    /// The durability mode.
    pub fn mode(&self) -> Durability {
        self.mode
    }

    /// Makes the rename into `dir` (and, with syncfs, the file's data) durable, possibly
    /// together with other waiters.
    pub async fn sync(&self, dir: &Path) -> Result<(), SyncError> {
        self.enqueue(dir).wait().await
    }

    /// Queues the barrier for `dir` at once, from any thread; wait on the returned handle.
    pub fn enqueue(&self, dir: &Path) -> QueuedSync {
        let (tx, rx) = tokio::sync::oneshot::channel();
        QueuedSync(self.tx.send((dir.to_owned(), tx)).ok().map(|_| rx))
    }
}

/// A barrier queued with [`DirSyncer::enqueue`].
#[derive(Debug)]
pub struct QueuedSync(Option<tokio::sync::oneshot::Receiver<Result<(), SyncError>>>);

impl QueuedSync {
    /// Waits until the barrier covering this request returned.
    pub async fn wait(self) -> Result<(), SyncError> {
        self.0
            .ok_or(SyncError::Stopped)?
            .await
            .map_err(|_| SyncError::Stopped)?
    }
}

/// The content digest the index keeps for each instance: XXH3-128 of its data set bytes as
/// received, written `xxh3-128:<32 hex digits>` (older rows: `blake3:` or `sha256:`).
///
/// It identifies identical copies of one SOP Instance UID and finds files a crash left
/// incomplete. Neither needs collision resistance: a sender able to craft a collision can
/// replace its own instance anyway by sending a different copy. XXH3 hashes at ~35 GB/s here
/// against BLAKE3's 5 GB/s, where BLAKE3 was 13 % of the SCP's CPU.
#[derive(Default)]
pub struct DatasetHasher(xxhash_rust::xxh3::Xxh3);

impl DatasetHasher {
    /// Adds data set bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as the index writes it.
    pub fn finish(&self) -> String {
        format!("xxh3-128:{:032x}", self.0.digest128())
    }
}

/// Whether the stored copy at `path`, indexed with digest `stored`, holds the data set whose
/// digest is `received`. A row from before the current algorithm (`blake3:`, `sha256:`) is
/// compared by hashing its file again, so an identical copy resent after an upgrade is
/// still recognised as identical.
pub fn same_content(stored: &str, path: &Path, received: &str) -> bool {
    let algorithm = |d: &str| d.split(':').next().unwrap_or_default().to_string();
    if !path.is_file() {
        return false;
    }
    if algorithm(stored) == algorithm(received) {
        return stored == received;
    }
    dataset_digest(path).is_ok_and(|d| d == received)
}

/// [`DatasetHasher`]'s digest of a spool file's data set: the bytes after the preamble and
/// the File Meta Information group (whose first element, the group length, says where the
/// data set starts).
pub fn dataset_digest(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut f = File::open(path)?;
    let mut head = [0u8; 144];
    f.read_exact(&mut head)?;
    // "DICM", then (0002,0000) UL with a 4-byte value, in explicit VR little endian.
    if &head[128..132] != b"DICM" || head[132..138] != [2, 0, 0, 0, b'U', b'L'] {
        return Err(bad("not a Part 10 file with a meta group length"));
    }
    let group_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    f.seek(SeekFrom::Start(144 + u64::from(group_len)))?;
    let mut hasher = DatasetHasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// `syncfs(2)` on the filesystem holding `path`: every dirty page and metadata change on it is
/// durable when this returns (errors are reported since Linux 5.8).
pub fn syncfs(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts (does not wait for) writeback of `file`'s bytes in `[from, to)`, so that a later
/// fsync finds them already on their way. Advisory: errors surface at that fsync.
pub fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    if to <= from {
        return;
    }
    // SAFETY: `file` is an open descriptor for the duration of the call; the range is plain data.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Free bytes available to us on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_replaces_and_cleans_temps() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let dest = spool.final_path("1.2", "1.2.3", "1.2.3.4").unwrap();
        for body in [b"first".as_slice(), b"second"] {
            let (mut f, tmp) = spool.create_temp().unwrap();
            f.write_all(body).unwrap();
            f.sync_all().unwrap();
            spool.commit(&tmp, &dest).unwrap();
        }
        assert_eq!(fs::read(&dest).unwrap(), b"second");
        let (_f, _leftover) = spool.create_temp().unwrap();
        let (_, removed) = Spool::open(dir.path()).unwrap();
        assert_eq!(removed, 1);
        assert!(spool.final_path("1.2", "../x", "1").is_err());
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }

    #[test]
    fn identical_copies_are_recognised_across_digest_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.dcm");
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        b.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0, 2, 0, 0, 0, 9, 9]);
        b.extend_from_slice(b"the data set");
        fs::write(&path, b).unwrap();
        let mut h = DatasetHasher::default();
        h.update(b"the data set");
        let current = h.finish();
        assert_eq!(dataset_digest(&path).unwrap(), current);
        assert!(same_content(&current, &path, &current));
        assert!(!same_content("xxh3-128:00", &path, &current));
        // A row indexed by an older release: its file is hashed again.
        assert!(same_content("blake3:ab", &path, &current));
        assert!(!same_content("sha256:cd", &path, "xxh3-128:00"));
        assert!(!same_content(
            &current,
            &dir.path().join("gone.dcm"),
            &current
        ));
    }
}
