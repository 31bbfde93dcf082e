//! The Jobs service: list and inspect jobs, retry failed or unmatched ones, and watch state
//! changes as they are committed.
//!
//! Watch follows the `job_events` table by rowid (polled every [`WATCH_POLL`]), so it sees
//! every transition whichever part of the daemon made it, and a slow client never holds up the
//! pipeline.

use crate::admin::auth::{require, Access};
use crate::admin::pb;
use crate::admin::server::State;
use crate::admin::{change, read, timestamp};
use crate::store::db;
use crate::store::jobs::{self, JobError, JobState};
use rusqlite::{params_from_iter, Connection, Row};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How often Watch looks for new events.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// The Jobs service.
#[derive(Debug, Clone)]
pub struct Svc {
    st: Arc<State>,
}

impl Svc {
    /// A service on shared state.
    pub fn new(st: Arc<State>) -> Svc {
        Svc { st }
    }
}

const JOB_COLUMNS: &str = "id, study_uid, state, calling_ae, instance_count, created_at,
    updated_at, attempts, error, rule_id, support_set, support_set_version, bundle,
    destination_ae, sequence_mode, sequence_mode_from";

fn job_from_row(r: &Row) -> rusqlite::Result<pb::Job> {
    Ok(pb::Job {
        id: r.get(0)?,
        study_uid: r.get(1)?,
        state: r.get(2)?,
        calling_ae: r.get(3)?,
        instance_count: r.get(4)?,
        created_at: Some(timestamp(r.get(5)?)),
        updated_at: Some(timestamp(r.get(6)?)),
        attempts: r.get(7)?,
        error: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
        rule_id: r.get::<_, Option<i64>>(9)?.unwrap_or(0),
        support_set: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
        support_set_version: version_number(r.get_ref(11)?),
        bundle: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
        destination_ae: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
        events: Vec::new(),
        sequence_mode: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
        sequence_mode_from: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
    })
}

/// A job's support-set version: an integer, or text like "v3" (store catalog) or a folder
/// version string (bundled folders; shown as 0 when it is not a number).
fn version_number(v: rusqlite::types::ValueRef) -> u32 {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Integer(i) => u32::try_from(i).unwrap_or(0),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .map(|s| s.trim_start_matches('v'))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn check_states(states: &[String]) -> Result<(), Status> {
    for s in states {
        if JobState::parse(s).is_none() {
            return Err(Status::invalid_argument(format!(
                "state {s:?} is not one of complete, matched, unmatched, inferred, written, delivered, failed"
            )));
        }
    }
    Ok(())
}

fn get_job(c: &Connection, id: i64) -> Result<pb::Job, JobError> {
    let mut job = c
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            job_from_row,
        )
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => JobError::NoSuchJob(id),
            e => JobError::Sql(e),
        })?;
    let mut stmt = c.prepare(
        "SELECT e.job_id, e.state, e.at, e.detail, j.study_uid FROM job_events e
         JOIN jobs j ON j.id = e.job_id WHERE e.job_id = ?1 ORDER BY e.rowid",
    )?;
    job.events = stmt
        .query_map([id], event_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(job)
}

fn event_from_row(r: &Row) -> rusqlite::Result<pb::JobEvent> {
    Ok(pb::JobEvent {
        job_id: r.get(0)?,
        state: r.get(1)?,
        at: Some(timestamp(r.get(2)?)),
        detail: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        study_uid: r.get(4)?,
    })
}

/// Events after `after` (rowid) that pass the filter, with the last rowid seen.
fn events_after(
    c: &Connection,
    after: i64,
    f: &pb::WatchJobsRequest,
) -> rusqlite::Result<(Vec<pb::JobEvent>, i64)> {
    let mut stmt = c.prepare(
        "SELECT e.job_id, e.state, e.at, e.detail, j.study_uid, e.rowid FROM job_events e
         JOIN jobs j ON j.id = e.job_id WHERE e.rowid > ?1 ORDER BY e.rowid LIMIT 1000",
    )?;
    let mut last = after;
    let mut out = Vec::new();
    let rows = stmt.query_map([after], |r| Ok((event_from_row(r)?, r.get::<_, i64>(5)?)))?;
    for row in rows {
        let (ev, rowid) = row?;
        last = rowid;
        let keep = (f.job_id == 0 || ev.job_id == f.job_id)
            && (f.study_uid.is_empty() || ev.study_uid == f.study_uid)
            && (f.states.is_empty() || f.states.contains(&ev.state));
        if keep {
            out.push(ev);
        }
    }
    Ok((out, last))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Svc {
    async fn list(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        require(&req, Access::Read, "Jobs.List")?;
        let r = req.into_inner();
        check_states(&r.states)?;
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000)
        };
        let jobs = read(&self.st.db, |c| {
            let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
            let mut args: Vec<String> = Vec::new();
            if !r.states.is_empty() {
                sql += &format!(" AND state IN ({})", vec!["?"; r.states.len()].join(", "));
                args.extend(r.states.iter().cloned());
            }
            if !r.study_uid.is_empty() {
                sql += " AND study_uid = ?";
                args.push(r.study_uid.clone());
            }
            sql += &format!(" ORDER BY id DESC LIMIT {limit}");
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), job_from_row)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(JobError::Sql)
        })?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        require(&req, Access::Read, "Jobs.Get")?;
        let id = req.into_inner().id;
        Ok(Response::new(read(&self.st.db, |c| get_job(c, id))?))
    }

    async fn retry(&self, req: Request<pb::RetryJobRequest>) -> Result<Response<pb::Job>, Status> {
        let who = require(&req, Access::Write, "Jobs.Retry")?;
        let id = req.into_inner().id;
        let now = db::now();
        change(&self.st.db, move |c| {
            let detail = format!("retried by {}", who.name);
            jobs::transition(c, id, JobState::Complete, Some(&detail), now)?;
            crate::store::audit::record(c, &who.name, "job.retry", &format!("job:{id}"), "", now)?;
            Ok::<_, JobError>(())
        })
        .await?;
        Ok(Response::new(read(&self.st.db, |c| get_job(c, id))?))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        require(&req, Access::Read, "Jobs.Watch")?;
        let f = req.into_inner();
        check_states(&f.states)?;
        let slot = State::slot(&self.st.watches, "Jobs.Watch", "max_watch_streams")?;
        let db = self.st.db.clone();
        let mut last = if f.include_history {
            0
        } else {
            read(&db, |c| {
                c.query_row("SELECT COALESCE(MAX(rowid), 0) FROM job_events", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(JobError::Sql)
            })?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut stop = self.st.stop.clone();
        tokio::spawn(async move {
            let _slot = slot; // the stream's place among admin.max_watch_streams
            loop {
                let batch = super::off_runtime(|| db.read(|c| events_after(c, last, &f)));
                match batch {
                    Ok((events, seen)) => {
                        last = seen;
                        for e in events {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(crate::admin::internal(e))).await;
                        return;
                    }
                }
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
