//! Support sets in SQLite and on disk: objects, image + mask pairs, and their versions.
//!
//! # Versions are immutable snapshots (copy-on-write by validity ranges)
//!
//! Every change bumps the set's version. A running job records `(support_set, version)` and
//! must keep segmenting with exactly that content, even while an admin edits the set. We keep
//! every version by giving each object and pair row the range of versions that contain it,
//! `[since_version, until_version)` (`until_version` NULL = still current), plus one
//! `support_set_versions` row per version for the metadata (description, bundle, hints):
//!
//! - adding a pair inserts a row with `since_version = new`; removing one only sets its
//!   `until_version`; replacing objects closes the old rows and inserts new ones;
//! - pair files (`data_dir/support/<set name>/<unique>/image.dcm` + `masks.bin`) are written
//!   once, before the row that names them, and never modified;
//! - so version V is `since_version <= V AND (until_version IS NULL OR until_version > V)`.
//!
//! We chose this over copying all pairs per version because a change costs one row and no
//! file copy (support images can be large), and over content-addressed blobs because a pair's
//! folder stays readable by a person. The price is that removed pairs keep their files until the
//! set is deleted, which is refused while an unfinished job still uses the set.
//!
//! This module never talks to the network and never decides access: the admin layer checks
//! tokens and validates uploads before calling it. Every `fn(&Connection, ...)` here is meant to
//! run inside one `Db::write` transaction together with its audit row.
//!
//! Files: `model` holds the domain types and their rules (names, objects, masks), `palette` the
//! default colours and codes, `sql` the rows (versions, objects, pairs, with their audit rows),
//! `files` the pair files on disk (`masks.bin`, checksums, staging, loading a version).

mod files;
mod model;
mod palette;
mod sql;
#[cfg(test)]
mod tests;

pub use files::{decode_masks, encode_masks, load, remove_pair_dirs, sha256_hex, write_pair_files};
pub use model::{
    check_name, check_objects, code_of_spec, Code, Mask, NewPair, ObjectDef, PairInfo, SetInfo,
    SetMeta, SetUpdate, SupportPairData, SupportSetData, MAX_OBJECTS,
};
pub use palette::{default_code, PALETTE};
pub use sql::{add_pair, create, current_version, delete, get, list, remove_pair, set_id, update};

/// Errors of support-set storage.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// No support set has this name (or not this version).
    #[error("support set {name:?} not found{}", version.map(|v| format!(" at version {v}")).unwrap_or_default())]
    NotFound {
        /// The name asked for.
        name: String,
        /// The version asked for, if any.
        version: Option<u32>,
    },
    /// The name is taken.
    #[error("support set {0:?} already exists")]
    Exists(String),
    /// Optimistic concurrency: the set changed since the caller read it.
    #[error("support set {name:?} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The set.
        name: String,
        /// The version the caller expected.
        expected: u32,
        /// The current version.
        actual: u32,
    },
    /// The set is still used.
    #[error("support set {name:?} is in use: {by}")]
    InUse {
        /// The set.
        name: String,
        /// Who uses it.
        by: String,
    },
    /// No pair with this number in the current version.
    #[error("support set {name:?} has no pair {number}")]
    NoSuchPair {
        /// The set.
        name: String,
        /// The pair number.
        number: u32,
    },
    /// Input that breaks a rule of the data model; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A pair file is missing or does not match its checksum.
    #[error("support set {name:?} pair {number}: {message}")]
    Corrupt {
        /// The set.
        name: String,
        /// The pair.
        number: u32,
        /// What is wrong.
        message: String,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl SupportError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupportError {
        let context = context.into();
        move |source| SupportError::Io { context, source }
    }
}
