//! When a container's CRI log file gets its first byte, noted as it happens: an inotify watch
//! on the log's directory, armed before the pod starts (so the file's creation and every write
//! to it are events, whichever comes first), is waited on by a thread blocked in poll(2) that
//! takes the time as it wakes and then checks the file's size. Polling the size instead added
//! the interval and the timer's slack to every figure (about 3 ms at a 2 ms interval, more
//! than the gap being measured between two runtimes). Every runtime's logs are watched the same
//! way, so ratios stay fair.
//!
//! Where inotify cannot be had (no instance left: `fs.inotify.max_user_instances`, 128 by
//! default, matters with hundreds of pods at once; no directory to watch), the file is polled
//! at the caller's interval as before, and a warning says so. Should a write ever go unreported
//! (a file system without inotify events), the size is also looked at every
//! [`SAFETY_NET`], with a warning, rather than hang until the timeout.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::fs::inotify;

/// The longest poll(2) sleeps between looks at the file when no event came: bounds how late a
/// missed event is noticed and how long a cancelled watcher lingers.
const SAFETY_NET: Duration = Duration::from_millis(100);

/// A watcher of one log file, running from [`FirstByte::watch`] until the first byte, the
/// timeout or its drop.
pub struct FirstByte {
    task: Option<tokio::task::JoinHandle<anyhow::Result<Instant>>>,
    cancelled: Arc<AtomicBool>,
}

impl FirstByte {
    /// Starts watching `log` (its directory should exist; the file need not): anything written
    /// from this call on is seen. Waits at most `timeout`; `poll` is the interval of the
    /// fallback without inotify.
    pub fn watch(log: &Path, timeout: Duration, poll: Duration) -> FirstByte {
        let deadline = Instant::now() + timeout;
        let log = log.to_path_buf();
        let armed = arm(&log);
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = cancelled.clone();
        let task = tokio::task::spawn_blocking(move || match armed {
            Ok(fd) => {
                let (seen, by_event) = wait_inotify(&log, &fd, deadline, &stop)?;
                if !by_event {
                    eprintln!(
                        "crid-bench: {}: written without an inotify event, seen up to {SAFETY_NET:?} late",
                        log.display()
                    );
                }
                Ok(seen)
            }
            Err(e) => {
                eprintln!(
                    "crid-bench: {}: no inotify ({e:#}), polling every {poll:?}",
                    log.display()
                );
                wait_polling(&log, deadline, poll, &stop)
            }
        });
        FirstByte {
            task: Some(task),
            cancelled,
        }
    }

    /// When the log file was first seen non-empty.
    pub async fn wait(mut self) -> anyhow::Result<Instant> {
        let task = self.task.take().context("already waited")?;
        task.await.context("first-byte watcher")?
    }
}

impl Drop for FirstByte {
    /// A watcher nobody waits for (the start failed) stops within [`SAFETY_NET`].
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// An inotify instance watching `log`'s directory for the file's creation, writes and
/// renames into place.
fn arm(log: &Path) -> anyhow::Result<OwnedFd> {
    let dir = log.parent().context("log path without a directory")?;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .context("inotify_init1")?;
    inotify::add_watch(
        &fd,
        dir,
        inotify::WatchFlags::CREATE | inotify::WatchFlags::MODIFY | inotify::WatchFlags::MOVED_TO,
    )
    .with_context(|| format!("inotify_add_watch {}", dir.display()))?;
    Ok(fd)
}

fn non_empty(log: &Path) -> bool {
    std::fs::metadata(log).is_ok_and(|m| m.len() > 0)
}

/// Blocks until an event makes `log` non-empty; the time is taken as poll(2) returns, before
/// the events are read and the size checked. Also says whether an event woke it (not the
/// [`SAFETY_NET`]).
fn wait_inotify(
    log: &Path,
    fd: &OwnedFd,
    deadline: Instant,
    cancelled: &AtomicBool,
) -> anyhow::Result<(Instant, bool)> {
    let mut buf = [0u8; 4096];
    // Written before the watch was armed (not in the benchmark: the pod did not exist yet).
    if non_empty(log) {
        return Ok((Instant::now(), true));
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || cancelled.load(Ordering::Relaxed) {
            bail!("no output in {} in time", log.display());
        }
        // Rounded up to whole milliseconds: no busy loop over the last one.
        let wait = PollTimeout::try_from(left.min(SAFETY_NET) + Duration::from_micros(999))
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let ready = match poll(&mut fds, wait) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll on inotify"),
        };
        let woke = Instant::now();
        // Drain what is queued; the events themselves do not matter, the size does.
        while rustix::io::read(fd, &mut buf).is_ok_and(|n| n > 0) {}
        if non_empty(log) {
            return Ok((woke, ready));
        }
    }
}

