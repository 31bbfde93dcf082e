//! Waiting for something to happen, with a deadline.

use super::Daemon;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Polls `f` until it returns true; panics with the daemon's log after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, d: &Daemon, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}; daemon log:\n{}", d.log());
}

/// Waits up to 10 s until `port` on loopback accepts connections.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
