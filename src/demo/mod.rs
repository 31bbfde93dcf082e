//! `proxyseg demo`: the first command a new user runs.
//!
//! It starts the real daemon on a scratch data dir with the bundled model and its demo support
//! sets, starts an in-process receiving SCP that plays the PACS, sends every bundled demo study
//! over a real DICOM association, waits for the SEG objects to come back, scores them against
//! the phantom ground truth (Dice), draws overlay PNGs and prints a table.

pub mod overlay;

use crate::config::{Config, PeerConfig};
use crate::dicom::scp::Scp;
use crate::dicom::scu::{Destination, Scu};
use crate::dicom::seg::{read_seg, SegMasks};
use crate::store::outbox::Attempt;
use crate::store::{Db, Spool};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder with model bundles (`<bundle>/demo-studies/<family>/`).
    pub models_dir: PathBuf,
    /// Where the scratch data, received SEGs and overlay PNGs go.
    pub out_dir: PathBuf,
    /// ONNX Runtime library, if not found the usual way.
    pub onnxruntime: Option<PathBuf>,
    /// Seconds to wait for all results.
    pub timeout_s: u64,
}

/// One row of the demo table.
#[derive(Debug, Clone)]
pub struct DemoRow {
    /// Demo study name (family).
    pub study: String,
    /// Objects segmented (labels).
    pub objects: Vec<String>,
    /// Dice per object against the phantom ground truth.
    pub dice: Vec<(String, f64)>,
    /// Seconds from the last instance sent to the SEG received (includes the stable age).
    pub latency_s: f64,
    /// The received SEG file.
    pub seg: PathBuf,
    /// The overlay picture.
    pub overlay: Option<PathBuf>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Set-up problem.
    #[error("{0}")]
    Setup(String),
    /// The daemon would not start.
    #[error(transparent)]
    Start(#[from] crate::daemon::StartError),
    /// ONNX Runtime or the model bundles did not load.
    #[error("the engine did not start: {0}")]
    Engine(std::sync::Arc<crate::engine::EngineError>),
    /// Results did not all arrive.
    #[error("{0}")]
    Timeout(String),
}

fn setup(e: impl std::fmt::Display) -> DemoError {
    DemoError::Setup(e.to_string())
}

/// A demo study on disk: its files and its ground truth.
struct DemoStudy {
    name: String,
    files: Vec<PathBuf>,
    truth: Vec<PathBuf>,
}

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn demo_studies(models_dir: &Path) -> Vec<DemoStudy> {
    let pattern = format!(
        "{}/*/demo-studies/*",
        glob::Pattern::escape(&models_dir.to_string_lossy())
    );
    let mut out: Vec<DemoStudy> = glob::glob(&pattern)
        .map(|g| {
            g.flatten()
                .filter(|p| p.is_dir())
                .map(|p| DemoStudy {
                    name: p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    files: dcm_files(&p),
                    truth: dcm_files(&p.join("truth")),
                })
                .filter(|s| !s.files.is_empty())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn study_uid_of(path: &Path) -> Result<String, DemoError> {
    let o = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| setup(format!("{}: {e}", path.display())))?;
    let uid = o
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .map_err(setup)?
        .to_str()
        .map_err(setup)?;
    Ok(crate::dicom::sop::trim_uid(&uid).to_string())
}

/// Runs the demo and returns its table rows.
pub async fn run(opts: DemoOptions) -> Result<Vec<DemoRow>, DemoError> {
    let studies = demo_studies(&opts.models_dir);
    if studies.is_empty() {
        return Err(setup(format!(
            "no demo studies under {}/*/demo-studies/",
            opts.models_dir.display()
        )));
    }
    let out = &opts.out_dir;
    prepare_out_dir(out)?;
    let pacs = Pacs::start(out).await?;
    let running = crate::daemon::start(daemon_config(&opts, pacs.port)?).await?;
    if let Err(e) = running
        .pipeline
        .engine
        .as_ref()
        .map(|_| ())
        .map_err(std::sync::Arc::clone)
    {
        running.stop().await;
        let _ = pacs.stop.send(true);
        return Err(DemoError::Engine(e));
    }

    // Send every demo study over a real association, as the PACS would.
    let scu = Scu::new(&pacs.cfg).map_err(setup)?;
    let dest = Destination {
        ae_title: "PROXYSEG".into(),
        host: "127.0.0.1".into(),
        port: running
            .dicom_addr
            .ok_or_else(|| setup("the demo daemon has no plain DICOM listener"))?
            .port(),
        tls: false,
    };
    let mut sent = Vec::new();
    for s in &studies {
        if let Err(e) = send_study(&scu, &dest, s).await {
            running.stop().await;
            let _ = pacs.stop.send(true);
            return Err(e);
        }
        sent.push((study_uid_of(&s.files[0])?, Instant::now()));
        println!("sent demo study {:<8} ({} file(s))", s.name, s.files.len());
    }

    let arrived = wait_for_segs(&pacs.db, &sent, studies.len(), opts.timeout_s).await;
    let failed_jobs = failed_jobs(&running.pipeline.db);
    running.stop().await;
    let _ = pacs.stop.send(true);
    let _ = pacs.task.await;
    if arrived.iter().any(Option::is_none) {
        let missing: Vec<&str> = studies
            .iter()
            .zip(&arrived)
            .filter(|(_, a)| a.is_none())
            .map(|(s, _)| s.name.as_str())
            .collect();
        return Err(DemoError::Timeout(format!(
            "no SEG came back for {missing:?} within {} s; {failed_jobs:?}",
            opts.timeout_s
        )));
    }

    let mut rows = Vec::new();
    for ((s, (_, t_sent)), a) in studies.iter().zip(&sent).zip(arrived) {
        let (seg_path, t_arrived) = a.ok_or_else(|| setup("missing result"))?;
        let latency_s = t_arrived.duration_since(*t_sent).as_secs_f64();
        rows.push(score_study(s, &seg_path, latency_s, out)?);
    }
    Ok(rows)
}

/// Empties the scratch data of an earlier run (the PACS's and the daemon's) and creates the
/// output folders.
fn prepare_out_dir(out: &Path) -> Result<(), DemoError> {
    let _ = std::fs::remove_dir_all(out.join("data"));
    let _ = std::fs::remove_dir_all(out.join("pacs"));
    for d in ["data", "pacs", "overlays"] {
        std::fs::create_dir_all(out.join(d))
            .map_err(|e| setup(format!("{}: {e}", out.join(d).display())))?;
    }
    Ok(())
}

/// The PACS: our own storage SCP, in-process, on its own scratch dir (`out/pacs`).
struct Pacs {
    /// Its configuration (AE title `DEMO-PACS`); the demo's SCU sends with it too.
    cfg: Config,
    /// Its index, where the returned SEGs show up.
    db: Db,
    /// The port it listens on (loopback).
    port: u16,
    /// Stops it.
    stop: tokio::sync::watch::Sender<bool>,
    /// Its listener task.
    task: tokio::task::JoinHandle<()>,
}

impl Pacs {
    /// Starts the PACS on a free loopback port.
    async fn start(out: &Path) -> Result<Pacs, DemoError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(setup)?;
        let port = listener.local_addr().map_err(setup)?.port();
        let mut cfg = Config::default();
        cfg.dicom.ae_title = "DEMO-PACS".into();
        cfg.dicom.require_known_peers = false;
        cfg.dicom.min_free_disk_mb = 1;
        cfg.storage.data_dir = out.join("pacs");
        let db = Db::open(&out.join("pacs").join("proxyseg.sqlite")).map_err(setup)?;
        let (spool, _) = Spool::open(&out.join("pacs")).map_err(setup)?;
        let scp = Scp::new(
            Arc::new(cfg.clone()),
            db.clone(),
            spool,
            crate::metrics::Metrics::new(),
        )
        .map_err(setup)?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(scp.serve(listener, false, stop_rx));
        Ok(Pacs {
            cfg,
            db,
            port,
            stop,
            task,
        })
    }
}

/// The daemon's configuration: its embedded defaults plus scratch paths, the PACS as its only
/// peer, short stable age and polling, and an admin listener with a fresh token.
fn daemon_config(opts: &DemoOptions, pacs_port: u16) -> Result<Config, DemoError> {
    let out = &opts.out_dir;
    let mut cfg = Config::default();
    cfg.dicom.listen = "127.0.0.1:0".into();
    cfg.dicom.min_free_disk_mb = 1;
    cfg.dicom.peers = vec![PeerConfig {
        ae_title: "DEMO-PACS".into(),
        host: "127.0.0.1".into(),
        port: pacs_port,
        tls: false,
        tls_identity: None,
    }];
    cfg.storage.data_dir = out.join("data");
    cfg.pipeline.stable_age_s = 1.0;
    cfg.pipeline.scan_interval_ms = 100;
    cfg.engine.models_dir = opts.models_dir.clone();
    cfg.engine.onnxruntime = opts.onnxruntime.clone();
    cfg.delivery.backoff_initial_s = 0.5;
    cfg.delivery.poll_interval_ms = 100;
    cfg.metrics.listen = String::new();
    // The admin store seeds the bundled demo support sets and their routing rules on this
    // first start, exactly as `scripts/run` does for a fresh installation.
    let tokens = out.join("data").join("admin-tokens");
    write_admin_token(&tokens)?;
    cfg.admin = Some(crate::config::AdminConfig {
        listen: "127.0.0.1:0".into(),
        tokens_file: tokens,
        ..Default::default()
    });
    Ok(cfg)
}

/// Writes a tokens file (mode 0600) with one random admin token.
fn write_admin_token(tokens: &Path) -> Result<(), DemoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token: u128 = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tokens)
        .map_err(setup)?;
    writeln!(f, "demo admin {token:032x}").map_err(setup)
}

