//! `[pipeline]`: study assembly, job attempts, memory budgets, the loop guard and how
//! sequences are segmented ([`SequenceMode`]).

use serde::{Deserialize, Serialize};

/// `[pipeline]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// A study is complete when no instance arrived for this many seconds.
    pub stable_age_s: f64,
    /// A peer's part of a study that has been receiving this long is complete even if
    /// instances keep arriving (review L10: one instance every `stable_age_s` would otherwise
    /// hold it open for ever); what arrives later opens it again.
    pub max_receiving_s: f64,
    /// How often the assembler looks for stable studies, in milliseconds.
    pub scan_interval_ms: u64,
    /// Jobs waiting for inference at most (a flood of studies waits in SQLite, not in memory).
    pub queue: usize,
    /// Slices or frames decoded and segmented together (bounds memory for volumes and cine).
    pub chunk_frames: usize,
    /// A job segmenting longer than this many seconds counts as stalled: the systemd
    /// watchdog stops being fed, so systemd restarts the daemon (the job resumes).
    pub stall_timeout_s: u64,
    /// Segmentation starts a job may make. Each start is counted in SQLite before it begins;
    /// a job still unfinished after this many (the daemon died, was stopped or restarted by
    /// the watchdog while segmenting it each time) is dead-lettered: `failed`, with why.
    pub max_attempts: u32,
    /// Memory one job may take for pixels, in MiB: the masks of the series it segments, the
    /// instance being read and the frames in flight (the worker decodes frame by frame; see
    /// `dicom::pixels::series_bytes`). An instance that alone cannot fit is refused at
    /// C-STORE (0xA900); a series that cannot fails its job before anything is decoded.
    pub max_decoded_mb: u64,
    /// Memory all jobs together may take for pixels, in MiB (at least `max_decoded_mb`; unset:
    /// `max_decoded_mb`, see [`PipelineConfig::memory_budget_mb`]). A job waits, first come
    /// first served, until the jobs ahead of it give back enough.
    pub memory_budget_mb: Option<u64>,
    /// Loop guard backstop (review M2): at most this many jobs of one peer's part of a study
    /// are segmented within `loop_window_h`; a further job is recorded as unmatched with the
    /// reason. Bounds the SEGs a PACS that keeps routing a study back can cause.
    pub max_jobs_per_study: u32,
    /// The window of `max_jobs_per_study`, in hours.
    pub loop_window_h: f64,
    /// With a bundle that tracks frames (contract 2, SAM 2): `auto` (default) tracks
    /// multi-frame ultrasound and volumes through the memory bank and segments other series
    /// frame by frame; `memory` tracks every series; `per-frame` none (see
    /// `dicom::sequence`). Contract-1 bundles always segment frame by frame.
    pub sequence_mode: SequenceMode,
    /// Recent frames of spatial memory a tracked frame attends to (N; unset: the bundle's
    /// `[memory] recent_frames`, SAM 2's 6; at most the bundle's slots - 1). Bounds the memory
    /// bank, which holds N + 1 frame memories per object, whatever the series length.
    pub memory_frames: Option<usize>,
    /// A job asks for review when an object's mirrored looks (a bundle's `[mirror]`) agree
    /// less than this on some frame (Dice between the two looks' masks, 0..1; 0 turns it
    /// off): its `inferred` event says which objects, and `proxyseg_review_flags_total`
    /// counts them. The default 0.8 flagged ~9 % of objects on the real check cases, with
    /// mean Dice 0.80 against 0.92 unflagged. A weak flag: a wrong routing (another data
    /// set's images) gets looks that agree on the wrong thing.
    pub review_agreement: f32,
}

/// How a series is segmented by a bundle that tracks frames: `pipeline.sequence_mode`, and the
/// optional override of a support set or a routing rule (`crate::sequence_mode` chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SequenceMode {
    /// Memory for multi-frame ultrasound and for volumes, frame by frame otherwise.
    #[default]
    Auto,
    /// Every series through the memory bank.
    Memory,
    /// Every frame on its own.
    PerFrame,
}

impl SequenceMode {
    /// Every mode, in the order messages list them.
    pub const ALL: [SequenceMode; 3] = [
        SequenceMode::Auto,
        SequenceMode::Memory,
        SequenceMode::PerFrame,
    ];

    /// The name in TOML, the store, the API and the CLI: `auto`, `memory`, `per-frame`.
    pub fn as_str(self) -> &'static str {
        match self {
            SequenceMode::Auto => "auto",
            SequenceMode::Memory => "memory",
            SequenceMode::PerFrame => "per-frame",
        }
    }
}

impl std::fmt::Display for SequenceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sequence mode name that is none of `auto`, `memory`, `per-frame`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sequence_mode {0:?} is not one of auto, memory, per-frame")]
pub struct UnknownSequenceMode(pub String);

impl std::str::FromStr for SequenceMode {
    type Err = UnknownSequenceMode;

    /// Parses a name as [`SequenceMode::as_str`] writes it (surrounding blanks ignored).
    fn from_str(s: &str) -> Result<SequenceMode, UnknownSequenceMode> {
        SequenceMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s.trim())
            .ok_or_else(|| UnknownSequenceMode(s.to_string()))
    }
}

impl PipelineConfig {
    /// The memory all jobs share for pixels, in MiB: `memory_budget_mb`, else
    /// `max_decoded_mb` (one job's worth).
    pub fn memory_budget_mb(&self) -> u64 {
        self.memory_budget_mb.unwrap_or(self.max_decoded_mb)
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stable_age_s: 30.0,
            max_receiving_s: 3600.0,
            scan_interval_ms: 500,
            queue: 8,
            chunk_frames: 8,
            stall_timeout_s: 900,
            max_attempts: 3,
            max_decoded_mb: 4096,
            memory_budget_mb: None,
            max_jobs_per_study: 5,
            loop_window_h: 24.0,
            sequence_mode: SequenceMode::Auto,
            memory_frames: None,
            review_agreement: 0.8,
        }
    }
}
