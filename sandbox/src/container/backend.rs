//! The seam between the container manager and what runs a container. [`ContainerBackend`] is
//! everything the manager asks of a backend; [`super::runc::RuncBackend`] (OCI containers under
//! runc) and [`super::vm::VmBackend`] (unikernel images as guests of a hypervisor) implement it.
//! The manager chooses one at `CreateContainer` from the image and records its [`Backend`] kind,
//! by which it finds the backend again for every later call and after a restart.
//!
//! The manager owns the record, the CRI state machine, names, events and the container's
//! directories; a backend owns what it made (runc's container and bundle, a guest's tap,
//! cgroup and files) and its private state, which lives in the record's `vm` field for the VM
//! backend (the runc backend keeps its state in runc and the bundle). Calls that may change that
//! state get the record mutably; the manager keeps only the backend's own field of it.
//!
//! Both real backends run their process under the per-container monitor ([`Supervisor`]),
//! which owns stdio, logs and the exit status and survives crid restarts.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use super::config::{ContainerConfig, ImageInfo, PodContext, Resources};
use super::record::{
    Backend, ContainerRecord, ContainerState, ContainerStats, now_ns, runtime_err, touch_log,
};
use super::{cgroups, spec};
use crate::SandboxError;
use crate::monitor::prepared::{Handover, HandoverError, PreparedMonitor, StartGate};
use crate::monitor::{ExitRecord, Launch, MonitorHandle, MonitorSpec, Ready, StdinSpec};
use crate::runc::ExecOutput;

/// Resolves when the container's process (its monitor) has ended.
pub type ExitWatch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What `CreateContainer` hands a backend, validated by the manager.
pub struct NewContainer {
    pub id: String,
    pub config: ContainerConfig,
    pub pod: PodContext,
    pub image: ImageInfo,
    pub image_config: spec::ImageConfig,
    /// The normalised stop signal.
    pub stop_signal: String,
    pub log_path: Option<PathBuf>,
    /// The pod's other containers as they are now.
    pub siblings: Vec<ContainerRecord>,
}

/// A container that now runs.
pub struct Started {
    /// Its process as seen from the host (the container's init, or the VMM).
    pub pid: i32,
    /// Taken before the process started: a short-lived one may have exited by the time it is
    /// reported, and the finish time must not precede the start time.
    pub started_at: i64,
    /// `None` when it has already ended.
    pub exited: Option<ExitWatch>,
}

/// Why a start failed.
#[derive(Debug)]
pub enum StartError {
    /// Nothing was started: the container stays `Created`.
    NotStarted(SandboxError),
    /// The start was attempted and failed; the backend has released what it made. The
    /// container becomes `Exited` with reason `StartError` and `message`.
    Failed {
        message: String,
        error: SandboxError,
    },
}

/// How an exited container ended, as the CRI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub exit_code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    pub reason: String,
    pub message: String,
}

impl ContainerExit {
    /// The exit the monitor recorded (`code` being the container's exit code derived from
    /// it), or `Unknown` when the monitor vanished without recording one.
    pub fn from_record(exit: Option<&ExitRecord>, code: impl Fn(i32) -> i32) -> ContainerExit {
        match exit {
            Some(e) => ContainerExit {
                exit_code: code(e.exit_code),
                finished_at: e.finished_at_ns,
                reason: if e.oom_killed {
                    "OOMKilled".into()
                } else if e.exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: String::new(),
            },
            None => ContainerExit {
                exit_code: 255,
                finished_at: now_ns(),
                reason: "Unknown".into(),
                message: "the container's monitor exited without recording an exit status".into(),
            },
        }
    }
}

/// What runs containers of one kind. Blocking methods are called off the async runtime.
#[async_trait::async_trait]
pub trait ContainerBackend: Send + Sync {
    /// The kind recorded for this backend's containers.
    fn kind(&self) -> Backend;

    /// `CreateContainer` (blocking): checks what can be checked without running anything and
    /// writes the backend's files into the container's directories (made by the manager).
    /// Returns the record in `Created`; the manager saves it.
    fn create(&self, new: NewContainer) -> Result<ContainerRecord, SandboxError>;

