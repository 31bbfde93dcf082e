//! PHI at rest: whatever the daemon writes under its data dir (spool, results, outbox, support
//! sets, the SQLite index and its journal) is readable by the service user alone, whatever the
//! umask of the shell or unit that started it.
//!
//! Files are created 0600 and directories 0700 explicitly; [`restrict_umask`] at daemon start is
//! the backstop for files created by code that takes no mode (the SEG writer, the engine's
//! caches, SQLite's journal files).

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the daemon creates under its data dir.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the daemon creates under its data dir.
pub const DIR_MODE: u32 = 0o700;

/// Sets the process umask to 077 so that nothing the process creates is readable by group or
/// others, even where no explicit mode is given. Returns the previous umask.
pub fn restrict_umask() -> u32 {
    // SAFETY: umask(2) only swaps the calling process's file-mode creation mask; it cannot fail.
    unsafe { libc::umask(0o077) as u32 }
}

/// `create_dir_all` whose new directories are 0700.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// `create_dir` (one level, failing if it exists) with mode 0700.
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Options that create a file 0600 (the mode applies only when the file is created).
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// `File::create` with mode 0600 for a new file.
pub fn create(path: &Path) -> std::io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Removes group and other permissions from an existing file or directory (left by an older
/// version, or copied with its source's mode). Symlinks are not followed.
pub fn tighten(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Copies `from` to a new file `to` created 0600 (`std::fs::copy` would give `to` the source's
/// mode). Returns the bytes copied.
pub fn copy(from: &Path, to: &Path) -> std::io::Result<u64> {
    let mut src = File::open(from)?;
    let mut dst = options().write(true).create_new(true).open(to)?;
    std::io::copy(&mut src, &mut dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_are_private_under_any_umask() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        create_dir_all(&deep).unwrap();
        let f = deep.join("f");
        create(&f).unwrap();
        let c = deep.join("c");
        copy(&f, &c).unwrap();
        // The umask can only take bits away: nothing above 0700 / 0600 whatever it is.
        assert_eq!(mode(&dir.path().join("a")) & !DIR_MODE, 0);
        assert_eq!(mode(&deep) & !DIR_MODE, 0);
        assert_eq!(mode(&f) & !FILE_MODE, 0);
        assert_eq!(mode(&c) & !FILE_MODE, 0);
        std::fs::set_permissions(&f, Permissions::from_mode(0o664)).unwrap();
        tighten(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
    }
}
