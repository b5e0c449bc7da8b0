//! systemd integration without libsystemd: `sd_notify` readiness and watchdog pings over
//! `$NOTIFY_SOCKET`, and socket activation through `$LISTEN_FDS`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `WATCHDOG=1`, ...) if crid runs under systemd.
/// Errors are logged, never fatal: a missing notify socket just means no systemd.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = UnixDatagram::unbound().and_then(|sock| {
        if let Some(abstract_name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sock.send_to_addr(message.as_bytes(), &addr)
        } else {
            sock.send_to(message.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, socket = %path, "sd_notify failed");
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any, for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half the requested interval until the runtime shuts down.
pub fn spawn_watchdog() {
    if let Some(interval) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        });
    }
}

/// The first socket passed by systemd socket activation (fd 3), if `LISTEN_PID` is us.
pub fn activated_listener() -> Option<std::os::unix::net::UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    crate::sys::take_listen_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        temp_env(&path, || notify("READY=1"));
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    fn temp_env(path: &std::path::Path, f: impl FnOnce()) {
        // Setting the environment is unsafe in edition 2024, so it lives in `sys`.
        crate::sys::set_env("NOTIFY_SOCKET", path.as_os_str());
        f();
        crate::sys::remove_env("NOTIFY_SOCKET");
    }
}
