//! A thin wrapper over the command line of an OCI runtime (runc, or crun, which takes the same
//! commands and flags), with `--root <state>/<runtime name>`. `run` is run by the container's
//! monitor (see [`crate::monitor`]); everything else is called from crid here. Also the choice
//! of the default runtime ([`default_runtime`]).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::SandboxError;

/// How to call one OCI runtime.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

/// The OCI runtimes of ordinary containers, by RuntimeClass handler.
#[derive(Debug, Clone, Default)]
pub struct OciRuntimes {
    /// Handler → runtime binary. Pods under other handlers (the runc sidecars of unikernel
    /// pods) get the default handler's (""), else runc.
    pub by_handler: BTreeMap<String, PathBuf>,
    /// crid's volatile state dir, under which each runtime has its root.
    pub state: PathBuf,
    pub systemd_cgroup: bool,
}

impl OciRuntimes {
    /// The runtime binary for a new container of a pod under `handler`.
    pub fn for_handler(&self, handler: &str) -> PathBuf {
        self.by_handler
            .get(handler)
            .or_else(|| self.by_handler.get(""))
            .cloned()
            .unwrap_or_else(|| PathBuf::from("runc"))
    }

    /// How to call `binary`; empty (records from before runtimes were selectable) is runc.
    pub fn runc(&self, binary: &Path) -> Runc {
        let binary = if binary.as_os_str().is_empty() {
            Path::new("runc")
        } else {
            binary
        };
        Runc::new(binary.to_owned(), &self.state, self.systemd_cgroup)
    }

    /// Every runtime a container may have been given, one per state root (for a container
    /// whose record is lost).
    pub fn all(&self) -> Vec<Runc> {
        let mut roots = HashSet::new();
        self.by_handler
            .values()
            .map(PathBuf::as_path)
            .chain([Path::new("runc")])
            .map(|b| self.runc(b))
            .filter(|r| roots.insert(r.root.clone()))
            .collect()
    }
}

/// The runtime's state root for `binary`: `<state>/<its file name>` (`<state>/runc` for runc, as
/// before runtimes were selectable), so two runtimes never share one.
pub fn state_root(state: &Path, binary: &Path) -> PathBuf {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("runc");
    state.join(name)
}

/// The runtime crid uses when the configuration says `auto`, and why: crun (its container start
/// is a C program, where runc is a Go binary that re-executes itself as `runc init`) when it is
/// installed and accepts this host's cgroups, else runc. `crun_path` is where crun was found;
/// `hybrid_v2_controllers` the controllers a v1 (hybrid) host left on its v2 mount, which crun
/// refuses to run under ("cgroups in hybrid mode not supported").
pub fn default_runtime(
    crun_path: Option<PathBuf>,
    hybrid_v2_controllers: &[String],
) -> (PathBuf, String) {
    match crun_path {
        None => (
            PathBuf::from("runc"),
            "crun is not installed; using runc".to_owned(),
        ),
        Some(_) if !hybrid_v2_controllers.is_empty() => (
            PathBuf::from("runc"),
            format!(
                "crun refuses a cgroup v1 host whose v2 mount holds controllers ({}); using runc \
                 (mount them on v1 as scripts/deps.sh does to use crun)",
                hybrid_v2_controllers.join(" ")
            ),
        ),
        Some(path) => {
            let reason = format!("crun found at {}", path.display());
            (path, reason)
        }
    }
}

/// The result of [`Runc::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub timed_out: bool,
}

