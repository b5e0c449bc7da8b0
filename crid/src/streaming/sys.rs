//! The streaming server's kernel calls: pseudo-terminals and connecting a TCP socket from
//! inside another network namespace (a terminal's window size is `sandbox::monitor`'s).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sched::{CloneFlags, setns};

/// A new pseudo-terminal pair: (master, slave), both close-on-exec like every descriptor of
/// crid's. (libc's `openpty` opens them without the flag, so every child crid started while
/// a terminal was open kept copies of it: a monitor, living as long as its container, held
/// an unrelated exec session's terminal.)
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let pty = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&pty)?;
    unlockpt(&pty)?;
    let name = ptsname_r(&pty)?;
    // std opens with O_CLOEXEC; O_NOCTTY as openpty opens it: crid takes no terminal.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name)?;
    // A close-on-exec duplicate (F_DUPFD_CLOEXEC) as an `OwnedFd`; `pty` closes on drop.
    let master = pty.as_fd().try_clone_to_owned()?;
    Ok((master, slave.into()))
}

/// Puts a descriptor in non-blocking mode (shared by every dup of it).
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Connects to `localhost:port` as seen from the network namespace at `netns`: a dedicated
/// thread (never a runtime worker) enters the namespace, connects and exits; the socket stays
/// bound to the namespace it was created in.
pub async fn connect_in_netns(netns: &Path, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let netns: PathBuf = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("crid-netns-dial".into())
        .spawn(move || {
            let _ = tx.send(dial(&netns, port, timeout));
        })?;
    rx.await
        .map_err(|_| io::Error::other("namespace dial thread ended without an answer"))?
}

fn dial(netns: &Path, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let ns = std::fs::File::open(netns)?;
    // Only this short-lived thread changes namespace; it ends right after connecting.
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)
        }
    }
}

/// Sends SIGWINCH to a process (runc re-reads its terminal's size on it).
pub fn signal_winch(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::FdFlag;

    #[test]
    fn terminals_are_close_on_exec() {
        let (master, slave) = openpty().unwrap();
        for fd in [&master, &slave] {
            let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
            assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        }
        // A pair: what is written to the slave is read from the master.
        let mut slave = std::fs::File::from(slave);
        std::io::Write::write_all(&mut slave, b"x").unwrap();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut std::fs::File::from(master), &mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
