//! `support-set ...` and `pair ...`: curating support sets, and the uploads of their pairs.

use super::output::*;
use super::*;

/// `support-set ...`.
#[derive(Subcommand, Debug)]
pub enum SetCmd {
    /// Create a support set.
    Create {
        /// Name (A-Z a-z 0-9 . _ -).
        name: String,
        /// Object labels, in mask order (repeat; SNOMED codes default to "Tissue").
        #[arg(long = "object", required = true)]
        objects: Vec<String>,
        /// Model bundle (default: the daemon's `[engine] default_bundle`).
        #[arg(long, default_value = "")]
        bundle: String,
        /// Modality hint.
        #[arg(long, default_value = "")]
        modality: String,
        /// Body part hint.
        #[arg(long, default_value = "")]
        body_part: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// How sequences (cine loops, volumes) are segmented: auto, memory, per-frame, or
        /// inherit ([pipeline] sequence_mode; a rule's own mode wins).
        #[arg(long)]
        sequence_mode: Option<ModeSetting>,
    },
    /// List support sets.
    List,
    /// Show one support set with its objects and pairs.
    Show {
        /// Name.
        name: String,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Change description, bundle, match hints or sequence mode (a new version).
    Update {
        /// Name.
        name: String,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New model bundle.
        #[arg(long)]
        bundle: Option<String>,
        /// New modality hint.
        #[arg(long)]
        modality: Option<String>,
        /// New body part hint.
        #[arg(long)]
        body_part: Option<String>,
        /// How sequences (cine loops, volumes) are segmented: auto, memory, per-frame, or
        /// inherit ([pipeline] sequence_mode; a rule's own mode wins).
        #[arg(long)]
        sequence_mode: Option<ModeSetting>,
    },
    /// Delete a support set.
    Delete {
        /// Name.
        name: String,
    },
    /// Import a support-set folder (path on the server, inside admin.exchange_dir; relative
    /// paths are taken inside it).
    Import {
        /// Folder holding supportset.toml.
        path: String,
        /// Import under this name instead.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Export a version as a folder (path on the server, inside admin.exchange_dir; relative
    /// paths are taken inside it).
    Export {
        /// Name.
        name: String,
        /// Target folder (must not exist or be empty).
        path: String,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Leave-one-out Dice and mask flags.
    Evaluate {
        /// Name.
        name: String,
        /// Version (default: current).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
}

/// `pair ...`.
#[derive(Subcommand, Debug)]
pub enum PairCmd {
    /// Upload an image with its masks (one PNG per object, or one DICOM SEG).
    Add {
        /// Support set.
        set: String,
        /// DICOM image file.
        image: PathBuf,
        /// PNG masks in object order.
        #[arg(long = "png", conflicts_with = "seg")]
        pngs: Vec<PathBuf>,
        /// DICOM SEG with one segment per object.
        #[arg(long)]
        seg: Option<PathBuf>,
        /// Refuse unless the set is still at this version.
        #[arg(long, default_value_t = 0)]
        expected_version: u32,
    },
    /// Remove a pair by number.
    Remove {
        /// Support set.
        set: String,
        /// Pair number.
        number: u32,
    },
}

pub(super) fn progress(total: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("uploading");
    bar
}

/// The AddPair messages for an image and its masks.
pub fn add_pair_messages(
    set: &str,
    expected_version: u32,
    image: &[u8],
    pngs: &[Vec<u8>],
    seg: Option<&[u8]>,
) -> Vec<pb::AddPairRequest> {
    use pb::add_pair_request::Part;
    let mut out = vec![pb::AddPairRequest {
        part: Some(Part::Header(pb::AddPairHeader {
            support_set: set.to_string(),
            mask_format: if seg.is_some() {
                pb::MaskFormat::DicomSeg
            } else {
                pb::MaskFormat::Png
            } as i32,
            expected_version,
        })),
    }];
    for c in image.chunks(CHUNK) {
        out.push(pb::AddPairRequest {
            part: Some(Part::ImageChunk(c.to_vec())),
        });
    }
    let masks: Vec<(u32, &[u8])> = match seg {
        Some(s) => vec![(0, s)],
        None => pngs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.as_slice()))
            .collect(),
    };
    for (index, bytes) in masks {
        for c in bytes.chunks(CHUNK) {
            out.push(pb::AddPairRequest {
                part: Some(Part::MaskChunk(pb::MaskChunk {
                    object_index: index,
                    data: c.to_vec(),
                })),
            });
        }
    }
    out
}

pub(super) fn msg_len(m: &pb::AddPairRequest) -> u64 {
    use pb::add_pair_request::Part;
    match &m.part {
        Some(Part::ImageChunk(b)) => b.len() as u64,
        Some(Part::MaskChunk(c)) => c.data.len() as u64,
        _ => 0,
    }
}

/// The support-set service's client.
type Sets = SupportSetsClient<Authed>;

/// Runs `support-set ...`: one function per subcommand.
pub(super) async fn run(args: &AdminArgs, c: &mut Clients, cmd: &SetCmd) -> Result<(), CliError> {
    let sets = &mut c.sets;
    match cmd {
        SetCmd::Create { .. } => create(args, sets, cmd).await,
        SetCmd::List => list(args, sets).await,
        SetCmd::Show { name, version } => show(args, sets, name, *version).await,
        SetCmd::Update { .. } => update(args, sets, cmd).await,
        SetCmd::Delete { name } => delete(args, sets, name).await,
        SetCmd::Import { path, name } => import(args, sets, path, name).await,
        SetCmd::Export {
            name,
            path,
            version,
        } => export(args, sets, name, path, *version).await,
        SetCmd::Evaluate { name, version } => evaluate(args, sets, name, *version).await,
    }
}

/// `support-set create`.
async fn create(args: &AdminArgs, sets: &mut Sets, cmd: &SetCmd) -> Result<(), CliError> {
    let SetCmd::Create {
        name,
        objects,
        bundle,
        modality,
        body_part,
        description,
        sequence_mode,
    } = cmd
    else {
        unreachable!("run dispatches only `support-set create` here");
    };
    let s = sets
        .create(pb::CreateSupportSetRequest {
            name: name.clone(),
            description: description.clone(),
            bundle: bundle.clone(),
            modality: modality.clone(),
            body_part: body_part.clone(),
            sequence_mode: sequence_mode.map(|m| m.to_string()),
            objects: objects
                .iter()
                .map(|l| pb::SupportObject {
                    label: l.clone(),
                    ..Default::default()
                })
                .collect(),
        })
        .await?
        .into_inner();
    print(args, set_json(&s), || {
        format!("created support set {} (version {})", s.name, s.version)
    });
    Ok(())
}

/// `support-set list`: a table of every set.
async fn list(args: &AdminArgs, sets: &mut Sets) -> Result<(), CliError> {
    let l = sets.list(pb::ListSupportSetsRequest {}).await?.into_inner();
    print(
        args,
        Value::Array(l.support_sets.iter().map(set_json).collect()),
        || {
            table(
                &[
                    "NAME",
                    "VERSION",
                    "BUNDLE",
                    "MODALITY",
                    "BODY PART",
                    "SEQUENCE",
                    "OBJECTS",
                    "PAIRS",
                    "UPDATED",
                ],
                &l.support_sets
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.version.to_string(),
                            s.bundle.clone(),
                            s.modality.clone(),
                            s.body_part.clone(),
                            mode_text(&s.sequence_mode).into(),
                            s.objects
                                .iter()
                                .map(|o| o.label.clone())
                                .collect::<Vec<_>>()
                                .join(", "),
                            s.pair_count.to_string(),
                            ts(&s.updated_at),
                        ]
                    })
                    .collect::<Vec<_>>(),
            )
        },
    );
    Ok(())
}

