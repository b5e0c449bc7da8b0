//! The mechanism the pools of things prepared ahead of need share (`vm/pool.rs`: crid-vmm
//! monitors and paused QEMUs; `pod/warm.rs`: pod networks): a list of ready entries handed
//! out oldest first, and a refill that runs in the background after a delay, one at a time
//! (one asked for while another runs follows it). What an entry is, how it is made and
//! released, when the pool fills, how large it grows and when it stops are each pool's own
//! rules, so they stay with it: the monitors are made blocking, keyed by guest size, each
//! size held back after it failed, and end when dropped; the networks are made and released
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
    /// A refill was asked for since the running fill began: the refill task fills once more.
    asked: Arc<AtomicBool>,
}

impl<E> Ready<E> {
    pub(crate) fn new() -> Ready<E> {
        Ready {
            entries: Mutex::new(Vec::new()),
            filling: Arc::new(AtomicBool::new(false)),
            asked: Arc::new(AtomicBool::new(false)),
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

    /// The oldest entry.
    pub(crate) fn take(&self) -> Option<E> {
        let mut entries = self.entries();
        (!entries.is_empty()).then(|| entries.remove(0))
    }

    /// Whether a refill is waiting or filling.
    pub(crate) fn filling(&self) -> bool {
        self.filling.load(Ordering::SeqCst)
    }

    /// Runs the future `fill` makes in a background task after `delay`, unless a refill is
    /// already under way: then that task runs it once more, after the same delay, when its fill
    /// is done (what was taken meanwhile may not have been seen by it). Must be called inside
    /// the tokio runtime.
    pub(crate) fn refill<F>(&self, delay: Duration, fill: impl Fn() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send,
    {
        self.asked.store(true, Ordering::SeqCst);
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let (filling, asked) = (self.filling.clone(), self.asked.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(delay).await;
                asked.store(false, Ordering::SeqCst);
                fill().await;
                if asked.load(Ordering::SeqCst) {
                    continue;
                }
                filling.store(false, Ordering::SeqCst);
                // Asked for just before the store, and no new task took that over: once more.
                if !asked.load(Ordering::SeqCst) || filling.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn hands_out_the_oldest_entry() {
        let ready = Ready::new();
        ready.entries().extend([1, 2]);
        assert_eq!(ready.take(), Some(1));
        assert_eq!(ready.take(), Some(2));
        assert_eq!(ready.take(), None);
    }

    #[tokio::test]
    async fn runs_one_refill_at_a_time_after_its_delay() {
        let ready = Arc::new(Ready::<()>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        for _ in 0..3 {
            let runs = runs.clone();
            ready.refill(Duration::from_millis(20), move || {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                }
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
        ready.refill(Duration::ZERO, move || {
            let again = again.clone();
            async move {
                again.fetch_add(1, Ordering::SeqCst);
            }
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

    #[tokio::test]
    async fn a_refill_asked_for_while_one_fills_runs_once_more_after_it() {
        let ready = Arc::new(Ready::<()>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (go, wait) = (Arc::new(AtomicBool::new(false)), Duration::from_millis(5));
        let fill = |runs: Arc<AtomicUsize>, go: Arc<AtomicBool>| {
            move || {
                let (runs, go) = (runs.clone(), go.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // The first fill holds on until the test has asked again.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !go.load(Ordering::SeqCst) && Instant::now() < deadline {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        };
        ready.refill(Duration::ZERO, fill(runs.clone(), go.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "never started");
            tokio::time::sleep(wait).await;
        }
        // Asked for while it fills (e.g. an entry of another size taken): not dropped.
        ready.refill(Duration::ZERO, fill(runs.clone(), go.clone()));
        go.store(true, Ordering::SeqCst);
        while ready.filling() {
            assert!(Instant::now() < deadline, "never finished");
            tokio::time::sleep(wait).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
