//! Fetch concurrency. At most [`MAX_CONCURRENT_FETCHES`] discovery/JWKS fetches run at once;
//! [`RESERVED_FOR_SCHEDULE`] of those slots can only be taken by the refresher's own work
//! (start-up loads, scheduled refreshes, retries with backoff). Request-triggered fetches are
//! something a client can cause, so however many of them queue, a rotation's refresh never
//! waits behind them.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Most discovery/JWKS fetches in flight at once, process-wide.
pub const MAX_CONCURRENT_FETCHES: usize = 16;
/// Slots only scheduled work may use (of [`MAX_CONCURRENT_FETCHES`]).
pub const RESERVED_FOR_SCHEDULE: usize = 4;

/// Who asked for a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FetchKind {
    /// The refresher itself: start-up loads, scheduled refreshes, backoff retries.
    Scheduled,
    /// A request (unknown `kid`, first sight of a realm, stale keys).
    OnDemand,
}

/// The two pools behind the concurrency bound.
pub(super) struct FetchSlots {
    shared: Semaphore,
    reserved: Semaphore,
}

impl Default for FetchSlots {
    fn default() -> Self {
        Self::new(MAX_CONCURRENT_FETCHES, RESERVED_FOR_SCHEDULE)
    }
}

impl FetchSlots {
    /// `total` slots of which `reserved` are for scheduled work (`reserved < total`).
    pub(super) fn new(total: usize, reserved: usize) -> Self {
        let reserved = reserved.min(total.saturating_sub(1));
        Self {
            shared: Semaphore::new(total - reserved),
            reserved: Semaphore::new(reserved),
        }
    }

    /// Waits for a slot: on-demand work from the shared pool only; scheduled work from
    /// whichever pool frees first. `None` only if a semaphore was closed (never done).
    pub(super) async fn acquire(&self, kind: FetchKind) -> Option<SemaphorePermit<'_>> {
        if let Ok(p) = self.shared.try_acquire() {
            return Some(p);
        }
        match kind {
            FetchKind::OnDemand => self.shared.acquire().await.ok(),
            FetchKind::Scheduled => tokio::select! {
                p = self.shared.acquire() => p.ok(),
                p = self.reserved.acquire() => p.ok(),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn on_demand_work_cannot_take_the_reserved_slots() {
        let slots = FetchSlots::new(16, 4);
        let mut held = Vec::new();
        for _ in 0..12 {
            held.push(slots.acquire(FetchKind::OnDemand).now_or_never().unwrap());
        }
        assert!(
            slots.acquire(FetchKind::OnDemand).now_or_never().is_none(),
            "the 13th request-triggered fetch waits"
        );
        let mut sched = Vec::new();
        for _ in 0..4 {
            sched.push(
                slots
                    .acquire(FetchKind::Scheduled)
                    .now_or_never()
                    .expect("a scheduled fetch gets a reserved slot at once"),
            );
        }
        assert!(
            slots.acquire(FetchKind::Scheduled).now_or_never().is_none(),
            "all 16 slots in use: the bound holds"
        );
        // A freed shared slot serves whoever waits next, scheduled work included.
        held.pop();
        assert!(slots.acquire(FetchKind::Scheduled).now_or_never().is_some());
    }

    #[tokio::test]
    async fn scheduled_work_uses_shared_slots_first() {
        let slots = FetchSlots::new(3, 1);
        let a = slots.acquire(FetchKind::Scheduled).now_or_never().unwrap();
        let b = slots.acquire(FetchKind::Scheduled).now_or_never().unwrap();
        // The two shared slots are gone; the reserved one is still free for scheduled work.
        assert!(slots.acquire(FetchKind::OnDemand).now_or_never().is_none());
        assert!(slots.acquire(FetchKind::Scheduled).now_or_never().is_some());
        drop((a, b));
        assert_eq!(FetchSlots::new(1, 5).shared.available_permits(), 1);
    }
}
