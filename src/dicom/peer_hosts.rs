//! Addresses of the peers configured by host name, resolved off the association path.
//!
//! Admission compares a connection's address with its calling AE's configured host. For a
//! host given by name that comparison used to run `getaddrinfo` inside the access check, on the
//! async runtime, for any stranger presenting a known AE title: with slow DNS a few dozen such
//! connections stalled every runtime thread (review L2). Now names are resolved at start and
//! every [`REFRESH`] by a task of their own, each lookup bounded by [`LOOKUP_TIMEOUT`]; the
//! check reads the last answer and never waits. A name that does not resolve keeps its last
//! known addresses (a DNS outage does not lock known peers out); one never resolved matches
//! nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often configured host names are looked up again.
pub const REFRESH: Duration = Duration::from_secs(60);
/// The longest one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolved addresses of configured peer host names (IP literals need none).
#[derive(Debug, Clone, Default)]
pub struct PeerHosts {
    names: Arc<Vec<String>>,
    resolved: Arc<RwLock<HashMap<String, Vec<IpAddr>>>>,
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canon(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl PeerHosts {
    /// The names among `hosts` (IP literals are compared as they are), none resolved yet.
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> PeerHosts {
        let mut names: Vec<String> = hosts
            .into_iter()
            .filter(|h| h.parse::<IpAddr>().is_err())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        PeerHosts {
            names: Arc::new(names),
            resolved: Default::default(),
        }
    }

    /// Whether a connection from `ip` comes from `host` (an IP literal, or a name as last
    /// resolved). Never blocks.
    pub fn matches(&self, host: &str, ip: IpAddr) -> bool {
        let ip = canon(ip);
        if let Ok(h) = host.parse::<IpAddr>() {
            return canon(h) == ip;
        }
        self.resolved
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .is_some_and(|addrs| addrs.iter().any(|a| canon(*a) == ip))
    }

    /// Looks every name up once (concurrently, each within [`LOOKUP_TIMEOUT`]). A failed
    /// lookup keeps the name's last addresses. Returns the names that did not resolve.
    pub async fn refresh(&self) -> Vec<String> {
        let mut lookups = tokio::task::JoinSet::new();
        for name in self.names.iter().cloned() {
            lookups.spawn(async move {
                let target = (name.clone(), 0u16);
                let r = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(target)).await;
                let addrs: Vec<IpAddr> = match r {
                    Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
                    _ => Vec::new(),
                };
                (name, addrs)
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = lookups.join_next().await {
            let Ok((name, addrs)) = done else { continue };
            if addrs.is_empty() {
                failed.push(name);
            } else {
                self.resolved
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, addrs);
            }
        }
        failed.sort();
        failed
    }

    /// Resolves now, then every [`REFRESH`] until `shutdown` turns true (when there are names
    /// at all). Failures are logged with the name.
    pub async fn keep_fresh(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.names.is_empty() {
            return;
        }
        loop {
            for name in self.refresh().await {
                tracing::warn!(host = %name, "a configured peer host name does not resolve: connections are matched against its last known addresses");
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_match_only_once_resolved_and_literals_always() {
        let hosts = PeerHosts::new(["localhost", "127.0.0.1", "no-such-host.invalid"]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(hosts.matches("127.0.0.1", lo) && hosts.matches("127.0.0.1", mapped));
        assert!(
            !hosts.matches("localhost", lo),
            "not resolved yet: no match, and no lookup"
        );
        let failed = hosts.refresh().await;
        assert_eq!(failed, vec!["no-such-host.invalid".to_string()]);
        assert!(hosts.matches("localhost", lo));
        assert!(!hosts.matches("localhost", "10.1.2.3".parse().unwrap()));
        assert!(!hosts.matches("no-such-host.invalid", lo));
        assert!(!hosts.matches("unconfigured-name", lo));
    }
}