    /// Whether a container recorded `Created` can still start after crid restarted (what it
    /// needs survived, i.e. the node did not reboot).
    fn startable(&self, r: &ContainerRecord) -> bool;

    /// Right after `CreateContainer` saved the record, on the blocking thread that saved it
    /// (inside the async runtime), before the call answers: a backend may start preparing the
    /// container's start in the background.
    fn created(&self, _r: &ContainerRecord) {}

    /// `StartContainer` on a `Created` container. May update the backend's state in `r`.
    async fn start(&self, r: &mut ContainerRecord) -> Result<Started, StartError>;

    /// Sends `signal` (a name or number) to the container; `all`: to all its processes.
    async fn kill(&self, r: &ContainerRecord, signal: &str, all: bool) -> Result<(), SandboxError>;

    /// Asks the container to shut down by other means than its stop signal (a guest's power
    /// button). False when it cannot be asked: the caller sends the stop signal.
    async fn request_shutdown(&self, _r: &ContainerRecord) -> bool {
        false
    }

    /// Waits up to `timeout` for the container's processes to end; true when they have.
    async fn wait_exit(&self, r: &ContainerRecord, timeout: Duration) -> bool;

    /// Whether the container's end is recorded (it exited, maybe unnoticed).
    fn has_exit(&self, r: &ContainerRecord) -> bool;

    /// The end of a container found no longer running; releases what only a running container
    /// holds (a guest's tap). Blocking; called once per run.
    fn collect_exit(&self, r: &ContainerRecord) -> ContainerExit;

    /// After a restart: a watch on a container recorded `Running` while it still runs, `None`
    /// when it has ended meanwhile.
    fn reattach(&self, r: &ContainerRecord) -> Option<ExitWatch>;

    /// `UpdateContainerResources` on a created or running container. May update the backend's
    /// state in `r`; the manager records the new resources.
    async fn update_resources(
        &self,
        r: &mut ContainerRecord,
        resources: &Resources,
    ) -> Result<(), SandboxError>;

    /// CPU, memory and writable-layer usage.
    async fn stats(&self, r: &ContainerRecord) -> Result<ContainerStats, SandboxError>;

    /// `ExecSync` in a running container (the manager checked the state and the command).
    async fn exec_sync(
        &self,
        r: &ContainerRecord,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, SandboxError>;

    /// Whether `Exec` and attaching stdin (streaming) can reach the container's processes.
    fn supports_exec(&self) -> bool;

    /// The OCI runtime that runs the container, for streaming `exec`; `None` when it has none.
    fn oci_runtime(&self, _r: &ContainerRecord) -> Option<crate::runc::Runc> {
        None
    }

    /// The container's runtime spec, for verbose status.
    fn spec_json(&self, r: &ContainerRecord) -> Option<serde_json::Value>;

    /// The monitor's attach socket, for containers that have one.
    fn attach_socket(&self, r: &ContainerRecord) -> Option<PathBuf>;

    /// `ReopenContainerLog` on a running container.
    fn reopen_log(&self, r: &ContainerRecord) -> Result<(), SandboxError>;

    /// `RemoveContainer` after it stopped: releases what the backend made. The manager
    /// removes the container's directories afterwards.
    async fn remove(&self, r: &ContainerRecord) -> Result<(), SandboxError>;

    /// Releases whatever this backend may hold for container `id`, whose record is lost.
    async fn release_unrecorded(&self, id: &str);

    /// What the backend reports of the host in `Status` verbose info (the VM backend: its
    /// policy, what KVM offers, the prepared crid-vmm guests).
    fn host_report(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// Where a container's files are: `<root>/containers/<id>` and `<state>/containers/<id>`.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    pub root: PathBuf,
    pub state: PathBuf,
}

impl ContainerDirs {
    /// The container's persistent directory (record, bundle, rootfs, exit file).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// The container's volatile directory (monitor files, runc's log).
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    /// A short path in the state root for a unix socket of container `id` (108 bytes at most).
    pub fn short_socket(&self, prefix: &str, id: &str) -> PathBuf {
        self.state
            .join(format!("{prefix}-{}.sock", &id[..16.min(id.len())]))
    }
}

/// The per-container monitor as both real backends use it: started with a [`Launch`], watched
/// through a pidfd, its exit read from `exit.json` (see [`crate::monitor`]).
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub dirs: ContainerDirs,
    /// The crid executable (`crid-monitor` is looked for next to it).
    pub monitor_exe: PathBuf,
}

impl Supervisor {
    fn exit_file(&self, id: &str) -> PathBuf {
        self.dirs.dir(id).join("exit.json")
    }

