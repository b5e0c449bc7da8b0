//! A thin wrapper over the `runc` command line (`--root <state>/runc`). `create` is run by the
//! container's monitor (see [`crate::monitor`]); everything else is called from crid here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::SandboxError;

/// How to call runc.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
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
