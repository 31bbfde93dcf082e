//! Bearer-token authentication and the two roles of the admin API.
//!
//! Tokens come from a file (`[admin] tokens_file`) with one `name role token` line per token
//! (`#` starts a comment). The daemon refuses to start when that file is readable by group or
//! others. Presented tokens are compared in constant time against the SHA-256 of every known
//! token (so neither the content nor the length leaks through timing). This module never logs
//! a token.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Shortest token accepted in the tokens file.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// List / Get / Watch / DryRun / Models / Preview only.
    ReadOnly,
}

/// The caller, as established by the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Token name (written in the audit log).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Problems with the tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Cannot read it.
    #[error("admin.tokens_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Readable by group or others.
    #[error("admin.tokens_file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is wrong.
    #[error("admin.tokens_file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        message: String,
    },
    /// No token at all.
    #[error("admin.tokens_file lists no tokens: nobody could use the admin API")]
    Empty,
}

struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The known tokens.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.name, e.role)))
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Reads the tokens file, refusing group- or world-readable files.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenFileError::Permissions { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown,
            source,
        })?;
        Tokens::parse(&text)
    }

    /// Parses `name role token` lines.
    pub fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| TokenFileError::Line {
                line: i + 1,
                message,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, role, token] = parts[..] else {
                return Err(bad(format!(
                    "expected `name role token`, found {} field(s)",
                    parts.len()
                )));
            };
            let role = match role {
                "admin" => Role::Admin,
                "readonly" | "read-only" => Role::ReadOnly,
                other => {
                    return Err(bad(format!(
                        "role {other:?} is not \"admin\" or \"readonly\""
                    )))
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "the token of {name:?} is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            let d = digest(token.as_bytes());
            if entries.iter().any(|e| e.name == name) {
                return Err(bad(format!("name {name:?} is listed twice")));
            }
            if entries.iter().any(|e| bool::from(e.digest.ct_eq(&d))) {
                return Err(bad(format!("the token of {name:?} is used twice")));
            }
            entries.push(Entry {
                name: name.to_string(),
                role,
                digest: d,
            });
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Tokens { entries })
    }

    /// The identity owning `presented`, comparing against every entry in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<Identity> {
        let d = digest(presented);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&d)) {
                found = Some(e);
            }
        }
        found.map(|e| Identity {
            name: e.name.clone(),
            role: e.role,
        })
    }
}

/// The tokens in force, replaceable while the daemon runs (see [`watch_file`]).
#[derive(Clone, Debug)]
pub struct TokenStore(Arc<std::sync::RwLock<Arc<Tokens>>>);

impl TokenStore {
    /// A store holding `tokens`.
    pub fn new(tokens: Tokens) -> TokenStore {
        TokenStore(Arc::new(std::sync::RwLock::new(Arc::new(tokens))))
    }

    /// The tokens in force now.
    pub fn current(&self) -> Arc<Tokens> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, tokens: Tokens) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }
}

/// How often the tokens file is checked for changes.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the tokens file whenever its modification time or size changes, so a token can be
/// added or revoked without a restart. A changed file that is unsafe or malformed is refused
/// with an error log and the tokens in force stay; the task ends when `stop` turns true.
pub async fn watch_file(
    store: TokenStore,
    path: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        if *stop.borrow() {
            return;
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match Tokens::load(&path) {
            Ok(t) => {
                tracing::info!(tokens = t.entries.len(), "admin tokens file reloaded");
                store.replace(t);
            }
            Err(e) => {
                tracing::error!(error = %e, "admin tokens file changed but was refused; the previous tokens stay in force")
            }
        }
    }
}

/// The tonic interceptor: every call needs `authorization: Bearer <token>`; the caller's
/// [`Identity`] is put in the request extensions for [`require`]. A wrong token is logged
/// (peer address and reason, never the token) and counted against its address
/// ([`Lockout`](crate::admin::lockout::Lockout)); a locked-out address gets RESOURCE_EXHAUSTED.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    /// The tokens in force.
    pub tokens: TokenStore,
    /// Failed authentications per peer address.
    pub lockout: Arc<crate::admin::lockout::Lockout>,
}

