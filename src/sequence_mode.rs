//! Which sequence mode a job gets (issue 15 item 4): the winning routing rule's
//! `sequence_mode`, else its support set's, else `pipeline.sequence_mode` ([`choose`]).
//!
//! Pure: the router's catalog records the [`ChosenMode`] on the job when it matches, the worker
//! segments with it, and the admin API's dry run shows the same choice. A rule or a set that
//! names no mode inherits ([`ModeSetting`] `inherit`). The mode itself is the config's
//! [`SequenceMode`]; what it does to a series is `dicom::sequence`'s business.

pub use crate::config::{SequenceMode, UnknownSequenceMode};

/// A mode as an admin sets it on a routing rule or a support set: one of the modes, or
/// `inherit` (None: the next level decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeSetting(pub Option<SequenceMode>);

/// The word for "no mode of its own" in the API and the CLI.
pub const INHERIT: &str = "inherit";

impl ModeSetting {
    /// `auto`, `memory`, `per-frame` or `inherit`.
    pub fn as_str(self) -> &'static str {
        self.0.map_or(INHERIT, SequenceMode::as_str)
    }
}

impl std::fmt::Display for ModeSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A setting that is none of `auto`, `memory`, `per-frame`, `inherit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sequence_mode {0:?} is not one of auto, memory, per-frame, inherit")]
pub struct UnknownModeSetting(pub String);

impl std::str::FromStr for ModeSetting {
    type Err = UnknownModeSetting;

    /// Parses `inherit` or a mode name (surrounding blanks ignored).
    fn from_str(s: &str) -> Result<ModeSetting, UnknownModeSetting> {
        if s.trim() == INHERIT {
            return Ok(ModeSetting(None));
        }
        s.parse::<SequenceMode>()
            .map(|m| ModeSetting(Some(m)))
            .map_err(|_| UnknownModeSetting(s.to_string()))
    }
}

/// Where a job's mode came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSource {
    /// The routing rule that matched.
    Rule,
    /// The support set of that rule, at the version the job records.
    SupportSet,
    /// `pipeline.sequence_mode`.
    Config,
}

impl ModeSource {
    /// `rule`, `support set` or `config`: as the job records it and the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeSource::Rule => "rule",
            ModeSource::SupportSet => "support set",
            ModeSource::Config => "config",
        }
    }
}

impl std::fmt::Display for ModeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source name that is none of [`ModeSource::as_str`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sequence mode source {0:?} is not one of rule, support set, config")]
pub struct UnknownModeSource(pub String);

impl std::str::FromStr for ModeSource {
    type Err = UnknownModeSource;

    fn from_str(s: &str) -> Result<ModeSource, UnknownModeSource> {
        [ModeSource::Rule, ModeSource::SupportSet, ModeSource::Config]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownModeSource(s.to_string()))
    }
}

/// The mode a job runs with and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChosenMode {
    /// The mode.
    pub mode: SequenceMode,
    /// Which level set it.
    pub from: ModeSource,
}

impl std::fmt::Display for ChosenMode {
    /// E.g. `per-frame (from rule)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.mode, self.from)
    }
}

/// The mode of a job: the rule's when it sets one, else the support set's, else the config's.
pub fn choose(
    rule: Option<SequenceMode>,
    set: Option<SequenceMode>,
    config: SequenceMode,
) -> ChosenMode {
    match (rule, set) {
        (Some(mode), _) => ChosenMode {
            mode,
            from: ModeSource::Rule,
        },
        (None, Some(mode)) => ChosenMode {
            mode,
            from: ModeSource::SupportSet,
        },
        (None, None) => ChosenMode {
            mode: config,
            from: ModeSource::Config,
        },
    }
}

/// Whether frames go through a memory bank, by the mode alone: `memory` tracks every
/// sequence, `per-frame` none, `auto` multi-frame ultrasound (`multi_frame` and Modality `US`)
/// and volumes (`volume`: two or more single-frame slices of a series). Whether the bundle can
/// track is the caller's other question. The one home of this decision: the daemon's planner
/// (`dicom::sequence::plan`) and `proxyseg segment` both ask it.
pub fn wants_memory(mode: SequenceMode, modality: &str, multi_frame: bool, volume: bool) -> bool {
    match mode {
        SequenceMode::PerFrame => false,
        SequenceMode::Memory => true,
        SequenceMode::Auto => (modality.trim() == "US" && multi_frame) || volume,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SequenceMode::*;

    /// Rule over set over config, whatever the modes are; inherit passes the choice down.
    #[test]
    fn rule_then_set_then_config() {
        let c = |mode, from| ChosenMode { mode, from };
        assert_eq!(choose(None, None, Auto), c(Auto, ModeSource::Config));
        assert_eq!(
            choose(None, None, PerFrame),
            c(PerFrame, ModeSource::Config)
        );
        assert_eq!(
            choose(None, Some(Memory), PerFrame),
            c(Memory, ModeSource::SupportSet)
        );
        assert_eq!(
            choose(Some(PerFrame), Some(Memory), Memory),
            c(PerFrame, ModeSource::Rule)
        );
        assert_eq!(
            choose(Some(Auto), None, PerFrame),
            c(Auto, ModeSource::Rule),
            "a rule may ask for auto explicitly over a config that says per-frame"
        );
        assert_eq!(
            choose(Some(Memory), None, Auto).to_string(),
            "memory (from rule)"
        );
    }

    /// Auto tracks multi-frame ultrasound and volumes only; memory and per-frame decide alone.
    #[test]
    fn auto_tracks_ultrasound_cine_and_volumes() {
        assert!(wants_memory(Auto, "US", true, false));
        assert!(wants_memory(Auto, "MR", false, true));
        assert!(
            !wants_memory(Auto, "XA", true, false),
            "a multi-frame XA is not tracked by auto"
        );
        assert!(!wants_memory(Auto, "US", false, false), "a single US still");
        assert!(wants_memory(Memory, "XA", true, false));
        assert!(!wants_memory(PerFrame, "US", true, true));
    }

    /// Settings parse as the API and the CLI take them; anything else names the allowed values.
    #[test]
    fn settings_parse_and_name_the_allowed_values() {
        assert_eq!("inherit".parse(), Ok(ModeSetting(None)));
        assert_eq!(" per-frame ".parse(), Ok(ModeSetting(Some(PerFrame))));
        assert_eq!("memory".parse(), Ok(ModeSetting(Some(Memory))));
        let e = "sometimes".parse::<ModeSetting>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "sequence_mode \"sometimes\" is not one of auto, memory, per-frame, inherit"
        );
        assert!(
            "Per-Frame".parse::<SequenceMode>().is_err(),
            "names are exact"
        );
        for m in SequenceMode::ALL {
            assert_eq!(m.as_str().parse::<SequenceMode>(), Ok(m));
            assert_eq!(ModeSetting(Some(m)).to_string(), m.as_str());
        }
        for s in [ModeSource::Rule, ModeSource::SupportSet, ModeSource::Config] {
            assert_eq!(s.as_str().parse::<ModeSource>(), Ok(s));
        }
        assert_eq!(ModeSetting(None).as_str(), "inherit");
    }
}
