//! Memory budgets shared across tasks (issue 16 item 1), counted in MiB, reserved first come
//! first served: a task that does not fit waits until the ones ahead of it give enough back
//! (back-pressure), so that together they never hold more than the budget, whatever they are
//! sent. A reservation larger than the whole budget is refused at once.
//!
//! Two budgets use it:
//! - `pipeline.memory_budget_mb`: every job reserves, before it decodes a series, what the
//!   series costs ([`crate::dicom::pixels::series_bytes`]: its masks, the instance being read,
//!   the frames in flight). A series over the per-job `pipeline.max_decoded_mb` fails first.
//! - `dicom.max_buffered_mb`: every association reserves its receive buffers (one PDU of
//!   `dicom.max_pdu` plus the 64 KiB head kept for validation) before it reads its first
//!   message, across the plain and TLS listeners ([`crate::dicom::scp`]).
//!
//! ONNX Runtime's own arenas and the models are not part of either (they do not grow with the
//! input).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const MIB: u64 = 1024 * 1024;

/// A reservation asked for more than the whole budget.
#[derive(Debug, thiserror::Error)]
#[error("needs {need_mib} MiB, more than the whole {name} ({total_mib} MiB)")]
pub struct TooLarge {
    /// What was asked, in MiB.
    pub need_mib: u64,
    /// The budget, in MiB.
    pub total_mib: u64,
    /// The budget's configuration key.
    pub name: &'static str,
}

/// The shared budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_mib: u32,
    name: &'static str,
}

/// Memory held by one job; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    mib: u32,
}

impl Reservation {
    /// The reserved size, in MiB.
    pub fn mib(&self) -> u32 {
        self.mib
    }
}

impl MemoryBudget {
    /// A budget of `total_mb` MiB (at least 1), named by its configuration key in messages.
    pub fn new(total_mb: u64, name: &'static str) -> MemoryBudget {
        let total_mib = total_mb.clamp(1, u32::MAX as u64) as u32;
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total_mib as usize)),
            total_mib,
            name,
        }
    }

    /// The whole budget, in MiB.
    pub fn total_mib(&self) -> u32 {
        self.total_mib
    }

    /// MiB reserved now.
    pub fn in_use_mib(&self) -> u32 {
        self.total_mib - self.permits.available_permits() as u32
    }

    /// MiB that `bytes` take, rounded up (at least 1).
    pub fn mib_of(bytes: u64) -> u64 {
        bytes.div_ceil(MIB).max(1)
    }

    /// Reserves `bytes` now if they are free.
    pub fn try_reserve(&self, bytes: u64) -> Result<Option<Reservation>, TooLarge> {
        let mib = self.fits(bytes)?;
        match self.permits.clone().try_acquire_many_owned(mib) {
            Ok(permit) => Ok(Some(Reservation {
                _permit: permit,
                mib,
            })),
            Err(_) => Ok(None),
        }
    }

    /// Reserves `bytes`, waiting (first come, first served) until the reservations ahead
    /// give enough back.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, TooLarge> {
        let mib = self.fits(bytes)?;
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(mib)
            .await
            .expect("the budget's semaphore is never closed");
        Ok(Reservation {
            _permit: permit,
            mib,
        })
    }

    fn fits(&self, bytes: u64) -> Result<u32, TooLarge> {
        let need_mib = Self::mib_of(bytes);
        if need_mib > self.total_mib as u64 {
            return Err(TooLarge {
                need_mib,
                total_mib: self.total_mib as u64,
                name: self.name,
            });
        }
        Ok(need_mib as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reservation_waits_until_enough_is_given_back() {
        let b = MemoryBudget::new(100, "pipeline.memory_budget_mb");
        let first = b.reserve(60 * MIB).await.unwrap();
        assert_eq!((first.mib(), b.in_use_mib()), (60, 60));
        assert!(b.try_reserve(50 * MIB).unwrap().is_none());
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(50 * MIB).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "50 MiB must wait while 60 of 100 are held"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting reservation goes through once memory is given back")
            .unwrap();
        assert_eq!((second.mib(), b.in_use_mib()), (50, 50));
        drop(second);
        assert_eq!(b.in_use_mib(), 0);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let b = MemoryBudget::new(64, "pipeline.memory_budget_mb");
        let e = b.reserve(65 * MIB).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "needs 65 MiB, more than the whole pipeline.memory_budget_mb (64 MiB)"
        );
        // Sizes round up to whole MiB, and nothing is free.
        assert_eq!(MemoryBudget::mib_of(1), 1);
        assert_eq!(MemoryBudget::mib_of(MIB + 1), 2);
        assert!(b.try_reserve(64 * MIB).unwrap().is_some());
    }
}
