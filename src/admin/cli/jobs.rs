//! `jobs ...` and `study ...`: what the pipeline did with each study, and purging one.

use super::output::*;
use super::*;

/// `jobs ...`.
#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List jobs, newest first.
    List {
        /// Only this state (repeat).
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only this study.
        #[arg(long, default_value = "")]
        study: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One job with its state history.
    Show {
        /// Job id.
        id: i64,
    },
    /// Follow state changes until interrupted.
    Watch {
        /// Only this job.
        #[arg(long, default_value_t = 0)]
        job: i64,
        /// Only this study.
        #[arg(long, default_value = "")]
        study: String,
        /// Only this state (repeat).
        #[arg(long = "state")]
        states: Vec<String>,
        /// Print the recorded history first.
        #[arg(long)]
        history: bool,
    },
    /// Run a failed or unmatched job again.
    Retry {
        /// Job id.
        id: i64,
    },
}

/// `study ...`.
#[derive(Subcommand, Debug)]
pub enum StudyCmd {
    /// Purge a study now: its received instances, SEG results, delivery files and index rows
    /// (audited). Refused (FAILED_PRECONDITION) while it is receiving, a job of it is
    /// unfinished or a SEG of it waits for delivery; NOT_FOUND when the daemon does not hold it.
    Purge {
        /// Study Instance UID.
        uid: String,
        /// Why (recorded in the audit row).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Runs `jobs ...`.
pub(super) async fn run(args: &AdminArgs, c: &mut Clients, cmd: &JobsCmd) -> Result<(), CliError> {
    let jobs = &mut c.jobs;
    match cmd {
        JobsCmd::List {
            states,
            study,
            limit,
        } => {
            let l = jobs
                .list(pb::ListJobsRequest {
                    states: states.clone(),
                    study_uid: study.clone(),
                    limit: *limit,
                })
                .await?
                .into_inner();
            print(
                args,
                Value::Array(l.jobs.iter().map(job_json).collect()),
                || {
                    table(
                        &[
                            "ID",
                            "STATE",
                            "STUDY",
                            "FROM AE",
                            "N",
                            "SUPPORT SET",
                            "UPDATED",
                            "ERROR",
                        ],
                        &l.jobs
                            .iter()
                            .map(|j| {
                                vec![
                                    j.id.to_string(),
                                    j.state.clone(),
                                    j.study_uid.clone(),
                                    j.calling_ae.clone(),
                                    j.instance_count.to_string(),
                                    if j.support_set.is_empty() {
                                        "-".into()
                                    } else {
                                        format!("{} v{}", j.support_set, j.support_set_version)
                                    },
                                    ts(&j.updated_at),
                                    j.error.clone(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    )
                },
            );
        }
        JobsCmd::Show { id } => {
            let j = jobs.get(pb::GetJobRequest { id: *id }).await?.into_inner();
            print(args, job_json(&j), || {
                let mut s = format!(
                    "job {} ({}) study {} from {}\n",
                    j.id, j.state, j.study_uid, j.calling_ae
                );
                if !j.sequence_mode.is_empty() {
                    s += &format!(
                        "sequence mode: {} (from {})\n",
                        j.sequence_mode, j.sequence_mode_from
                    );
                }
                if !j.error.is_empty() {
                    s += &format!("error: {}\n", j.error);
                }
                s += &table(
                    &["AT", "STATE", "DETAIL"],
                    &j.events
                        .iter()
                        .map(|e| vec![ts(&e.at), e.state.clone(), e.detail.clone()])
                        .collect::<Vec<_>>(),
                );
                s
            });
        }
        JobsCmd::Watch {
            job,
            study,
            states,
            history,
        } => {
            let mut stream = jobs
                .watch(pb::WatchJobsRequest {
                    states: states.clone(),
                    study_uid: study.clone(),
                    job_id: *job,
                    include_history: *history,
                })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                print(args, event_json(&e), || {
                    format!(
                        "{}  job {}  {}  {}  {}",
                        ts(&e.at),
                        e.job_id,
                        e.state,
                        e.study_uid,
                        e.detail
                    )
                });
            }
        }
        JobsCmd::Retry { id } => {
            let j = jobs
                .retry(pb::RetryJobRequest { id: *id })
                .await?
                .into_inner();
            print(args, job_json(&j), || {
                format!("job {} is {} again", j.id, j.state)
            });
        }
    }
    Ok(())
}

/// Runs `study ...`.
pub(super) async fn run_study(
    args: &AdminArgs,
    c: &mut Clients,
    cmd: &StudyCmd,
) -> Result<(), CliError> {
    let studies = &mut c.studies;
    match cmd {
        StudyCmd::Purge { uid, reason } => {
            let p = studies
                .purge(pb::PurgeStudyRequest {
                    study_instance_uid: uid.clone(),
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            print(
                args,
                json!({"study_instance_uid": p.study_instance_uid, "outcome": p.outcome,
                       "instances": p.instances, "jobs": p.jobs, "outbox_rows": p.outbox_rows,
                       "files": p.files, "bytes": p.bytes, "missing_files": p.missing_files}),
                || {
                    let mut s = format!(
                        "purged study {} ({}): {} instance(s), {} job(s), {} SEG delivery row(s); {} file(s), {} byte(s) removed",
                        p.study_instance_uid,
                        p.outcome,
                        p.instances,
                        p.jobs,
                        p.outbox_rows,
                        p.files,
                        p.bytes
                    );
                    if p.missing_files > 0 {
                        s += &format!("; {} instance file(s) were already gone", p.missing_files);
                    }
                    s
                },
            );
        }
    }
    Ok(())
}
