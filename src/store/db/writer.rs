//! The index's single writer: one thread that commits whatever is queued as one transaction
//! (each request inside its own SAVEPOINT, so one failing request never undoes another) and
//! answers every request only after COMMIT returned; and the calls that queue onto it
//! ([`Db::write`], [`Db::enqueue`], [`Db::write_blocking`], [`Db::write_typed`]).

use super::{Db, DbError, TypedWriteError};
use rusqlite::Connection;
use std::sync::mpsc;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
pub(super) type WriteJob = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

impl Db {
    /// [`Db::write`] for a closure with an error type of its own: an `Err` rolls its request
    /// back and comes back as [`TypedWriteError::Domain`], itself. (The one place where such an
    /// error rides through rusqlite's error type to cross the writer thread.)
    pub async fn write_typed<T, E, F>(&self, f: F) -> Result<T, TypedWriteError<E>>
    where
        T: Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let r = self
            .write(move |c| f(c).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
            .await;
        match r {
            Ok(v) => Ok(v),
            Err(DbError::Sqlite {
                source: rusqlite::Error::ToSqlConversionFailure(b),
                context,
            }) => match b.downcast::<E>() {
                Ok(e) => Err(TypedWriteError::Domain(*e)),
                Err(b) => Err(TypedWriteError::Db(DbError::Sqlite {
                    context,
                    source: rusqlite::Error::ToSqlConversionFailure(b),
                })),
            },
            Err(e) => Err(TypedWriteError::Db(e)),
        }
    }

    /// Runs `f` inside the writer's next batch; resolves after the batch committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.enqueue(f).wait().await
    }

    /// Queues `f` for the writer's next batch at once, from any thread, and returns a handle
    /// that resolves after that batch committed. Dropping the handle does not cancel `f`.
    pub fn enqueue<T, F>(&self, f: F) -> Queued<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Queued(self.submit(f))
    }

    /// Blocking variant of [`Db::write`], for threads outside the async runtime.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.blocking_recv().map_err(|_| DbError::WriterGone)?
    }

    fn submit<T, F>(
        &self,
        f: F,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, DbError>>, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let r = f(conn);
            let ok = r.is_ok();
            (
                ok,
                Box::new(move |commit: Result<(), String>| {
                    let out = match (r, commit) {
                        (Err(e), _) => Err(DbError::Sqlite {
                            context: "write".into(),
                            source: e,
                        }),
                        (Ok(_), Err(c)) => Err(DbError::Commit(c)),
                        (Ok(v), Ok(())) => Ok(v),
                    };
                    let _ = tx.send(out);
                }),
            )
        });
        self.writer.send(job).map_err(|_| DbError::WriterGone)?;
        Ok(rx)
    }
}

/// A write queued with [`Db::enqueue`].
#[derive(Debug)]
pub struct Queued<T>(Result<tokio::sync::oneshot::Receiver<Result<T, DbError>>, DbError>);

impl<T> Queued<T> {
    /// Waits until the write's batch committed (or failed).
    pub async fn wait(self) -> Result<T, DbError> {
        self.0?.await.map_err(|_| DbError::WriterGone)?
    }
}

/// Largest number of requests committed together.
const MAX_BATCH: usize = 512;

pub(super) fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin write transaction");
            // Dropping the jobs unanswered makes every caller see WriterGone for this batch.
            drop(batch);
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        // Cached statements: these run once per request, the hot path of every C-STORE.
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]));
        for job in batch {
            let savepoint = run("SAVEPOINT req");
            let (ok, completion) = job(&conn);
            // A failed request is rolled back to its own savepoint; the others stay.
            let end = if ok {
                run("RELEASE req")
            } else {
                run("ROLLBACK TO req").and_then(|_| run("RELEASE req"))
            };
            if let (Ok(_), Err(e)) = (savepoint, end) {
                tracing::error!(error = %e, "savepoint handling failed");
            }
            completions.push(completion);
        }
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for c in completions {
            c(commit.clone());
        }
    }
}
