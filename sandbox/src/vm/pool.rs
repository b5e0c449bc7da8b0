//! Prepared crid-vmm guests (`vm.crid_vmm_pool`): a few monitors started ahead of need, each
//! with its crid-vmm's VM already built (see [`crate::monitor::prepared`]), so that a
//! crid-vmm guest is handed one (at `CreateContainer`, see `container::vm_armed`) instead of
//! starting two processes.
//! The guest's memory is registered with KVM ahead (registering it after the irqchip waits for a
//! grace period), so entries are prepared for one guest size, the default one
//! (`vm.default_memory_mib`); other guests start the usual way.
//!
//! Bounded ([`MAX_SIZE`]), filled in the background some time after a guest of its size
//! started (so the refill does not compete for the CPU with that start; a node that runs no
//! such guest prepares none), and nothing is prepared when crid-vmm cannot run here
//! ([`on_host`]). An entry ends when it is
//! dropped (crid closes its socket): on removal from the pool, and with crid itself, whose
//! exit closes every socket, so no prepared process outlives crid, even a killed one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::accel::{AcceleratorMode, KvmProbe};
use super::launch::VmSettings;
use crate::monitor::prepared::{self, PreparedMonitor};
use crate::prepared_pool::Ready;

/// The largest pool configurable.
pub const MAX_SIZE: usize = 16;

/// How long a refill waits after an entry was taken: long enough that preparing the next
/// entry (two processes, a VM) does not compete for the CPU with the guest that took it (armed
/// at `CreateContainer`, running a few milliseconds later), short enough that the next
/// `CreateContainer` of a burst or of a pod started right after finds the entry waiting.
pub const REFILL_DELAY: Duration = Duration::from_millis(20);

/// How long preparing waits after it failed before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// An entry of the pool.
pub trait Entry: Send + 'static {
    /// Whether it can still be handed a container.
    fn alive(&self) -> bool;
}

impl Entry for PreparedMonitor {
    fn alive(&self) -> bool {
        PreparedMonitor::alive(self)
    }
}

/// How long a prepared monitor may take to report its VMM ready.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pool `settings` ask for on this host, empty until a guest of its size starts (see
/// [`Pool::take_and_refill`]); `None` when it is empty or crid-vmm cannot run here: KVM unusable or not
/// to be used (`vm.accelerator = "tcg"`), no crid-vmm binary, or no `crid-monitor` next to
/// `monitor_exe` (a prepared monitor detaches by forking, as only the small binary does). Its
/// processes name `<state>/vmm-pool` on their command lines and append their errors to
/// `monitor.log` there.
pub fn on_host(
    settings: &VmSettings,
    kvm: &KvmProbe,
    monitor_exe: &Path,
    state: &Path,
) -> Option<Arc<Pool<PreparedMonitor>>> {
    if settings.crid_vmm_pool == 0 {
        return None;
    }
    let (monitor, vmm) = match binaries(settings, kvm, monitor_exe, super::crid_vmm::BINARY) {
        Ok(found) => found,
        Err(why) => {
            tracing::info!(reason = %why, "vm.crid_vmm_pool: no crid-vmm guest is prepared");
            return None;
        }
    };
    let dir = state.join("vmm-pool");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "vm.crid_vmm_pool: no crid-vmm guest is prepared");
        return None;
    }
    let memory_mib = settings.default_memory_mib;
    let log = dir.join("monitor.log");
    let prepare: Prepare<PreparedMonitor> =
        Box::new(move || prepared::spawn(&monitor, &vmm, memory_mib, &dir, &log, PREPARE_TIMEOUT));
    Some(Arc::new(Pool::new(
        settings.crid_vmm_pool,
        memory_mib,
        prepare,
    )))
}

/// The `crid-monitor` next to `monitor_exe` and the VMM binary `vmm` that prepared guests
/// run, or why none can be prepared here: KVM unusable or not to be used (`vm.accelerator =
/// "tcg"`), no such VMM, or no `crid-monitor` (a prepared monitor detaches by forking, as only
/// the small binary does).
pub fn binaries(
    settings: &VmSettings,
    kvm: &KvmProbe,
    monitor_exe: &Path,
    vmm: &str,
) -> Result<(PathBuf, PathBuf), String> {
    if !kvm.usable || settings.accelerator == AcceleratorMode::Tcg {
        return Err("KVM is not usable or not to be used".to_owned());
    }
    let vmm = settings.binary(vmm).map_err(|e| e.to_string())?;
    let monitor = monitor_exe.with_file_name(crate::monitor::MONITOR_BINARY);
    if !monitor.is_file() {
        return Err(format!("{} is missing", monitor.display()));
    }
    Ok((monitor, vmm))
}

