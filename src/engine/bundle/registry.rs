//! The registry: every bundle under `models_dir`, the served ones by name and the refused
//! ones with their reasons.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Bundle;
use crate::engine::runtime::Runtime;

/// A bundle that was found but not served.
#[derive(Debug, Clone)]
pub struct RefusedBundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// Why it was refused.
    pub reason: String,
}

/// Every bundle under `models_dir`: the served ones by name, and the refused ones.
#[derive(Debug, Default)]
pub struct BundleRegistry {
    served: BTreeMap<String, Arc<Bundle>>,
    refused: Vec<RefusedBundle>,
}

impl BundleRegistry {
    /// Loads every `models_dir/*/manifest.toml`. A bad bundle is logged and listed in
    /// [`BundleRegistry::refused`]; the others are served. A missing `models_dir` gives an
    /// empty registry (logged).
    pub fn load(models_dir: &Path, runtime: &Runtime) -> BundleRegistry {
        let mut reg = BundleRegistry::default();
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(models_dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("manifest.toml").is_file())
                .collect(),
            Err(e) => {
                tracing::warn!(models_dir = %models_dir.display(), error = %e, "cannot list model bundles");
                Vec::new()
            }
        };
        dirs.sort();
        for dir in dirs {
            match Bundle::load(&dir, runtime) {
                Ok(b) => {
                    let name = b.manifest.name.clone();
                    if let Some(prev) = reg.served.get(&name) {
                        let reason = format!(
                            "bundle name {name:?} is already served from {}",
                            prev.dir.display()
                        );
                        tracing::error!(bundle = %dir.display(), %reason, "model bundle refused");
                        reg.refused.push(RefusedBundle { dir, reason });
                        continue;
                    }
                    tracing::info!(bundle = %b.id(), dir = %dir.display(), "model bundle served");
                    reg.served.insert(name, Arc::new(b));
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(bundle = %dir.display(), %reason, "model bundle refused");
                    reg.refused.push(RefusedBundle { dir, reason });
                }
            }
        }
        reg
    }

    /// A served bundle by manifest name.
    pub fn get(&self, name: &str) -> Option<Arc<Bundle>> {
        self.served.get(name).cloned()
    }

    /// Every served bundle, by name.
    pub fn served(&self) -> impl Iterator<Item = &Arc<Bundle>> {
        self.served.values()
    }

    /// Every refused bundle with its reason.
    pub fn refused(&self) -> &[RefusedBundle] {
        &self.refused
    }
}
