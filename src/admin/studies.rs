//! The Studies service: purge one study's PHI on an admin's request, at once, with the same
//! purge the retention sweeper runs ([`crate::store::retention`]): refused while the study has
//! work in flight, audited with the caller's token name and reason.

use crate::admin::auth::{require, Access};
use crate::admin::pb;
use crate::admin::server::State;
use crate::store::retention::{self, Mandate};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Studies service.
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

/// Longest reason kept in the audit row.
const MAX_REASON: usize = 1024;

#[tonic::async_trait]
impl pb::studies_server::Studies for Svc {
    async fn purge(
        &self,
        req: Request<pb::PurgeStudyRequest>,
    ) -> Result<Response<pb::PurgeStudyResponse>, Status> {
        let who = require(&req, Access::Write, "Studies.Purge")?;
        let r = req.into_inner();
        let uid = r.study_instance_uid.trim().trim_end_matches('\0');
        if !crate::dicom::sop::is_valid_uid(uid) {
            return Err(Status::invalid_argument(format!(
                "study_instance_uid {:?} is not a DICOM UID",
                r.study_instance_uid
            )));
        }
        if r.reason.len() > MAX_REASON {
            return Err(Status::invalid_argument(format!(
                "reason is {} bytes long; at most {MAX_REASON}",
                r.reason.len()
            )));
        }
        let mandate = Mandate::Admin {
            token: who.name.clone(),
            reason: r.reason,
        };
        let p = match retention::purge(&self.st.db, &self.st.data_dir, uid, mandate).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(token = %who.name, study = %uid, error = %e, "study purge refused");
                return Err(e.into());
            }
        };
        retention::count_purge(&self.st.metrics, "admin", &p);
        tracing::info!(
            token = %who.name,
            study = %p.study_uid,
            instances = p.instances,
            files = p.files,
            bytes = p.bytes,
            "study purged on an admin's request"
        );
        Ok(Response::new(pb::PurgeStudyResponse {
            study_instance_uid: p.study_uid,
            outcome: p
                .outcome
                .map(|o| o.as_str().to_string())
                .unwrap_or_default(),
            instances: p.instances,
            jobs: p.jobs,
            outbox_rows: p.outbox_rows,
            files: p.files,
            bytes: p.bytes,
            missing_files: p.missing,
        }))
    }
}
