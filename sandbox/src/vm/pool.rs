//! Prepared crid-vmm guests (`vm.crid_vmm_pool`): a few monitors started ahead of need, each
//! with its crid-vmm's VM already built (see [`crate::monitor::prepared`]), so that a
//! crid-vmm guest is handed one (at `CreateContainer`, see `container::vm_armed`) instead of
//! starting two processes.
//! The guest's memory is registered with KVM ahead (registering it after the irqchip waits for a
//! grace period), so each entry is prepared for one guest size (MiB). kubelet sizes a guest
//! from its pod's memory limit, so the pool keeps entries for the sizes guests were started
//! with lately (`Sizes`: at most [`MAX_SIZES`], the least recently started one forgotten),
//! sharing its entries among them; a guest of another size starts the usual way and becomes
//! one of them. Its vCPUs are no part of an entry: crid-vmm makes the others at the hand-over.
//!
//! Bounded ([`MAX_SIZE`] entries in all), filled in the background some time after a guest
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

/// How long preparing for a guest size waits after it failed before it tries that size again.
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

/// The pool `settings` ask for on this host, empty until a guest starts (see
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
    let log = dir.join("monitor.log");
    let prepare: Prepare<PreparedMonitor> = Box::new(move |memory_mib| {
        prepared::spawn(&monitor, &vmm, memory_mib, &dir, &log, PREPARE_TIMEOUT)
    });
    Some(Arc::new(Pool::new(settings.crid_vmm_pool, prepare)))
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

/// Makes one entry for a guest of the given size in MiB (blocking).
pub type Prepare<E> = Box<dyn Fn(u64) -> std::io::Result<E> + Send + Sync>;

/// The most guest sizes a pool keeps entries for at once.
pub const MAX_SIZES: usize = 4;

/// The guest sizes (MiB) started on this node lately, most recent first: the sizes a pool
/// prepares entries for. kubelet sizes each guest from its pod's memory limit, so these are
/// the limits of the pods the node runs; a node that started no guest has none.
#[derive(Debug)]
struct Sizes {
    recent: Vec<u64>,
    /// How many are kept.
    max: usize,
}

impl Sizes {
    fn new(max: usize) -> Sizes {
        Sizes {
            recent: Vec::new(),
            max,
        }
    }

    /// A guest of `memory_mib` started: its size becomes the most recent one, and past `max`
    /// sizes the least recently started is forgotten.
    fn started(&mut self, memory_mib: u64) {
        self.recent.retain(|&m| m != memory_mib);
        self.recent.insert(0, memory_mib);
        self.recent.truncate(self.max);
    }

    /// How many of `total` entries each size gets, most recent first: an even share, the
    /// remainder going to the most recent sizes.
    fn shares(&self, total: usize) -> Vec<(u64, usize)> {
        let n = self.recent.len();
        self.recent
            .iter()
            .enumerate()
            .map(|(i, &m)| (m, total / n + usize::from(i < total % n)))
            .collect()
    }
}

/// Why preparing for a guest size failed last, and when.
struct Failure {
    memory_mib: u64,
    at: Instant,
    reason: String,
}

/// A waiting entry and the guest size it was prepared for.
struct Sized<E> {
    memory_mib: u64,
    entry: E,
}

/// The prepared entries and their refilling.
pub struct Pool<E: Entry> {
    size: usize,
    /// How long a refill waits after a take ([`REFILL_DELAY`] unless set).
    refill_delay: Duration,
    prepare: Prepare<E>,
    ready: Ready<Sized<E>>,
    /// The sizes entries are prepared for; at most `size` of them, so each gets one.
    sizes: Mutex<Sizes>,
    /// Why and when preparing for a size last failed, until it succeeds or the size is
    /// forgotten. Per size: a size no entry can be made for (a pod's memory limit the VMM
    /// refuses) must not hold back the others.
    failures: Mutex<Vec<Failure>>,
}

