//! systemd integration through the `sd-notify` crate: the socket passed by socket activation,
//! readiness and watchdog notifications.
//!
//! Everything systemd hands over through the environment is taken once at start-up, before any
//! thread exists ([`take_from_environment`]), and the variables are removed then: no child
//! (monitors, runc, VMMs, CNI plugins) may inherit `LISTEN_*`, `NOTIFY_SOCKET` or
//! `WATCHDOG_*`. The notification socket is therefore connected at start-up and kept, since
//! `sd_notify::notify` would look the variable up again on every call.

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use sd_notify::NotifyState;

/// What systemd handed to this process.
#[derive(Debug, Default)]
struct Handover {
    listener: Mutex<Option<UnixListener>>,
    notify: Option<UnixDatagram>,
    watchdog: Option<Duration>,
}

static HANDOVER: OnceLock<Handover> = OnceLock::new();

/// Takes the activated socket, the notification socket and the watchdog interval out of the
/// environment and removes their variables. Call once, from `main`, before any thread starts.
pub fn take_from_environment() {
    let env = crate::sys::take_systemd_environment();
    let notify = env.notify_socket.and_then(|path| match connect(&path) {
        Ok(sock) => Some(sock),
        Err(e) => {
            tracing::warn!(socket = ?path, error = %e, "cannot reach systemd's notify socket");
            None
        }
    });
    let _ = HANDOVER.set(Handover {
        listener: Mutex::new(env.listener),
        notify,
        watchdog: env.watchdog,
    });
}

/// A datagram socket connected to `NOTIFY_SOCKET`'s address (a path, or `@name` in the
/// abstract namespace).
fn connect(path: &std::ffi::OsStr) -> std::io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    match path.to_str().and_then(|p| p.strip_prefix('@')) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        }
        None => sock.connect(path)?,
    }
    // A service manager that stops reading must not block a runtime thread: a notification
    // that does not fit its queue is dropped.
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Sends one notification if crid runs under systemd. Errors are logged, never fatal.
pub fn notify(state: NotifyState) {
    let Some(sock) = HANDOVER.get().and_then(|h| h.notify.as_ref()) else {
        return;
    };
    let message = format!("{state}\n");
    match sock.send(message.as_bytes()) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tracing::debug!(%state, "systemd's notify queue is full; notification dropped");
        }
        Err(e) => tracing::warn!(error = %e, "sd_notify failed"),
    }
}

/// Pings the watchdog at half the interval systemd asked for (`WatchdogSec=`), if any, until
/// the runtime shuts down.
pub fn spawn_watchdog() {
    if let Some(interval) = HANDOVER.get().and_then(|h| h.watchdog) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notify(NotifyState::Watchdog);
            }
        });
    }
}

/// The listening socket passed by systemd socket activation, once.
pub fn activated_listener() -> Option<UnixListener> {
    HANDOVER.get()?.listener.lock().ok()?.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_connected_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let handover = Handover {
            notify: Some(connect(path.as_os_str()).unwrap()),
            ..Default::default()
        };
        // The socket stays usable after the file's name is gone from the environment.
        let _ = HANDOVER.set(handover);
        notify(NotifyState::Ready);
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn a_full_queue_drops_notifications_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _server = UnixDatagram::bind(&path).unwrap();
        let sock = connect(path.as_os_str()).unwrap();
        // Nobody reads: the queue fills and send fails at once rather than waiting.
        let full = (0..100_000).find_map(|_| sock.send(b"WATCHDOG=1\n").err());
        assert_eq!(full.map(|e| e.kind()), Some(std::io::ErrorKind::WouldBlock));
    }

    #[test]
    fn abstract_addresses_are_understood() {
        let name = format!("crid-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let sock = connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        sock.send(b"WATCHDOG=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
}
