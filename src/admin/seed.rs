//! The bundled support sets into the store at start, whether or not the admin API listens: the
//! pipeline routes with the store only (`pipeline::catalog::StoreCatalog`).
//!
//! Every folder under `models_dir/*/support-sets/*` is imported ([`crate::admin::folder`]) with
//! the routing rule of its `[match]` table, in one transaction audited as token [`SEED`], when
//! the store holds no set of its name and never seeded one (no [`SEED`] `support_set.import`
//! audit row names it; audit rows are never deleted). So a restart adds nothing twice, a seeded
//! set an admin edited or deleted stays as the admin left it, and a folder a newer bundle brings
//! is added on the next start. A folder that does not import is logged and skipped, and tried
//! again on the next start.

use crate::admin::folder::{import_spec, read_spec, Target};
use crate::store::{Db, DbError};
use crate::support_folder;
use std::path::{Path, PathBuf};

/// The audit log's token name for the seeding.
pub const SEED: &str = "seed";

/// What one seeding did, by set name (or folder, where it failed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Sets imported now, each with its rule.
    pub imported: Vec<String>,
    /// Sets left alone: in the store already, or seeded before.
    pub kept: Vec<String>,
    /// Folders that could not be imported (logged).
    pub failed: Vec<PathBuf>,
}

/// Removes pair folders no row names (a crash mid-import), then seeds the bundled sets
/// ([`seed_bundled`]). The daemon runs it once at start, before the pipeline or the admin API.
pub async fn at_start(t: &Target) -> Seeded {
    let (db, data_dir) = (t.db.clone(), t.data_dir.clone());
    let _ = tokio::task::spawn_blocking(move || sweep_orphans(&db, &data_dir)).await;
    let seeded = seed_bundled(t).await;
    tracing::info!(
        imported = seeded.imported.len(),
        kept = seeded.kept.len(),
        failed = seeded.failed.len(),
        models_dir = %t.models_dir.display(),
        "bundled support sets seeded into the store"
    );
    seeded
}

/// Imports each bundled folder whose set the store does not hold and never seeded.
pub async fn seed_bundled(t: &Target) -> Seeded {
    let mut out = Seeded::default();
    for dir in support_folder::bundled(&t.models_dir) {
        let shown = dir.display().to_string();
        let spec = match read_spec(&dir) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(folder = %shown, error = %e.message(), "cannot seed a bundled support set");
                out.failed.push(dir);
                continue;
            }
        };
        let name = spec.name.trim().to_string();
        match crate::admin::off_runtime(|| known(&t.db, &name)) {
            Ok(true) => {
                tracing::debug!(support_set = %name, "bundled support set already in the store or seeded before");
                out.kept.push(name);
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(folder = %shown, error = %e, "cannot seed a bundled support set");
                out.failed.push(dir);
                continue;
            }
        }
        let rule = Some(format!("seeded from {shown}"));
        match import_spec(t, dir.clone(), spec, "", SEED, rule).await {
            Ok((set, rule)) => {
                tracing::info!(support_set = %set.name, version = set.version, rule = ?rule, "seeded a bundled support set");
                out.imported.push(set.name);
            }
            Err(e) => {
                tracing::error!(folder = %shown, error = %e.message(), "cannot seed a bundled support set");
                out.failed.push(dir);
            }
        }
    }
    out
}

/// Whether the store holds a set named `name`, or seeded one before.
fn known(db: &Db, name: &str) -> Result<bool, DbError> {
    db.read(|c| {
        c.query_row(
            "SELECT EXISTS (SELECT 1 FROM support_sets WHERE name = ?1)
                 OR EXISTS (SELECT 1 FROM audit WHERE token_name = ?2
                            AND action = 'support_set.import' AND target = ?3)",
            rusqlite::params![name, SEED, format!("support_set:{name}")],
            |r| r.get(0),
        )
    })
}

