//! The audit log: one row per change made through the admin API, written in the same
//! transaction as the change itself, so a change without its audit row cannot exist.
//!
//! Never written outside a change's transaction; never updated or deleted.

use rusqlite::{params, Connection};

/// One audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Row id (increasing).
    pub id: i64,
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// Name of the token that made the change (from the tokens file).
    pub token_name: String,
    /// What was done, e.g. `support_set.create`.
    pub action: String,
    /// What it was done to, e.g. `support_set:fundus-demo`.
    pub target: String,
    /// Free-text detail (new version, pair number, ...).
    pub detail: String,
}

/// Appends an audit row in the caller's transaction.
pub fn record(
    conn: &Connection,
    token_name: &str,
    action: &str,
    target: &str,
    detail: &str,
    at: f64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit (at, token_name, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at, token_name, action, target, detail],
    )?;
    Ok(())
}

/// The newest `limit` audit rows, newest first.
pub fn recent(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<AuditEntry>> {
    list(conn, limit, "", "")
}

/// The newest `limit` rows matching the filters (empty = any), newest first.
pub fn list(
    conn: &Connection,
    limit: u32,
    token_name: &str,
    target: &str,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare(
        "SELECT id, at, token_name, action, target, detail FROM audit
         WHERE (?2 = '' OR token_name = ?2) AND (?3 = '' OR target = ?3)
         ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit, token_name, target], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: r.get(1)?,
            token_name: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            detail: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Number of audit rows.
pub fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
}
