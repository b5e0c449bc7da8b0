//! The mechanism the pools of things prepared ahead of need share (`vm/pool.rs`: crid-vmm
//! monitors; `pod/warm.rs`: pod networks): a list of ready entries handed out oldest first,
//! and a refill that runs in the background after a delay, one at a time. What an entry is,
//! how it is made and released, when the pool fills, how large it grows and when it stops are
//! each pool's own rules, so they stay with it: the monitors are made blocking, keyed by guest
//! size, held back after a failure and end when dropped; the networks are made and released
//! asynchronously, go stale with the configuration and are released at shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The ready entries of a pool and whether a refill runs.
pub(crate) struct Ready<E> {
    entries: Mutex<Vec<E>>,
    /// Shared with the refill task, which clears it when its fill is done.
    filling: Arc<AtomicBool>,
}

impl<E> Ready<E> {
    pub(crate) fn new() -> Ready<E> {
        Ready {
            entries: Mutex::new(Vec::new()),
            filling: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The entries, oldest first (a fill that panicked leaves them usable).
    pub(crate) fn entries(&self) -> MutexGuard<'_, Vec<E>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many entries wait.
    pub(crate) fn waiting(&self) -> usize {
        self.entries().len()
    }

    /// The oldest entry `usable` accepts; the unusable ones met on the way are dropped.
    pub(crate) fn take(&self, usable: impl Fn(&E) -> bool) -> Option<E> {
        let mut entries = self.entries();
        while !entries.is_empty() {
            let entry = entries.remove(0);
            if usable(&entry) {
                return Some(entry);
            }
        }
        None
    }

    /// Whether a refill is waiting or filling.
    pub(crate) fn filling(&self) -> bool {
        self.filling.load(Ordering::SeqCst)
    }

    /// Runs `fill` in a background task after `delay`, unless a refill is already under way
    /// (then `fill` is dropped unrun). Must be called inside the tokio runtime.
    pub(crate) fn refill(&self, delay: Duration, fill: impl Future<Output = ()> + Send + 'static) {
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let filling = self.filling.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            fill.await;
            filling.store(false, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn hands_out_the_oldest_usable_entry_and_drops_the_unusable_before_it() {
        let ready = Ready::new();
        ready.entries().extend([1, 2, 3, 4]);
        assert_eq!(ready.take(|&e| e >= 3), Some(3));
        assert_eq!(ready.waiting(), 1, "1 and 2 dropped");
        assert_eq!(ready.take(|_| false), None);
        assert_eq!(ready.waiting(), 0);
    }

    #[tokio::test]
    async fn runs_one_refill_at_a_time_after_its_delay() {
        let ready = Arc::new(Ready::<()>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        for _ in 0..3 {
            let runs = runs.clone();
            ready.refill(Duration::from_millis(20), async move {
                runs.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(ready.filling());
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready.filling() {
            assert!(Instant::now() < deadline, "never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the others found it under way"
        );
        let again = runs.clone();
        ready.refill(Duration::ZERO, async move {
            again.fetch_add(1, Ordering::SeqCst);
        });
        while ready.filling() {
            assert!(Instant::now() < deadline, "never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a new refill once the last one is done"
        );
    }
}