/// `support-set show`.
async fn show(args: &AdminArgs, sets: &mut Sets, name: &str, version: u32) -> Result<(), CliError> {
    let s = sets
        .get(pb::GetSupportSetRequest {
            name: name.to_string(),
            version,
        })
        .await?
        .into_inner();
    print(args, set_json(&s), || set_text(&s));
    Ok(())
}

/// `support-set update`.
async fn update(args: &AdminArgs, sets: &mut Sets, cmd: &SetCmd) -> Result<(), CliError> {
    let SetCmd::Update {
        name,
        description,
        bundle,
        modality,
        body_part,
        sequence_mode,
    } = cmd
    else {
        unreachable!("run dispatches only `support-set update` here");
    };
    let s = sets
        .update(pb::UpdateSupportSetRequest {
            name: name.clone(),
            description: description.clone(),
            bundle: bundle.clone(),
            modality: modality.clone(),
            body_part: body_part.clone(),
            sequence_mode: sequence_mode.map(|m| m.to_string()),
            ..Default::default()
        })
        .await?
        .into_inner();
    print(args, set_json(&s), || {
        format!("support set {} is at version {}", s.name, s.version)
    });
    Ok(())
}

/// `support-set delete`.
async fn delete(args: &AdminArgs, sets: &mut Sets, name: &str) -> Result<(), CliError> {
    sets.delete(pb::DeleteSupportSetRequest {
        name: name.to_string(),
    })
    .await?;
    print(args, json!({"deleted": name}), || {
        format!("deleted support set {name}")
    });
    Ok(())
}