impl Runc {
    /// Calls `binary` with its own state root under `state`.
    pub fn new(binary: PathBuf, state: &Path, systemd_cgroup: bool) -> Runc {
        Runc {
            root: state_root(state, &binary),
            binary,
            systemd_cgroup,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear()
            .envs(crate::monitor::child_env())
            .arg("--root")
            .arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    async fn run(&self, op: &str, args: &[&str]) -> Result<Vec<u8>, SandboxError> {
        let out = self
            .command()
            .args(args)
            .output()
            .await
            .map_err(|e| SandboxError::Runtime {
                op: op.into(),
                reason: format!("cannot run {}: {e}", self.binary.display()),
            })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(SandboxError::Runtime {
                op: op.into(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Sends `signal` (a name or number); `all` signals every process of the container.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), SandboxError> {
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, signal]);
        self.run("kill", &args).await.map(drop)
    }

    /// Deletes the container; a container runc does not know is fine.
    pub async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        match self.run("delete", &["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(SandboxError::Runtime { reason, .. })
                if reason.contains("does not exist") || reason.contains("not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Applies new resources (an OCI `LinuxResources` JSON) to a running container.
    pub async fn update(&self, id: &str, resources_json: &Path) -> Result<(), SandboxError> {
        let path = resources_json.to_string_lossy();
        self.run("update", &["update", "--resources", &path, id])
            .await
            .map(drop)
    }

    /// Runs `process_json` (an OCI `Process`) in the container, capturing at most `cap` bytes
    /// of each stream. On timeout the process is killed and `timed_out` set.
    pub async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        timeout: Option<Duration>,
        cap: usize,
    ) -> Result<ExecOutput, SandboxError> {
        let err = |reason: String| SandboxError::Runtime {
            op: "exec".into(),
            reason,
        };
        let mut child = self
            .command()
            .arg("exec")
            .arg("--process")
            .arg(process_json)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("cannot run {}: {e}", self.binary.display())))?;
        let out_buf = Arc::new(Mutex::new(Vec::new()));
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let read_out = tokio::spawn(read_capped(child.stdout.take(), cap, out_buf.clone()));
        let read_err = tokio::spawn(read_capped(child.stderr.take(), cap, err_buf.clone()));
        let waited = match timeout {
            Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let (status, timed_out) = match waited {
            Some(s) => (Some(s.map_err(|e| err(e.to_string()))?), false),
            None => {
                // Kill the exec'd process itself and let runc exec, its subreaper, reap it and
                // exit. Killing runc too early would leave the process a zombie in the
                // container (reparented to the container's init, which may never reap it).
                let killed = crate::monitor::read_pid(pid_file).is_some_and(|pid| {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                });
                let reaped = killed
                    && tokio::time::timeout(EXEC_REAP_GRACE, child.wait())
                        .await
                        .is_ok();
                if !reaped {
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                }
                (None, true)
            }
        };
        // Output ends when every writer closed the pipes; a process left in the background
        // may keep them open, so what came within a grace period is what is returned.
        for mut reader in [read_out, read_err] {
            if tokio::time::timeout(OUTPUT_GRACE, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()))
        };
        let stdout = take(&out_buf);
        let stderr = take(&err_buf);
        let _ = std::fs::remove_file(pid_file);
        let exit_code = match status {
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code()
                    .or_else(|| s.signal().map(|n| 128 + n))
                    .unwrap_or(255)
            }
            None => -1,
        };
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
            timed_out,
        })
    }
}

/// How long runc exec gets to reap a timed-out process it was told to kill, and exit.
const EXEC_REAP_GRACE: Duration = Duration::from_secs(5);

/// How long output is still read after an exec'd process exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Reads a stream to its end into `out`, keeping the first `cap` bytes and discarding the rest
/// (so the writer never blocks).
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    r: Option<R>,
    cap: usize,
    out: Arc<Mutex<Vec<u8>>>,
) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        let keep = n.min(cap.saturating_sub(out.len()));
        out.extend_from_slice(&buf[..keep]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtime_has_its_own_root() {
        let state = Path::new("/run/crid");
        assert_eq!(
            state_root(state, Path::new("/usr/sbin/runc")),
            Path::new("/run/crid/runc")
        );
        assert_eq!(
            state_root(state, Path::new("crun")),
            Path::new("/run/crid/crun")
        );
        assert_eq!(
            state_root(state, Path::new("")),
            Path::new("/run/crid/runc")
        );
    }

    #[test]
    fn runtimes_by_handler() {
        let runtimes = OciRuntimes {
            by_handler: BTreeMap::from([
                (String::new(), PathBuf::from("/usr/bin/crun")),
                ("runc".into(), PathBuf::from("/usr/sbin/runc")),
            ]),
            state: PathBuf::from("/run/crid"),
            systemd_cgroup: false,
        };
        assert_eq!(runtimes.for_handler("runc"), Path::new("/usr/sbin/runc"));
        assert_eq!(runtimes.for_handler(""), Path::new("/usr/bin/crun"));
        // A unikernel pod's sidecars: the default handler's runtime.
        assert_eq!(runtimes.for_handler("urunc"), Path::new("/usr/bin/crun"));
        assert_eq!(OciRuntimes::default().for_handler("x"), Path::new("runc"));
        let old = runtimes.runc(Path::new(""));
        assert_eq!(old.binary, Path::new("runc"));
        assert_eq!(old.root, Path::new("/run/crid/runc"));
        let roots: Vec<PathBuf> = runtimes.all().into_iter().map(|r| r.root).collect();
        assert_eq!(
            roots,
            [Path::new("/run/crid/crun"), Path::new("/run/crid/runc")]
        );
    }

    #[test]
    fn crun_is_the_default_where_it_can_run() {
        let crun = Some(PathBuf::from("/usr/bin/crun"));
        assert_eq!(
            default_runtime(crun.clone(), &[]).0,
            Path::new("/usr/bin/crun")
        );
        let (path, why) = default_runtime(crun, &["hugetlb".to_owned()]);
        assert_eq!(path, Path::new("runc"));
        assert!(why.contains("hugetlb"), "{why}");
        let (path, why) = default_runtime(None, &[]);
        assert_eq!(path, Path::new("runc"));
        assert!(why.contains("not installed"), "{why}");
    }
}
