//! The Preview service: segment one uploaded image with a support set and return PNG overlays,
//! for curation. It reads the support set and never writes anything.

use crate::admin::auth::{require, Access};
use crate::admin::masks::{self, UploadError};
use crate::admin::pb::{self, preview_request::Part};
use crate::admin::server::State;
use crate::admin::{internal, read};
use crate::store::support;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The Preview service.
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
impl pb::preview_server::Preview for Svc {
    async fn segment(
        &self,
        req: Request<Streaming<pb::PreviewRequest>>,
    ) -> Result<Response<pb::PreviewResponse>, Status> {
        let who = require(&req, Access::Read, "Preview.Segment")?;
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(pb::PreviewRequest {
                part: Some(Part::Header(h)),
            }) => h,
            _ => {
                return Err(UploadError::Protocol(
                    "Preview: the first message must be the header".into(),
                )
                .into())
            }
        };
        let mut image = Vec::new();
        while let Some(msg) = stream.message().await? {
            match msg.part {
                Some(Part::ImageChunk(b)) => image.extend_from_slice(&b),
                Some(Part::Header(_)) => {
                    return Err(UploadError::Protocol("Preview: header sent twice".into()).into())
                }
                None => {}
            }
            if image.len() > self.st.max_upload {
                return Err(UploadError::TooLarge(self.st.max_upload_mb).into());
            }
        }
        let data_dir = self.st.data_dir.clone();
        let version = (header.version != 0).then_some(header.version);
        let set = read(&self.st.db, |c| {
            support::load(c, &data_dir, &header.support_set, version)
        })?;
        crate::admin::audit_read(
            &self.st.db,
            &who.name,
            "support_set.preview",
            format!("support_set:{}", header.support_set),
            format!("version {}, image of {} bytes", set.version, image.len()),
        )
        .await;
        let img = tokio::task::spawn_blocking(move || masks::parse_image(&image))
            .await
            .map_err(internal)??;
        let seg = self
            .st
            .segmenter
            .get()
            .map_err(|why| why.status("Preview"))?;
        let _slot = State::slot(&self.st.inference, "Preview", "max_concurrent_inference")?;
        let (rows, cols) = (img.rows, img.cols);
        let set2 = set.clone();
        let (got, agreement) =
            tokio::task::spawn_blocking(move || seg.segment_with_agreement(&set2, &img))
                .await
                .map_err(internal)?
                .map_err(|e| Status::internal(format!("segmentation failed: {e}")))?;
        if got.len() != set.objects.len() || got.iter().any(|m| (m.rows, m.cols) != (rows, cols)) {
            return Err(internal(
                "the engine returned masks of the wrong number or size",
            ));
        }
        let overlays = got
            .iter()
            .zip(&set.objects)
            .enumerate()
            .map(|(k, (m, o))| pb::ObjectOverlay {
                object_index: k as u32 + 1,
                label: o.label.clone(),
                png: masks::overlay_png(m, o.color),
                pixels: m.area() as u64,
                look_agreement: agreement.get(k).copied().flatten(),
            })
            .collect();
        Ok(Response::new(pb::PreviewResponse {
            support_set: set.name,
            version: set.version,
            rows: rows as u32,
            columns: cols as u32,
            overlays,
        }))
    }
}
