//! Deterministic UIDs: the same job key always gives the same UID, so a retried job re-sends the
//! same SEG (same SOP Instance UID) and the PACS can recognise it. Never use a random UID here.

use sha2::{Digest, Sha256};

/// Maps a seed (for example a job key) to a UID under the `2.25` root (PS3.5 B.2): `2.25.` and the
/// decimal value of the first 128 bits of SHA-256(seed). At most 44 characters, well under 64.
pub fn deterministic_uid(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_valid_and_distinct() {
        let a = deterministic_uid("job-42/seg");
        assert_eq!(a, deterministic_uid("job-42/seg"));
        assert_ne!(a, deterministic_uid("job-43/seg"));
        assert!(a.len() <= 64, "{a}");
        assert!(a.starts_with("2.25."));
        let tail = &a[5..];
        assert!(tail.chars().all(|c| c.is_ascii_digit()));
        assert!(
            !tail.starts_with('0') || tail == "0",
            "no leading zero: {a}"
        );
    }
}
