//! Times `dicom::seg::write_seg` and `save_seg` on the benchmark volume written by
//! `scripts/bench/seg/gen_volume.py` (run it through `scripts/bench/seg/run`).
//!
//! Usage: `cargo run --release --example seg_bench -- OUTDIR [omit] [REPEATS]`
//!
//! Prints `key value` lines: build_s (best of REPEATS write_seg calls: functional groups and bit
//! packing), serialize_s (best Part 10 encoding into memory), write_s (save_seg: encode, write,
//! fsync), frames, pixel_bytes, bytes_per_frame,
//! file_bytes. Writes OUTDIR/proxyseg.dcm.

use std::path::PathBuf;
use std::time::Instant;

use dicom_object::{open_file, DefaultDicomObject, InMemDicomObject};
use proxyseg::dicom::seg::{
    deterministic_uid, save_seg, write_seg, Code, SegInput, SegOptions, SegmentDescription,
    SourceImage,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: seg_bench OUTDIR [omit] [REPEATS]")?,
    );
    let omit = args.next().is_some_and(|a| a == "omit");
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);

    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("src"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let sources: Vec<DefaultDicomObject> = files.iter().map(open_file).collect::<Result<_, _>>()?;
    let n = sources.len();
    let (rows, cols, nseg) = (512usize, 512usize, 3usize);
    let masks = std::fs::read(out.join("masks.bin"))?;
    if masks.len() != n * nseg * rows * cols {
        return Err(format!(
            "masks.bin has {} bytes, expected {}",
            masks.len(),
            n * nseg * rows * cols
        )
        .into());
    }
    let frame = rows * cols;
    let anatomy = Code::sct("123037004", "Anatomical Structure");
    let segments: Vec<SegmentDescription> = [
        ("Liver", Code::sct("10200004", "Liver")),
        ("Spleen", Code::sct("78961009", "Spleen")),
        ("Kidney", Code::sct("64033007", "Kidney")),
    ]
    .into_iter()
    .map(|(label, type_)| SegmentDescription {
        label: label.into(),
        category: anatomy.clone(),
        type_,
        color_rgb: [200, 100, 80],
        algorithm_name: "bench".into(),
    })
    .collect();
    let input = SegInput {
        segments,
        sources: sources
            .iter()
            .enumerate()
            .map(|(i, ds)| SourceImage {
                dataset: &**ds as &InMemDicomObject,
                masks: vec![(0..nseg)
                    .map(|s| {
                        let start = (i * nseg + s) * frame;
                        &masks[start..start + frame]
                    })
                    .collect()],
            })
            .collect(),
    };
    let mut options = SegOptions::new(
        deterministic_uid("bench/sop"),
        deterministic_uid("bench/series"),
    );
    options.omit_empty_frames = omit;

    let mut best = f64::INFINITY;
    let mut seg = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let s = write_seg(&input, &options)?;
        best = best.min(t.elapsed().as_secs_f64());
        seg = Some(s);
    }
    let seg = seg.ok_or("no run")?;
    let mut serialize = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let mut bytes = Vec::with_capacity(32 << 20);
        let t = Instant::now();
        seg.write_all(&mut bytes)?;
        serialize = serialize.min(t.elapsed().as_secs_f64());
    }
    let path = out.join("proxyseg.dcm");
    let t = Instant::now();
    save_seg(&seg, &path)?;
    let write_s = t.elapsed().as_secs_f64();
    let frames: usize = seg
        .get(dicom_dictionary_std::tags::NUMBER_OF_FRAMES)
        .ok_or("no NumberOfFrames")?
        .to_int()?;
    let pixel_bytes = seg
        .get(dicom_dictionary_std::tags::PIXEL_DATA)
        .ok_or("no PixelData")?
        .to_bytes()?
        .len();
    println!("build_s {best}");
    println!("serialize_s {serialize}");
    println!("write_s {write_s}");
    println!("frames {frames}");
    println!("pixel_bytes {pixel_bytes}");
    println!("bytes_per_frame {}", pixel_bytes as f64 / frames as f64);
    println!("file_bytes {}", std::fs::metadata(&path)?.len());
    Ok(())
}
