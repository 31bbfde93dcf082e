//! The SupportSets service: create, inspect, edit, delete support sets; add and remove pairs;
//! import / export folders; leave-one-out evaluation.
//!
//! Uploads are validated completely ([`super::masks`]) before any file is written; pair files
//! are written and fsynced before the transaction that records them, and removed again if that
//! transaction fails, so a failed call leaves neither rows nor files behind.

use crate::admin::auth::{require, Access};
use crate::admin::folder::{exchange_path, Exchange};
use crate::admin::masks::{self, UploadError};
use crate::admin::pb::{self, add_pair_request::Part};
use crate::admin::segment::DicomImage;
use crate::admin::server::State;
use crate::admin::{change, evaluate, internal, read, timestamp};
use crate::store::db;
use crate::store::support::{
    self, Code, Mask, NewPair, ObjectDef, SetInfo, SetMeta, SetUpdate, SupportError, PALETTE,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// Import and Export read and write server files: a refused or failed attempt is audited too
/// (`<action>.failed`, with the status), not only a completed one (issue 16 item 6).
async fn audit_failure(st: &State, who: &str, action: &str, target: &str, e: &Status) {
    let (who, action, target) = (
        who.to_string(),
        format!("{action}.failed"),
        target.to_string(),
    );
    let (detail, now) = (format!("{:?}: {}", e.code(), e.message()), db::now());
    let r = change(&st.db, move |c| {
        crate::store::audit::record(c, &who, &action, &target, &detail, now)
            .map_err(SupportError::from)
    })
    .await;
    if let Err(err) = r {
        tracing::error!(error = %err, "cannot audit a failed Import / Export");
    }
}

/// The SupportSets service.
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

fn code_from_pb(c: &Option<pb::Code>) -> Code {
    match c {
        Some(c) if !(c.scheme.is_empty() && c.code.is_empty() && c.meaning.is_empty()) => Code {
            scheme: c.scheme.trim().to_string(),
            value: c.code.trim().to_string(),
            meaning: c.meaning.trim().to_string(),
        },
        _ => support::default_code(),
    }
}

fn code_to_pb(c: &Code) -> pb::Code {
    pb::Code {
        scheme: c.scheme.clone(),
        code: c.value.clone(),
        meaning: c.meaning.clone(),
    }
}

/// Objects from the API; missing codes default to SNOMED CT "Tissue", missing colours to a
/// palette.
pub fn objects_from_pb(objs: &[pb::SupportObject]) -> Result<Vec<ObjectDef>, SupportError> {
    objs.iter()
        .enumerate()
        .map(|(i, o)| {
            let color = match o.color.as_slice() {
                [] => PALETTE[i % PALETTE.len()],
                [r, g, b] if *r < 256 && *g < 256 && *b < 256 => [*r as u8, *g as u8, *b as u8],
                _ => {
                    return Err(SupportError::Invalid(format!(
                        "objects[{}].color must be [r, g, b] with values 0..=255",
                        i + 1
                    )))
                }
            };
            Ok(ObjectDef {
                label: o.label.trim().to_string(),
                category: code_from_pb(&o.category),
                property_type: code_from_pb(&o.r#type),
                color,
            })
        })
        .collect()
}

/// A stored set as the API shows it; `with_pairs` false leaves the pair list out (List).
pub fn set_to_pb(s: &SetInfo, with_pairs: bool) -> pb::SupportSet {
    pb::SupportSet {
        name: s.name.clone(),
        description: s.meta.description.clone(),
        version: s.version,
        bundle: s.meta.bundle.clone(),
        modality: s.meta.modality.clone(),
        body_part: s.meta.body_part.clone(),
        sequence_mode: crate::admin::mode_to_pb(s.meta.sequence_mode),
        objects: s
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| pb::SupportObject {
                index: i as u32 + 1,
                label: o.label.clone(),
                category: Some(code_to_pb(&o.category)),
                r#type: Some(code_to_pb(&o.property_type)),
                color: o.color.iter().map(|&c| c as u32).collect(),
            })
            .collect(),
        pairs: if with_pairs {
            s.pairs
                .iter()
                .map(|p| pb::SupportPair {
                    number: p.number,
                    sop_instance_uid: p.sop_instance_uid.clone(),
                    sop_class_uid: p.sop_class_uid.clone(),
                    modality: p.modality.clone(),
                    rows: p.rows,
                    columns: p.cols,
                    image_sha256: p.image_sha256.clone(),
                    mask_pixels: p.mask_pixels.clone(),
                    mask_source: p.mask_source.clone(),
                    added_in_version: p.since_version,
                })
                .collect()
        } else {
            Vec::new()
        },
        created_at: Some(timestamp(s.created_at)),
        updated_at: Some(timestamp(s.updated_at)),
        pair_count: s.pairs.len() as u32,
    }
}

/// Masks as uploaded.
#[derive(Debug, Clone)]
pub enum MaskUpload {
    /// PNG bytes per 1-based object index.
    Png(BTreeMap<u32, Vec<u8>>),
    /// One DICOM SEG.
    Seg(Vec<u8>),
}

/// A validated pair, ready to be written.
#[derive(Debug)]
pub struct ValidPair {
    /// The image bytes as uploaded.
    pub image_bytes: Vec<u8>,
    /// The parsed image.
    pub image: DicomImage,
    /// One mask per object.
    pub masks: Vec<Mask>,
    /// The SEG bytes, if the masks came as SEG.
    pub seg: Option<Vec<u8>>,
}

/// Validates an image and its masks against a set's object labels (blocking: decodes pixels).
pub fn validate_pair(
    image_bytes: Vec<u8>,
    masks: MaskUpload,
    labels: &[String],
) -> Result<ValidPair, UploadError> {
    let image = masks::parse_image(&image_bytes)?;
    let (rows, cols) = (image.rows, image.cols);
    let (decoded, seg) = match masks {
        MaskUpload::Png(by_index) => {
            if let Some(&index) = by_index
                .keys()
                .find(|&&i| i == 0 || i as usize > labels.len())
            {
                return Err(UploadError::BadIndex {
                    index,
                    objects: labels.len(),
                });
            }
            if by_index.len() != labels.len() {
                return Err(UploadError::Count {
                    got: by_index.len(),
                    want: labels.len(),
                });
            }
            let mut out = Vec::with_capacity(labels.len());
            for (i, bytes) in &by_index {
                out.push(masks::decode_png_mask(bytes, *i as usize, rows, cols)?);
            }
            (out, None)
        }
        MaskUpload::Seg(bytes) => (
            masks::decode_seg_masks(&bytes, &image, labels.len())?,
            Some(bytes),
        ),
    };
    masks::check_masks(&decoded, labels, rows, cols)?;
    Ok(ValidPair {
        image_bytes,
        image,
        masks: decoded,
        seg,
    })
}

/// Writes a validated pair's files under the set's folder in `data_dir` (blocking). Returns the
/// new pair.
pub fn write_pair(
    data_dir: &std::path::Path,
    name: &str,
    v: &ValidPair,
) -> Result<NewPair, SupportError> {
    let masks_bin = support::encode_masks(&v.masks);
    let extra: Vec<(&str, &[u8])> = v
        .seg
        .as_deref()
        .map(|s| vec![("mask.seg.dcm", s)])
        .unwrap_or_default();
    let dir = support::write_pair_files(data_dir, name, &v.image_bytes, &masks_bin, &extra)?;
    Ok(NewPair {
        dir,
        sop_instance_uid: v.image.sop_instance_uid.clone(),
        sop_class_uid: v.image.sop_class_uid.clone(),
        modality: v.image.modality.clone(),
        rows: v.image.rows as u32,
        cols: v.image.cols as u32,
        image_sha256: support::sha256_hex(&v.image_bytes),
        masks_sha256: support::sha256_hex(&masks_bin),
        mask_pixels: v.masks.iter().map(|m| m.area() as u64).collect(),
        mask_source: if v.seg.is_some() { "seg" } else { "png" },
    })
}

/// Validates, writes and records one pair as a new version of set `name`.
pub async fn add_pair(
    st: &Arc<State>,
    name: String,
    expected_version: u32,
    image: Vec<u8>,
    masks: MaskUpload,
    who: String,
) -> Result<SetInfo, Status> {
    let (set_id, labels) = read(&st.db, |c| {
        let info = support::get(c, &name, None)?;
        Ok::<_, SupportError>((
            info.id,
            info.objects
                .iter()
                .map(|o| o.label.clone())
                .collect::<Vec<_>>(),
        ))
    })?;
    let st2 = st.clone();
    let name2 = name.clone();
    let pair = tokio::task::spawn_blocking(move || -> Result<NewPair, Status> {
        let valid = validate_pair(image, masks, &labels)?;
        Ok(write_pair(&st2.data_dir, &name2, &valid)?)
    })
    .await
    .map_err(internal)??;
    let dir = pair.dir.clone();
    let name2 = name.clone();
    let now = db::now();
    let r = change(&st.db, move |c| {
        support::add_pair(c, &name2, set_id, expected_version, &pair, &who, now)
    })
    .await;
    if let Err(e) = r {
        support::remove_pair_dirs(&st.data_dir, "", &[dir]);
        return Err(e);
    }
    read(&st.db, |c| support::get(c, &name, None))
}

async fn collect_add_pair(
    st: &State,
    mut stream: Streaming<pb::AddPairRequest>,
) -> Result<(pb::AddPairHeader, Vec<u8>, MaskUpload), Status> {
    let header = match stream.message().await? {
        Some(pb::AddPairRequest {
            part: Some(Part::Header(h)),
        }) => h,
        _ => {
            return Err(UploadError::Protocol(
                "AddPair: the first message must be the header".into(),
            )
            .into())
        }
    };
    let seg = match pb::MaskFormat::try_from(header.mask_format) {
        Ok(pb::MaskFormat::Png) => false,
        Ok(pb::MaskFormat::DicomSeg) => true,
        _ => {
            return Err(UploadError::Protocol(
                "header.mask_format must be MASK_FORMAT_PNG or MASK_FORMAT_DICOM_SEG".into(),
            )
            .into())
        }
    };
    let mut image = Vec::new();
    let mut pngs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut seg_bytes = Vec::new();
    let mut total = 0usize;
    while let Some(msg) = stream.message().await? {
        match msg.part {
            Some(Part::Header(_)) => {
                return Err(UploadError::Protocol("AddPair: header sent twice".into()).into())
            }
            Some(Part::ImageChunk(b)) => {
                total += b.len();
                image.extend_from_slice(&b);
            }
            Some(Part::MaskChunk(m)) => {
                total += m.data.len();
                if seg {
                    seg_bytes.extend_from_slice(&m.data);
                } else {
                    pngs.entry(m.object_index)
                        .or_default()
                        .extend_from_slice(&m.data);
                }
            }
            None => {}
        }
        if total > st.max_upload {
            return Err(UploadError::TooLarge(st.max_upload_mb).into());
        }
    }
    if image.is_empty() {
        return Err(UploadError::Protocol("AddPair: no image_chunk was sent".into()).into());
    }
    let masks = if seg {
        if seg_bytes.is_empty() {
            return Err(UploadError::Protocol("AddPair: no mask_chunk was sent".into()).into());
        }
        MaskUpload::Seg(seg_bytes)
    } else {
        MaskUpload::Png(pngs)
    };
    Ok((header, image, masks))
}

/// Loads a stored support image for evaluation.
pub fn load_image(p: &support::SupportPairData) -> Result<DicomImage, evaluate::StoredImageError> {
    let bytes = std::fs::read(&p.image_path).map_err(|e| {
        // The server path goes to the log only (review L7).
        tracing::error!(path = %p.image_path.display(), error = %e, "cannot read a support image");
        evaluate::StoredImageError::Read(e.kind())
    })?;
    let mut img = masks::parse_image(&bytes)?;
    img.path = Some(p.image_path.clone());
    Ok(img)
}

fn version_opt(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

#[tonic::async_trait]
impl pb::support_sets_server::SupportSets for Svc {
    async fn create(
        &self,
        req: Request<pb::CreateSupportSetRequest>,
    ) -> Result<Response<pb::SupportSet>, Status> {
        let who = require(&req, Access::Write, "SupportSets.Create")?;
        let r = req.into_inner();
        let objects = objects_from_pb(&r.objects)?;
        let meta = SetMeta {
            description: r.description,
            bundle: self.st.installed_bundle(&r.bundle)?,
            modality: r.modality.trim().to_uppercase(),
            body_part: r.body_part.trim().to_uppercase(),
            sequence_mode: crate::admin::mode_setting(r.sequence_mode.as_deref())?.0,
        };
        let name = r.name.trim().to_string();
        let n2 = name.clone();
        let now = db::now();
        change(&self.st.db, move |c| {
            support::create(c, &n2, &meta, &objects, &who.name, now)
        })
        .await?;
        let s = read(&self.st.db, |c| support::get(c, &name, None))?;
        Ok(Response::new(set_to_pb(&s, true)))
    }

    async fn get(
        &self,
        req: Request<pb::GetSupportSetRequest>,
    ) -> Result<Response<pb::SupportSet>, Status> {
        let who = require(&req, Access::Read, "SupportSets.Get")?;
        let r = req.into_inner();
        let s = read(&self.st.db, |c| {
            support::get(c, &r.name, version_opt(r.version))
        })?;
        crate::admin::audit_read(
            &self.st.db,
            &who.name,
            "support_set.get",
            format!("support_set:{}", s.name),
            format!("version {}", s.version),
        )
        .await;
        Ok(Response::new(set_to_pb(&s, true)))
    }

    async fn list(
        &self,
        req: Request<pb::ListSupportSetsRequest>,
    ) -> Result<Response<pb::ListSupportSetsResponse>, Status> {
        require(&req, Access::Read, "SupportSets.List")?;
        let sets = read(&self.st.db, support::list)?;
        Ok(Response::new(pb::ListSupportSetsResponse {
            support_sets: sets.iter().map(|s| set_to_pb(s, false)).collect(),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSupportSetRequest>,
    ) -> Result<Response<pb::SupportSet>, Status> {
        let who = require(&req, Access::Write, "SupportSets.Update")?;
        let r = req.into_inner();
        let up = SetUpdate {
            description: r.description,
            bundle: r.bundle.map(|s| self.st.installed_bundle(&s)).transpose()?,
            modality: r.modality.map(|s| s.trim().to_uppercase()),
            body_part: r.body_part.map(|s| s.trim().to_uppercase()),
            sequence_mode: r
                .sequence_mode
                .as_deref()
                .map(|m| crate::admin::mode_setting(Some(m)).map(|s| s.0))
                .transpose()?,
            objects: if r.replace_objects {
                Some(objects_from_pb(&r.objects)?)
            } else {
                None
            },
            expected_version: r.expected_version,
        };
        let name = r.name.clone();
        let now = db::now();
        change(&self.st.db, move |c| {
            support::update(c, &r.name, &up, &who.name, now)
        })
        .await?;
        let s = read(&self.st.db, |c| support::get(c, &name, None))?;
        Ok(Response::new(set_to_pb(&s, true)))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteSupportSetRequest>,
    ) -> Result<Response<pb::DeleteSupportSetResponse>, Status> {
        let who = require(&req, Access::Write, "SupportSets.Delete")?;
        let name = req.into_inner().name;
        let n2 = name.clone();
        let now = db::now();
        let dirs = change(&self.st.db, move |c| {
            support::delete(c, &n2, &who.name, now)
        })
        .await?;
        let data_dir = self.st.data_dir.clone();
        let _ =
            tokio::task::spawn_blocking(move || support::remove_pair_dirs(&data_dir, &name, &dirs))
                .await;
        Ok(Response::new(pb::DeleteSupportSetResponse {}))
    }

    async fn add_pair(
        &self,
        req: Request<Streaming<pb::AddPairRequest>>,
    ) -> Result<Response<pb::SupportSet>, Status> {
        let who = require(&req, Access::Write, "SupportSets.AddPair")?;
        let (header, image, masks) = collect_add_pair(&self.st, req.into_inner()).await?;
        let s = add_pair(
            &self.st,
            header.support_set,
            header.expected_version,
            image,
            masks,
            who.name,
        )
        .await?;
        Ok(Response::new(set_to_pb(&s, true)))
    }

    async fn remove_pair(
        &self,
        req: Request<pb::RemovePairRequest>,
    ) -> Result<Response<pb::SupportSet>, Status> {
        let who = require(&req, Access::Write, "SupportSets.RemovePair")?;
        let r = req.into_inner();
        let name = r.support_set.clone();
        let now = db::now();
        change(&self.st.db, move |c| {
            support::remove_pair(
                c,
                &r.support_set,
                r.pair_number,
                r.expected_version,
                &who.name,
                now,
            )
        })
        .await?;
        let s = read(&self.st.db, |c| support::get(c, &name, None))?;
        Ok(Response::new(set_to_pb(&s, true)))
    }

    async fn import(
        &self,
        req: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::SupportSet>, Status> {
        let who = require(&req, Access::Write, "SupportSets.Import")?;
        let r = req.into_inner();
        let s = match exchange_path(&self.st, &r.path, Exchange::Read) {
            Ok(dir) => {
                let target = self.st.folder_target();
                crate::admin::folder::import(&target, dir, &r.name, &who.name).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &s {
            audit_failure(&self.st, &who.name, "support_set.import", &r.path, e).await;
        }
        Ok(Response::new(set_to_pb(&s?, true)))
    }

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::ExportResponse>, Status> {
        let who = require(&req, Access::Write, "SupportSets.Export")?;
        let r = req.into_inner();
        let exported = match exchange_path(&self.st, &r.path, Exchange::Write) {
            Ok(out) => {
                crate::admin::folder::export(&self.st, &r.name, version_opt(r.version), out).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &exported {
            let target = format!("support_set:{} to {}", r.name, r.path);
            audit_failure(&self.st, &who.name, "support_set.export", &target, e).await;
        }
        let (version, files) = exported?;
        // Not a database change, but files written on the server: keep a trace of who and where.
        let (name, path, now) = (r.name.clone(), r.path.clone(), db::now());
        change(&self.st.db, move |c| {
            crate::store::audit::record(
                c,
                &who.name,
                "support_set.export",
                &format!("support_set:{name}"),
                &format!("version {version} to {path}"),
                now,
            )
            .map_err(SupportError::from)
        })
        .await?;
        Ok(Response::new(pb::ExportResponse {
            path: r.path,
            files,
            version,
        }))
    }

    async fn evaluate(
        &self,
        req: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        require(&req, Access::Write, "SupportSets.Evaluate")?;
        let r = req.into_inner();
        let seg = self
            .st
            .segmenter
            .get()
            .map_err(|why| why.status("Evaluate"))?;
        let _slot = State::slot(&self.st.inference, "Evaluate", "max_concurrent_inference")?;
        let data_dir = self.st.data_dir.clone();
        let set = read(&self.st.db, |c| {
            support::load(c, &data_dir, &r.name, version_opt(r.version))
        })?;
        let report = tokio::task::spawn_blocking(move || {
            evaluate::leave_one_out(&set, seg.as_ref(), load_image).map(|rep| (set, rep))
        })
        .await
        .map_err(internal)?;
        let (set, rep) = report.map_err(|e| match e {
            evaluate::EvalError::TooFewPairs(_) => Status::failed_precondition(e.to_string()),
            other => internal(other),
        })?;
        Ok(Response::new(report_to_pb(&set, &rep)))
    }
}

/// An evaluation report as the API shows it.
pub fn report_to_pb(set: &support::SupportSetData, r: &evaluate::Report) -> pb::EvaluateResponse {
    pb::EvaluateResponse {
        name: set.name.clone(),
        version: set.version,
        pairs: r
            .pairs
            .iter()
            .map(|p| pb::PairScore {
                pair_number: p.pair,
                dice: p.dice.clone(),
                mean_dice: p.mean(),
            })
            .collect(),
        object_mean_dice: r.object_mean.clone(),
        mean_dice: r.mean,
        flags: r
            .flags
            .iter()
            .map(|f| pb::MaskFlag {
                // 0: a set-level flag (the proto's convention).
                pair_number: f.pair.unwrap_or(0),
                object_index: f.object as u32 + 1,
                kind: match f.kind {
                    evaluate::FlagKind::Empty => pb::FlagKind::Empty,
                    evaluate::FlagKind::Tiny => pb::FlagKind::Tiny,
                    evaluate::FlagKind::AreaOutlier => pb::FlagKind::AreaOutlier,
                    evaluate::FlagKind::DiceOutlier => pb::FlagKind::DiceOutlier,
                    evaluate::FlagKind::PoorSet => pb::FlagKind::PoorSet,
                    evaluate::FlagKind::ShapeRuleOff => pb::FlagKind::ShapeRuleOff,
                } as i32,
                detail: f.detail.clone(),
            })
            .collect(),
    }
}
