//! How the store keeps sequence modes (`rules.sequence_mode`, `support_set_versions.sequence_mode`,
//! `jobs.sequence_mode` and `jobs.sequence_mode_from`, migration 9): as their names, NULL for
//! "inherit" (or, on a job, "routed before modes were recorded").

use crate::sequence_mode::{ModeSource, SequenceMode};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

impl ToSql for SequenceMode {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for SequenceMode {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<SequenceMode> {
        v.as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl ToSql for ModeSource {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ModeSource {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<ModeSource> {
        v.as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}