/// Removes pair folders no committed row names: temp folders of uploads cut short by a crash,
/// and folders written just before a transaction that never committed.
pub fn sweep_orphans(db: &Db, data_dir: &Path) {
    let root = data_dir.join("support");
    let Ok(sets) = std::fs::read_dir(&root) else {
        return;
    };
    let known: std::collections::HashSet<String> = match db.read(|c| {
        c.prepare("SELECT dir FROM support_pairs")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect()
    }) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list support pairs; leaving support/ as it is");
            return;
        }
    };
    for set in sets.filter_map(|e| e.ok()) {
        let Ok(pairs) = std::fs::read_dir(set.path()) else {
            continue;
        };
        for p in pairs.filter_map(|e| e.ok()) {
            let rel = format!(
                "support/{}/{}",
                set.file_name().to_string_lossy(),
                p.file_name().to_string_lossy()
            );
            if !known.contains(&rel) {
                tracing::info!(dir = %rel, "removing a support pair folder no row refers to");
                let _ = std::fs::remove_dir_all(p.path());
            }
        }
        let _ = std::fs::remove_dir(set.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            let to = dst.join(p.file_name().unwrap());
            if p.is_dir() {
                copy_dir(&p, &to);
            } else {
                std::fs::copy(&p, &to).unwrap();
            }
        }
    }

    fn bundled(models: &Path, set: &str) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/phantom-tiny/support-sets")
            .join(set);
        copy_dir(&src, &models.join("phantom-tiny/support-sets").join(set));
    }

    fn counts(db: &Db) -> (i64, i64) {
        db.read(|c| {
            Ok((
                c.query_row("SELECT COUNT(*) FROM support_sets", [], |r| r.get(0))?,
                c.query_row("SELECT COUNT(*) FROM rules", [], |r| r.get(0))?,
            ))
        })
        .unwrap()
    }

    /// Seeded once with its rule; a restart adds nothing; a set the admin deleted stays
    /// deleted; a folder that comes later is added; a broken folder is skipped.
    #[tokio::test]
    async fn seeds_each_bundled_set_once_and_never_over_an_admin() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        bundled(&models, "mr-prostate");
        let t = Target {
            db: Db::open(&dir.path().join("t.sqlite")).unwrap(),
            data_dir: dir.path().to_path_buf(),
            models_dir: models.clone(),
            default_bundle: "litemedsam-ppg".into(),
            max_upload: 64 << 20,
            max_upload_mb: 64,
        };
        let s = at_start(&t).await;
        assert_eq!((s.imported, s.failed), (vec!["mr-prostate".into()], vec![]));
        assert_eq!(counts(&t.db), (1, 1));
        let rule = t.db.read(crate::store::rules::list).unwrap().remove(0);
        assert_eq!(
            (rule.modality.as_str(), rule.body_part.as_str()),
            ("MR", "PROSTATE")
        );
        assert_eq!(rule.priority, crate::routing::BUNDLED_PRIORITY);

        let again = at_start(&t).await;
        assert_eq!(again.kept, vec!["mr-prostate".to_string()]);
        assert!(again.imported.is_empty());
        assert_eq!(counts(&t.db), (1, 1));

        // The admin removes the seeded rule and set: a restart does not bring them back.
        t.db.write(move |c| c.execute("DELETE FROM rules WHERE id = ?1", [rule.id]))
            .await
            .unwrap();
        t.db.write_typed(|c| crate::store::support::delete(c, "mr-prostate", "alice", 2.0))
            .await
            .unwrap();
        assert_eq!(counts(&t.db), (0, 0));
        // A newer bundle brings another folder (asking for per-frame), and a broken one.
        bundled(&models, "us-intrapartum-ps-fh");
        let toml = models.join("phantom-tiny/support-sets/us-intrapartum-ps-fh/supportset.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(&toml, format!("sequence_mode = \"per-frame\"\n{text}")).unwrap();
        let broken = models.join("phantom-tiny/support-sets/broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("supportset.toml"), "name = 1\n").unwrap();
        let later = seed_bundled(&t).await;
        assert_eq!(later.imported, vec!["us-intrapartum-ps-fh".to_string()]);
        assert_eq!(later.kept, vec!["mr-prostate".to_string()]);
        assert_eq!(later.failed, vec![broken]);
        assert_eq!(counts(&t.db), (1, 1));
        let set =
            t.db.read(|c| Ok(crate::store::support::get(c, "us-intrapartum-ps-fh", None)))
                .unwrap()
                .unwrap();
        assert_eq!(
            set.meta.sequence_mode,
            Some(crate::config::SequenceMode::PerFrame),
            "supportset.toml's sequence_mode is seeded into the store"
        );
    }
}
