//! What `proxyseg segment` writes per input: a PNG per frame and object, the masks as raw
//! bytes (`masks.u8`) and `result.toml` (the bundle, timings, and per frame the IoU estimates,
//! pixel counts and the mirrored looks' agreement).

use std::path::{Path, PathBuf};

use super::{off, SequenceUse};
use crate::engine::{EngineError, Mask, Segmentation};

fn safe_label(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_png(path: &Path, m: &Mask) -> Result<(), EngineError> {
    let f = std::fs::File::create(path)
        .map_err(|e| off(format!("cannot create {}: {e}", path.display())))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), m.cols as u32, m.rows as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = m
        .data
        .iter()
        .map(|&v| if v != 0 { 255 } else { 0 })
        .collect();
    enc.write_header()
        .and_then(|mut w| w.write_image_data(&data))
        .map_err(|e| off(format!("cannot write {}: {e}", path.display())))
}

pub(super) fn write_outputs(
    dir: &Path,
    input: &Path,
    seg: &Segmentation,
    sequence: &SequenceUse,
) -> Result<Vec<PathBuf>, EngineError> {
    use toml::Value;
    let io = |p: &Path, e: std::io::Error| off(format!("cannot write {}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    let mut raw = Vec::new();
    let (rows, cols) = seg
        .frames
        .first()
        .map(|f| (f.geometry.rows, f.geometry.cols))
        .unwrap_or((0, 0));
    let int = |v: usize| Value::Integer(v as i64);
    let ms = |d: std::time::Duration| Value::Float((d.as_secs_f64() * 1e6).round() / 1e3);
    let mut doc = toml::Table::new();
    doc.insert("input".into(), Value::String(input.display().to_string()));
    doc.insert("bundle".into(), Value::String(seg.bundle.clone()));
    doc.insert("tracked".into(), Value::Boolean(sequence.tracked));
    doc.insert("sequence".into(), Value::String(sequence.why.clone()));
    doc.insert(
        "support_set".into(),
        Value::String(format!(
            "{}@{}",
            seg.context.set_name, seg.context.set_version
        )),
    );
    doc.insert(
        "shape".into(),
        Value::Array(vec![
            int(seg.frames.len()),
            int(seg.objects.len()),
            int(rows),
            int(cols),
        ]),
    );
    doc.insert(
        "shape_order".into(),
        Value::String("frames, objects, rows, cols (masks.u8, 0/1)".into()),
    );
    doc.insert(
        "labels".into(),
        Value::Array(
            seg.objects
                .iter()
                .map(|o| Value::String(o.label.clone()))
                .collect(),
        ),
    );
    let t = &seg.timings;
    let mut tm = toml::Table::new();
    for (k, d) in [
        ("preprocess", t.preprocess),
        ("image_encoder", t.image_encoder),
        ("prompt_generator", t.prompt_generator),
        ("mask_decoder", t.mask_decoder),
        ("postprocess", t.postprocess),
        ("support_context", t.support_context),
        ("views", t.views),
    ] {
        tm.insert(k.into(), ms(d));
    }
    if t.view_passes > 0 {
        tm.insert("view_passes".into(), int(t.view_passes));
    }
    doc.insert("timings_ms".into(), Value::Table(tm));
    let mut frames = Vec::new();
    for f in &seg.frames {
        let fdir = dir.join(format!("frame-{:04}", f.index + 1));
        std::fs::create_dir_all(&fdir).map_err(|e| io(&fdir, e))?;
        let mut ft = toml::Table::new();
        ft.insert("index".into(), int(f.index + 1));
        ft.insert(
            "iou_scores".into(),
            Value::Array(
                f.iou_scores
                    .iter()
                    .map(|&v| Value::Float(v as f64))
                    .collect(),
            ),
        );
        ft.insert(
            "pixels_inside".into(),
            Value::Array(f.masks.iter().map(|m| int(m.area())).collect()),
        );
        // per object label that took the bundle's mirrored second look: how far its two
        // looks agreed (the pipeline's review flag reads the same)
        let agreement: toml::Table = f
            .look_agreement
            .iter()
            .zip(&seg.objects)
            .filter_map(|(a, o)| a.map(|a| (o.label.clone(), Value::Float(f64::from(a)))))
            .collect();
        if !agreement.is_empty() {
            ft.insert("look_agreement".into(), Value::Table(agreement));
        }
        frames.push(Value::Table(ft));
        for (k, m) in f.masks.iter().enumerate() {
            let p = fdir.join(format!(
                "{}-{}.png",
                k + 1,
                safe_label(&seg.objects[k].label)
            ));
            write_png(&p, m)?;
            written.push(p);
            raw.extend(m.data.iter().map(|&v| u8::from(v != 0)));
        }
    }
    doc.insert("frames".into(), Value::Array(frames));
    let text = toml::to_string(&doc).map_err(|e| off(format!("cannot encode result.toml: {e}")))?;
    for (name, bytes) in [("masks.u8", raw), ("result.toml", text.into_bytes())] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
        written.push(p);
    }
    Ok(written)
}