    /// Where the monitor records the exit when the root's disk is full.
    fn exit_fallback(&self, id: &str) -> PathBuf {
        self.dirs.state_dir(id).join("exit.json")
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.dirs.state_dir(id).join("monitor.pid")
    }

    /// The running monitor of container `id`.
    pub fn handle(&self, id: &str) -> Option<MonitorHandle> {
        MonitorHandle::attach(&self.pid_file(id), id)
    }

    /// The monitor's exit record, from the root or (disk full) the state directory.
    pub fn load_exit(&self, id: &str) -> Option<ExitRecord> {
        ExitRecord::load(&self.exit_file(id)).or_else(|| ExitRecord::load(&self.exit_fallback(id)))
    }

    pub fn has_exit(&self, id: &str) -> bool {
        self.exit_file(id).exists() || self.exit_fallback(id).exists()
    }

    /// Makes the state directory and returns a monitor left from a start that crid did not
    /// finish, if any: the caller removes what that start made, then hands the monitor to
    /// [`Supervisor::ready_to_launch`], which waits for it to end.
    pub fn prepare(&self, r: &ContainerRecord) -> Result<Option<MonitorHandle>, SandboxError> {
        let sdir = self.dirs.state_dir(&r.id);
        std::fs::create_dir_all(&sdir).map_err(|e| SandboxError::io(&sdir, e))?;
        let stale = self.handle(&r.id);
        if let Some(stale) = &stale {
            tracing::warn!(container_id = %r.id, monitor = stale.pid, "removing a half-started container");
        }
        Ok(stale)
    }

    /// Waits (bounded) for a stale monitor to end, then clears the exit files and creates the
    /// log file, so that a full disk or an unusable log directory is the request's error.
    pub async fn ready_to_launch(
        &self,
        r: &ContainerRecord,
        stale: Option<MonitorHandle>,
    ) -> Result<(), SandboxError> {
        if let Some(stale) = stale {
            let _ = tokio::time::timeout(Duration::from_secs(10), stale.exited()).await;
        }
        let _ = std::fs::remove_file(self.exit_file(&r.id));
        let _ = std::fs::remove_file(self.exit_fallback(&r.id));
        touch_log(r.log_path.as_deref())
    }

    fn monitor_spec(
        &self,
        r: &ContainerRecord,
        launch: Launch,
        stdin: Option<StdinSpec>,
    ) -> MonitorSpec {
        let id = r.id.as_str();
        MonitorSpec {
            id: id.to_owned(),
            launch,
            log_path: r.log_path.clone(),
            exit_file: self.exit_file(id),
            exit_fallback: Some(self.exit_fallback(id)),
            pid_file: self.pid_file(id),
            oom_cgroup: Some(cgroups::controller_dir("memory", &r.cgroups_path)),
            stdin,
        }
    }

