//! systemd integration through the `sd-notify` crate: the socket passed by socket activation,
//! readiness and watchdog notifications.
//!
//! Everything systemd hands over through the environment is taken once at start-up, before any
//! thread exists ([`Systemd::take_from_environment`]), and the variables are removed then: no child
//! (monitors, runc, VMMs, CNI plugins) may inherit `LISTEN_*`, `NOTIFY_SOCKET` or
//! `WATCHDOG_*`. The notification socket is therefore connected at start-up and kept, since
//! `sd_notify::notify` would look the variable up again on every call.

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::Arc;
use std::time::Duration;

pub use sd_notify::NotifyState;

/// What systemd handed to this process, taken once by `main` and given to the daemon.
#[derive(Debug, Default)]
pub struct Systemd {
    listener: Option<UnixListener>,
    notify: Option<Arc<UnixDatagram>>,
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Takes the activated socket, the notification socket and the watchdog interval out of
    /// the environment and removes their variables. Call once, from `main`, before any thread
    /// starts.
    pub fn take_from_environment() -> Systemd {
        let env = crate::sys::take_systemd_environment();
        let notify = env.notify_socket.and_then(|path| match connect(&path) {
            Ok(sock) => Some(Arc::new(sock)),
            Err(e) => {
                tracing::warn!(socket = ?path, error = %e, "cannot reach systemd's notify socket");
                None
            }
        });
        Systemd {
            listener: env.listener,
            notify,
            watchdog: env.watchdog,
        }
    }

    /// The listening socket passed by systemd socket activation, once.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// Sends one notification if crid runs under systemd. Errors are logged, never fatal.
    pub fn notify(&self, state: NotifyState) {
        if let Some(sock) = &self.notify {
            send(sock, state);
        }
    }

    /// Pings the watchdog at half the interval systemd asked for (`WatchdogSec=`), if any,
    /// until the runtime shuts down.
    pub fn spawn_watchdog(&self) {
        let (Some(interval), Some(sock)) = (self.watchdog, self.notify.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                send(&sock, NotifyState::Watchdog);
            }
        });
    }
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

/// Sends one notification on the connected socket.
fn send(sock: &UnixDatagram, state: NotifyState) {
    let message = format!("{state}\n");
    match sock.send(message.as_bytes()) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tracing::debug!(%state, "systemd's notify queue is full; notification dropped");
        }
        Err(e) => tracing::warn!(error = %e, "sd_notify failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_connected_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let systemd = Systemd {
            notify: Some(Arc::new(connect(path.as_os_str()).unwrap())),
            ..Default::default()
        };
        // The socket stays usable after the file's name is gone from the environment.
        systemd.notify(NotifyState::Ready);
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
