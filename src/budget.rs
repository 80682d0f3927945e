//! A global budget of bytes that work in progress may hold at once.
//!
//! Each registry file is bounded by `max_registry_bytes`, but without a bound on their sum any
//! number of concurrent gzip bombs could each inflate that much at the same time. The mirror
//! reserves what a registry file declares it will inflate to, times what decoding it may add
//! (see `Mirror`'s `verify_content`), before inflating it, and gives it back when verification
//! ends, so the memory held by verifications in progress stays near the budget however many
//! requests bring them.
//!
//! A [`Budget`] is a fair `tokio` semaphore whose permits are KiB (a `u32` count of KiB reaches
//! 4 TiB). Waiters are served in order, so a large reservation is not starved by small ones; a
//! reservation larger than the whole budget is capped to the budget, so it waits for everything
//! else to finish and then always proceeds.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: u64 = 1024;

/// Bytes that may be held at once, shared by every clone.
#[derive(Clone, Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    units: u32,
}

/// Bytes held from a [`Budget`] until this is dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Reservation {
    /// What this reservation holds (rounded up to whole KiB, capped at the budget).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Budget {
    /// A budget of `bytes`, rounded up to whole KiB (at least one).
    pub fn new(bytes: u64) -> Budget {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        Budget { permits: Arc::new(Semaphore::new(units as usize)), units }
    }

    /// The budget for registry files being verified: `max(max_registry_bytes, 64 MiB)`.
    ///
    /// It must hold a single registry file of the largest allowed size: a reservation larger
    /// than the budget is capped to all of it, so the largest file waits for the others and
    /// then always proceeds, alone. Below `max_registry_bytes` it would serialise every large
    /// file needlessly, so it is never smaller than 64 MiB: room for thousands of package
    /// records (a few KiB each) at once, or for `/versions` and `/names` beside them. What
    /// verifications hold at once then stays near this budget however many bombs arrive,
    /// instead of growing with each concurrent request.
    pub fn for_registry_files(max_registry_bytes: u64) -> Budget {
        Budget::new(max_registry_bytes.max(64 << 20))
    }

    /// The whole budget in bytes.
    pub fn capacity(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Waits until `bytes` are free (rounded up to whole KiB; capped at the whole budget) and
    /// holds them until the returned reservation is dropped. Dropping the future while it waits
    /// takes nothing.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = bytes.div_ceil(UNIT).min(u64::from(self.units)) as u32;
        let permit = self.permits.clone().acquire_many_owned(units).await.expect("the semaphore is never closed");
        Reservation { _permit: permit, bytes: u64::from(units) * UNIT }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back_on_drop() {
        let budget = Budget::new(10 << 10);
        assert_eq!(budget.capacity(), 10 << 10);
        let a = budget.reserve(6 << 10).await;
        assert_eq!((a.bytes(), budget.available()), (6 << 10, 4 << 10));
        let small = budget.reserve(1).await;
        assert_eq!(small.bytes(), 1 << 10, "rounded up to a whole KiB");
        // 6 KiB more does not fit beside the 7 KiB held: it waits until they are dropped.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(6 << 10).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a reservation beyond the budget waits");
        drop(a);
        drop(small);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), 6 << 10);
        assert_eq!(budget.available(), 10 << 10, "everything given back");
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_budget_is_capped_and_proceeds_alone() {
        let budget = Budget::new(4 << 10);
        let held = budget.reserve(1 << 10).await;
        let big = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(1 << 30).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!big.is_finished(), "it waits for the whole budget");
        drop(held);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), big).await.unwrap().unwrap(), 4 << 10);
    }

    #[test]
    fn the_registry_budget_holds_the_largest_file() {
        assert_eq!(Budget::for_registry_files(1 << 20).capacity(), 64 << 20);
        assert_eq!(Budget::for_registry_files(200 << 20).capacity(), 200 << 20);
        assert_eq!(Budget::new(0).capacity(), 1 << 10);
    }
}
