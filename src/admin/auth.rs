//! Bearer-token authentication and the two roles of the admin API.
//!
//! Tokens come from a file (`[admin] tokens_file`) with one `name role token` line per token
//! (`#` at the start of a line or after a space starts a comment; inside a token it is part of
//! it). The daemon refuses a tokens file that is a symbolic link, is owned by another user, or
//! is readable by group or others; removing the file (or making it unsafe or unreadable)
//! revokes every token while the daemon runs. Presented tokens are compared in constant time against the SHA-256 of every known
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
    /// Not a regular file (a symbolic link can be re-pointed by whoever owns its folder).
    #[error(
        "admin.tokens_file {path} is not a regular file (a symbolic link?): name the file itself"
    )]
    NotAFile {
        /// The file.
        path: String,
    },
    /// Owned by another user than the daemon's.
    #[error("admin.tokens_file {path} is owned by uid {owner}, not by the daemon's uid {daemon} (chown it)")]
    Owner {
        /// The file.
        path: String,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        daemon: u32,
    },
}

impl TokenFileError {
    /// Whether the file itself is gone, unreadable or unsafe (every token is then revoked),
    /// rather than its text being wrong (the tokens in force then stay).
    pub fn revokes(&self) -> bool {
        !matches!(self, TokenFileError::Line { .. } | TokenFileError::Empty)
    }
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

/// `line` without its comment: from a `#` at the start or after whitespace (a `#` inside a
/// token belongs to the token).
fn strip_comment(line: &str) -> &str {
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_blank {
            return &line[..i];
        }
        prev_blank = c.is_whitespace();
    }
    line
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Reads the tokens file, refusing symbolic links, files of another owner and group- or
    /// world-readable files.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let shown = path.display().to_string();
        let meta = std::fs::symlink_metadata(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(TokenFileError::NotAFile { path: shown });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let daemon = unsafe { libc::geteuid() };
        if meta.uid() != daemon {
            return Err(TokenFileError::Owner {
                path: shown,
                owner: meta.uid(),
                daemon,
            });
        }
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
            let line = strip_comment(raw).trim();
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

    /// Revokes every token (the tokens file is gone or unsafe).
    fn revoke_all(&self) {
        self.replace(Tokens {
            entries: Vec::new(),
        });
    }
}

/// How often the tokens file is checked for changes.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the tokens file whenever its modification time, size, owner, mode or presence
/// changes, so a token can be added or revoked without a restart. A file that was removed, or
/// became unreadable or unsafe, revokes every token (review L6: removing the file must revoke);
/// a file whose text is wrong is refused with an error log and the tokens in force stay. The
/// task ends when `stop` turns true.
pub async fn watch_file(
    store: TokenStore,
    path: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stamp = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len(), m.uid(), m.mode(), m.ino()))
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
            Err(e) if e.revokes() => {
                tracing::error!(error = %e, "admin tokens file removed, unreadable or unsafe: every admin token is revoked");
                store.revoke_all();
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
    fn a_hash_inside_a_token_is_part_of_it() {
        let t = Tokens::parse("alice admin abc#defghijklmnopqrstu # the admin\n#bob admin x\n")
            .unwrap();
        assert_eq!(t.check(b"abc#defghijklmnopqrstu").unwrap().name, "alice");
        assert_eq!(t.check(b"abc"), None);
        assert_eq!(t.entries.len(), 1);
    }

    fn token_file(dir: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("tokens");
        std::fs::write(&p, "alice admin 0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn a_symlinked_or_foreign_tokens_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = token_file(dir.path());
        assert!(Tokens::load(&real).is_ok());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = Tokens::load(&link).unwrap_err();
        assert!(
            matches!(e, TokenFileError::NotAFile { .. }) && e.revokes(),
            "{e}"
        );
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let other = if me == 0 { 1 } else { me };
        if me == 0 {
            std::os::unix::fs::chown(&real, Some(other), None).unwrap();
            let e = Tokens::load(&real).unwrap_err();
            assert!(
                matches!(
                    e,
                    TokenFileError::Owner {
                        owner: 1,
                        daemon: 0,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn removing_the_tokens_file_revokes_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path());
        let store = TokenStore::new(Tokens::load(&path).unwrap());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(watch_file(store.clone(), path.clone(), stop));
        let token = b"0123456789abcdef0123";
        assert!(store.current().check(token).is_some());
        // A malformed edit keeps the tokens in force.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        std::fs::write(&path, "alice admin short\n").unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert!(
            store.current().check(token).is_some(),
            "a typo must not lock admins out"
        );
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert!(
            store.current().check(token).is_none(),
            "removed tokens file: token still valid"
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

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
