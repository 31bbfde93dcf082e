//! The Rules service: routing rules and DryRun (which rule a file or header would get, and why).

use crate::admin::auth::{require, Access};
use crate::admin::pb;
use crate::admin::server::State;
use crate::admin::{change, masks, mode_setting, mode_to_pb, read, timestamp};
use crate::sequence_mode;
use crate::store::db;
use crate::store::rules::{self, Rule, RuleError, StudyHeader};
use crate::store::support;
use dicom_dictionary_std::tags;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Rules service.
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

/// A rule from the API; an unknown `sequence_mode` is INVALID_ARGUMENT.
pub fn rule_from_pb(r: pb::Rule) -> Result<Rule, Status> {
    Ok(Rule {
        id: r.id,
        priority: r.priority,
        modality: r.modality,
        body_part: r.body_part,
        sop_class_uid: r.sop_class_uid,
        series_description_regex: r.series_description_regex,
        calling_ae: r.calling_ae,
        support_set: r.support_set,
        destination_ae: r.destination_ae,
        stable_age_s: r.stable_age_s,
        enabled: !r.disabled,
        skip_localizers: !r.include_localizers,
        description: r.description,
        sequence_mode: mode_setting(r.sequence_mode.as_deref())?.0,
        created_at: 0.0,
        updated_at: 0.0,
    })
}

