//! Durable state: the spool of received instances, the SQLite index and the job state machine.
//!
//! Nothing here ever reports an instance as stored before both its file and its index row are
//! durable on disk.

pub mod audit;
pub mod db;
pub mod ingest;
pub mod instances;
pub mod jobs;
pub mod outbox;
pub mod peer_studies;
pub mod private;
pub mod retention;
pub mod rules;
mod sequence_mode;
pub mod spool;
pub mod support;

pub use db::{Db, DbError};
pub use spool::{Spool, SpoolError};
