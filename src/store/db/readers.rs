//! The index's read connections (review M7): WAL lets them read side by side while the writer
//! commits. One is reserved for the C-STORE path ([`Db::read_ingest`]); the others serve every
//! other read in turn ([`Db::read`]).

use super::{open_conn, Db, DbError};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Mutex;

/// General read connections ([`Db::read`]); one more is kept for the C-STORE path.
pub const READ_CONNECTIONS: usize = 3;

/// The read connections (review M7): WAL lets them read side by side. One is reserved for the
/// C-STORE path ([`Db::read_ingest`]), so that admin listings or watch streams holding every
/// general connection never delay an acknowledgement.
pub(super) struct Readers {
    ingest: Mutex<Connection>,
    general: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    /// Opens the ingest connection and [`READ_CONNECTIONS`] general ones on `path`.
    pub(super) fn open(path: &Path) -> Result<Readers, DbError> {
        Ok(Readers {
            ingest: Mutex::new(open_conn(path)?),
            general: (0..READ_CONNECTIONS)
                .map(|_| open_conn(path).map(Mutex::new))
                .collect::<Result<_, _>>()?,
            next: Default::default(),
        })
    }
}

impl Db {
    /// Runs a read on a free general read connection (the next one in turn when all are
    /// busy).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let r = &self.readers;
        let n = r.general.len();
        let start = r.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        let conn = (0..n)
            .find_map(|i| match r.general[(start + i) % n].try_lock() {
                Ok(c) => Some(c),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            })
            .unwrap_or_else(|| r.general[start].lock().unwrap_or_else(|p| p.into_inner()));
        f(&conn).map_err(DbError::sql("read"))
    }

    /// Runs a read of the C-STORE path on its own connection, which nothing else uses.
    pub fn read_ingest<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let conn = self
            .readers
            .ingest
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(DbError::sql("read"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Review M7: reads no longer queue behind one connection. With every general read
    /// connection held by a slow reader (an admin listing, say), another general read still
    /// gets a connection in turn, and the C-STORE path's read runs at once on its own.
    #[test]
    fn reads_run_side_by_side_and_ingest_has_its_own_connection() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("m7.sqlite")).unwrap();
        let (held_tx, held_rx) = channel();
        let (release_tx, release_rx) = channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let slow: Vec<_> = (0..READ_CONNECTIONS)
            .map(|_| {
                let (db, held_tx, release_rx) = (db.clone(), held_tx.clone(), release_rx.clone());
                std::thread::spawn(move || {
                    db.read(|c| {
                        held_tx.send(()).unwrap();
                        let _ = release_rx.lock().unwrap().recv();
                        c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    })
                    .unwrap()
                })
            })
            .collect();
        // Every general connection is now held by a reader that waits.
        for _ in 0..READ_CONNECTIONS {
            held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let (done_tx, done_rx) = channel();
        let ingest = {
            let db = db.clone();
            std::thread::spawn(move || {
                let v = db
                    .read_ingest(|c| c.query_row("SELECT 2", [], |r| r.get::<_, i64>(0)))
                    .unwrap();
                done_tx.send(v).unwrap();
            })
        };
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(10)),
            Ok(2),
            "the C-STORE read waited for the admin readers"
        );
        ingest.join().unwrap();
        for _ in 0..READ_CONNECTIONS {
            release_tx.send(()).unwrap();
        }
        for t in slow {
            assert_eq!(t.join().unwrap(), 1);
        }
        // Two general reads at once: the second does not wait for the first.
        let (held_tx, held_rx) = channel();
        let (release_tx, release_rx) = channel::<()>();
        let first = {
            let db = db.clone();
            std::thread::spawn(move || {
                db.read(|_| {
                    held_tx.send(()).unwrap();
                    let _ = release_rx.recv();
                    Ok(())
                })
                .unwrap()
            })
        };
        held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            db.read(|c| c.query_row("SELECT 3", [], |r| r.get::<_, i64>(0)))
                .unwrap(),
            3
        );
        release_tx.send(()).unwrap();
        first.join().unwrap();
    }
}
