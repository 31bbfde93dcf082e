//! [`Config::validate`]: every semantic problem of a parsed config, each naming its key; one
//! named check step per table.

use super::{check_ae_title, check_bundle_name, Config, Problem, MAX_RETENTION_HOURS};
use std::net::SocketAddr;

impl Config {
    /// Every semantic problem, each naming its key. Empty means valid. One step per table.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(Problem {
                key: key.to_string(),
                message,
            })
        };
        self.check_dicom(&mut bad);
        self.check_dicom_tls(&mut bad);
        self.check_storage(&mut bad);
        self.check_pipeline(&mut bad);
        self.check_engine(&mut bad);
        self.check_delivery(&mut bad);
        self.check_metrics(&mut bad);
        self.check_retention(&mut bad);
        self.check_log(&mut bad);
        self.check_admin(&mut bad);
        out
    }

    /// Checks the `[dicom]` table, its peers and its TLS listener.
    fn check_dicom(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        if let Err(m) = check_ae_title(&d.ae_title) {
            bad("dicom.ae_title", m.to_string());
        }
        if d.listen.is_empty() {
            // Review L3: the plain listener can be turned off when DICOM TLS is the only way in.
            if d.tls.is_none() {
                bad(
                    "dicom.listen",
                    "is empty (no plain listener) but there is no [dicom.tls] listener: nobody could send".into(),
                );
            }
        } else if d.listen.parse::<SocketAddr>().is_err() {
            bad(
                "dicom.listen",
                format!("{:?} is not an IP:port address", d.listen),
            );
        }
        if d.max_associations == 0 {
            bad("dicom.max_associations", "must be at least 1".into());
        }
        if !(1..=4096).contains(&d.max_pending_connections) {
            bad(
                "dicom.max_pending_connections",
                format!("{} is outside 1..=4096", d.max_pending_connections),
            );
        }
        if !(1..=120).contains(&d.association_request_timeout_s) {
            bad(
                "dicom.association_request_timeout_s",
                format!("{} is outside 1..=120", d.association_request_timeout_s),
            );
        }
        if !(4096..=16 * 1024 * 1024).contains(&d.max_pdu) {
            bad(
                "dicom.max_pdu",
                format!("{} is outside 4096..=16777216", d.max_pdu),
            );
        }
        if d.read_timeout_s == 0 {
            bad("dicom.read_timeout_s", "must be at least 1".into());
        }
        if !(1..=7 * 86_400).contains(&d.max_association_s) {
            bad(
                "dicom.max_association_s",
                "must be within 1..=604800".into(),
            );
        }
        if d.write_timeout_s == 0 {
            bad("dicom.write_timeout_s", "must be at least 1".into());
        }
        let per_association = crate::memory::MemoryBudget::mib_of(d.max_pdu as u64 + 65536);
        if d.max_buffered_mb < per_association || d.max_buffered_mb > 1 << 20 {
            bad(
                "dicom.max_buffered_mb",
                format!(
                    "{} must hold at least one association's buffers ({per_association} MiB for dicom.max_pdu {} + 64 KiB) and at most 1048576",
                    d.max_buffered_mb, d.max_pdu
                ),
            );
        }
        if d.max_object_mb == 0 {
            bad("dicom.max_object_mb", "must be at least 1".into());
        }
        if d.require_known_peers && d.peers.is_empty() {
            bad(
                "dicom.require_known_peers",
                "is true but no [[dicom.peers]] are listed: nobody could send".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in d.peers.iter().enumerate() {
            if let Err(m) = check_ae_title(&p.ae_title) {
                bad(&format!("dicom.peers[{i}].ae_title"), m.to_string());
            }
            if p.host.trim().is_empty() {
                bad(
                    &format!("dicom.peers[{i}].host"),
                    "must not be empty".into(),
                );
            }
            if p.port == 0 {
                bad(&format!("dicom.peers[{i}].port"), "must not be 0".into());
            }
            match p.tls_name() {
                Some(Err(m)) => bad(&format!("dicom.peers[{i}].tls_identity"), m.to_string()),
                Some(Ok(_)) if d.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) => bad(
                    &format!("dicom.peers[{i}].tls_identity"),
                    "needs [dicom.tls] with client_ca: without client certificates nobody could prove it".into(),
                ),
                _ => {}
            }
            if !seen.insert(p.ae_title.trim().to_string()) {
                bad(
                    &format!("dicom.peers[{i}].ae_title"),
                    format!("{:?} is listed twice", p.ae_title),
                );
            }
        }
    }

    /// Checks `[dicom.tls]`.
    fn check_dicom_tls(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        if let Some(t) = &d.tls {
            if t.listen.parse::<SocketAddr>().is_err() {
                bad(
                    "dicom.tls.listen",
                    format!("{:?} is not an IP:port address", t.listen),
                );
            } else if t.listen == d.listen {
                bad("dicom.tls.listen", "must differ from dicom.listen".into());
            }
            for (key, p) in [
                ("dicom.tls.certificate", Some(&t.certificate)),
                ("dicom.tls.private_key", Some(&t.private_key)),
                ("dicom.tls.client_ca", t.client_ca.as_ref()),
            ] {
                if let Some(p) = p {
                    if !p.is_file() {
                        bad(key, format!("{} is not a readable file", p.display()));
                    }
                }
            }
        }
    }

    /// Checks `[storage]`.
    fn check_storage(&self, bad: &mut dyn FnMut(&str, String)) {
        if !matches!(self.storage.durability.as_str(), "syncfs" | "fsync") {
            bad(
                "storage.durability",
                format!(
                    "{:?} is not \"syncfs\" or \"fsync\"",
                    self.storage.durability
                ),
            );
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            bad("storage.data_dir", "must not be empty".into());
        }
    }

    /// Checks `[pipeline]`: study assembly, attempts and memory budgets.
    fn check_pipeline(&self, bad: &mut dyn FnMut(&str, String)) {
        if !(self.pipeline.stable_age_s.is_finite() && self.pipeline.stable_age_s >= 0.0) {
            bad("pipeline.stable_age_s", "must be a number >= 0".into());
        }
        if !(self.pipeline.max_receiving_s.is_finite()
            && self.pipeline.max_receiving_s >= self.pipeline.stable_age_s
            && self.pipeline.max_receiving_s > 0.0)
        {
            bad(
                "pipeline.max_receiving_s",
                "must be a number > 0 and >= pipeline.stable_age_s".into(),
            );
        }
        if self.pipeline.queue == 0 {
            bad("pipeline.queue", "must be at least 1".into());
        }
        if self.pipeline.memory_frames == Some(0) {
            bad("pipeline.memory_frames", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.pipeline.review_agreement) {
            bad(
                "pipeline.review_agreement",
                format!(
                    "{} is not a Dice between 0 and 1 (0 turns review flags off)",
                    self.pipeline.review_agreement
                ),
            );
        }
        if self.pipeline.chunk_frames == 0 {
            bad("pipeline.chunk_frames", "must be at least 1".into());
        }
        if self.pipeline.scan_interval_ms == 0 {
            bad("pipeline.scan_interval_ms", "must be at least 1".into());
        }
        if !(1..=100).contains(&self.pipeline.max_attempts) {
            bad(
                "pipeline.max_attempts",
                format!("{} is outside 1..=100", self.pipeline.max_attempts),
            );
        }
        if !(1..=1000).contains(&self.pipeline.max_jobs_per_study) {
            bad(
                "pipeline.max_jobs_per_study",
                format!("{} is outside 1..=1000", self.pipeline.max_jobs_per_study),
            );
        }
        if !(self.pipeline.loop_window_h.is_finite() && self.pipeline.loop_window_h > 0.0) {
            bad(
                "pipeline.loop_window_h",
                "must be a positive number of hours".into(),
            );
        }
        if !(1..=1 << 20).contains(&self.pipeline.max_decoded_mb) {
            bad(
                "pipeline.max_decoded_mb",
                format!("{} is outside 1..=1048576", self.pipeline.max_decoded_mb),
            );
        }
        if let Some(total) = self.pipeline.memory_budget_mb {
            if total < self.pipeline.max_decoded_mb || total > 1 << 20 {
                bad(
                    "pipeline.memory_budget_mb",
                    format!(
                        "{total} must be between pipeline.max_decoded_mb ({}) and 1048576: a job allowed max_decoded_mb could otherwise never get its memory",
                        self.pipeline.max_decoded_mb
                    ),
                );
            }
        }
    }

    /// Checks `[engine]`.
    fn check_engine(&self, bad: &mut dyn FnMut(&str, String)) {
        for (i, p) in self.engine.providers.iter().enumerate() {
            if !matches!(p.as_str(), "tensorrt" | "cuda" | "cpu") {
                bad(
                    &format!("engine.providers[{i}]"),
                    format!("{p:?} is not one of \"tensorrt\", \"cuda\", \"cpu\""),
                );
            }
        }
        if self.engine.workers == 0 {
            bad("engine.workers", "must be at least 1".into());
        }
        if self.engine.batch == 0 {
            bad("engine.batch", "must be at least 1".into());
        }
        if let Err(m) = check_bundle_name(&self.engine.default_bundle) {
            bad("engine.default_bundle", m.to_string());
        }
    }

    /// Checks `[delivery]`: retries and TLS files.
    fn check_delivery(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        let dl = &self.delivery;
        if dl.max_attempts == 0 {
            bad("delivery.max_attempts", "must be at least 1".into());
        }
        if dl.max_permanent_attempts == 0 || dl.max_permanent_attempts > dl.max_attempts {
            bad(
                "delivery.max_permanent_attempts",
                "must be between 1 and delivery.max_attempts".into(),
            );
        }
        if !(dl.backoff_initial_s.is_finite() && dl.backoff_initial_s > 0.0) {
            bad("delivery.backoff_initial_s", "must be a number > 0".into());
        }
        if !(dl.backoff_max_s.is_finite() && dl.backoff_max_s >= dl.backoff_initial_s) {
            bad(
                "delivery.backoff_max_s",
                "must be >= delivery.backoff_initial_s".into(),
            );
        }
        if dl.timeout_s == 0 {
            bad("delivery.timeout_s", "must be at least 1".into());
        }
        if dl.concurrency == 0 {
            bad("delivery.concurrency", "must be at least 1".into());
        }
        if dl.poll_interval_ms == 0 {
            bad("delivery.poll_interval_ms", "must be at least 1".into());
        }
        if d.peers.iter().any(|p| p.tls) && dl.tls_ca.is_none() {
            bad(
                "delivery.tls_ca",
                "a peer has tls = true: name the CA that signs its certificate".into(),
            );
        }
        if dl.tls_certificate.is_some() != dl.tls_private_key.is_some() {
            bad(
                "delivery.tls_certificate",
                "tls_certificate and tls_private_key go together".into(),
            );
        }
        for (key, p) in [
            ("delivery.tls_ca", dl.tls_ca.as_ref()),
            ("delivery.tls_certificate", dl.tls_certificate.as_ref()),
            ("delivery.tls_private_key", dl.tls_private_key.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    bad(key, format!("{} is not a readable file", p.display()));
                }
            }
        }
    }

    /// Checks `[metrics]`.
    fn check_metrics(&self, bad: &mut dyn FnMut(&str, String)) {
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            bad(
                "metrics.listen",
                format!(
                    "{:?} is not an IP:port address (or \"\" to disable)",
                    self.metrics.listen
                ),
            );
        }
    }

    /// Checks `[retention]`.
    fn check_retention(&self, bad: &mut dyn FnMut(&str, String)) {
        let rt = &self.retention;
        for (key, hours) in [
            ("retention.keep_delivered_hours", rt.keep_delivered_hours),
            ("retention.keep_failed_hours", rt.keep_failed_hours),
        ] {
            if !(hours.is_finite() && (0.0..=MAX_RETENTION_HOURS).contains(&hours)) {
                bad(
                    key,
                    format!("{hours} is not a number of hours within 0..={MAX_RETENTION_HOURS}"),
                );
            }
        }
        if rt.keep_failed_hours < rt.keep_delivered_hours {
            bad(
                "retention.keep_failed_hours",
                format!(
                    "{} is shorter than retention.keep_delivered_hours ({}): failed studies are \
                     kept at least as long as delivered ones, for an admin to look into",
                    rt.keep_failed_hours, rt.keep_delivered_hours
                ),
            );
        }
        if !(1..=86_400).contains(&rt.sweep_interval_s) {
            bad(
                "retention.sweep_interval_s",
                format!("{} is outside 1..=86400", rt.sweep_interval_s),
            );
        }
    }

    /// Checks `[log]`.
    fn check_log(&self, bad: &mut dyn FnMut(&str, String)) {
        if !matches!(self.log.format.as_str(), "human" | "json") {
            bad(
                "log.format",
                format!("{:?} is not \"human\" or \"json\"", self.log.format),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            bad("log.filter", e.to_string());
        }
    }

    /// Checks `[admin]` and its TLS, tokens and synonyms.
    fn check_admin(&self, bad: &mut dyn FnMut(&str, String)) {
        let d = &self.dicom;
        if let Some(a) = &self.admin {
            match a.listen.parse::<SocketAddr>() {
                Err(_) => bad(
                    "admin.listen",
                    format!("{:?} is not an IP:port address", a.listen),
                ),
                Ok(_) if a.listen == d.listen => {
                    bad("admin.listen", "must differ from dicom.listen".into())
                }
                Ok(addr)
                    if !addr.ip().is_loopback() && a.tls.is_none() && !a.allow_insecure_remote =>
                {
                    bad(
                        "admin.listen",
                        format!(
                            "{addr} is not a loopback address and [admin.tls] is not set: bearer \
                             tokens would cross the network in cleartext; configure [admin.tls], \
                             or set admin.allow_insecure_remote = true to accept that"
                        ),
                    )
                }
                Ok(_) => {}
            }
            if !a.tokens_file.is_file() {
                bad(
                    "admin.tokens_file",
                    format!("{} is not a readable file", a.tokens_file.display()),
                );
            } else if let Ok(m) = std::fs::metadata(&a.tokens_file) {
                use std::os::unix::fs::PermissionsExt;
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bad(
                        "admin.tokens_file",
                        format!(
                            "{} has mode {mode:o}: it must not be readable by group or others (chmod 600)",
                            a.tokens_file.display()
                        ),
                    );
                }
            }
            if let Some(t) = &a.tls {
                for (key, p) in [
                    ("admin.tls.certificate", Some(&t.certificate)),
                    ("admin.tls.private_key", Some(&t.private_key)),
                    ("admin.tls.client_ca", t.client_ca.as_ref()),
                ] {
                    if let Some(p) = p {
                        if !p.is_file() {
                            bad(key, format!("{} is not a readable file", p.display()));
                        }
                    }
                }
            }
            if !(1..=86_400).contains(&a.rpc_timeout_s) {
                bad("admin.rpc_timeout_s", "must be within 1..=86400".into());
            }
            for (key, v) in [
                ("admin.max_concurrent_rpcs", a.max_concurrent_rpcs),
                ("admin.max_concurrent_inference", a.max_concurrent_inference),
                ("admin.max_watch_streams", a.max_watch_streams),
            ] {
                if !(1..=1024).contains(&v) {
                    bad(key, "must be within 1..=1024".into());
                }
            }
            if !(1..=1000).contains(&a.max_failed_auth) {
                bad("admin.max_failed_auth", "must be within 1..=1000".into());
            }
            if !(1..=86400).contains(&a.failed_auth_lockout_s) {
                bad(
                    "admin.failed_auth_lockout_s",
                    "must be within 1..=86400".into(),
                );
            }
            if !(1..=4096).contains(&a.max_upload_mb) {
                bad("admin.max_upload_mb", "must be within 1..=4096".into());
            }
            let mut owner = std::collections::HashMap::new();
            for (canon, aliases) in &a.body_part_synonyms {
                for name in aliases.iter().chain(std::iter::once(canon)) {
                    let n = name.trim().to_uppercase();
                    if n.is_empty() {
                        bad(
                            &format!("admin.body_part_synonyms.{canon}"),
                            "holds an empty name".into(),
                        );
                    } else if let Some(prev) = owner.insert(n.clone(), canon.clone()) {
                        if prev != *canon {
                            bad(
                                &format!("admin.body_part_synonyms.{canon}"),
                                format!("{n:?} is also listed under {prev:?}"),
                            );
                        }
                    }
                }
            }
        }
    }
}