/// `support-set import`.
async fn import(args: &AdminArgs, sets: &mut Sets, path: &str, name: &str) -> Result<(), CliError> {
    let s = sets
        .import(pb::ImportRequest {
            path: path.to_string(),
            name: name.to_string(),
        })
        .await?
        .into_inner();
    print(args, set_json(&s), || {
        format!(
            "imported support set {} (version {}, {} pair(s))",
            s.name, s.version, s.pair_count
        )
    });
    Ok(())
}

/// `support-set export`.
async fn export(
    args: &AdminArgs,
    sets: &mut Sets,
    name: &str,
    path: &str,
    version: u32,
) -> Result<(), CliError> {
    let r = sets
        .export(pb::ExportRequest {
            name: name.to_string(),
            version,
            path: path.to_string(),
        })
        .await?
        .into_inner();
    print(
        args,
        json!({"path": r.path, "version": r.version, "files": r.files}),
        || {
            format!(
                "exported {name} version {} to {} ({} files)",
                r.version,
                r.path,
                r.files.len()
            )
        },
    );
    Ok(())
}

/// `support-set evaluate`: leave-one-out Dice per pair and the mask flags.
async fn evaluate(
    args: &AdminArgs,
    sets: &mut Sets,
    name: &str,
    version: u32,
) -> Result<(), CliError> {
    let r = sets
        .evaluate(pb::EvaluateRequest {
            name: name.to_string(),
            version,
        })
        .await?
        .into_inner();
    let v = json!({
        "name": r.name, "version": r.version, "mean_dice": r.mean_dice,
        "object_mean_dice": r.object_mean_dice,
        "pairs": r.pairs.iter().map(|p| json!({"pair": p.pair_number, "dice": p.dice, "mean_dice": p.mean_dice})).collect::<Vec<_>>(),
        // A set-level flag (pair_number 0) has "pair": null.
        "flags": r.flags.iter().map(|f| json!({"pair": (f.pair_number > 0).then_some(f.pair_number),
            "object": f.object_index,
            "kind": pb::FlagKind::try_from(f.kind).map(|k| k.as_str_name()).unwrap_or("?"), "detail": f.detail})).collect::<Vec<_>>(),
    });
    print(args, v, || {
        let mut s = format!(
            "{} version {}: mean leave-one-out Dice {:.3}\n",
            r.name, r.version, r.mean_dice
        );
        s += &table(
            &["PAIR", "DICE PER OBJECT", "MEAN"],
            &r.pairs
                .iter()
                .map(|p| {
                    vec![
                        p.pair_number.to_string(),
                        p.dice
                            .iter()
                            .map(|d| format!("{d:.3}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                        format!("{:.3}", p.mean_dice),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        for f in &r.flags {
            s += &evaluate_flag_line(f);
        }
        s
    });
    Ok(())
}

/// Runs `pair ...`.
pub(super) async fn run_pair(
    args: &AdminArgs,
    c: &mut Clients,
    cmd: &PairCmd,
) -> Result<(), CliError> {
    let sets = &mut c.sets;
    match cmd {
        PairCmd::Add {
            set,
            image,
            pngs,
            seg,
            expected_version,
        } => {
            let img = read_file(image)?;
            let png_bytes = pngs
                .iter()
                .map(|p| read_file(p))
                .collect::<Result<Vec<_>, _>>()?;
            let seg_bytes = seg.as_deref().map(read_file).transpose()?;
            if png_bytes.is_empty() && seg_bytes.is_none() {
                return Err(CliError::Local(
                    "give the masks: --png FILE per object, or --seg FILE".into(),
                ));
            }
            let msgs = add_pair_messages(
                set,
                *expected_version,
                &img,
                &png_bytes,
                seg_bytes.as_deref(),
            );
            let total: u64 = msgs.iter().map(msg_len).sum();
            let bar = progress(total, args.json);
            let b2 = bar.clone();
            let stream = tokio_stream::StreamExt::map(tokio_stream::iter(msgs), move |m| {
                b2.inc(msg_len(&m));
                m
            });
            let r = sets.add_pair(stream).await;
            bar.finish_and_clear();
            let s = r?.into_inner();
            let n = s.pairs.iter().map(|p| p.number).max().unwrap_or(0);
            print(args, set_json(&s), || {
                format!("added pair {n} to {} (now version {})", s.name, s.version)
            });
        }
        PairCmd::Remove { set, number } => {
            let s = sets
                .remove_pair(pb::RemovePairRequest {
                    support_set: set.clone(),
                    pair_number: *number,
                    expected_version: 0,
                })
                .await?
                .into_inner();
            print(args, set_json(&s), || {
                format!(
                    "removed pair {number} from {} (now version {})",
                    s.name, s.version
                )
            });
        }
    }
    Ok(())
}
