//! Failed admin authentications, counted per peer address: after `admin.max_failed_auth`
//! wrong tokens within `admin.failed_auth_lockout_s` seconds, every call from that address is
//! answered RESOURCE_EXHAUSTED for that many seconds, a valid token included, so a guess made
//! during the lockout tells nothing. Memory is bounded: at most [`MAX_PEERS`] addresses are
//! tracked, and entries whose failures and lockout have expired are dropped first.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most peer addresses tracked at once.
pub const MAX_PEERS: usize = 4096;

#[derive(Debug, Default)]
struct Peer {
    failures: VecDeque<Instant>,
    until: Option<Instant>,
}

impl Peer {
    fn expired(&self, now: Instant, period: Duration) -> bool {
        self.until.is_none_or(|u| u <= now)
            && self
                .failures
                .back()
                .is_none_or(|&t| now.duration_since(t) >= period)
    }
}

/// What [`Lockout::failed`] did with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; this many failures fall within the period now.
    Counted(u32),
    /// This failure reached the limit: the address is locked out from now on.
    LockedOut,
    /// Not tracked: [`MAX_PEERS`] other addresses are being tracked.
    Untracked,
}

/// Per-address failure counts and lockouts.
#[derive(Debug)]
pub struct Lockout {
    max: u32,
    period: Duration,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

impl Lockout {
    /// `max` failures within `period` lock an address out for `period`.
    pub fn new(max: u32, period: Duration) -> Lockout {
        Lockout {
            max: max.max(1),
            period,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// How long a lockout lasts (and the window failures are counted in).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How long `ip` stays locked out, if it is now.
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .get(&ip)
            .and_then(|p| p.until)
            .filter(|&u| u > now)
            .map(|u| u - now)
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Failure {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&ip) && peers.len() >= MAX_PEERS {
            let period = self.period;
            peers.retain(|_, p| !p.expired(now, period));
            if peers.len() >= MAX_PEERS {
                return Failure::Untracked;
            }
        }
        let peer = peers.entry(ip).or_default();
        while peer
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.period)
        {
            peer.failures.pop_front();
        }
        peer.failures.push_back(now);
        if peer.failures.len() as u32 >= self.max {
            peer.failures.clear();
            peer.until = Some(now + self.period);
            Failure::LockedOut
        } else {
            Failure::Counted(peer.failures.len() as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_max_failures_within_the_period() {
        let l = Lockout::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.failed(a, t0), Failure::Counted(1));
        // Failures older than the period do not count.
        assert_eq!(
            l.failed(a, t0 + Duration::from_secs(61)),
            Failure::Counted(1)
        );
        let t1 = t0 + Duration::from_secs(62);
        assert_eq!(l.failed(a, t1), Failure::Counted(2));
        assert_eq!(l.failed(b, t1), Failure::Counted(1));
        assert_eq!(l.failed(a, t1), Failure::LockedOut);
        assert_eq!(l.locked(a, t1), Some(Duration::from_secs(60)));
        assert_eq!(l.locked(b, t1), None);
        assert_eq!(l.locked(a, t1 + Duration::from_secs(60)), None);
    }

    #[test]
    fn tracks_a_bounded_number_of_addresses() {
        let l = Lockout::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_PEERS as u32 {
            l.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        let new: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(l.failed(new, t0), Failure::Untracked);
        // Once the old entries expire, room is made.
        assert_eq!(
            l.failed(new, t0 + Duration::from_secs(60)),
            Failure::Counted(1)
        );
    }
}