    /// Starts the monitor running `launch` and waits for its report; the error is the message
    /// of a failed start.
    pub async fn launch(
        &self,
        r: &ContainerRecord,
        launch: Launch,
        stdin: Option<StdinSpec>,
    ) -> Result<Started, String> {
        let sdir = self.dirs.state_dir(&r.id);
        let spec = self.monitor_spec(r, launch, stdin);
        let exe = self.monitor_exe.clone();
        let spec_path = sdir.join("monitor.json");
        let started_at = now_ns();
        let stderr_path = sdir.join("monitor.log");
        let ready = tokio::task::spawn_blocking(move || {
            crate::monitor::spawn(
                &exe,
                &spec,
                &spec_path,
                &stderr_path,
                Duration::from_secs(60),
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("runtime start monitor failed: {e}"))?;
        self.started(&r.id, ready, started_at)
    }

    /// [`Supervisor::launch`] through a prepared monitor (see [`crate::monitor::prepared`]),
    /// which takes `launch` (its prepared VMM's command line). One that had ended before it
    /// took the container is replaced by a monitor started the usual way.
    pub async fn launch_prepared(
        &self,
        r: &ContainerRecord,
        launch: Launch,
        prepared: PreparedMonitor,
    ) -> Result<Started, String> {
        let handover = Handover {
            spec: self.monitor_spec(r, launch, None),
            stderr: self.dirs.state_dir(&r.id).join("monitor.log"),
            start_gate: false,
        };
        let started_at = now_ns();
        let (handover, result) = tokio::task::spawn_blocking(move || {
            let result = prepared.hand_over(&handover, Duration::from_secs(60));
            (handover, result)
        })
        .await
        .map_err(|e| e.to_string())?;
        match result {
            Ok(ready) => self.started(&r.id, ready, started_at),
            Err(HandoverError::Gone(e)) => {
                tracing::info!(container_id = %r.id, error = %e, "the prepared crid-vmm is gone; starting one");
                self.launch(r, handover.spec.launch, None).await
            }
            Err(e @ HandoverError::Failed(_)) => Err(format!("runtime start monitor failed: {e}")),
        }
    }

    /// Hands `prepared` a created container (blocking): its monitor takes it as at a start
    /// (pid file, the CRI log, created here first as a start creates it) and its VMM sets the
    /// guest up and waits for [`StartGate::start`] (see [`crate::monitor::prepared`]). Returns
    /// the VMM's pid and the gate; `Ok(None)` when the monitor had ended before it took the
    /// container (nothing of it was started); the error is the message of a failed start.
    pub fn arm(
        &self,
        r: &ContainerRecord,
        launch: Launch,
        prepared: PreparedMonitor,
    ) -> Result<Option<(i32, StartGate)>, String> {
        touch_log(r.log_path.as_deref()).map_err(|e| e.to_string())?;
        let handover = Handover {
            spec: self.monitor_spec(r, launch, None),
            stderr: self.dirs.state_dir(&r.id).join("monitor.log"),
            start_gate: true,
        };
        match prepared.hand_over_gated(&handover, Duration::from_secs(60)) {
            Ok((Ready { pid: Some(pid), .. }, gate)) => Ok(Some((pid, gate))),
            Ok((Ready { error, .. }, _)) => {
                Err(error.unwrap_or_else(|| "monitor gave no pid".into()))
            }
            Err(HandoverError::Gone(e)) => {
                tracing::info!(container_id = %r.id, error = %e, "the prepared crid-vmm is gone; the start runs one");
                Ok(None)
            }
            Err(e @ HandoverError::Failed(_)) => Err(format!("runtime start monitor failed: {e}")),
        }
    }

    /// Starts the guest of container `id` that [`Supervisor::arm`] set up: its VMM `pid` runs
    /// it once `gate` is opened.
    pub fn start_armed(&self, id: &str, pid: i32, gate: StartGate) -> Result<Started, String> {
        let started_at = now_ns();
        gate.start().map_err(|e| {
            format!("the guest's VMM ended before it was started ({e}); see the container's log")
        })?;
        Ok(Started {
            pid,
            started_at,
            exited: self.watch(id),
        })
    }

    /// The start a monitor reported.
    fn started(&self, id: &str, ready: Ready, started_at: i64) -> Result<Started, String> {
        let pid = match ready {
            Ready { pid: Some(pid), .. } => pid,
            Ready { error, .. } => {
                return Err(error.unwrap_or_else(|| "monitor gave no pid".into()));
            }
        };
        Ok(Started {
            pid,
            started_at,
            exited: self.watch(id),
        })
    }

    /// A watch on the monitor of `id`, `None` when it is gone.
    pub fn watch(&self, id: &str) -> Option<ExitWatch> {
        let handle = self.handle(id)?;
        let id = id.to_owned();
        Some(Box::pin(async move {
            if let Err(e) = handle.exited().await {
                tracing::warn!(container_id = %id, error = %e, "cannot watch the monitor");
                // The exit is then collected on demand (status, stop): never here.
                std::future::pending::<()>().await;
            }
        }))
    }

    /// Waits up to `timeout` for the monitor of `id` to exit; true when it has.
    pub async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        match self.handle(id) {
            None => true,
            Some(h) => tokio::time::timeout(timeout, h.exited()).await.is_ok(),
        }
    }

    /// Makes the monitor reopen the container's log file.
    pub fn reopen_log(&self, r: &ContainerRecord) -> Result<(), SandboxError> {
        let handle = self
            .handle(&r.id)
            .ok_or_else(|| SandboxError::FailedPrecondition {
                reason: format!("container {} has no running monitor", r.id),
            })?;
        // The new file is created here first, as containerd does; the monitor then opens it.
        touch_log(r.log_path.as_deref())?;
        handle
            .reopen_log()
            .map_err(|e| runtime_err("reopen log", e.to_string()))
    }

    /// SIGKILLs the monitor's children (a VMM, or what is left of a runc container) and waits
    /// (bounded) for the monitor to end, for a container whose record is lost.
    pub async fn end_unrecorded(&self, id: &str) {
        let Some(monitor) = self.handle(id) else {
            return;
        };
        for child in children_of(monitor.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), monitor.exited())
            .await
            .is_err()
        {
            tracing::warn!(container_id = %id, "monitor of a quarantined container still runs");
        }
    }

