//! The Audit service: who changed what through this API, newest first (read-only).

use crate::admin::auth::{require, Access};
use crate::admin::pb;
use crate::admin::server::State;
use crate::admin::{read, timestamp};
use crate::store::audit;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Audit service.
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

#[tonic::async_trait]
impl pb::audit_server::Audit for Svc {
    async fn list(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        require(&req, Access::Read, "Audit.List")?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000)
        };
        let rows = read(&self.st.db, |c| {
            audit::list(c, limit, &r.token_name, &r.target)
                .map_err(crate::store::support::SupportError::from)
        })?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: rows
                .into_iter()
                .map(|e| pb::AuditEntry {
                    id: e.id,
                    at: Some(timestamp(e.at)),
                    token_name: e.token_name,
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}
