//! `[seg]` and `[delivery]`: how results are written as DICOM SEG and sent back to the peers
//! (retries, back-off, TLS).

use serde::Deserialize;
use std::path::PathBuf;

/// `[seg]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegConfig {
    /// Leave out frames whose mask is empty (default false: many viewers misplace sparse SEGs).
    pub omit_empty_frames: bool,
    /// Manufacturer written into every SEG.
    pub manufacturer: String,
}

impl Default for SegConfig {
    fn default() -> Self {
        SegConfig {
            omit_empty_frames: false,
            manufacturer: "proxyseg".into(),
        }
    }
}

/// `[delivery]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Tries before a transiently failing delivery (peer down, timeouts) is dead-lettered.
    pub max_attempts: u32,
    /// Tries before a permanently failing delivery (association rejected for our AE, SOP class
    /// not supported, status 0xA7xx / 0xA9xx / 0xCxxx) is dead-lettered.
    pub max_permanent_attempts: u32,
    /// First retry delay in seconds; doubles per try, with +-20 % jitter.
    pub backoff_initial_s: f64,
    /// Longest retry delay in seconds.
    pub backoff_max_s: f64,
    /// Seconds for connecting, negotiating and each network read/write.
    pub timeout_s: u64,
    /// Deliveries running at the same time.
    pub concurrency: usize,
    /// How often (milliseconds) the outbox is polled for due deliveries.
    pub poll_interval_ms: u64,
    /// PEM CA bundle trusted for peers with `tls = true` (required when any peer uses TLS).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to TLS peers (mutual TLS), with `tls_private_key`.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of `tls_certificate`.
    pub tls_private_key: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 12,
            max_permanent_attempts: 3,
            backoff_initial_s: 5.0,
            backoff_max_s: 1800.0,
            timeout_s: 30,
            concurrency: 4,
            poll_interval_ms: 500,
            tls_ca: None,
            tls_certificate: None,
            tls_private_key: None,
        }
    }
}
