//! Storing a SEG as a Part 10 file durably: write to a temporary name, fsync, rename, fsync the
//! directory. A half-written SEG is never left under the final name.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use dicom_object::{FileDicomObject, InMemDicomObject};

use super::SegError;

/// Writes `obj` as a Part 10 file at `path` (preamble, file meta group, data set) and fsyncs the
/// file and its directory before returning.
pub fn save_seg(obj: &FileDicomObject<InMemDicomObject>, path: &Path) -> Result<(), SegError> {
    let io_err = |reason: String| SegError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err("path has no file name".into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);

    let file = File::create(&tmp).map_err(|e| io_err(format!("create {}: {e}", tmp.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    obj.write_all(&mut out)
        .map_err(|e| io_err(format!("encode: {e}")))?;
    out.flush().map_err(|e| io_err(format!("flush: {e}")))?;
    let file = out
        .into_inner()
        .map_err(|e| io_err(format!("flush: {}", e.error())))?;
    file.sync_all().map_err(|e| io_err(format!("fsync: {e}")))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io_err(format!("rename from {}: {e}", tmp.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("fsync directory {}: {e}", dir.display())))?;
    Ok(())
}
