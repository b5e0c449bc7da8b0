//! The daemon's few direct kernel interactions.
#![allow(unsafe_code)]

use std::os::fd::FromRawFd;

/// First fd handed over by systemd socket activation.
const SD_LISTEN_FDS_START: i32 = 3;

/// Takes ownership of fd 3 as a listening unix socket. Called at most once, only when
/// `LISTEN_PID`/`LISTEN_FDS` say systemd passed it to this process.
pub fn take_listen_fd() -> Option<std::os::unix::net::UnixListener> {
    // SAFETY: fstat only reads the descriptor's metadata; an invalid fd yields -1.
    let valid = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(SD_LISTEN_FDS_START, &mut st) == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !valid {
        return None;
    }
    // SAFETY: systemd passed fd 3 to this process for it to own, it is a socket (checked
    // above) and nothing else in crid takes ownership of it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(SD_LISTEN_FDS_START) };
    Some(listener)
}

/// Sets an environment variable; only used by single-threaded start-up code and tests.
#[cfg(test)]
pub fn set_env(key: &str, value: &std::ffi::OsStr) {
    // SAFETY: called from tests that do not read or write this variable concurrently.
    unsafe { std::env::set_var(key, value) }
}

#[cfg(test)]
pub fn remove_env(key: &str) {
    // SAFETY: as for set_env.
    unsafe { std::env::remove_var(key) }
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
