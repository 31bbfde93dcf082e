//! The admin gRPC API (tonic) and its command-line client: support sets, routing rules, jobs,
//! model bundles, previews and study purges, for the hospital staff who curate what gets
//! segmented and answer for the PHI it holds.
//!
//! Sits beside the data flow: it reads and changes the store (`store::support`, `store::rules`,
//! `store::jobs`, `store::retention`, `store::audit`) and never reaches into the pipeline, which
//! reads support sets and rules from the store itself. The daemon seeds the bundled support sets
//! into the store through [`seed`] at every start, whether or not the API listens. Every change is one
//! SQLite transaction together with its audit row; every call is authenticated
//! ([`auth`]). Segmentation for Evaluate / Preview goes through the [`segment::Segmenter`]
//! boundary, implemented by the engine.

pub mod audit;
pub mod auth;
pub mod bundles;
pub mod cli;
pub mod evaluate;
pub mod folder;
pub mod jobs;
pub mod lockout;
pub mod masks;
pub mod models;
pub mod preview;
pub mod rules;
pub mod seed;
pub mod segment;
pub mod server;
pub mod studies;
pub mod support_sets;

pub use segment::{DicomImage, EngineSlot, NoSegmenter, SegmentError, Segmenter};
pub use server::{start, StartError};

/// Generated protobuf messages, tonic clients and servers of `proxyseg.admin.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("proxyseg.admin.v1");

    /// Encoded file descriptor set of admin.proto (and its imports), for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
}

use crate::store::db::TypedWriteError;
use crate::store::Db;
use rusqlite::Connection;
use tonic::Status;

/// Runs a store change in one transaction. A typed error from `f` rolls the transaction back
/// (nothing half-written) and comes back as its gRPC status.
pub(crate) async fn change<T, E, F>(db: &Db, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    E: std::error::Error + Into<Status> + Send + Sync + 'static,
    F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
{
    db.write_typed(f).await.map_err(|e| match e {
        TypedWriteError::Domain(e) => e.into(),
        TypedWriteError::Db(e) => internal(e),
    })
}

/// Records a read of support-set data (review L9): SupportSets.Get, Preview.Segment and
/// Rules.DryRun each leave an audit row with the token's name, like every change. A failed
/// audit write is logged and does not fail the read.
pub(crate) async fn audit_read(
    db: &Db,
    who: &str,
    action: &'static str,
    target: String,
    detail: String,
) {
    let (who, now) = (who.to_string(), crate::store::db::now());
    let r = db
        .write(move |c| crate::store::audit::record(c, &who, action, &target, &detail, now))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, action, "cannot audit a read");
    }
}

/// Runs blocking work (an index read) without holding up the runtime: on the multi-thread
/// runtime the worker thread first hands its other tasks (ingest, delivery) to another
/// (review M7).
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs a read off the runtime ([`off_runtime`]), mapping a typed error to its status.
pub(crate) fn read<T, E, F>(db: &Db, f: F) -> Result<T, Status>
where
    E: std::error::Error + Into<Status> + Send + Sync + 'static,
    F: FnOnce(&Connection) -> Result<T, E>,
{
    let mut typed = None;
    let r = off_runtime(|| {
        db.read(|c| match f(c) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                typed = Some(e);
                Ok(None)
            }
        })
    });
    match (r, typed) {
        (_, Some(e)) => Err(e.into()),
        (Ok(Some(v)), None) => Ok(v),
        (Ok(None), None) => Err(Status::internal("read returned nothing")),
        (Err(e), None) => Err(internal(e)),
    }
}

/// Logs an unexpected server-side error and hides its details (paths, SQL) from the client
/// (review L7): the client gets an id to find the log line by.
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(error = %e, incident = id, "admin API internal error");
    Status::internal(format!("internal error (incident {id} in the daemon log)"))
}

impl From<crate::store::support::SupportError> for Status {
    fn from(e: crate::store::support::SupportError) -> Status {
        use crate::store::support::SupportError as E;
        match &e {
            E::NotFound { .. } | E::NoSuchPair { .. } => Status::not_found(e.to_string()),
            E::Exists(_) => Status::already_exists(e.to_string()),
            E::VersionMismatch { .. } => Status::aborted(e.to_string()),
            E::InUse { .. } => Status::failed_precondition(e.to_string()),
            E::Invalid(_) => Status::invalid_argument(e.to_string()),
            E::Corrupt { .. } | E::Sql(_) | E::Io { .. } => internal(&e),
        }
    }
}