/// Makes one entry (blocking).
pub type Prepare<E> = Box<dyn Fn() -> std::io::Result<E> + Send + Sync>;

/// The prepared entries and their refilling.
pub struct Pool<E: Entry> {
    size: usize,
    /// How long a refill waits after a take ([`REFILL_DELAY`] unless set).
    refill_delay: Duration,
    /// The guest size every entry is prepared for, in MiB.
    memory_mib: u64,
    prepare: Prepare<E>,
    ready: Ready<E>,
    failed_at: Mutex<Option<Instant>>,
}

impl<E: Entry> Pool<E> {
    /// A pool of `size` entries (at most [`MAX_SIZE`]) for guests of `memory_mib` MiB.
    pub fn new(size: usize, memory_mib: u64, prepare: Prepare<E>) -> Pool<E> {
        Pool {
            size: size.min(MAX_SIZE),
            refill_delay: REFILL_DELAY,
            memory_mib,
            prepare,
            ready: Ready::new(),
            failed_at: Mutex::new(None),
        }
    }

    /// The pool with refills waiting `delay` after a take instead of [`REFILL_DELAY`].
    pub fn with_refill_delay(self, delay: Duration) -> Pool<E> {
        Pool {
            refill_delay: delay,
            ..self
        }
    }

    /// How many entries wait.
    pub fn waiting(&self) -> usize {
        self.ready.waiting()
    }

    /// The oldest live entry for a guest of `memory_mib` MiB; dead entries met on the way are
    /// dropped. `None` for another size or when none waits.
    pub fn take(&self, memory_mib: u64) -> Option<E> {
        if memory_mib != self.memory_mib {
            return None;
        }
        self.ready.take(E::alive)
    }

    /// [`Pool::take`], then a [`Pool::refill`] after the refill delay when the guest is of the
    /// pool's size, hit or miss: the first such guest fills the pool, so a node that runs
    /// none prepares none.
    pub fn take_and_refill(self: &Arc<Self>, memory_mib: u64) -> Option<E> {
        if memory_mib != self.memory_mib {
            return None;
        }
        let entry = self.take(memory_mib);
        self.refill(self.refill_delay);
        entry
    }