/// Sends every file of one demo study; an error names the file that was not delivered.
async fn send_study(scu: &Scu, dest: &Destination, s: &DemoStudy) -> Result<(), DemoError> {
    for f in &s.files {
        match scu.send_file(f, dest).await {
            Attempt::Delivered { .. } => {}
            other => return Err(setup(format!("sending {}: {other:?}", f.display()))),
        }
    }
    Ok(())
}

/// Waits (until `timeout_s` is over) for one SEG per sent study at the PACS: its path and
/// when it was seen, by study, `None` for those that did not come.
async fn wait_for_segs(
    pacs_db: &Db,
    sent: &[(String, Instant)],
    studies: usize,
    timeout_s: u64,
) -> Vec<Option<(PathBuf, Instant)>> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut arrived: Vec<Option<(PathBuf, Instant)>> = vec![None; studies];
    while arrived.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, (study_uid, _)) in sent.iter().enumerate() {
            if arrived[i].is_some() {
                continue;
            }
            let uid = study_uid.clone();
            let found = pacs_db.read(move |c| {
                c.query_row(
                    "SELECT path FROM instances WHERE study_uid = ?1 AND modality = 'SEG' LIMIT 1",
                    [&uid],
                    |r| r.get::<_, String>(0),
                )
            });
            if let Ok(p) = found {
                arrived[i] = Some((PathBuf::from(p), Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    arrived
}

/// The daemon's failed and unmatched jobs, with their errors (for the timeout message).
fn failed_jobs(db: &Db) -> Vec<String> {
    db.read(|c| {
        let mut st = c.prepare("SELECT id, state, COALESCE(error, '') FROM jobs WHERE state IN ('failed', 'unmatched')")?;
        let rows = st.query_map([], |r| Ok(format!("job {} {}: {}", r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        rows.collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_default()
}

/// One study's row: the SEG copied into `out`, Dice against the ground truth, the overlay
/// picture.
fn score_study(
    s: &DemoStudy,
    seg_path: &Path,
    latency_s: f64,
    out: &Path,
) -> Result<DemoRow, DemoError> {
    let copy = out.join(format!("{}.seg.dcm", s.name));
    std::fs::copy(seg_path, &copy).map_err(setup)?;
    let ours_obj = dicom_object::open_file(seg_path).map_err(setup)?;
    let ours = read_seg(&ours_obj).map_err(setup)?;
    let mut truth_masks = Vec::new();
    for t in &s.truth {
        let obj = dicom_object::open_file(t).map_err(setup)?;
        truth_masks.push(read_seg(&obj).map_err(setup)?);
    }
    let dice = dice_by_label(&ours, &truth_masks);
    let overlay = draw_overlay(
        s,
        &ours,
        &out.join("overlays").join(format!("{}.png", s.name)),
    )
    .ok();
    Ok(DemoRow {
        study: s.name.clone(),
        objects: ours
            .segments
            .iter()
            .map(|g| g.description.label.clone())
            .collect(),
        dice,
        latency_s,
        seg: copy,
        overlay,
    })
}

/// Dice per segment label over every source frame the truth covers.
pub fn dice_by_label(ours: &SegMasks, truth: &[SegMasks]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for t in truth {
        for tseg in &t.segments {
            let Some(oseg) = ours.segments.iter().find(|g| {
                g.description
                    .label
                    .eq_ignore_ascii_case(&tseg.description.label)
            }) else {
                continue;
            };
            let (mut inter, mut total) = (0u64, 0u64);
            for (key, per_seg) in &t.masks {
                let Some(tm) = per_seg.get(&tseg.number) else {
                    continue;
                };
                let om = match &key.sop_instance_uid {
                    Some(uid) => ours.mask_or_empty(uid, key.frame_number, oseg.number),
                    None => vec![0; tm.len()],
                };
                for (a, b) in om.iter().zip(tm) {
                    let (a, b) = (*a != 0, *b != 0);
                    inter += (a && b) as u64;
                    total += a as u64 + b as u64;
                }
            }
            let d = if total == 0 {
                1.0
            } else {
                2.0 * inter as f64 / total as f64
            };
            out.push((tseg.description.label.clone(), d));
        }
    }
    out
}

/// Draws the frame with the most segmented pixels, all segments in colour, plus a legend.
fn draw_overlay(s: &DemoStudy, ours: &SegMasks, png: &Path) -> Result<PathBuf, String> {
    // Pick the source frame with the largest total mask area.
    let best = ours
        .masks
        .iter()
        .max_by_key(|(_, per)| {
            per.values()
                .map(|m| m.iter().filter(|v| **v != 0).count())
                .sum::<usize>()
        })
        .map(|(k, _)| k.clone())
        .ok_or("empty SEG")?;
    let uid = best
        .sop_instance_uid
        .clone()
        .ok_or("SEG frames reference no source")?;
    let src = s
        .files
        .iter()
        .find(|f| study_sop(f).as_deref() == Some(uid.as_str()))
        .ok_or("source instance not found")?;
    let frames = crate::dicom::pixels::frames_from_file(src).map_err(|e| e.to_string())?;
    let frame = frames
        .get(best.frame_number as usize - 1)
        .ok_or("source frame missing")?;
    let legend = 14 * ours.segments.len() + 8;
    let mut c = overlay::Canvas::from_frame(frame, legend);
    for g in &ours.segments {
        if let Some(m) = ours.masks.get(&best).and_then(|p| p.get(&g.number)) {
            c.blend(m, frame.cols, frame.rows, g.description.color_rgb);
        }
    }
    for (i, g) in ours.segments.iter().enumerate() {
        let y = frame.rows + 4 + i * 14;
        c.rect(4, y, 10, 10, g.description.color_rgb);
        c.text(20, y + 1, &g.description.label, [255, 255, 255], 1);
    }
    c.save_png(png)?;
    Ok(png.to_path_buf())
}

fn study_sop(path: &Path) -> Option<String> {
    let o = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .ok()?;
    let v = o
        .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
        .ok()?
        .to_str()
        .ok()?;
    Some(crate::dicom::sop::trim_uid(&v).to_string())
}

/// Prints the demo table.
pub fn print_table(rows: &[DemoRow]) {
    println!(
        "\n{:<8} {:<42} {:<40} {:>9}",
        "study", "objects", "Dice", "latency"
    );
    for r in rows {
        let dice: Vec<String> = r.dice.iter().map(|(l, d)| format!("{l} {d:.3}")).collect();
        println!(
            "{:<8} {:<42} {:<40} {:>7.2} s",
            r.study,
            r.objects.join(", "),
            dice.join(", "),
            r.latency_s
        );
    }
    println!("\n(latency: last instance sent -> SEG received, including the 1 s stable age)");
    for r in rows {
        if let Some(o) = &r.overlay {
            println!("overlay {}: {}", r.study, o.display());
        }
        println!("SEG     {}: {}", r.study, r.seg.display());
    }
}