    /// Cgroup usage while it runs and the writable layer's usage.
    pub async fn stats(&self, r: &ContainerRecord) -> Result<ContainerStats, SandboxError> {
        let upper = self.dirs.dir(&r.id).join("upper");
        let cg = r.cgroups_path.clone();
        let running = r.state == ContainerState::Running;
        tokio::task::spawn_blocking(move || {
            let cgroup = if running {
                cgroups::read_stats(&cg).unwrap_or_default()
            } else {
                cgroups::CgroupStats::default()
            };
            let (writable_bytes, writable_inodes) = cgroups::disk_usage(&upper);
            ContainerStats {
                timestamp: now_ns(),
                cgroup,
                writable_bytes,
                writable_inodes,
            }
        })
        .await
        .map_err(|e| runtime_err("stats", e.to_string()))
    }
}

/// A start that failed on a full disk under the container's directory is RESOURCE_EXHAUSTED
/// (runc reports ENOSPC only as text), as the same failure in crid itself is.
pub fn start_failure(dir: &Path, message: String) -> StartError {
    let error = if crate::sys::is_full(dir) {
        SandboxError::DiskFull {
            op: "start".into(),
            path: dir.to_owned(),
            reason: message.clone(),
        }
    } else {
        runtime_err("start", message.clone())
    };
    StartError::Failed { message, error }
}

/// The pids whose parent is `pid` (read from `/proc`; a process gone meanwhile is skipped).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(pid)
        })
        .collect()
}

/// The parent pid in a `/proc/PID/stat` line (the field after the `)` of the command name).
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_is_read_past_odd_command_names() {
        assert_eq!(parent_of("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("42 (sleep) R 1 2 3"), Some(1));
        assert_eq!(parent_of("garbage"), None);
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children_of(me).contains(&(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }

    #[test]
    fn exits_get_their_cri_reason() {
        let rec = |code, oom| ExitRecord {
            exit_code: code,
            finished_at_ns: 7,
            oom_killed: oom,
        };
        let e = ContainerExit::from_record(Some(&rec(0, false)), |c| c);
        assert_eq!((e.exit_code, e.reason.as_str()), (0, "Completed"));
        let e = ContainerExit::from_record(Some(&rec(3, false)), |c| c + 1);
        assert_eq!((e.exit_code, e.reason.as_str()), (4, "Error"));
        let e = ContainerExit::from_record(Some(&rec(137, true)), |c| c);
        assert_eq!(e.reason, "OOMKilled");
        let e = ContainerExit::from_record(None, |c| c);
        assert_eq!((e.exit_code, e.reason.as_str()), (255, "Unknown"));
    }
}