impl<E: Entry> Pool<E> {
    /// A pool of `size` entries in all (at most [`MAX_SIZE`]) for guests of at most
    /// [`MAX_SIZES`] sizes.
    pub fn new(size: usize, prepare: Prepare<E>) -> Pool<E> {
        let size = size.min(MAX_SIZE);
        Pool {
            size,
            refill_delay: REFILL_DELAY,
            prepare,
            ready: Ready::new(),
            sizes: Mutex::new(Sizes::new(size.min(MAX_SIZES))),
            failures: Mutex::new(Vec::new()),
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

    /// The guest size (MiB) of each waiting entry, oldest first.
    pub fn waiting_sizes(&self) -> Vec<u64> {
        self.ready.entries().iter().map(|e| e.memory_mib).collect()
    }

    /// The guest sizes (MiB) the pool could not prepare for when it last tried, with why.
    pub fn failures(&self) -> Vec<(u64, String)> {
        self.failure_list()
            .iter()
            .map(|f| (f.memory_mib, f.reason.clone()))
            .collect()
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest live entry for a guest of `memory_mib` MiB; dead entries met on the way are
    /// dropped, once the entries are unlocked (as `Pool::trim`'s: an entry's drop closes
    /// sockets and removes files, which the other callers need not wait for). `None` when
    /// none of that size waits.
    pub fn take(&self, memory_mib: u64) -> Option<E> {
        // Declared before the guard, so dropped after it.
        let mut dead = Vec::new();
        let mut entries = self.ready.entries();
        let mut i = 0;
        while i < entries.len() {
            if !entries[i].entry.alive() {
                dead.push(entries.remove(i));
            } else if entries[i].memory_mib == memory_mib {
                return Some(entries.remove(i).entry);
            } else {
                i += 1;
            }
        }
        None
    }

    /// [`Pool::take`], with the guest's size noted as the most recent one, then a
    /// [`Pool::refill`] after the refill delay, hit or miss: the first guest of a size makes
    /// the pool prepare for it, so a node that runs none prepares none.
    pub fn take_and_refill(self: &Arc<Self>, memory_mib: u64) -> Option<E> {
        self.sizes().started(memory_mib);
        let entry = self.take(memory_mib);
        self.refill(self.refill_delay);
        entry
    }

    /// Drops the dead entries and those past their size's share (all of a forgotten size's),
    /// then prepares entries for the sizes short of their share, the most recent first, until
    /// none is short or it has prepared as many as the pool holds; a size that failed is left
    /// alone until `RETRY_AFTER` has passed, and the others are still prepared for. Blocking;
    /// one caller at a time (see [`Pool::refill`]). Returns how many it added.
    pub fn fill(&self) -> usize {
        let mut added = 0;
        // Each round prepares one entry: the sizes may change meanwhile (a take notes its own).
        // Bounded: entries that die as soon as they are made (a VMM that crashes once ready)
        // are found dead by the next round's trim, which would prepare them again, endlessly.
        for _ in 0..self.size {
            let shares = self.sizes().shares(self.size);
            let failed = self.failed_recently(&shares);
            let (short, surplus) = self.trim(&shares, &failed);
            drop(surplus);
            let Some(memory_mib) = short else { break };
            let result = (self.prepare)(memory_mib);
            let mut failures = self.failure_list();
            failures.retain(|f| f.memory_mib != memory_mib);
            match result {
                Ok(entry) => {
                    drop(failures);
                    self.ready.entries().push(Sized { memory_mib, entry });
                    added += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, memory_mib, "cannot prepare a pool entry of this size; retrying later");
                    failures.push(Failure {
                        memory_mib,
                        at: Instant::now(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        added
    }

    fn failure_list(&self) -> std::sync::MutexGuard<'_, Vec<Failure>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sizes of `shares` that failed less than `RETRY_AFTER` ago; the failures of other
    /// sizes are forgotten, so the list stays within the sizes kept.
    fn failed_recently(&self, shares: &[(u64, usize)]) -> Vec<u64> {
        let mut failures = self.failure_list();
        failures.retain(|f| shares.iter().any(|&(size, _)| size == f.memory_mib));
        failures
            .iter()
            .filter(|f| f.at.elapsed() < RETRY_AFTER)
            .map(|f| f.memory_mib)
            .collect()
    }

    /// Takes out the dead entries and those past their size's share in `shares` (the oldest
    /// of a size are kept), to be dropped by the caller once the entries are unlocked, and
    /// says which size, the most recent first and none of `failed`, is short of its share.
    fn trim(&self, shares: &[(u64, usize)], failed: &[u64]) -> (Option<u64>, Vec<Sized<E>>) {
        let mut entries = self.ready.entries();
        let mut kept = vec![0; shares.len()];
        let (keep, surplus): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *entries).into_iter().partition(|e| {
                let Some(i) = shares.iter().position(|&(m, _)| m == e.memory_mib) else {
                    return false;
                };
                let keep = kept[i] < shares[i].1 && e.entry.alive();
                kept[i] += usize::from(keep);
                keep
            });
        *entries = keep;
        let short = shares
            .iter()
            .zip(kept)
            .find(|&(&(m, share), kept)| kept < share && !failed.contains(&m))
            .map(|(&(m, _), _)| m);
        (short, surplus)
    }

    /// Tops the pool up in a background task after `delay` (one task at a time). Must be
    /// called inside the tokio runtime.
    pub fn refill(self: &Arc<Self>, delay: Duration) {
        if self.size == 0 {
            return;
        }
        let pool = self.clone();
        self.ready.refill(delay, move || {
            let pool = pool.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || pool.fill()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// An entry that counts its drops (a discarded prepared monitor ends).
    struct Fake {
        id: usize,
        memory_mib: u64,
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
        /// A guest size (MiB) no entry can be made for; 0 for none.
        refused: Arc<AtomicU64>,
    }

    fn pool(size: usize) -> (Arc<Pool<Fake>>, Counters) {
        let c = Counters {
            made: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
            alive: Arc::new(AtomicBool::new(true)),
            fail: Arc::new(AtomicBool::new(false)),
            refused: Arc::new(AtomicU64::new(0)),
        };
        let (made, dropped, alive, fail, refused) = (
            c.made.clone(),
            c.dropped.clone(),
            c.alive.clone(),
            c.fail.clone(),
            c.refused.clone(),
        );
        let prepare: Prepare<Fake> = Box::new(move |memory_mib| {
            if fail.load(Ordering::SeqCst) || refused.load(Ordering::SeqCst) == memory_mib {
                return Err(std::io::Error::other("no /dev/kvm"));
            }
            Ok(Fake {
                id: made.fetch_add(1, Ordering::SeqCst),
                memory_mib,
                alive: alive.clone(),
                dropped: dropped.clone(),
            })
        });
        (Arc::new(Pool::new(size, prepare)), c)
    }

    #[test]
    fn the_most_recently_started_size_comes_first_and_the_least_recent_is_forgotten() {
        let mut sizes = Sizes::new(3);
        for m in [256, 128, 256, 64] {
            sizes.started(m);
        }
        assert_eq!(sizes.recent, [64, 256, 128]);
        sizes.started(512);
        assert_eq!(
            sizes.recent,
            [512, 64, 256],
            "128 was started least recently"
        );
        let mut none = Sizes::new(0);
        none.started(256);
        assert!(none.recent.is_empty());
    }

    #[test]
    fn sizes_share_the_entries_evenly_the_remainder_to_the_most_recent() {
        let mut sizes = Sizes::new(MAX_SIZES);
        assert!(sizes.shares(16).is_empty(), "no guest started: nothing");
        sizes.started(256);
        assert_eq!(sizes.shares(1), [(256, 1)]);
        sizes.started(128);
        sizes.started(64);
        assert_eq!(sizes.shares(16), [(64, 6), (128, 5), (256, 5)]);
        assert_eq!(sizes.shares(4), [(64, 2), (128, 1), (256, 1)]);
    }

    #[test]
    fn nothing_is_prepared_before_a_guest_started() {
        let (p, c) = pool(2);
        assert_eq!(p.fill(), 0);
        assert_eq!(c.made.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn fills_up_to_its_size_and_hands_out_the_oldest_of_the_size_asked_for() {
        let (p, c) = pool(2);
        p.sizes().started(256);
        assert_eq!(p.fill(), 2);
        assert_eq!(p.fill(), 0, "full");
        assert_eq!(c.made.load(Ordering::SeqCst), 2);
        assert!(p.take(128).is_none(), "another guest size");
        assert_eq!(p.waiting(), 2, "kept for their size");
        assert_eq!(p.take(256).map(|e| e.id), Some(0));
        assert_eq!(p.waiting(), 1);
        assert_eq!(p.fill(), 1);
        assert_eq!(p.take(256).map(|e| e.id), Some(1));
        assert_eq!(p.take(256).map(|e| e.id), Some(2));
        assert!(p.take(256).is_none());
    }

    #[test]
    fn a_new_size_gets_its_share_and_a_forgotten_one_loses_its_entries() {
        let (p, c) = pool(2);
        p.sizes().started(256);
        assert_eq!(p.fill(), 2);
        // A guest of 128 MiB (a pod's memory limit): one entry each, the newest 256 dropped.
        p.sizes().started(128);
        assert_eq!(p.fill(), 1);
        assert_eq!(p.waiting_sizes(), [256, 128]);
        assert_eq!(c.dropped.load(Ordering::SeqCst), 1);
        assert_eq!(p.take(256).map(|e| e.id), Some(0), "the oldest kept");
        // A third size: the pool keeps two, so 256 (started least recently) is forgotten.
        p.sizes().started(64);
        p.sizes().started(128);
        assert_eq!(p.fill(), 1);
        assert_eq!(p.waiting_sizes(), [128, 64]);
        p.sizes().started(32);
        p.sizes().started(16);
        assert_eq!(p.fill(), 2);
        assert_eq!(p.waiting_sizes(), [16, 32], "both earlier sizes forgotten");
        // One taken, three trimmed.
        assert_eq!(c.dropped.load(Ordering::SeqCst), 4);
        assert_eq!(p.take(32).map(|e| e.memory_mib), Some(32));
    }

    #[test]
    fn is_bounded_in_entries_and_sizes_and_a_size_of_zero_prepares_nothing() {
        let (p, c) = pool(MAX_SIZE + 10);
        p.sizes().started(256);
        assert_eq!(p.fill(), MAX_SIZE);
        for m in 1..=10 {
            p.sizes().started(m);
        }
        p.fill();
        assert_eq!(p.waiting(), MAX_SIZE);
        let mut sizes = p.waiting_sizes();
        sizes.dedup();
        assert_eq!(sizes, [10, 9, 8, 7], "the {MAX_SIZES} most recent sizes");
        assert_eq!(c.made.load(Ordering::SeqCst), 2 * MAX_SIZE);
        let (p, c) = pool(0);
        p.sizes().started(256);
        assert_eq!(p.fill(), 0);
        assert!(p.take(256).is_none());
        assert_eq!(c.made.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dead_entries_are_dropped_not_handed_out() {
        let (p, c) = pool(2);
        p.sizes().started(256);
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
        p.sizes().started(256);
        c.fail.store(true, Ordering::SeqCst);
        assert_eq!(p.fill(), 0);
        c.fail.store(false, Ordering::SeqCst);
        assert_eq!(p.fill(), 0, "not retried at once");
        assert_eq!(c.made.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn entries_that_die_at_once_are_not_prepared_again_and_again() {
        let made = Arc::new(AtomicUsize::new(0));
        let (count, dropped) = (made.clone(), Arc::new(AtomicUsize::new(0)));
        let prepare: Prepare<Fake> = Box::new(move |memory_mib| {
            // A cap only so that the loop this test is about ends when it is there.
            if count.load(Ordering::SeqCst) == 100 {
                return Err(std::io::Error::other("enough"));
            }
            Ok(Fake {
                id: count.fetch_add(1, Ordering::SeqCst),
                memory_mib,
                alive: Arc::new(AtomicBool::new(false)),
                dropped: dropped.clone(),
            })
        });
        let p = Pool::new(2, prepare);
        p.sizes().started(256);
        p.fill();
        assert_eq!(made.load(Ordering::SeqCst), 2, "one round per entry");
    }

    #[test]
    fn a_size_that_fails_does_not_hold_back_the_others() {
        let (p, c) = pool(4);
        // A pod's memory limit the VMM refuses, started most recently, comes first.
        c.refused.store(1 << 30, Ordering::SeqCst);
        p.sizes().started(128);
        p.sizes().started(1 << 30);
        assert_eq!(p.fill(), 2, "128 MiB gets its share");
        assert_eq!(p.waiting_sizes(), [128, 128]);
        // Taken: refilled, the refused size left for its retry.
        assert!(p.take(128).is_some());
        assert_eq!(p.fill(), 1);
        assert_eq!(p.waiting_sizes(), [128, 128]);
    }

    #[test]
    fn a_failure_is_reported_with_its_reason_until_its_size_is_prepared() {
        let (p, c) = pool(1);
        p.sizes().started(256);
        c.fail.store(true, Ordering::SeqCst);
        p.fill();
        assert_eq!(p.failures(), [(256, "no /dev/kvm".to_owned())]);
        // Retried once RETRY_AFTER has passed, and prepared.
        c.fail.store(false, Ordering::SeqCst);
        for f in p.failures.lock().unwrap().iter_mut() {
            f.at = Instant::now().checked_sub(RETRY_AFTER).unwrap();
        }
        assert_eq!(p.fill(), 1);
        assert!(p.failures().is_empty());
    }

    #[test]
    fn dropping_the_pool_discards_its_entries() {
        let (p, c) = pool(3);
        p.sizes().started(256);
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
    async fn the_first_guest_of_a_size_fills_it_and_each_take_refills_it() {
        let (p, c) = pool(1);
        assert!(p.take_and_refill(128).is_none(), "empty until then");
        until_filled(&p, &c, 1, 1).await;
        assert_eq!(p.waiting_sizes(), [128]);
        assert_eq!(p.take_and_refill(128).map(|e| e.id), Some(0));
        until_filled(&p, &c, 1, 2).await;
        // Another size takes the pool's one entry over.
        assert!(p.take_and_refill(256).is_none());
        until_filled(&p, &c, 1, 3).await;
        assert_eq!(p.waiting_sizes(), [256]);
        assert_eq!(p.take(256).map(|e| e.id), Some(2));
    }
}
