//! Which model bundles are installed under `[engine] models_dir`, and the bundle a support set
//! records: the one it names, or (naming none) `[engine] default_bundle` when installed, else
//! the only installed bundle. Create and Update refuse a bundle that is not installed, so a set
//! that could never run is refused with the reason instead of failing every job later.

use std::path::Path;
use tonic::Status;

/// A support set's bundle is not installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model bundle {name:?}{why} is not installed under engine.models_dir ({dir}: no \
     {name}/manifest.toml); installed: {installed}; install it or name an installed bundle"
)]
pub struct NotInstalled {
    /// The bundle asked for.
    pub name: String,
    /// Where it came from, when the request named none (e.g. " (engine.default_bundle)").
    pub why: String,
    /// `[engine] models_dir`.
    pub dir: String,
    /// The installed bundles, comma-separated, or "none".
    pub installed: String,
}

impl From<NotInstalled> for Status {
    fn from(e: NotInstalled) -> Status {
        Status::failed_precondition(e.to_string())
    }
}

/// The bundles installed under `models_dir` (folders holding `manifest.toml`), by name.
pub fn installed(models_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.toml").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The bundle a set that names none runs on: `default_bundle` when installed, else the only
/// installed bundle, else `default_bundle` (which then fails [`require`]).
pub fn default_for(default_bundle: &str, installed: &[String]) -> String {
    match installed {
        [only] if !installed.iter().any(|b| b == default_bundle) => only.clone(),
        _ => default_bundle.to_string(),
    }
}

/// The bundle a set records for `name`: `name` trimmed or, when empty, [`default_for`] among
/// the bundles installed under `models_dir` (Import and the seeding, which do not refuse).
pub fn recorded(name: &str, default_bundle: &str, models_dir: &Path) -> String {
    match name.trim() {
        "" => default_for(default_bundle, &installed(models_dir)),
        b => b.to_string(),
    }
}

/// The bundle a set records for `name` (trimmed; empty: [`default_for`]), refused unless it is
/// installed under `models_dir`.
pub fn require(
    name: &str,
    default_bundle: &str,
    models_dir: &Path,
) -> Result<String, NotInstalled> {
    let have = installed(models_dir);
    let (bundle, why) = match name.trim() {
        "" => (
            default_for(default_bundle, &have),
            " (the request names no bundle; engine.default_bundle or the only installed one)",
        ),
        b => (b.to_string(), ""),
    };
    if have.contains(&bundle) {
        return Ok(bundle);
    }
    Err(NotInstalled {
        name: bundle,
        why: why.to_string(),
        dir: models_dir.display().to_string(),
        installed: if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("manifest.toml"), "").unwrap();
        }
        std::fs::create_dir(d.path().join("not-a-bundle")).unwrap();
        d
    }

    #[test]
    fn default_then_only_installed_then_refused() {
        let one = models(&["tiny"]);
        assert_eq!(require("", "big", one.path()).unwrap(), "tiny");
        assert_eq!(require(" tiny ", "big", one.path()).unwrap(), "tiny");
        let e = require("other", "big", one.path()).unwrap_err();
        assert_eq!(e.name, "other");
        assert!(e.to_string().contains("installed: tiny"), "{e}");
        let two = models(&["big", "tiny"]);
        assert_eq!(require("", "big", two.path()).unwrap(), "big");
        let e = require("", "huge", two.path()).unwrap_err();
        assert!(e.to_string().contains("names no bundle"), "{e}");
        assert!(e.to_string().contains("installed: big, tiny"), "{e}");
        let none = models(&[]);
        assert!(require("", "big", none.path())
            .unwrap_err()
            .to_string()
            .contains("installed: none"));
    }
}
