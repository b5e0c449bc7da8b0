//! The container's root file system shared with a `linux` guest as a directory, over virtiofs.
//!
//! Why virtiofs and not QEMU's built-in virtio-9p: Debian's cloud kernel (the kernel `linux`
//! guests are tested with) has no 9p client at all (`CONFIG_9P_FS` unset), while `fuse` and
//! `virtiofs` are modules of it. 9p would also serve the files as QEMU's unprivileged
//! per-container uid (QEMU drops to it after opening its devices): the image's root-owned files
//! and kubelet's root-owned volumes would need an id-mapped mount, and the guest would see that
//! uid instead of the files' owners. `virtiofsd` (Debian: `/usr/lib/qemu/virtiofsd`, from
//! `qemu-system-common`) keeps owners and modes as they are on the host; the cost is one more
//! process per guest, running as root in its own sandbox: new mount, PID and network
//! namespaces with `pivot_root` into the shared directory (its default `sandbox=namespace`), and
//! without `CAP_MKNOD` (`modcaps=-mknod`), so the guest cannot make device nodes on the host.
//!
//! The daemon is started at `StartContainer` once the backend has mounted the root file system
//! (see `crate::container::vm_rootfs`), in the container's cgroup, before the VMM; it serves one
//! connection (QEMU's) and exits when QEMU does. `cache=none`: every lookup and read goes to the
//! host, so a ConfigMap that kubelet updates is seen by the guest at once. [`kill`] (from
//! [`super::launch::release`]) ends a daemon that is still there (QEMU never connected).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// The name `VmSettings::binary` looks up (crid's `vm.virtiofsd_path`).
pub const BINARY: &str = "virtiofsd";
/// Debian's virtiofsd (package `qemu-system-common`).
pub const DEFAULT_PATH: &str = "/usr/lib/qemu/virtiofsd";
/// The virtiofs tag the guest mounts.
pub const TAG: &str = "rootfs";
/// The daemon's pid and log files in the container's run directory.
const PID_FILE: &str = "virtiofsd.pid";
const LOG_FILE: &str = "virtiofsd.log";
/// How long the daemon gets to listen on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a shared root reaches its guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Transport {
    /// virtiofsd, for `linux` guests (this module).
    #[default]
    Virtiofs,
    /// QEMU's built-in virtio-9p, for `unikraft` guests (see [`super::ninep`]).
    NineP,
    /// Not shared: copied into an ext4 image on the guest's first disk, for `linux` guests
    /// without a shared file system (see [`super::blockroot`]).
    Block,
}

impl Transport {
    /// The name mount notes give it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Virtiofs => "virtiofs",
            Transport::NineP => "9p",
            Transport::Block => "block",
        }
    }
}

/// A guest's root file system, shared with it as a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedRoot {
    /// The container's root file system on the host (the image's layers as an overlay, the
    /// CRI mounts bound in), mounted by the container backend before the guest is prepared.
    pub rootfs: PathBuf,
    /// The workload's working directory, uid and gid in the guest.
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    /// virtiofsd's vhost-user socket (a short path: unix socket paths are limited to 108
    /// bytes); unused over 9p.
    pub socket: PathBuf,
    /// virtiofs (`linux`), 9p (`unikraft`) or a block root (`linux`, copied); states written
    /// before 9p mean virtiofs.
    #[serde(default)]
    pub transport: Transport,
}

/// What the VMM needs to attach the share: the daemon's socket and the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    pub socket: PathBuf,
    pub tag: String,
}

/// The kernel command line parameter that tells the guest's init to mount the share as the
/// workload's root (the test guest's `/init` reads it; a dotted name reaches neither init's
/// argv nor its environment).
pub fn root_param(tag: &str) -> String {
    format!("crid.root=virtiofs:{tag}")
}

/// The share of a guest's root.
pub fn shared_dir(root: &SharedRoot) -> SharedDir {
    SharedDir {
        socket: root.socket.clone(),
        tag: TAG.to_owned(),
    }
}

/// virtiofsd's command line (the C daemon of QEMU 7.2; the Rust one takes the same options
/// except `-o modcaps`, see [`start`]).
pub fn daemon_args(source: &Path, socket: &Path) -> Result<Vec<String>, SandboxError> {
    let source = super::path_arg(source)?;
    let socket = super::path_arg(socket)?;
    Ok(vec![
        format!("--socket-path={socket}"),
        "-o".into(),
        format!("source={source}"),
        "-o".into(),
        "cache=none".into(),
        "-o".into(),
        "sandbox=namespace".into(),
        "-o".into(),
        "modcaps=-mknod".into(),
        "-o".into(),
        "log_level=warn".into(),
    ])
}