impl From<crate::sequence_mode::UnknownModeSetting> for Status {
    fn from(e: crate::sequence_mode::UnknownModeSetting) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

/// A `sequence_mode` field of a request: unset is `inherit`, a name is parsed; anything else
/// is INVALID_ARGUMENT naming the allowed values.
pub(crate) fn mode_setting(
    field: Option<&str>,
) -> Result<crate::sequence_mode::ModeSetting, Status> {
    Ok(field.map(str::parse).transpose()?.unwrap_or_default())
}

/// A stored mode as the API shows it: unset when it inherits.
pub(crate) fn mode_to_pb(mode: Option<crate::config::SequenceMode>) -> Option<String> {
    mode.map(|m| m.as_str().to_string())
}

impl From<crate::store::rules::RuleError> for Status {
    fn from(e: crate::store::rules::RuleError) -> Status {
        use crate::store::rules::RuleError as E;
        match &e {
            E::NotFound(_) => Status::not_found(e.to_string()),
            E::Invalid(_) => Status::invalid_argument(e.to_string()),
            E::Sql(_) => internal(&e),
        }
    }
}

impl From<crate::store::retention::RetentionError> for Status {
    fn from(e: crate::store::retention::RetentionError) -> Status {
        use crate::store::retention::RetentionError as E;
        match &e {
            E::NotFound(_) => Status::not_found(e.to_string()),
            E::InFlight { .. } | E::NotDue { .. } => Status::failed_precondition(e.to_string()),
            E::Io { .. } | E::Sql(_) | E::Db(_) => internal(&e),
        }
    }
}

impl From<crate::store::jobs::JobError> for Status {
    fn from(e: crate::store::jobs::JobError) -> Status {
        use crate::store::jobs::JobError as E;
        match &e {
            E::NoSuchJob(_) => Status::not_found(e.to_string()),
            E::Illegal { .. } => Status::failed_precondition(e.to_string()),
            E::Sql(_) => internal(&e),
        }
    }
}

/// Seconds since the epoch as a protobuf timestamp.
pub fn timestamp(t: f64) -> prost_types::Timestamp {
    let secs = t.floor();
    prost_types::Timestamp {
        seconds: secs as i64,
        nanos: ((t - secs) * 1e9) as i32,
    }
}

/// A protobuf timestamp as seconds since the epoch.
pub fn seconds(t: &Option<prost_types::Timestamp>) -> f64 {
    t.as_ref()
        .map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::support::{self, SetMeta, SupportError};

    fn obj() -> crate::store::support::ObjectDef {
        crate::store::support::ObjectDef {
            label: "a".into(),
            category: support::default_code(),
            property_type: support::default_code(),
            color: [1, 2, 3],
        }
    }

    #[tokio::test]
    async fn a_typed_error_rolls_back_the_whole_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        // The set and its audit row are written, then the change fails: nothing may remain.
        let e = change(&db, |c| -> Result<(), SupportError> {
            support::create(c, "s", &SetMeta::default(), &[obj()], "t", 1.0)?;
            Err(SupportError::Invalid("late failure".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "late failure");
        let rows: (i64, i64) = db
            .read(|c| {
                Ok((
                    c.query_row("SELECT COUNT(*) FROM support_sets", [], |r| r.get(0))?,
                    c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!(rows, (0, 0));
    }

    #[tokio::test]
    async fn a_set_used_by_an_unfinished_job_cannot_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        change(&db, |c| {
            support::create(c, "s", &SetMeta::default(), &[obj()], "t", 1.0)
        })
        .await
        .unwrap();
        db.write(|c| {
            c.execute_batch(
                "INSERT INTO studies VALUES ('1.2', '', 'PACS', 1, 1, 'complete', 1);
                 INSERT INTO jobs (id, study_uid, state, calling_ae, instance_count, created_at,
                   updated_at, support_set, support_set_version)
                 VALUES (7, '1.2', 'matched', 'PACS', 1, 1, 1, 's', 1);",
            )
        })
        .await
        .unwrap();
        let e = change(&db, |c| support::delete(c, "s", "t", 2.0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("unfinished job(s) [7]"),
            "{}",
            e.message()
        );
        db.write(|c| c.execute("UPDATE jobs SET state = 'delivered' WHERE id = 7", []))
            .await
            .unwrap();
        change(&db, |c| support::delete(c, "s", "t", 3.0))
            .await
            .unwrap();
    }
}
