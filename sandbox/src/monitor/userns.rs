//! The short-lived process that makes a pod's user namespace: `crid-monitor --user-namespace`
//! (or `crid monitor --user-namespace`) unshares a user namespace together with network, IPC
//! and UTS namespaces in one `unshare(2)`, so those three are owned by the new user namespace
//! (the container processes that join it then have capabilities over them: mounting `sysfs`
//! and `mqueue`, setting the hostname). It reports `ready` on stdout and waits for stdin to
//! close; meanwhile crid writes its id maps and pins its namespaces (`sys::userns`).
//!
//! A process of its own because `unshare(CLONE_NEWUSER)` needs a single-threaded caller, which
//! crid (a tokio runtime) never is, and crid never forks.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;

use super::monitor_command;

const READY: &str = "ready";

/// Entry point of `--user-namespace`, in a process with one thread. Returns its exit code.
pub fn main() -> i32 {
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = nix::sched::unshare(flags) {
        eprintln!("crid monitor: cannot unshare the user namespace: {e}");
        return 1;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{READY}").and_then(|()| out.flush()) {
        eprintln!("crid monitor: cannot report: {e}");
        return 1;
    }
    // Until crid has pinned the namespaces and closes our stdin.
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
    0
}

/// A running `--user-namespace` process whose namespaces exist.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the process exit and reaps it (its namespaces live on where they are pinned).
    pub fn finish(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the process through the monitor binary next to `exe` (or `exe monitor`) and waits
/// (at most `timeout`) until its namespaces exist. Blocking: call from a blocking task.
pub fn spawn(exe: &Path, stderr_path: &Path, timeout: Duration) -> std::io::Result<Holder> {
    let stderr = std::fs::File::options()
        .create(true)
        .append(true)
        .open(stderr_path)?;
    let mut child = monitor_command(exe)
        .arg(OsStr::new("--user-namespace"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut holder = Holder { child, stdin };
    let Some(stdout) = stdout else {
        return Err(std::io::Error::other("user namespace holder has no stdout"));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout.take(64))
            .read_line(&mut line)
            .map(|_| line);
        let _ = tx.send(r);
    });
    let reported = match rx.recv_timeout(timeout) {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::other(
                "user namespace holder did not report in time",
            ));
        }
    };
    if reported.trim() != READY {
        let status = holder.child.wait().ok();
        holder.stdin = None;
        return Err(std::io::Error::other(format!(
            "user namespace holder failed ({}); see {}",
            status.map_or_else(|| "?".into(), |s| s.to_string()),
            stderr_path.display()
        )));
    }
    Ok(holder)
}