    /// Prepares entries until the pool is full or preparing fails (then not again before
    /// `RETRY_AFTER` has passed). Blocking; one caller at a time (see [`Pool::refill`]).
    /// Returns how many it added.
    pub fn fill(&self) -> usize {
        let failed_recently = self
            .failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER);
        if failed_recently {
            return 0;
        }
        self.ready.entries().retain(|e| e.alive());
        let mut added = 0;
        while self.waiting() < self.size {
            match (self.prepare)() {
                Ok(entry) => {
                    self.ready.entries().push(entry);
                    added += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare a pool entry; retrying later");
                    *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    break;
                }
            }
        }
        added
    }

    /// Tops the pool up in a background task after `delay` (one task at a time). Must be
    /// called inside the tokio runtime.
    pub fn refill(self: &Arc<Self>, delay: Duration) {
        if self.size == 0 {
            return;
        }
        let pool = self.clone();
        self.ready.refill(delay, async move {
            let _ = tokio::task::spawn_blocking(move || pool.fill()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// An entry that counts its drops (a discarded prepared monitor ends).
    struct Fake {
        id: usize,
        alive: Arc<AtomicBool>,
        dropped: Arc<AtomicUsize>,
    }

    impl Entry for Fake {
        fn alive(&self) -> bool {
            self.alive.load(Ordering::SeqCst)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Counters {
        made: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
        alive: Arc<AtomicBool>,
        fail: Arc<AtomicBool>,
    }

    fn pool(size: usize) -> (Arc<Pool<Fake>>, Counters) {
        let c = Counters {
            made: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
            alive: Arc::new(AtomicBool::new(true)),
            fail: Arc::new(AtomicBool::new(false)),
        };
        let (made, dropped, alive, fail) = (
            c.made.clone(),
            c.dropped.clone(),
            c.alive.clone(),
            c.fail.clone(),
        );
        let prepare: Prepare<Fake> = Box::new(move || {
            if fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("no /dev/kvm"));
            }
            Ok(Fake {
                id: made.fetch_add(1, Ordering::SeqCst),
                alive: alive.clone(),
                dropped: dropped.clone(),
            })
        });
        (Arc::new(Pool::new(size, 256, prepare)), c)
    }

    #[test]
    fn fills_up_to_its_size_and_hands_out_the_oldest_for_its_guest_size_only() {
        let (p, c) = pool(2);
        assert_eq!(p.fill(), 2);
        assert_eq!(p.fill(), 0, "full");
        assert_eq!(c.made.load(Ordering::SeqCst), 2);
        assert!(p.take(128).is_none(), "another guest size");
        assert_eq!(p.take(256).map(|e| e.id), Some(0));
        assert_eq!(p.waiting(), 1);
        assert_eq!(p.fill(), 1);
        assert_eq!(p.take(256).map(|e| e.id), Some(1));
        assert_eq!(p.take(256).map(|e| e.id), Some(2));
        assert!(p.take(256).is_none());
    }

    #[test]
    fn is_bounded_and_a_size_of_zero_prepares_nothing() {
        let (p, c) = pool(MAX_SIZE + 10);
        assert_eq!(p.fill(), MAX_SIZE);
        let (p, _) = pool(0);
        assert_eq!(p.fill(), 0);
        assert!(p.take(256).is_none());
        assert_eq!(c.made.load(Ordering::SeqCst), MAX_SIZE);
    }

    #[test]
    fn dead_entries_are_dropped_not_handed_out() {
        let (p, c) = pool(2);
        p.fill();
        c.alive.store(false, Ordering::SeqCst);
        assert!(p.take(256).is_none());
        assert_eq!(c.dropped.load(Ordering::SeqCst), 2);
        c.alive.store(true, Ordering::SeqCst);
        assert_eq!(p.fill(), 2);
    }

    #[test]
    fn a_failure_stops_preparing_for_a_while() {
        let (p, c) = pool(2);
        c.fail.store(true, Ordering::SeqCst);
        assert_eq!(p.fill(), 0);
        c.fail.store(false, Ordering::SeqCst);
        assert_eq!(p.fill(), 0, "not retried at once");
        assert_eq!(c.made.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dropping_the_pool_discards_its_entries() {
        let (p, c) = pool(3);
        p.fill();
        drop(p);
        assert_eq!(c.dropped.load(Ordering::SeqCst), 3);
    }

    /// Waits (bounded) until `p` has `n` entries waiting and `made` were made in all.
    async fn until_filled(p: &Pool<Fake>, c: &Counters, n: usize, made: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.waiting() < n || c.made.load(Ordering::SeqCst) < made {
            assert!(Instant::now() < deadline, "never filled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_pool_may_wait_longer_before_it_refills() {
        let (p, c) = pool(1);
        let p = Arc::new(
            Arc::into_inner(p)
                .unwrap()
                .with_refill_delay(Duration::from_millis(300)),
        );
        assert!(p.take_and_refill(256).is_none());
        tokio::time::sleep(REFILL_DELAY * 2).await;
        assert_eq!(c.made.load(Ordering::SeqCst), 0, "not yet");
        until_filled(&p, &c, 1, 1).await;
    }

    #[tokio::test]
    async fn the_first_guest_of_its_size_fills_it_and_each_take_refills_it() {
        let (p, c) = pool(1);
        assert!(p.take_and_refill(128).is_none());
        tokio::time::sleep(REFILL_DELAY * 2).await;
        assert_eq!(
            c.made.load(Ordering::SeqCst),
            0,
            "another size prepares nothing"
        );
        assert!(p.take_and_refill(256).is_none(), "empty until then");
        until_filled(&p, &c, 1, 1).await;
        assert_eq!(p.take_and_refill(256).map(|e| e.id), Some(0));
        until_filled(&p, &c, 1, 2).await;
        assert_eq!(p.take(256).map(|e| e.id), Some(1));
    }
}
