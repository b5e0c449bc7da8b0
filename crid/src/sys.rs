//! The daemon's few direct kernel interactions.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// What systemd passed through the environment (see [`take_systemd_environment`]).
pub struct SystemdEnvironment {
    /// The first socket of socket activation (fd 3), when it is one.
    pub listener: Option<UnixListener>,
    pub notify_socket: Option<OsString>,
    pub watchdog: Option<Duration>,
}

/// Variables systemd sets for its service that no child of crid may see.
const SYSTEMD_VARIABLES: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// Reads systemd's hand-over (socket activation, notify socket, watchdog) and removes its
/// variables from the environment; the activated descriptors are close-on-exec afterwards.
/// Only in a process that has a single thread (checked: with more, the environment is read
/// but left as it is; children get explicit environments anyway).
pub fn take_systemd_environment() -> SystemdEnvironment {
    let fds = sd_notify::listen_fds();
    let mut fds: Vec<OwnedFd> = fds
        .map(|range| {
            range
                // SAFETY: sd_notify yields the descriptors systemd passed to this process
                // (LISTEN_PID is ours); nothing else in crid owns them, and each is wrapped
                // exactly once, here.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect()
        })
        .unwrap_or_default();
    let listener = if fds.is_empty() {
        None
    } else {
        Some(fds.remove(0))
            .filter(is_socket)
            .map(UnixListener::from)
    };
    // Further activated descriptors are closed: crid listens on one socket.
    drop(fds);
    let notify_socket = std::env::var_os("NOTIFY_SOCKET");
    let watchdog = sd_notify::watchdog_enabled();
    if single_threaded() {
        for name in SYSTEMD_VARIABLES {
            // SAFETY: this process has one thread (checked just above), so nothing reads or
            // writes the environment concurrently with the removal.
            unsafe { std::env::remove_var(name) };
        }
    }
    SystemdEnvironment {
        listener,
        notify_socket,
        watchdog,
    }
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

fn is_socket(fd: &OwnedFd) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fd.try_clone()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.file_type().is_socket())
}

/// Hands heap pages freed during start-up (image reference parsing compiles large regexes,
/// record loading parses JSON) back to the kernel, so an idle daemon's RSS is what it uses.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas under their
    // locks and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Limits glibc to two malloc arenas (instead of eight per CPU): every tokio worker and
/// blocking thread otherwise gets an arena of its own whose freed pages stay with it, which
/// shows as idle RSS. Call before any thread starts.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a glibc tunable; it is called once, before other threads
    // exist, and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
