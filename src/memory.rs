//! The pipeline's total memory budget (issue 16 item 1): every job reserves, before it decodes
//! a series, what that series costs ([`crate::dicom::pixels::series_bytes`]: its masks, the
//! instance being read, the frames in flight) from one budget shared by all workers
//! (`pipeline.memory_budget_mb`). A job whose series does not fit the per-job budget
//! (`pipeline.max_decoded_mb`) fails before anything is decoded; one that fits waits, in
//! arrival order, until the jobs ahead of it release enough (back-pressure), so that N
//! workers never hold more than the budget between them, whatever they are sent.
//!
//! Counted in MiB. ONNX Runtime's own arenas and the models are not part of this budget (they
//! do not grow with the input); the SCP's buffers are bounded per association (one PDU plus
//! 64 KiB, see [`crate::dicom::scp`]).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const MIB: u64 = 1024 * 1024;

/// A reservation asked for more than the whole budget.
#[derive(Debug, thiserror::Error)]
#[error("needs {need_mib} MiB, more than the whole pipeline.memory_budget_mb ({total_mib} MiB)")]
pub struct TooLarge {
    /// What was asked, in MiB.
    pub need_mib: u64,
    /// The budget, in MiB.
    pub total_mib: u64,
}

/// The shared budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_mib: u32,
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
    /// A budget of `total_mb` MiB (at least 1).
    pub fn new(total_mb: u64) -> MemoryBudget {
        let total_mib = total_mb.clamp(1, u32::MAX as u64) as u32;
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total_mib as usize)),
            total_mib,
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
        let b = MemoryBudget::new(100);
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
        let b = MemoryBudget::new(64);
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