/// The fallback: looks at the size every `interval`.
fn wait_polling(
    log: &Path,
    deadline: Instant,
    interval: Duration,
    cancelled: &AtomicBool,
) -> anyhow::Result<Instant> {
    loop {
        if non_empty(log) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline || cancelled.load(Ordering::Relaxed) {
            bail!("no output in {} in time", log.display());
        }
        std::thread::sleep(interval);
    }
}

/// The CRI log file of a container: the pod's log directory joined with the container's
/// `log_path`, as the runtime reports it in ContainerStatus.
pub fn log_file(log_directory: &str, log_path: &str) -> PathBuf {
    Path::new(log_directory).join(log_path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LONG: Duration = Duration::from_secs(30);
    const POLL: Duration = Duration::from_millis(2);

    fn append_after(path: PathBuf, delay: Duration) -> std::thread::JoinHandle<Instant> {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let before = Instant::now();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(b"2026-12-07T00:00:00Z stdout F ready\n")
                .unwrap();
            before
        })
    }

    #[tokio::test]
    async fn sees_a_later_append_to_an_existing_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::File::create(&log).unwrap();
        let watcher = FirstByte::watch(&log, LONG, POLL);
        let writer = append_after(log.clone(), Duration::from_millis(50));
        let seen = watcher.wait().await.unwrap();
        let written = writer.join().unwrap();
        assert!(seen >= written, "seen before the write began");
    }

    #[tokio::test]
    async fn sees_a_file_created_after_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let watcher = FirstByte::watch(&log, LONG, POLL);
        // An empty file first (as a runtime creates the log at CreateContainer), bytes later.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::File::create(&log).unwrap();
        let writer = append_after(log.clone(), Duration::from_millis(50));
        let seen = watcher.wait().await.unwrap();
        assert!(seen >= writer.join().unwrap());
    }

    #[test]
    fn an_event_wakes_it_not_the_safety_net() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let fd = arm(&log).unwrap();
        // Written well past the safety net: a missed event would still be seen, through a
        // timeout of poll(2), which this checks did not happen.
        let writer = append_after(log.clone(), SAFETY_NET * 2);
        let (seen, by_event) =
            wait_inotify(&log, &fd, Instant::now() + LONG, &AtomicBool::new(false)).unwrap();
        assert!(seen >= writer.join().unwrap());
        assert!(by_event, "seen by looking, not by an event");
    }

    #[tokio::test]
    async fn times_out_without_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::File::create(&log).unwrap();
        let err = FirstByte::watch(&log, Duration::from_millis(150), POLL)
            .wait()
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("no output"), "{err:#}");
    }

    #[tokio::test]
    async fn polls_when_the_directory_cannot_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("later");
        let log = sub.join("app.log");
        assert!(arm(&log).is_err());
        let watcher = FirstByte::watch(&log, LONG, POLL);
        std::fs::create_dir(&sub).unwrap();
        let writer = append_after(log.clone(), Duration::from_millis(20));
        let seen = watcher.wait().await.unwrap();
        assert!(seen >= writer.join().unwrap());
    }

    #[test]
    fn log_file_joins_directory_and_path() {
        assert_eq!(
            log_file("/var/log/pods/p", "app/0.log"),
            PathBuf::from("/var/log/pods/p/app/0.log")
        );
    }
}