/// Starts virtiofsd for `root`, moves it into the container's cgroup (`cgroup_procs`), and
/// waits until it listens. Its stderr goes to `virtiofsd.log` in the run directory; a thread
/// reaps it.
pub fn start(
    binary: &Path,
    root: &SharedRoot,
    run_dir: &Path,
    cgroup_procs: &[PathBuf],
) -> Result<SharedDir, SandboxError> {
    use std::os::unix::process::CommandExt;
    let shared = shared_dir(root);
    let _ = std::fs::remove_file(&shared.socket);
    let log_path = run_dir.join(LOG_FILE);
    let log = std::fs::File::create(&log_path).map_err(|e| SandboxError::io(&log_path, e))?;
    let mut child = std::process::Command::new(binary)
        .args(daemon_args(&root.rootfs, &shared.socket)?)
        .env_clear()
        .envs(crate::monitor::child_env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        // Not in crid's process group: a signal to crid's group does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| SandboxError::io(binary, e))?;
    let pid = child.id();
    let fail = |reason: String| {
        kill(run_dir, &shared.socket);
        SandboxError::Runtime {
            op: "virtiofsd".into(),
            reason,
        }
    };
    let pid_file = run_dir.join(PID_FILE);
    std::fs::write(&pid_file, pid.to_string()).map_err(|e| {
        let _ = child.kill();
        let _ = child.wait();
        SandboxError::io(&pid_file, e)
    })?;
    for procs in cgroup_procs {
        if let Err(e) = std::fs::write(procs, pid.to_string()) {
            return Err(fail(format!("cannot join {}: {e}", procs.display())));
        }
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(&pid_file);
            return Err(SandboxError::Runtime {
                op: "virtiofsd".into(),
                reason: format!(
                    "exited ({status}) before listening: {}",
                    log_tail(&log_path)
                ),
            });
        }
        if is_socket(&shared.socket) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "not listening on {} after {READY_TIMEOUT:?}: {}",
                shared.socket.display(),
                log_tail(&log_path)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(shared)
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The end of the daemon's log, for an error message.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("; ")
}

/// Kills the daemon of `run_dir` if it still runs (its pid file names it and its command line
/// still names its `socket`: a recycled pid is left alone), and removes its pid file and
/// socket. Fine to call more than once.
pub fn kill(run_dir: &Path, socket: &Path) {
    let pid_file = run_dir.join(PID_FILE);
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0);
    if let Some(pid) = pid {
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let want = format!("--socket-path={}", socket.display());
                c.split(|b| *b == 0).any(|arg| arg == want.as_bytes())
            })
            .unwrap_or(false);
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(socket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_command_line() {
        let a = daemon_args(Path::new("/c/1/rootfs"), Path::new("/c/1/vm/virtiofs.sock")).unwrap();
        assert_eq!(
            a.join(" "),
            "--socket-path=/c/1/vm/virtiofs.sock -o source=/c/1/rootfs -o cache=none \
             -o sandbox=namespace -o modcaps=-mknod -o log_level=warn"
        );
        // `-o` splits on commas: such a path would smuggle options in.
        assert!(daemon_args(Path::new("/c/1,cache=always"), Path::new("/s")).is_err());
        assert_eq!(root_param(TAG), "crid.root=virtiofs:rootfs");
    }

    #[test]
    fn kill_leaves_a_process_that_is_not_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        // Our own pid: its command line does not name the socket.
        std::fs::write(dir.path().join(PID_FILE), std::process::id().to_string()).unwrap();
        kill(dir.path(), &dir.path().join("vfs.sock"));
        assert!(!dir.path().join(PID_FILE).exists());
    }

    #[test]
    fn a_daemon_that_exits_early_is_an_error_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-virtiofsd");
        // It reports the names of its environment variables with its error.
        let script = "#!/bin/sh\necho \"fake: no such source; $(tr '\\0' '\\n' </proc/$$/environ | cut -d= -f1 | tr '\\n' ' ')\" >&2\nexit 1\n";
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let root = SharedRoot {
            rootfs: dir.path().to_path_buf(),
            workdir: "/".into(),
            uid: 0,
            gid: 0,
            socket: dir.path().join("vfs.sock"),
            transport: Default::default(),
        };
        let err = start(&bin, &root, dir.path(), &[]).unwrap_err();
        // Like every child of crid, it starts with `PATH` as its only variable.
        let message = err.to_string();
        assert!(
            message.trim_end().ends_with("fake: no such source; PATH"),
            "{err}"
        );
        assert!(!dir.path().join(PID_FILE).exists());
    }
}
