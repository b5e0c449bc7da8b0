//! Pod-wide PID namespaces without a pause image: `crid-monitor --pid-namespace DIR` (or `crid
//! monitor --pid-namespace DIR`) unshares a PID namespace and forks its init, a process that
//! only reaps (containers' orphans are re-parented to it), prints that init's host pid and
//! exits. The init outlives crid restarts; the pod's containers join `/proc/PID/ns/pid`, and
//! crid kills it with SIGKILL when the pod stops, which ends the namespace.
//!
//! The init keeps nothing a container in its namespace could use: it runs as `nobody` with no
//! capabilities and `no_new_privs`, chrooted into an empty directory, and is not dumpable, so
//! `/proc/1/*` and ptrace are closed to the pod's processes. Signals sent from inside the
//! namespace cannot kill it (the kernel protects a namespace's init).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{Gid, Uid};

use super::sys;

/// The uid and gid the init runs as (`nobody`).
const NOBODY: u32 = 65534;

/// Starts the init of a new PID namespace through the monitor binary next to `exe` (or `exe
/// monitor`), chrooted into the empty directory `root`, and returns its host pid. Blocking:
/// call from a blocking task.
/// With `userns`, the pinned user namespace of the pod, the PID namespace is made inside it
/// (so that the pod's containers, which join that user namespace, may mount its `/proc`).
pub fn spawn(
    exe: &Path,
    root: &Path,
    userns: Option<&Path>,
    stderr_path: &Path,
    timeout: Duration,
) -> std::io::Result<i32> {
    let mut args = vec![OsStr::new("--pid-namespace"), root.as_os_str()];
    if let Some(u) = userns {
        args.extend([OsStr::new("--in-user-namespace"), u.as_os_str()]);
    }
    // The init closes its copy of stdout first thing, so the pipe ends when the parent exits.
    let out = super::spawn_detached(exe, &args, stderr_path, 64, timeout, "PID namespace holder")?;
    let line = String::from_utf8_lossy(&out);
    line.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::other(format!("holder reported {line:?}")))
}

/// The pids of the live holders started with `root` (this crid's holder root): start-up uses
/// it to find the holders of pods it no longer knows (a record lost or quarantined), which
/// nothing else would ever stop.
pub fn holders_with_root(root: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                    let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                    is_holder_cmdline(&cmdline, root).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `/proc/PID/cmdline` is that of a holder [`spawn`] started with `root`.
fn is_holder_cmdline(cmdline: &[u8], root: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline.split(|b| *b == 0).skip(1);
    args.next() == Some(b"--pid-namespace".as_slice())
        && args.next() == Some(root.as_os_str().as_bytes())
}

/// The start time of live process `pid` (clock ticks after boot, field 22 of `/proc/PID/stat`):
/// with the pid, it names one process for good, as a pid alone is reused. `None` for a process
/// that is gone or a zombie (whose namespaces are gone too).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it don't.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Entry point of `--pid-namespace ROOT [--in-user-namespace PIN]`, in a process with one
/// thread (as joining a user namespace requires). Returns the exit code
/// of the process crid started; the init never returns.
pub fn main(root: &Path, userns: Option<&Path>) -> i32 {
    if let Some(path) = userns {
        let joined = File::open(path).and_then(|f| {
            nix::sched::setns(f, CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from)
        });
        if let Err(e) = joined {
            eprintln!(
                "crid monitor: cannot join the user namespace {}: {e}",
                path.display()
            );
            return 1;
        }
    }
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("crid monitor: cannot unshare the PID namespace: {e}");
        return 1;
    }
    match sys::fork_single_threaded() {
        Ok(Some(init)) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{init}").and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("crid monitor: cannot report the holder's pid: {e}");
                    let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
                    1
                }
            }
        }
        Ok(None) => {
            if let Err(e) = confine(root) {
                eprintln!("crid monitor: PID namespace holder: {e}");
                std::process::exit(1);
            }
            reap_forever()
        }
        Err(e) => {
            eprintln!("crid monitor: cannot fork the PID namespace holder: {e}");
            1
        }
    }
}

/// Detaches the init from crid's session and stdio and drops everything it could lend a
/// container in its namespace.
fn confine(root: &Path) -> Result<(), String> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    for fd in [0, 1] {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| format!("dup2: {e}"))?;
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    nix::unistd::chroot(root).map_err(|e| format!("chroot {}: {e}", root.display()))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir: {e}"))?;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(Gid::from_raw(NOBODY)).map_err(|e| format!("setgid: {e}"))?;
    // Leaving uid 0 clears the permitted and effective capabilities.
    nix::unistd::setuid(Uid::from_raw(NOBODY)).map_err(|e| format!("setuid: {e}"))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    // stderr last: errors above still reach the monitor log.
    let _ = nix::unistd::dup2(null.as_raw_fd(), 2);
    Ok(())
}

/// Reaps whatever is re-parented to the init, waiting for SIGCHLD in between. Every signal is
/// blocked, so none but SIGKILL from outside the namespace ends it.
fn reap_forever() -> ! {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let chld = SigSet::from(Signal::SIGCHLD);
    loop {
        match waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => {
                let _ = chld.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{is_holder_cmdline, start_time};

    #[test]
    fn holders_are_recognised_by_their_root_only() {
        let root = Path::new("/run/crid/pidns-root");
        let holder = b"/usr/bin/crid-monitor\0--pid-namespace\0/run/crid/pidns-root\0";
        assert!(is_holder_cmdline(holder, root));
        let in_userns = b"crid-monitor\0--pid-namespace\0/run/crid/pidns-root\0--in-user-namespace\0/run/crid/userns/x\0";
        assert!(is_holder_cmdline(in_userns, root));
        // Another crid's holder, a container monitor, a zombie's empty command line.
        assert!(!is_holder_cmdline(
            b"crid-monitor\0--pid-namespace\0/tmp/other/pidns-root\0",
            root
        ));
        assert!(!is_holder_cmdline(
            b"crid-monitor\0--config\0/run/crid/pidns-root\0",
            root
        ));
        assert!(!is_holder_cmdline(b"", root));
    }

    #[test]
    fn start_time_names_a_live_process_only() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn a_zombie_has_no_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(start_time(pid).is_some());
        child.kill().unwrap();
        // Not reaped yet: a zombie until `wait`.
        let zombie = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            start_time(pid).is_none()
        });
        assert!(zombie);
        child.wait().unwrap();
    }
}
