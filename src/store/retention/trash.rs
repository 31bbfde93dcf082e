//! Where a purge's files wait for its commit ([`Trash`], a folder of its own under
//! `data_dir/.purge/`), how a request of the index writer runs with one and settles it, and
//! the count of what was removed ([`Removed`]). See the module doc of [`super`] for why files
//! are moved before the commit rather than unlinked after it.

use super::{io, RetentionError};
use crate::store::db::TypedWriteError;
use crate::store::Db;
use rusqlite::Connection;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Files removed so far by a purge or a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Files unlinked.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Removed {
    /// Unlinks a file, counting it; Ok(false) when it was already gone.
    pub(super) fn file(&mut self, path: &Path) -> Result<bool, RetentionError> {
        let size = match std::fs::symlink_metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("stat", path)(e)),
        };
        match std::fs::remove_file(path) {
            Ok(()) => {
                self.files += 1;
                self.bytes += size;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", path)(e)),
        }
    }

    /// Removes a folder and everything in it, counting its files (symlinks are removed, never
    /// followed); nothing when it does not exist.
    pub(super) fn tree(&mut self, dir: &Path) -> Result<(), RetentionError> {
        self.add(count_tree(dir)?);
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", dir)(e)),
            _ => Ok(()),
        }
    }

    fn add(&mut self, other: Removed) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// Files and bytes under `dir` (symlinks counted, never followed); zero when it is gone.
fn count_tree(dir: &Path) -> Result<Removed, RetentionError> {
    let mut n = Removed::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(n),
        Err(e) => return Err(io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        let p = entry.path();
        let meta = std::fs::symlink_metadata(&p).map_err(io("stat", &p))?;
        if meta.is_dir() {
            n.add(count_tree(&p)?);
        } else {
            n.files += 1;
            n.bytes += meta.len();
        }
    }
    Ok(n)
}

/// Folder under the data dir that holds the trash of purges until their commit.
pub const TRASH: &str = ".purge";

/// Where one purge moves the files it takes, until its transaction committed (then
/// [`Trash::empty`]) or failed (then [`Trash::restore`]). See the module doc.
#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    /// (original path, path in the trash), in the order taken.
    moved: Vec<(PathBuf, PathBuf)>,
    /// Folders files were moved out of, fsynced with the trash before the commit.
    sources: HashSet<PathBuf>,
    /// What was taken (moved, or unlinked where a rename could not reach the trash).
    taken: Removed,
}

impl Trash {
    /// A new, not yet created, trash folder under `data_dir/.purge/`.
    pub fn new(data_dir: &Path) -> Trash {
        Trash {
            dir: data_dir
                .join(TRASH)
                .join(format!("{:016x}", rand::random::<u64>())),
            moved: Vec::new(),
            sources: HashSet::new(),
            taken: Removed::default(),
        }
    }

    /// Files and bytes taken so far.
    pub fn taken(&self) -> Removed {
        self.taken
    }

    /// Moves the file or folder at `path` into the trash, counting its files; Ok(false) when
    /// nothing is there. Where the trash is on another filesystem (a spool mounted apart), the
    /// file is unlinked in place instead (slower, and not undone by [`Trash::restore`]).
    pub(super) fn take(&mut self, path: &Path) -> Result<bool, RetentionError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("stat", path)(e)),
        };
        let size = if meta.is_dir() {
            count_tree(path)?
        } else {
            Removed {
                files: 1,
                bytes: meta.len(),
            }
        };
        if self.moved.is_empty() {
            crate::store::private::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        }
        let to = self.dir.join(self.moved.len().to_string());
        match std::fs::rename(path, &to) {
            Ok(()) => {
                self.moved.push((path.to_owned(), to));
                if let Some(parent) = path.parent() {
                    self.sources.insert(parent.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                let mut gone = Removed::default();
                if meta.is_dir() {
                    gone.tree(path)?;
                } else {
                    gone.file(path)?;
                }
            }
            Err(e) => return Err(io("move to the trash", path)(e)),
        }
        self.taken.add(size);
        Ok(true)
    }

    /// Makes the moves durable: every source folder, then the trash folder, fsynced.
    pub(super) fn sync(&self) -> Result<(), RetentionError> {
        if self.moved.is_empty() {
            return Ok(());
        }
        for dir in self.sources.iter().chain(std::iter::once(&self.dir)) {
            crate::store::spool::sync_dir(dir).map_err(|e| match e {
                crate::store::SpoolError::Io { path, source, .. } => RetentionError::Io {
                    op: "fsync",
                    path,
                    source,
                },
                other => RetentionError::Io {
                    op: "fsync",
                    path: dir.clone(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        }
        Ok(())
    }

    /// Puts every moved file back where it was, unless something took its place meanwhile,
    /// then empties the trash. For a purge whose rows were not deleted after all.
    pub fn restore(&mut self) {
        for (from, to) in self.moved.drain(..).rev() {
            if from.symlink_metadata().is_ok() {
                continue;
            }
            if let Err(e) = std::fs::rename(&to, &from) {
                tracing::error!(path = %from.display(), error = %e, "cannot put a file back after a failed purge");
            }
        }
        self.taken = Removed::default();
        self.empty();
    }

    /// Unlinks the trash folder and everything in it (after the purge committed).
    pub fn empty(&mut self) {
        self.moved.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(path = %self.dir.display(), error = %e, "cannot empty a purge's trash; the next start does");
            }
        }
    }
}

/// Trash folders under `data_dir/.purge/` now: at start, before any purge runs, these are the
/// leftovers of purges a stop or crash interrupted (committed or not, their files go).
pub fn stale_trash(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join(TRASH))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Unlinks the given trash folders ([`stale_trash`]); returns what they held.
pub fn remove_trash(dirs: &[PathBuf]) -> Removed {
    let mut removed = Removed::default();
    for d in dirs {
        if let Err(e) = removed.tree(d) {
            tracing::error!(error = %e, "cannot empty a purge's trash");
        }
    }
    removed
}

/// Runs `f` as one request of the index writer; a typed error rolls the request back and
/// comes back as itself.
async fn write<T, F>(db: &Db, f: F) -> Result<T, RetentionError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, RetentionError> + Send + 'static,
{
    db.write_typed(f).await.map_err(|e| match e {
        TypedWriteError::Domain(e) => e,
        TypedWriteError::Db(e) => RetentionError::Db(e),
    })
}

/// Runs `f` with a fresh [`Trash`] as one request of the index writer, then empties the
/// trash once the request committed, or puts its files back when it failed (inside the
/// request, before it rolled back, for an error of `f`; after, for a failed commit).
pub(super) async fn write_with_trash<T, F>(
    db: &Db,
    data_dir: &Path,
    f: F,
) -> Result<T, RetentionError>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Trash) -> Result<T, RetentionError> + Send + 'static,
{
    let trash = Arc::new(Mutex::new(Trash::new(data_dir)));
    let t = trash.clone();
    let r = write(db, move |c| {
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(c, &mut t);
        if r.is_err() {
            t.restore();
        }
        r
    })
    .await;
    let committed = r.is_ok();
    let settle = tokio::task::spawn_blocking(move || {
        let mut t = trash.lock().unwrap_or_else(|p| p.into_inner());
        if committed {
            t.empty();
        } else {
            t.restore();
        }
    });
    if let Err(e) = settle.await {
        tracing::error!(error = %e, "emptying a purge's trash panicked; the next start empties it");
    }
    r
}
