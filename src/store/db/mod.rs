//! The SQLite index: schema, migrations, and a single writer thread with group commit.
//!
//! All writes go through one thread that batches whatever is queued into one transaction
//! (each request inside its own SAVEPOINT, so one failing request never undoes another) and
//! answers every request only after COMMIT returned. With `synchronous=FULL` in WAL mode, an
//! answered write is durable. Reads use a separate connection.
//!
//! One file per concern: this one (opening the index, its errors), `schema` (the migrations
//! and how they are applied), `writer` (the writer thread, its batches and the write calls
//! that queue onto it), `readers` (the read connections).

mod readers;
mod schema;
mod writer;

pub use readers::READ_CONNECTIONS;
pub use writer::Queued;

use readers::Readers;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use writer::WriteJob;

/// Errors from the index.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("sqlite error in {context}: {source}")]
    Sqlite {
        /// What we were doing.
        context: String,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A filesystem operation on the database files failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The batch holding this write failed to commit.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The writer thread is gone (daemon shutting down or crashed).
    #[error("the database writer has stopped")]
    WriterGone,
    /// The database was written by a newer proxyseg.
    #[error("database schema version {found} is newer than this proxyseg ({supported})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version we know.
        supported: i64,
    },
}

impl DbError {
    fn sql(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> DbError {
        let context = context.into();
        move |source| DbError::Sqlite { context, source }
    }
}

/// The error of [`Db::write_typed`].
#[derive(Debug)]
pub enum TypedWriteError<E> {
    /// The closure's own error (its request was rolled back).
    Domain(E),
    /// The index failed.
    Db(DbError),
}

/// Handle to the index. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    path: PathBuf,
    writer: mpsc::Sender<WriteJob>,
    readers: Arc<Readers>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// Creates the database file 0600 before SQLite does (SQLite gives its `-wal` and `-shm`
/// files the database file's mode) and takes group and other access from existing ones.
fn make_private(path: &Path) -> Result<(), DbError> {
    let err = |what: &Path| {
        let context = format!("making {} private", what.display());
        move |source| DbError::Io { context, source }
    };
    super::private::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err(path))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match super::private::tighten(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.map_err(err(&p))?,
        }
    }
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(DbError::sql(format!("opening {}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(DbError::sql("busy_timeout"))?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(DbError::sql("setting pragmas"))?;
    Ok(conn)
}

impl Db {
    /// Opens (creating and migrating if needed) the database at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        make_private(path)?;
        let mut conn = open_conn(path)?;
        schema::migrate(&mut conn)?;
        let readers = Readers::open(path)?;
        let (tx, rx) = mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer::writer_loop(conn, rx))
            .map_err(|e| DbError::Commit(format!("cannot start writer thread: {e}")))?;
        Ok(Db {
            path: path.to_owned(),
            writer: tx,
            readers: Arc::new(readers),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Seconds since the Unix epoch as f64, the time unit of every timestamp column.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
