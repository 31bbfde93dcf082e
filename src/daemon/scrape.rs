//! The Prometheus endpoint's wiring: every metric described, and the gauges read at each
//! scrape from the parts that own them (served from before the engine loads).

use super::StartError;
use crate::config::Config;
use crate::dicom::scp::Scp;
use crate::store::Db;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

/// Serves `/metrics` on `metrics.listen`, with the gauges read at each scrape.
pub(super) async fn serve_metrics(
    cfg: &Config,
    metrics: &crate::metrics::Metrics,
    scp: &Arc<Scp>,
    db: &Db,
    delivery_stats: &Arc<crate::pipeline::deliver::DeliveryStats>,
    pipeline: &Arc<std::sync::OnceLock<Arc<crate::pipeline::worker::Pipeline>>>,
    stop_rx: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let l = super::bind("metrics.listen", &cfg.metrics.listen).await?;
    tracing::info!(addr = %cfg.metrics.listen, "metrics endpoint up");
    let (scp2, db2, ds, pl) = (
        scp.clone(),
        db.clone(),
        delivery_stats.clone(),
        pipeline.clone(),
    );
    let refresh: Arc<dyn Fn(&crate::metrics::Metrics) + Send + Sync> = Arc::new(move |m| {
        m.set(
            "proxyseg_active_associations",
            &[],
            scp2.stats.active.load(Ordering::Relaxed) as f64,
        );
        // None while the engine loads: the pipeline is made once it has.
        let pipeline = pl.get();
        let engine = pipeline.and_then(|p| p.engine.as_ref().ok());
        m.set(
            "proxyseg_engine_ready",
            &[],
            if engine.is_some() { 1.0 } else { 0.0 },
        );
        if let Some(e) = engine {
            let st = e.support_stats();
            for (name, result, v) in [
                ("proxyseg_support_cache_total", "memory_hit", st.memory_hits),
                ("proxyseg_support_cache_total", "disk_hit", st.disk_hits),
                ("proxyseg_support_cache_total", "computed", st.computed),
                (
                    "proxyseg_support_embeddings_total",
                    "computed",
                    st.embeddings_computed,
                ),
                (
                    "proxyseg_support_embeddings_total",
                    "reused",
                    st.embeddings_reused,
                ),
            ] {
                m.set(name, &[("result", result)], v as f64);
            }
        }
        // Read from the budget at each scrape: a gauge set by each job as it gives its share
        // back can be overwritten by a stale value when two jobs finish together.
        m.set(
            "proxyseg_memory_reserved_bytes",
            &[],
            pipeline.map_or(0.0, |p| f64::from(p.memory.in_use_mib()) * 1048576.0),
        );
        m.set(
            "proxyseg_deliveries_total",
            &[("result", "delivered")],
            ds.delivered.load(Ordering::Relaxed) as f64,
        );
        m.set(
            "proxyseg_deliveries_total",
            &[("result", "retried")],
            ds.retried.load(Ordering::Relaxed) as f64,
        );
        m.set(
            "proxyseg_deliveries_total",
            &[("result", "dead")],
            ds.dead.load(Ordering::Relaxed) as f64,
        );
        let counts = db2.read(|c| {
            let mut out = Vec::new();
            let mut st = c.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                out.push(r?);
            }
            let pending: i64 = c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )?;
            out.push(("outbox".into(), pending));
            Ok(out)
        });
        if let Ok(counts) = counts {
            for (state, n) in counts {
                if state == "outbox" {
                    m.set("proxyseg_queue_depth", &[("queue", "outbox")], n as f64);
                } else {
                    m.set("proxyseg_jobs", &[("state", &state)], n as f64);
                }
            }
        }
    });
    tokio::spawn(crate::metrics::serve(
        l,
        metrics.clone(),
        refresh,
        stop_rx.clone(),
    ));
    Ok(())
}

/// HELP and TYPE lines of every metric family the daemon exports.
pub(super) fn describe_metrics(m: &crate::metrics::Metrics) {
    for (name, kind, help) in [
        ("proxyseg_cstore_total", "counter", "C-STORE requests answered, by result."),
        ("proxyseg_stage_seconds", "histogram", "Latency of pipeline stages (ingest, stability wait, inference per image, SEG write, delivery)."),
        ("proxyseg_active_associations", "gauge", "DICOM associations open now."),
        ("proxyseg_deliveries_total", "counter", "Delivery attempts by result (delivered, retried, dead)."),
        ("proxyseg_jobs", "gauge", "Jobs by current state."),
        ("proxyseg_jobs_total", "counter", "Job state transitions by state and failure reason."),
        ("proxyseg_queue_depth", "gauge", "Items waiting, by queue."),
        ("proxyseg_memory_reserved_bytes", "gauge", "Pixel memory the running jobs hold of pipeline.memory_budget_mb."),
        ("proxyseg_engine_ready", "gauge", "1 once the engine has loaded; 0 while it loads (DICOM is already served) or when it could not load."),
        ("proxyseg_memory_waits_total", "counter", "Jobs that waited for pixel memory other jobs held."),
        ("proxyseg_review_flags_total", "counter", "Objects of jobs whose mirrored looks agreed less than [pipeline] review_agreement."),
        ("proxyseg_buffer_waits_total", "counter", "Associations that waited for receive-buffer memory (dicom.max_buffered_mb) other associations held."),
        ("proxyseg_support_cache_total", "counter", "Support-context cache lookups by result (hit, disk, computed)."),
        ("proxyseg_support_embeddings_total", "counter", "Support images encoded for a support context (computed) or taken from an earlier one (reused)."),
        (crate::store::retention::PURGED_STUDIES, "counter", "Studies purged (files and index rows), by who asked (retention, admin) and how they ended (finished, failed)."),
        (crate::store::retention::PURGED_BYTES, "counter", "Bytes removed from disk by purges and leftover sweeps."),
    ] {
        m.describe(name, kind, help);
    }
}