impl AuthInterceptor {
    /// Logs and counts a wrong token from `ip`; the status to answer.
    fn refuse(&self, ip: std::net::IpAddr, reason: &'static str) -> Status {
        use crate::admin::lockout::Failure;
        match self.lockout.failed(ip, std::time::Instant::now()) {
            Failure::LockedOut => tracing::warn!(
                peer = %ip,
                reason,
                lockout_s = self.lockout_secs(),
                "admin authentication failed; too many failures: address locked out"
            ),
            Failure::Counted(failures) => {
                tracing::warn!(peer = %ip, reason, failures, "admin authentication failed")
            }
            Failure::Untracked => tracing::warn!(
                peer = %ip,
                reason,
                "admin authentication failed (too many addresses failing to count this one)"
            ),
        }
        Status::unauthenticated(reason)
    }

    fn lockout_secs(&self) -> u64 {
        self.lockout.period().as_secs()
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let ip = req
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        if let Some(left) = self.lockout.locked(ip, std::time::Instant::now()) {
            return Err(Status::resource_exhausted(format!(
                "too many failed authentications from this address; retry in {} s",
                left.as_secs().max(1)
            )));
        }
        let header = req.metadata().get("authorization").ok_or_else(|| {
            // Not a guess: logged, not counted against the address.
            tracing::info!(peer = %ip, "admin call without a token");
            Status::unauthenticated("missing `authorization: Bearer <token>`")
        })?;
        let value = header
            .to_str()
            .map_err(|_| self.refuse(ip, "authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| self.refuse(ip, "authorization must be `Bearer <token>`"))?;
        match self.tokens.current().check(token.trim().as_bytes()) {
            Some(id) => {
                req.extensions_mut().insert(id);
                Ok(req)
            }
            None => Err(self.refuse(ip, "unknown token")),
        }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading (List / Get / Watch / DryRun / Models / Preview).
    Read,
    /// Changing anything.
    Write,
}

/// The caller of `req`, if allowed `access` for `method`.
pub fn require<T>(req: &Request<T>, access: Access, method: &str) -> Result<Identity, Status> {
    let id = req
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no valid token"))?;
    if access == Access::Write && id.role != Role::Admin {
        return Err(Status::permission_denied(format!(
            "token {:?} is read-only; {method} needs an admin token",
            id.name
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_tokens() {
        let t = Tokens::parse(
            "# comment\nalice admin 0123456789abcdef0123\n\nbob readonly fedcba9876543210fedc # viewer\n",
        )
        .unwrap();
        assert_eq!(
            t.check(b"0123456789abcdef0123"),
            Some(Identity {
                name: "alice".into(),
                role: Role::Admin
            })
        );
        assert_eq!(
            t.check(b"fedcba9876543210fedc").unwrap().role,
            Role::ReadOnly
        );
        assert_eq!(t.check(b"0123456789abcdef012"), None);
        assert_eq!(t.check(b""), None);
    }

    #[test]
    fn bad_lines_are_refused_without_showing_tokens() {
        for (text, want) in [
            ("a admin short", "shorter"),
            ("a root 0123456789abcdef0123", "role"),
            ("a admin", "field"),
            (
                "a admin 0123456789abcdef0123\na readonly 0123456789abcdef0124",
                "twice",
            ),
            (
                "a admin 0123456789abcdef0123\nb readonly 0123456789abcdef0123",
                "used twice",
            ),
            ("# nothing\n", "no tokens"),
        ] {
            let e = Tokens::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcdef"), "token leaked: {e}");
        }
    }

    #[test]
    fn world_readable_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "a admin 0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Tokens::load(&p),
            Err(TokenFileError::Permissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Tokens::load(&p).is_ok());
    }
}