/// A rule as the API shows it.
pub fn rule_to_pb(r: &Rule) -> pb::Rule {
    pb::Rule {
        id: r.id,
        priority: r.priority,
        modality: r.modality.clone(),
        body_part: r.body_part.clone(),
        sop_class_uid: r.sop_class_uid.clone(),
        series_description_regex: r.series_description_regex.clone(),
        calling_ae: r.calling_ae.clone(),
        support_set: r.support_set.clone(),
        destination_ae: r.destination_ae.clone(),
        stable_age_s: r.stable_age_s,
        disabled: !r.enabled,
        include_localizers: !r.skip_localizers,
        description: r.description.clone(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        sequence_mode: mode_to_pb(r.sequence_mode),
    }
}

/// The routing header of a DICOM file.
pub fn header_from_dicom(bytes: &[u8], calling_ae: &str) -> Result<StudyHeader, Status> {
    let obj = masks::parse_dicom(bytes)?;
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let sop_class_uid = text(tags::SOP_CLASS_UID);
    if sop_class_uid.is_empty() {
        return Err(Status::invalid_argument(
            "dicom: SOP Class UID is missing: not a DICOM instance",
        ));
    }
    let image_type = obj
        .element_opt(tags::IMAGE_TYPE)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    Ok(StudyHeader {
        modality: text(tags::MODALITY),
        body_part: text(tags::BODY_PART_EXAMINED),
        sop_class_uid,
        series_description: text(tags::SERIES_DESCRIPTION),
        calling_ae: calling_ae.trim().to_string(),
        image_type,
    })
}

fn header_to_pb(h: &StudyHeader) -> pb::StudyHeader {
    pb::StudyHeader {
        modality: h.modality.clone(),
        body_part: h.body_part.clone(),
        sop_class_uid: h.sop_class_uid.clone(),
        series_description: h.series_description.clone(),
        calling_ae: h.calling_ae.clone(),
        image_type: h.image_type.clone(),
    }
}

#[tonic::async_trait]
impl pb::rules_server::Rules for Svc {
    async fn create(
        &self,
        req: Request<pb::CreateRuleRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let who = require(&req, Access::Write, "Rules.Create")?;
        let rule = rule_from_pb(
            req.into_inner()
                .rule
                .ok_or_else(|| Status::invalid_argument("rule is missing"))?,
        )?;
        let now = db::now();
        let id = change(&self.st.db, move |c| {
            rules::create(c, &rule, &who.name, now)
        })
        .await?;
        let r = read(&self.st.db, |c| rules::get(c, id))?;
        Ok(Response::new(rule_to_pb(&r)))
    }

    async fn list(
        &self,
        req: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        require(&req, Access::Read, "Rules.List")?;
        let list = read(&self.st.db, |c| rules::list(c).map_err(RuleError::from))?;
        Ok(Response::new(pb::ListRulesResponse {
            rules: list.iter().map(rule_to_pb).collect(),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRuleRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let who = require(&req, Access::Write, "Rules.Update")?;
        let rule = rule_from_pb(
            req.into_inner()
                .rule
                .ok_or_else(|| Status::invalid_argument("rule is missing"))?,
        )?;
        let id = rule.id;
        let now = db::now();
        change(&self.st.db, move |c| {
            rules::update(c, &rule, &who.name, now)
        })
        .await?;
        let r = read(&self.st.db, |c| rules::get(c, id))?;
        Ok(Response::new(rule_to_pb(&r)))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        let who = require(&req, Access::Write, "Rules.Delete")?;
        let id = req.into_inner().id;
        let now = db::now();
        change(&self.st.db, move |c| rules::delete(c, id, &who.name, now)).await?;
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn dry_run(
        &self,
        req: Request<pb::DryRunRequest>,
    ) -> Result<Response<pb::DryRunResponse>, Status> {
        let who = require(&req, Access::Read, "Rules.DryRun")?;
        let r = req.into_inner();
        let header = match r.input {
            Some(pb::dry_run_request::Input::Dicom(bytes)) => {
                if bytes.len() > self.st.max_upload {
                    return Err(masks::UploadError::TooLarge(self.st.max_upload_mb).into());
                }
                let ae = r.calling_ae.clone();
                tokio::task::spawn_blocking(move || header_from_dicom(&bytes, &ae))
                    .await
                    .map_err(crate::admin::internal)??
            }
            Some(pb::dry_run_request::Input::Header(h)) => StudyHeader {
                modality: h.modality,
                body_part: h.body_part,
                sop_class_uid: h.sop_class_uid,
                series_description: h.series_description,
                calling_ae: if h.calling_ae.is_empty() {
                    r.calling_ae
                } else {
                    h.calling_ae
                },
                image_type: h.image_type,
            },
            None => {
                return Err(Status::invalid_argument(
                    "give either `dicom` (file bytes) or `header`",
                ))
            }
        };
        let synonyms = self.st.synonyms.clone();
        let set = read(&self.st.db, |c| {
            rules::load(c, synonyms).map_err(RuleError::from)
        })?;
        let d = rules::route(&set, &header);
        let to_sender = d.rule.is_some_and(|id| {
            set.rules()
                .any(|r| r.id == id && r.destination_ae.trim().is_empty())
        });
        let stored = match &d.support_set {
            Some(name) => read(&self.st.db, |c| {
                Ok::<_, RuleError>(support::get(c, name, None).ok())
            })?,
            None => None,
        };
        let (version, set_mode) = stored
            .as_ref()
            .map_or((0, None), |s| (s.version, s.meta.sequence_mode));
        // The mode the pipeline would record for the job (catalog: rule > set > config).
        let mode = d.rule.map(|id| {
            let rule_mode = set
                .rules()
                .find(|r| r.id == id)
                .and_then(|r| r.sequence_mode);
            sequence_mode::choose(rule_mode, set_mode, self.st.sequence_mode)
        });
        let note = match (&mode, &stored) {
            (Some(m), Some(s)) if m.mode != sequence_mode::SequenceMode::PerFrame => {
                let labels: Vec<&str> = s.objects.iter().map(|o| o.label.as_str()).collect();
                tracking_note(
                    &self.st.segmenter,
                    &s.meta.bundle,
                    &labels,
                    &m.mode.to_string(),
                )
            }
            _ => None,
        };
        crate::admin::audit_read(
            &self.st.db,
            &who.name,
            "rule.dry_run",
            match &d.support_set {
                Some(name) => format!("support_set:{name}"),
                None => "rules".into(),
            },
            format!(
                "{} {}: {}",
                header.modality,
                header.body_part,
                d.rule.map_or("no rule".into(), |id| format!("rule {id}"))
            ),
        )
        .await;
        Ok(Response::new(pb::DryRunResponse {
            matched: d.rule.is_some(),
            rule_id: d.rule.unwrap_or(0),
            support_set: d.support_set.clone().unwrap_or_default(),
            support_set_version: version,
            destination_ae: d.destination.clone().unwrap_or_default(),
            reason: d.reason.clone(),
            considered: d
                .considered
                .iter()
                .map(|v| pb::RuleVerdict {
                    rule_id: v.rule_id,
                    matched: v.matched,
                    reason: v.reason.clone(),
                })
                .collect(),
            header: Some(header_to_pb(&header)),
            stable_age_s: d.stable_age_s,
            to_sender,
            sequence_mode: mode.map(|m| m.mode.to_string()).unwrap_or_default(),
            sequence_mode_from: mode.map(|m| m.from.to_string()).unwrap_or_default(),
            sequence_note: note.unwrap_or_default(),
        }))
    }
}

/// DryRun's note when a set's series would be tracked: why `bundle` would still go frame by
/// frame for `labels`, or that it cannot be known without the engine.
fn tracking_note(
    slot: &crate::admin::EngineSlot,
    bundle: &str,
    labels: &[&str],
    mode: &str,
) -> Option<String> {
    match slot.get() {
        Ok(seg) => seg.track_refusal(bundle, labels).map(|why| {
            format!("series that sequence_mode {mode} would track go frame by frame: {why}")
        }),
        Err(crate::admin::NoSegmenter::Loading) => Some(
            "the engine is still loading, so whether the bundle can track is not known yet".into(),
        ),
        Err(crate::admin::NoSegmenter::Absent) => {
            Some("this daemon runs no engine, so whether the bundle can track is unknown".into())
        }
    }
}
