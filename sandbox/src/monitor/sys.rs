//! The monitor's kernel calls that `nix` does not wrap.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits. Works for
/// processes that are not our children (monitors re-parented after a crid restart).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with tokio's reactor, to await the process's exit.
pub fn async_pidfd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, which keeps the same open descriptor
    // until the AsyncFd drops it; nothing else closes or replaces it meanwhile.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Accepts one connection on `listener` and receives the descriptor sent over it with
/// `SCM_RIGHTS` (runc's `--console-socket` protocol).
pub fn receive_fd(listener: &std::os::unix::net::UnixListener) -> std::io::Result<OwnedFd> {
    let (stream, _) = listener.accept()?;
    let mut buf = [0u8; 4096];
    match recv_with_fd(&stream, &mut buf)? {
        (_, Some(fd)) => Ok(fd),
        (_, None) => Err(std::io::Error::other("no descriptor received")),
    }
}

/// Receives bytes into `buf` and the descriptor sent with them (`SCM_RIGHTS`), if any; the
/// number of bytes is 0 at end of file.
pub fn recv_with_fd(
    stream: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut received = None;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel installed this descriptor in our table for this message;
                // nothing else refers to it. Any beyond the first are closed when dropped.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    Ok((msg.bytes, received))
}

/// The time slice [`short_slices`] asks for: the shortest the kernel grants.
pub const SHORT_SLICE_NS: u64 = 100_000;

/// Asks the scheduler for short time slices for this thread ([`SHORT_SLICE_NS`]; Linux 6.12+:
/// the `sched_runtime` of a `SCHED_OTHER` task is its EEVDF slice), its niceness kept and its
/// children getting the default again (`SCHED_FLAG_RESET_ON_FORK`). A task with a shorter
/// slice than the running one preempts it when it wakes, where it would otherwise wait until
/// that task has run its slice (1.4 ms on this project's 2-CPU hosts); its share of the CPU
/// is the same. Returns the thread's attributes from before, or `None` when it is not
/// `SCHED_OTHER` (left as it is).
pub fn short_slices() -> std::io::Result<Option<libc::sched_attr>> {
    let before = sched_getattr()?;
    if before.sched_policy != libc::SCHED_OTHER as u32 {
        return Ok(None);
    }
    sched_setattr(&libc::sched_attr {
        sched_runtime: SHORT_SLICE_NS,
        sched_flags: before.sched_flags | libc::SCHED_FLAG_RESET_ON_FORK as u64,
        ..before
    })?;
    Ok(Some(before))
}

/// The size of `sched_attr` as the kernel takes it.
fn sched_attr_size() -> u32 {
    u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(u32::MAX)
}

/// The calling thread's scheduling attributes, `size` set for [`sched_setattr`].
pub fn sched_getattr() -> std::io::Result<libc::sched_attr> {
    // SAFETY: sched_attr is plain old data; all zeroes is a valid value, filled in below.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size` bytes into `attr`, which is that large; pid 0
    // is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            sched_attr_size(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    attr.size = sched_attr_size();
    Ok(attr)
}

/// Sets the calling thread's scheduling attributes.
pub fn sched_setattr(attr: &libc::sched_attr) -> std::io::Result<()> {
    // SAFETY: `attr` points to a live sched_attr of `attr.size` bytes, which the kernel only
    // reads; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            attr as *const libc::sched_attr,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a terminal's window size (TIOCSWINSZ); the kernel sends SIGWINCH to its foreground
/// process group.
pub fn set_window_size(
    fd: &impl std::os::fd::AsRawFd,
    width: u16,
    height: u16,
) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a live,
    // initialised value for the duration of the call; the descriptor is borrowed and open.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &ws as *const libc::winsize,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `fork(2)` for the monitor detaching itself: `Ok(true)` in the child, `Ok(false)` in the
/// parent. Only for a process with a single thread (the small `crid-monitor` binary before it
/// starts anything).
pub fn fork_detached_child() -> std::io::Result<bool> {
    Ok(fork_single_threaded()?.is_none())
}

/// `fork(2)`: `None` in the child, the child's pid in the parent. Refused in a process with
/// more than one thread (a monitor process forks before it starts anything).
pub fn fork_single_threaded() -> std::io::Result<Option<nix::unistd::Pid>> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "fork refused: the process has {threads} threads"
        )));
    }
    // SAFETY: the process has one thread (counted just above; only that thread could have
    // started another since), so the child is a full copy in which no lock can be held by a
    // thread that does not exist there; both sides go on with ordinary code.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Child => Ok(None),
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
    }
}

