//! Prometheus metrics: a small registry of counters, gauges and histograms with labels, and
//! the text-format endpoint (`[metrics] listen`, default 127.0.0.1:9464, path `/metrics`).
//!
//! No metric is ever allowed to block or fail the pipeline: recording is a short mutex hold.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Latency buckets in seconds (ingest of one instance up to inference of a volume).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    help: BTreeMap<String, (&'static str, String)>,
    values: BTreeMap<(String, Labels), f64>,
    hists: BTreeMap<(String, Labels), Hist>,
}

/// The registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    /// Creates an empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Declares a metric family's type ("counter", "gauge", "histogram") and help text.
    pub fn describe(&self, name: &str, kind: &'static str, help: &str) {
        self.with(|i| {
            i.help.insert(name.to_string(), (kind, help.to_string()));
        })
    }

    /// Adds `by` to a counter.
    pub fn add(&self, name: &str, l: &[(&str, &str)], by: f64) {
        self.with(|i| *i.values.entry((name.to_string(), labels(l))).or_insert(0.0) += by)
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &str, l: &[(&str, &str)]) {
        self.add(name, l, 1.0)
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, l: &[(&str, &str)], v: f64) {
        self.with(|i| {
            i.values.insert((name.to_string(), labels(l)), v);
        })
    }

    /// Records one observation (seconds) in a histogram with [`LATENCY_BUCKETS`].
    pub fn observe(&self, name: &str, l: &[(&str, &str)], seconds: f64) {
        self.with(|i| {
            let h = i
                .hists
                .entry((name.to_string(), labels(l)))
                .or_insert_with(|| Hist {
                    counts: vec![0; LATENCY_BUCKETS.len()],
                    sum: 0.0,
                    count: 0,
                });
            for (b, c) in LATENCY_BUCKETS.iter().zip(h.counts.iter_mut()) {
                if seconds <= *b {
                    *c += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        })
    }

    /// Current value of a counter or gauge (0 when never set).
    pub fn value(&self, name: &str, l: &[(&str, &str)]) -> f64 {
        self.with(|i| {
            i.values
                .get(&(name.to_string(), labels(l)))
                .copied()
                .unwrap_or(0.0)
        })
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.with(|i| {
            let mut out = String::new();
            let fmt_labels = |l: &Labels, extra: Option<(&str, String)>| {
                let mut parts: Vec<String> = l
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                if let Some((k, v)) = extra {
                    parts.push(format!("{k}=\"{v}\""));
                }
                if parts.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", parts.join(","))
                }
            };
            let mut names: Vec<&String> = i
                .values
                .keys()
                .map(|(n, _)| n)
                .chain(i.hists.keys().map(|(n, _)| n))
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                if let Some((kind, help)) = i.help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                }
                for ((n, l), v) in i.values.iter().filter(|((n, _), _)| n == name) {
                    let _ = writeln!(out, "{n}{} {v}", fmt_labels(l, None));
                }
                for ((n, l), h) in i.hists.iter().filter(|((n, _), _)| n == name) {
                    for (b, c) in LATENCY_BUCKETS.iter().zip(&h.counts) {
                        let _ = writeln!(
                            out,
                            "{n}_bucket{} {c}",
                            fmt_labels(l, Some(("le", b.to_string())))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        fmt_labels(l, Some(("le", "+Inf".into()))),
                        h.count
                    );
                    let _ = writeln!(out, "{n}_sum{} {}", fmt_labels(l, None), h.sum);
                    let _ = writeln!(out, "{n}_count{} {}", fmt_labels(l, None), h.count);
                }
            }
            out
        })
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` until `shutdown`. `refresh` runs before each scrape
/// (it copies live gauges such as active associations into the registry).
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    refresh: Arc<dyn Fn(&Metrics) + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => match a { Ok(s) => s, Err(_) => continue },
        };
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let line = req.lines().next().unwrap_or("");
            let (status, ctype, body) =
                if line.starts_with("GET /metrics ") || line == "GET /metrics" {
                    refresh(&metrics);
                    ("200 OK", "text/plain; version=0.0.4", metrics.render())
                } else if line.starts_with("GET / ") {
                    (
                        "200 OK",
                        "text/plain",
                        "proxyseg metrics: GET /metrics\n".to_string(),
                    )
                } else {
                    ("404 Not Found", "text/plain", "not found\n".to_string())
                };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new();
        m.describe(
            "proxyseg_jobs_total",
            "counter",
            "Job transitions by state.",
        );
        m.inc("proxyseg_jobs_total", &[("state", "delivered")]);
        m.inc("proxyseg_jobs_total", &[("state", "delivered")]);
        m.set("proxyseg_active_associations", &[], 3.0);
        m.observe("proxyseg_stage_seconds", &[("stage", "inference")], 0.3);
        let t = m.render();
        assert!(t.contains("# TYPE proxyseg_jobs_total counter"), "{t}");
        assert!(
            t.contains("proxyseg_jobs_total{state=\"delivered\"} 2"),
            "{t}"
        );
        assert!(t.contains("proxyseg_active_associations 3"), "{t}");
        assert!(
            t.contains("proxyseg_stage_seconds_bucket{stage=\"inference\",le=\"0.25\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("proxyseg_stage_seconds_bucket{stage=\"inference\",le=\"0.5\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("proxyseg_stage_seconds_count{stage=\"inference\"} 1"),
            "{t}"
        );
        assert_eq!(
            m.value("proxyseg_jobs_total", &[("state", "delivered")]),
            2.0
        );
    }
}
