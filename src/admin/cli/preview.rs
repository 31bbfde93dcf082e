//! `preview ...`: segment one image with a support set, overlays as PNG files.

use super::output::*;
use super::*;

/// `preview SET IMAGE --out DIR`: segment one image with a support set and write the
/// overlays as PNG files (no job, no change).
#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// Support set.
    pub set: String,
    /// DICOM image file.
    pub image: PathBuf,
    /// Folder for `overlay-N.png`, one per object (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Version (default: current).
    #[arg(long, default_value_t = 0)]
    pub version: u32,
}

/// Runs `preview`.
pub(super) async fn run(
    args: &AdminArgs,
    c: &mut Clients,
    cmd: &PreviewArgs,
) -> Result<(), CliError> {
    let PreviewArgs {
        set,
        image,
        out,
        version,
    } = cmd;
    let preview = &mut c.preview;
    use pb::preview_request::Part;
    let img = read_file(image)?;
    let mut msgs = vec![pb::PreviewRequest {
        part: Some(Part::Header(pb::PreviewHeader {
            support_set: set.clone(),
            version: *version,
        })),
    }];
    msgs.extend(img.chunks(CHUNK).map(|c| pb::PreviewRequest {
        part: Some(Part::ImageChunk(c.to_vec())),
    }));
    let r = preview
        .segment(tokio_stream::iter(msgs))
        .await?
        .into_inner();
    std::fs::create_dir_all(out).map_err(|e| CliError::Local(format!("{}: {e}", out.display())))?;
    let mut files = Vec::new();
    for o in &r.overlays {
        let p = out.join(format!("overlay-{}.png", o.object_index));
        std::fs::write(&p, &o.png).map_err(|e| CliError::Local(format!("{}: {e}", p.display())))?;
        files.push(json!({"object": o.object_index, "label": o.label,
                          "pixels": o.pixels, "look_agreement": o.look_agreement,
                          "file": p.display().to_string()}));
    }
    print(
        args,
        json!({"support_set": r.support_set, "version": r.version, "rows": r.rows,
               "columns": r.columns, "overlays": files}),
        || {
            let mut s = format!(
                "{} version {} on a {}x{} image:",
                r.support_set, r.version, r.rows, r.columns
            );
            for o in &r.overlays {
                s += &format!(
                    "\n  {} ({}): {} px{} -> {}",
                    o.object_index,
                    o.label,
                    o.pixels,
                    o.look_agreement
                        .map(|a| format!(", mirrored looks agree {a:.2}"))
                        .unwrap_or_default(),
                    out.join(format!("overlay-{}.png", o.object_index))
                        .display()
                );
            }
            s
        },
    );
    Ok(())
}