/// Marks every descriptor above stderr close-on-exec. Whatever started this process may have
/// left descriptors open without that flag (systemd's activated socket, a shell's redirections);
/// after this call a child receives only what is set up for it explicitly (its stdio).
pub fn close_inherited_on_exec() {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // Collected first: the directory stream itself is a descriptor in the listing.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // A descriptor that was closed meanwhile (the listing's own) fails with EBADF: fine.
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// Makes `cmd`'s child join cgroups and a network namespace between fork and exec (what
/// Firecracker's jailer does before it execs the VMM), so no shell or `nsenter` process runs
/// in between: it writes `0` (itself) to each cgroup file (see [`super::open_cgroup_join`]),
/// then enters the network namespace. The descriptors are close-on-exec: the program inherits
/// none of them.
pub fn join_before_exec(
    cmd: &mut std::process::Command,
    netns: Option<OwnedFd>,
    cgroup_procs: Vec<std::fs::File>,
) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let hook = move || -> std::io::Result<()> {
        for procs in &cgroup_procs {
            // SAFETY: write(2) is async-signal-safe; the descriptor is open for the closure's
            // lifetime and the 1-byte buffer is a static literal.
            let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(ns) = &netns {
            // SAFETY: setns(2) is async-signal-safe and takes a descriptor that stays open
            // for the closure's lifetime; the child has one thread, as setns wants for a
            // network namespace switch of the whole process.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes the async-signal-
    // safe calls above: it allocates nothing, takes no lock and touches no shared state; an
    // error is built from errno alone (no allocation).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes `cmd`'s child, between fork and exec, take `exit_port`'s descriptor as the number given
/// (inherited across exec, unlike every other descriptor of the monitor's), then set
/// `no_new_privs` and install `filters` (see [`super::seccomp`]). Register it after
/// [`join_before_exec`]: the filters then apply to the exec and what follows only.
pub fn confine_before_exec(
    cmd: &mut std::process::Command,
    exit_port: Option<(OwnedFd, std::os::fd::RawFd)>,
    filters: Vec<seccompiler::BpfProgram>,
) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let hook = move || -> std::io::Result<()> {
        if let Some((fd, target)) = &exit_port {
            let fd = fd.as_raw_fd();
            // SAFETY: dup2(2) and fcntl(2) are async-signal-safe and take descriptor numbers
            // only; `fd` stays open for the closure's lifetime. dup2 onto itself would keep
            // close-on-exec, so that case clears the flag instead.
            let rc = unsafe {
                if fd == *target {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, *target)
                }
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for filter in &filters {
            // Allocation-free: prctl(2) and seccomp(2) on the program built before fork; an
            // error is read from errno.
            if seccompiler::apply_filter(filter).is_err() {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes the async-signal-
    // safe calls above: it allocates nothing, takes no lock and touches no shared state; an
    // error is built from errno alone (no allocation).
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `se.slice` line of a `/proc/.../sched` text, in nanoseconds.
    fn slice_of(sched: &str) -> Option<u64> {
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    #[test]
    fn a_monitor_asks_for_short_slices_and_its_children_get_the_default() {
        std::thread::spawn(|| {
            let own = || slice_of(&std::fs::read_to_string("/proc/thread-self/sched").unwrap());
            // A kernel without EEVDF's slices shows none: nothing to check.
            let Some(default) = own() else { return };
            short_slices().unwrap();
            assert_eq!(own(), Some(SHORT_SLICE_NS));
            let out = std::process::Command::new("cat")
                .arg("/proc/self/sched")
                .output()
                .unwrap();
            let child = slice_of(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(child, Some(default), "the child kept the monitor's slice");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_child_writes_itself_into_each_procs_file_before_exec() {
        let dir = tempfile::tempdir().unwrap();
        // Regular files stand in for `cgroup.procs`: the child writes "0" (itself) to each.
        let files: Vec<_> = ["a", "b"].iter().map(|n| dir.path().join(n)).collect();
        let open = |p: &std::path::Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(p)
                .unwrap()
        };
        let mut cmd = std::process::Command::new("true");
        join_before_exec(&mut cmd, None, files.iter().map(|p| open(p)).collect());
        assert!(cmd.status().unwrap().success());
        for f in &files {
            assert_eq!(std::fs::read_to_string(f).unwrap(), "0");
        }
        // A file the child cannot write to: the spawn fails, nothing runs.
        let mut cmd = std::process::Command::new("true");
        let read_only = std::fs::File::open(&files[0]).unwrap();
        join_before_exec(&mut cmd, None, vec![read_only]);
        assert!(cmd.status().is_err());
    }

    /// The exit port's write end arrives as the descriptor asked for, across exec.
    #[test]
    fn the_exit_port_arrives_as_its_descriptor() {
        use std::io::Read;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "printf '\\005' >&3"]);
        confine_before_exec(&mut cmd, Some((w, 3)), vec![]);
        assert!(cmd.status().unwrap().success());
        drop(cmd);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, [5]);
    }

    /// Under QEMU's filter (see [`super::super::seccomp`]) the exec itself passes, a new process
    /// kills the caller, and so does a set*id call without `elevate_privileges`.
    #[test]
    fn qemus_filter_allows_the_exec_and_kills_on_fork() {
        use std::os::unix::process::ExitStatusExt;
        let run = |script: &str, elevate_privileges: bool| {
            let filters = super::super::seccomp::QemuSandbox { elevate_privileges }
                .filters()
                .unwrap();
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", script]);
            confine_before_exec(&mut cmd, None, filters);
            cmd.status().unwrap()
        };
        assert_eq!(run("exit 7", true).code(), Some(7));
        assert_eq!(run("exec sh -c 'exit 3'", true).code(), Some(3));
        assert_eq!(run("/bin/true; exit 0", true).signal(), Some(libc::SIGSYS));
        // util-linux's setsid calls setsid(2) without forking when its process is not a
        // process group leader (this child is not), then execs.
        let setsid = "exec setsid true";
        assert_eq!(run(setsid, true).code(), Some(0));
        assert_eq!(run(setsid, false).signal(), Some(libc::SIGSYS));
    }

    #[test]
    fn fork_is_refused_with_more_than_one_thread() {
        // The test harness runs this on a thread of its own: the process has several.
        let err = fork_single_threaded().unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
    }
}
