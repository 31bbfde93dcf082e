//! `[storage]` and `[retention]`: where received data lives, how it is made durable, and how
//! long it is kept.

use serde::Deserialize;
use std::path::PathBuf;

/// `[storage]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root of spool/, outbox/, cache/ and proxyseg.sqlite.
    pub data_dir: PathBuf,
    /// How an instance is made durable before its C-STORE success: "syncfs" (group commit:
    /// one syncfs of the spool filesystem covers every store waiting at that moment) or
    /// "fsync" (each file and its directory).
    pub durability: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("var"),
            durability: "fsync".into(),
        }
    }
}

/// `[retention]` table: when a study's PHI (received instances, SEG results, staged delivery
/// files, index rows) leaves the daemon. A study is due once all its work is finished (not
/// receiving, no unfinished job, no SEG waiting for delivery) and the time below has passed
/// since its last job settled; see [`crate::store::retention`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Run the retention sweeper (admin purges work either way).
    pub enabled: bool,
    /// Hours a study is kept once finished well: every SEG delivered, or nothing to deliver
    /// (no rule matched it). Also the time a delivered manual send (`proxyseg send`) is kept.
    pub keep_delivered_hours: f64,
    /// Hours a study is kept when a job of it failed (dead-lettered included) or a SEG
    /// delivery was dead-lettered, so an admin can look into it; also dead manual sends.
    /// At least `keep_delivered_hours`.
    pub keep_failed_hours: f64,
    /// Seconds between two sweeps.
    pub sweep_interval_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            keep_delivered_hours: 72.0,
            keep_failed_hours: 720.0,
            sweep_interval_s: 600,
        }
    }
}

/// Longest retention accepted, in hours (ten years).
pub const MAX_RETENTION_HOURS: f64 = 87_600.0;
