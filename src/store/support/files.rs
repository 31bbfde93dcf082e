//! Pair files on disk: the `masks.bin` format, checksums, writing a pair's folder before its row
//! is committed, removing a deleted set's folders, and loading a version with its masks.

use super::{check_name, get, Mask, SupportError, SupportPairData, SupportSetData};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::path::Path;

/// SHA-256 of bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Encodes masks as `masks.bin`: each mask bit-packed ([`Mask::pack`]), concatenated.
pub fn encode_masks(masks: &[Mask]) -> Vec<u8> {
    masks.iter().flat_map(|m| m.pack()).collect()
}

/// Decodes `masks.bin` holding `k` masks of `rows x cols`.
pub fn decode_masks(bytes: &[u8], k: usize, rows: usize, cols: usize) -> Option<Vec<Mask>> {
    let each = (rows * cols).div_ceil(8);
    if bytes.len() != each * k {
        return None;
    }
    bytes
        .chunks(each.max(1))
        .take(k)
        .map(|c| Mask::unpack(rows, cols, c))
        .collect()
}

/// Loads set `name` at `version` (None = current) with its masks, verifying every file's
/// checksum: what the pipeline and the engine call for a job's `(support_set, version)`.
pub fn load(
    conn: &Connection,
    data_dir: &Path,
    name: &str,
    version: Option<u32>,
) -> Result<SupportSetData, SupportError> {
    let info = get(conn, name, version)?;
    let k = info.objects.len();
    let mut pairs = Vec::with_capacity(info.pairs.len());
    for p in &info.pairs {
        let corrupt = |message: String| SupportError::Corrupt {
            name: name.into(),
            number: p.number,
            message,
        };
        let dir = data_dir.join(&p.dir);
        let masks_path = dir.join("masks.bin");
        let bytes = std::fs::read(&masks_path)
            .map_err(|e| corrupt(format!("cannot read {}: {e}", masks_path.display())))?;
        if sha256_hex(&bytes) != p.masks_sha256 {
            return Err(corrupt(format!(
                "{} does not match its checksum",
                masks_path.display()
            )));
        }
        let masks = decode_masks(&bytes, k, p.rows as usize, p.cols as usize).ok_or_else(|| {
            corrupt(format!(
                "{} has the wrong size for {k} masks",
                masks_path.display()
            ))
        })?;
        let image_path = dir.join("image.dcm");
        if !image_path.is_file() {
            return Err(corrupt(format!("{} is missing", image_path.display())));
        }
        pairs.push(SupportPairData {
            number: p.number,
            image_path,
            sop_instance_uid: p.sop_instance_uid.clone(),
            rows: p.rows as usize,
            cols: p.cols as usize,
            masks,
        });
    }
    Ok(SupportSetData {
        name: info.name,
        version: info.version,
        variant: String::new(),
        bundle: info.meta.bundle,
        objects: info.objects,
        pairs,
    })
}

/// Writes a pair's files into a new folder `support/<set name>/<unique>` under `data_dir`
/// (temp folder, fsync, rename, fsync parent), before the row that names it is committed.
/// Returns the folder relative to `data_dir`. `extra` holds further files to keep (e.g. the
/// original SEG). The unique part keeps a deleted and re-created set from reusing folders.
pub fn write_pair_files(
    data_dir: &Path,
    set_name: &str,
    image: &[u8],
    masks_bin: &[u8],
    extra: &[(&str, &[u8])],
) -> Result<String, SupportError> {
    use std::io::Write;
    check_name(set_name)?;
    let parent = data_dir.join("support").join(set_name);
    crate::store::private::create_dir_all(&parent)
        .map_err(SupportError::io(format!("creating {}", parent.display())))?;
    let unique = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        hex::encode(rand::random::<[u8; 6]>())
    );
    let tmp = parent.join(format!(".{unique}.tmp"));
    crate::store::private::create_dir(&tmp)
        .map_err(SupportError::io(format!("creating {}", tmp.display())))?;
    let write_all = || -> Result<(), SupportError> {
        let files: Vec<(&str, &[u8])> = [("image.dcm", image), ("masks.bin", masks_bin)]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        for (name, bytes) in files {
            let p = tmp.join(name);
            let mut f = crate::store::private::create(&p)
                .map_err(SupportError::io(format!("creating {}", p.display())))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(SupportError::io(format!("writing {}", p.display())))?;
        }
        std::fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(SupportError::io(format!("syncing {}", tmp.display())))
    };
    if let Err(e) = write_all() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let fin = parent.join(&unique);
    std::fs::rename(&tmp, &fin)
        .map_err(SupportError::io(format!("renaming to {}", fin.display())))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(SupportError::io(format!("syncing {}", parent.display())))?;
    Ok(format!("support/{set_name}/{unique}"))
}

/// Removes a deleted set's pair folders (after the deletion committed), then the set's folder
/// if it is empty. Failures are logged: leftover files are harmless.
pub fn remove_pair_dirs(data_dir: &Path, set_name: &str, dirs: &[String]) {
    for d in dirs {
        if let Err(e) = std::fs::remove_dir_all(data_dir.join(d)) {
            tracing::warn!(dir = %d, error = %e, "cannot remove a deleted support pair's files");
        }
    }
    if check_name(set_name).is_ok() {
        let _ = std::fs::remove_dir(data_dir.join("support").join(set_name));
    }
}
