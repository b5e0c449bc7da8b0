//! Containers run by runc: records persisted under `<root>/containers/<id>/`, the CRI state
//! machine (`Created → Running → Exited`, `Unknown` when the truth is lost), name reservation,
//! the overlayfs rootfs over the image's shared layers, the OCI spec ([`spec`]) and the
//! per-container monitor ([`crate::monitor`]) that owns stdio, logs and the exit status.
//!
//! On-disk layout per container:
//! - `<root>/containers/<id>/`: `record.json`, `config.json` (the runc bundle), `rootfs/`
//!   (overlay mount point), `upper/`, `work/`, `exit.json` (written by the monitor).
//! - `<state>/containers/<id>/`: `monitor.json`, `monitor.pid`, `container.pid`, `runc.log`,
//!   `monitor.log`, exec process files and `attach` (the monitor's attach socket, for
//!   containers with stdin or a terminal).
//!
//! The exit file is the truth: a container whose exit file exists has exited; one whose
//! monitor is alive runs; one whose monitor vanished without an exit file is `Exited` with
//! exit code 255 and reason `Unknown` (e.g. after a reboot).

pub mod apparmor;
mod caps;
pub mod cgroups;
pub mod config;
mod seccomp;
pub mod spec;
pub mod user;
pub mod vm;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use self::config::{
    AppArmorProfile, ContainerConfig, DeviceSpec, ImageInfo, MountSpec, NsSource, PodContext,
    Propagation, Resources, SeccompProfile, SecurityContext,
};
use crate::SandboxError;
use crate::monitor::{ExitRecord, Launch, MonitorHandle, MonitorSpec, StdinSpec};
use crate::pod::{CgroupDriver, PodRecord};
use crate::runc::{ExecOutput, Runc};

/// ExecSync output limit per stream.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// CRI container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// What runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Backend {
    /// `runc run --detach` under the monitor.
    #[default]
    Runc,
    /// An arbitrary process under the monitor (a VMM), signalled directly.
    Process,
}

/// Everything crid knows about a container; persisted as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub pod: PodContext,
    pub image: ImageInfo,
    pub backend: Backend,
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 when not yet.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The container's init process as seen from the host.
    pub pid: i32,
    pub log_path: Option<PathBuf>,
    pub cgroups_path: String,
    /// The signal `StopContainer` sends first.
    pub stop_signal: String,
    /// The VM backend's own state, for unikernel containers (`Backend::Process`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<vm::VmState>,
}

impl ContainerRecord {
    /// `(name, attempt)` within the pod: the reservation key.
    fn name_key(&self) -> String {
        name_key(&self.pod_id, &self.config.name, self.config.attempt)
    }
}

fn name_key(pod: &str, name: &str, attempt: u32) -> String {
    format!("{pod}/{name}/{attempt}")
}

/// Container lifecycle events (CRI `GetContainerEvents`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub kind: EventKind,
    pub container_id: String,
    pub pod_id: String,
    pub at: i64,
    /// The container as it was right after the event (last known for `Deleted`).
    pub record: ContainerRecord,
}

/// `ListContainers` filter.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id_prefix: String,
    pub state: Option<ContainerState>,
    pub pod_id: String,
    pub labels: BTreeMap<String, String>,
}

impl ContainerFilter {
    pub fn matches(&self, r: &ContainerRecord) -> bool {
        r.id.starts_with(&self.id_prefix)
            && self.state.is_none_or(|s| s == r.state)
            && (self.pod_id.is_empty() || r.pod_id == self.pod_id)
            && self
                .labels
                .iter()
                .all(|(k, v)| r.config.labels.get(k) == Some(v))
    }
}

/// Usage of one container.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerStats {
    pub timestamp: i64,
    pub cgroup: cgroups::CgroupStats,
    pub writable_bytes: u64,
    pub writable_inodes: u64,
}

/// Settings of the container manager.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// crid's persistent root; records live in `<root>/containers`.
    pub root: PathBuf,
    /// crid's volatile state dir; runc's root is `<state>/runc`.
    pub state: PathBuf,
    pub runc: PathBuf,
    pub cgroup_driver: CgroupDriver,
    /// The crid binary, run as `crid monitor`.
    pub monitor_exe: PathBuf,
    pub seccomp_profile_root: PathBuf,
    /// The VM backend's settings (crid's `[vm]`).
    pub vm: crate::vm::launch::VmSettings,
}

struct Entry {
    record: Mutex<ContainerRecord>,
    /// Serialises lifecycle operations on one container (never held by the store lock).
    op: tokio::sync::Mutex<()>,
    /// Serialises collecting the exit (which may release a guest's tap and cgroup, seconds of
    /// work) without holding `record`, so status and list calls never wait for it.
    exit: Mutex<()>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Arc<Entry>>,
    names: HashMap<String, String>,
}

/// All containers of this node.
pub struct ContainerManager {
    settings: ContainerSettings,
    /// What the host's KVM offers, probed once at start-up.
    kvm: crate::vm::accel::KvmProbe,
    runc: Runc,
    inner: Mutex<Inner>,
    events: broadcast::Sender<ContainerEvent>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Creates (or opens) a container's log file as its monitor will, so that a full disk or an
/// unusable log directory is the request's error (RESOURCE_EXHAUSTED on ENOSPC) rather than a
/// line in the monitor's log.
fn touch_log(path: Option<&Path>) -> Result<(), SandboxError> {
    let Some(path) = path else { return Ok(()) };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| SandboxError::io(path, e))?;
    Ok(())
}

fn runtime_err(op: &str, reason: impl Into<String>) -> SandboxError {
    SandboxError::Runtime {
        op: op.into(),
        reason: reason.into(),
    }
}

fn not_found(id: &str) -> SandboxError {
    SandboxError::NotFound {
        what: "container",
        id: id.to_owned(),
    }
}

impl PodContext {
    /// The facts a container needs from its pod's record. `pid` is the PID namespace the
    /// container asked for, already resolved by the caller (pod holder, target, host, own).
    pub fn from_pod(pod: &PodRecord, pid: NsSource) -> PodContext {
        let join = |p: &Option<PathBuf>| match p {
            Some(p) => NsSource::Join(p.clone()),
            None => NsSource::Host,
        };
        let opt = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        PodContext {
            id: pod.id.clone(),
            name: pod.config.metadata.name.clone(),
            namespace: pod.config.metadata.namespace.clone(),
            uid: pod.config.metadata.uid.clone(),
            network: join(&pod.paths.netns),
            ipc: join(&pod.paths.ipcns),
            uts: join(&pod.paths.utsns),
            pid,
            hostname: pod.config.hostname.clone(),
            hosts_file: opt(&pod.paths.hosts),
            resolv_conf: opt(&pod.paths.resolv_conf),
            hostname_file: opt(&pod.paths.hostname),
            shm_dir: opt(&pod.paths.shm),
            log_directory: (!pod.config.log_directory.is_empty())
                .then(|| PathBuf::from(&pod.config.log_directory)),
            cgroup_parent: pod.cgroup_parent.clone(),
            sysctls: pod.config.sysctls.clone(),
            privileged: pod.config.privileged,
            is_unikernel: pod.kind == crate::pod::PodKind::Unikernel,
            runtime_handler: pod.config.runtime_handler.clone(),
        }
    }
}

/// The lowest `oom_score_adj` this process may set (without `CAP_SYS_RESOURCE`, its own).
fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Some(Ok(b))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    a.dev() != b.dev()
}

/// The directory under `<root>/containers` that holds quarantined records.
const QUARANTINE: &str = "quarantine";

/// Unmounts a container's rootfs and removes its directories.
fn discard(rootfs: &Path, dir: &Path, state_dir: &Path) -> Result<(), SandboxError> {
    unmount_all(rootfs);
    remove_dir(dir)?;
    remove_dir(state_dir)
}

/// Detaches every mount stacked on `path` (bounded).
fn unmount_all(path: &Path) {
    for _ in 0..8 {
        if nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
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

fn remove_dir(path: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SandboxError::io(path, e)),
    }
}

/// Normalises a signal name for runc (`TERM`, `SIGTERM`, `15`).
fn stop_signal(name: &str) -> Result<String, SandboxError> {
    let n = name.trim().to_ascii_uppercase();
    if n.is_empty() {
        return Ok("SIGTERM".into());
    }
    if n.parse::<u8>().is_ok_and(|v| (1..=64).contains(&v)) {
        return Ok(n);
    }
    let bare = n.strip_prefix("SIG").unwrap_or(&n);
    if !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
    {
        Ok(format!("SIG{bare}"))
    } else {
        Err(SandboxError::InvalidArgument {
            reason: format!("invalid stop signal {name:?}"),
        })
    }
}

impl ContainerManager {
    /// Loads the containers recorded under `<root>/containers` and re-attaches to the
    /// monitors still running. Must be called inside the tokio runtime (it spawns watchers).
    pub fn open(settings: ContainerSettings) -> Result<Arc<ContainerManager>, SandboxError> {
        let dir = settings.root.join("containers");
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(&dir, e))?;
        let sdir = settings.state.join("containers");
        std::fs::create_dir_all(&sdir).map_err(|e| SandboxError::io(&sdir, e))?;
        let runc = Runc {
            binary: settings.runc.clone(),
            root: settings.state.join("runc"),
            systemd_cgroup: settings.cgroup_driver == CgroupDriver::Systemd,
        };
        let (events, _) = broadcast::channel(1024);
        let kvm = crate::vm::accel::probe_host();
        tracing::info!(kvm = %kvm.detail, accelerator = ?settings.vm.accelerator, "VM settings");
        let manager = Arc::new(ContainerManager {
            kvm,
            settings,
            runc,
            inner: Mutex::new(Inner::default()),
            events,
        });
        manager.recover()?;
        Ok(manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.lock().containers.get(id).cloned()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.settings.root.join("containers").join(id)
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.settings.state.join("containers").join(id)
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.dir(id).join("exit.json")
    }

    /// Where the monitor records the exit when the root's disk is full.
    fn exit_fallback(&self, id: &str) -> PathBuf {
        self.state_dir(id).join("exit.json")
    }

    /// The monitor's exit record, from the root or (disk full) the state directory.
    fn load_exit(&self, id: &str) -> Option<ExitRecord> {
        ExitRecord::load(&self.exit_file(id)).or_else(|| ExitRecord::load(&self.exit_fallback(id)))
    }

    fn has_exit(&self, id: &str) -> bool {
        self.exit_file(id).exists() || self.exit_fallback(id).exists()
    }

    fn monitor_pid_file(&self, id: &str) -> PathBuf {
        self.state_dir(id).join("monitor.pid")
    }

    /// The monitor's attach socket (see [`crate::monitor`]) of a runc container started
    /// with stdin or a terminal, or without a CRI log (attach then reads its output there):
    /// `attach` in its state directory, or a short name in the state root when that path
    /// would be too long for a unix socket.
    fn attach_socket(&self, r: &ContainerRecord) -> Option<PathBuf> {
        let needed = r.config.stdin || r.config.tty || r.log_path.is_none();
        if r.backend != Backend::Runc || !needed {
            return None;
        }
        let path = self.state_dir(&r.id).join("attach");
        if path.as_os_str().len() < 100 {
            return Some(path);
        }
        Some(
            self.settings
                .state
                .join(format!("att-{}.sock", &r.id[..16.min(r.id.len())])),
        )
    }

    /// The attach socket of container `id`'s monitor, when it has one.
    pub fn attach_socket_of(&self, id: &str) -> Result<Option<PathBuf>, SandboxError> {
        let r = self.get(id)?;
        Ok(self.attach_socket(&r))
    }

    fn save(&self, record: &ContainerRecord) -> Result<(), SandboxError> {
        let path = self.dir(&record.id).join("record.json");
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| SandboxError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        crate::monitor::write_replace(&path, &bytes).map_err(|e| SandboxError::io(&path, e))
    }

    fn update(
        &self,
        entry: &Entry,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord, SandboxError> {
        let mut r = entry.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        self.save(&r)?;
        Ok(r.clone())
    }

    /// [`Self::update`] when `f` returns true; nothing is written when it returns false.
    fn update_if(
        &self,
        entry: &Entry,
        f: impl FnOnce(&mut ContainerRecord) -> bool,
    ) -> Result<Option<ContainerRecord>, SandboxError> {
        let mut r = entry.record.lock().unwrap_or_else(|p| p.into_inner());
        if !f(&mut r) {
            return Ok(None);
        }
        self.save(&r)?;
        Ok(Some(r.clone()))
    }

    fn snapshot(entry: &Entry) -> ContainerRecord {
        entry
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn emit(&self, kind: EventKind, record: &ContainerRecord) {
        let _ = self.events.send(ContainerEvent {
            kind,
            container_id: record.id.clone(),
            pod_id: record.pod_id.clone(),
            at: now_ns(),
            record: record.clone(),
        });
    }

    /// Subscribes to lifecycle events.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    fn recover(self: &Arc<Self>) -> Result<(), SandboxError> {
        let dir = self.settings.root.join("containers");
        let entries = std::fs::read_dir(&dir).map_err(|e| SandboxError::io(&dir, e))?;
        let mut count = 0;
        for e in entries.flatten() {
            let path = e.path().join("record.json");
            let record: ContainerRecord = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(err) => {
                    let name = e.file_name();
                    let Some(id) = name
                        .to_str()
                        .filter(|n| *n != QUARANTINE && e.path().is_dir())
                    else {
                        continue;
                    };
                    if path.exists() {
                        self.quarantine(id, &path, &err);
                    } else {
                        // crid was killed in CreateContainer after mounting the rootfs and
                        // before the record was written: nothing refers to it.
                        tracing::warn!(container_id = %id, "removing a container that was never recorded");
                        self.discard_files(id);
                    }
                    continue;
                }
            };
            let id = record.id.clone();
            let entry = Arc::new(Entry {
                record: Mutex::new(record.clone()),
                op: tokio::sync::Mutex::new(()),
                exit: Mutex::new(()),
            });
            {
                let mut inner = self.lock();
                inner.names.insert(record.name_key(), id.clone());
                inner.containers.insert(id.clone(), entry.clone());
            }
            count += 1;
            match record.state {
                ContainerState::Running => {
                    if let Some(handle) = MonitorHandle::attach(&self.monitor_pid_file(&id), &id) {
                        tracing::info!(container_id = %id, monitor = handle.pid, "re-attached to running container");
                        self.watch(id, handle);
                    } else {
                        self.collect_exit(&entry);
                    }
                }
                ContainerState::Created => {
                    // Only a reboot takes a recorded container's rootfs mount away (crid
                    // mounts before it records). Its pod's namespaces went with it, so it can
                    // never start: report it exited, as the CRI expects after a reboot.
                    let rootfs = self.dir(&id).join("rootfs");
                    if !is_mount_point(&rootfs) {
                        let result = self.update(&entry, |r| {
                            r.state = ContainerState::Exited;
                            r.exit_code = 255;
                            r.finished_at = now_ns();
                            r.reason = "Unknown".into();
                            r.message = "the node restarted before the container started".into();
                        });
                        if let Err(e) = result {
                            tracing::warn!(container_id = %id, error = %e, "cannot record container state");
                        }
                    }
                }
                ContainerState::Exited | ContainerState::Unknown => {}
            }
        }
        tracing::info!(containers = count, "containers recovered");
        Ok(())
    }

    /// An unreadable record (torn write, incompatible version): crid can no longer manage the
    /// container, so the record is moved to `<root>/containers/quarantine/` for the operator
    /// and what the container holds (runc container, VMM, tap, rootfs mount, directories) is
    /// released in the background, so its pod stays removable and its name reusable.
    fn quarantine(self: &Arc<Self>, id: &str, record: &Path, reason: &str) {
        let qdir = self.settings.root.join("containers").join(QUARANTINE);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dest = qdir.join(format!("{id}.json.{stamp}"));
        match std::fs::create_dir_all(&qdir).and_then(|()| std::fs::rename(record, &dest)) {
            Ok(()) => tracing::error!(
                container_id = %id,
                moved_to = %dest.display(),
                error = reason,
                "unreadable container record quarantined"
            ),
            Err(e) => {
                // Without moving it aside the next start would meet it again: keep it as is.
                tracing::error!(
                    container_id = %id,
                    error = reason,
                    move_error = %e,
                    "unreadable container record skipped (cannot quarantine it)"
                );
                return;
            }
        }
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move { this.release_unrecorded(&id).await });
    }

    async fn release_unrecorded(&self, id: &str) {
        if let Err(e) = self.runc.delete(id).await {
            tracing::warn!(container_id = %id, error = %e, "cannot delete the runc container");
        }
        if let Some(monitor) = MonitorHandle::attach(&self.monitor_pid_file(id), id) {
            // A VMM (runc's init is gone with `delete --force`): the monitor's children.
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
        self.vm_release(id);
        let this_dir = self.dir(id);
        let state_dir = self.state_dir(id);
        let rootfs = this_dir.join("rootfs");
        let _ = tokio::task::spawn_blocking(move || discard(&rootfs, &this_dir, &state_dir)).await;
        tracing::info!(container_id = %id, "quarantined container released");
    }

    /// Unmounts the rootfs and removes the container's directories (best effort).
    fn discard_files(&self, id: &str) {
        let this_dir = self.dir(id);
        let _ = discard(&this_dir.join("rootfs"), &this_dir, &self.state_dir(id));
    }

    /// Reads the exit file (or notes the monitor vanished) and marks the container exited.
    fn collect_exit(&self, entry: &Entry) -> Option<ContainerRecord> {
        // The exit watcher and on-demand collection (stop, status) may race here: the first
        // caller releases a guest and moves the record out of Running, the others find it
        // done. (A loser used to rewrite record.json too, racing a RemoveContainer that was
        // deleting the directory: ENOTEMPTY under load.)
        let _exit = entry.exit.lock().unwrap_or_else(|p| p.into_inner());
        let r = Self::snapshot(entry);
        if r.state != ContainerState::Running {
            return None;
        }
        let exit = self.load_exit(&r.id);
        let vm = self.vm_state(&r.id);
        if r.backend == Backend::Process {
            // The guest is gone: its tap goes too (a restart makes a new one), before anyone
            // can see the container exited, and outside the record's lock.
            self.vm_release(&r.id);
        }
        let updated = self.update_if(entry, |r| {
            if r.state != ContainerState::Running {
                return false;
            }
            r.state = ContainerState::Exited;
            match &exit {
                Some(e) => {
                    r.exit_code = if r.backend == Backend::Process {
                        vm::exit_code(vm.as_ref(), e.exit_code)
                    } else {
                        e.exit_code
                    };
                    r.finished_at = e.finished_at_ns;
                    r.reason = if e.oom_killed {
                        "OOMKilled".into()
                    } else if e.exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    };
                    // A VMM that died of a signal (a code the guest's exit mapping left as
                    // 128 + signal) did not run the guest to its end: say so.
                    if r.backend == Backend::Process && r.exit_code > 128 {
                        if let Ok(sig) = nix::sys::signal::Signal::try_from(r.exit_code - 128) {
                            r.message = format!("the hypervisor was killed by {sig}");
                        }
                    }
                }
                None => {
                    r.exit_code = 255;
                    r.finished_at = now_ns();
                    r.reason = "Unknown".into();
                    r.message =
                        "the container's monitor exited without recording an exit status".into();
                }
            }
            true
        });
        match updated {
            Ok(None) => None,
            Ok(Some(rec)) => {
                tracing::info!(container_id = %rec.id, exit_code = rec.exit_code, reason = %rec.reason, "container exited");
                self.emit(EventKind::Stopped, &rec);
                Some(rec)
            }
            Err(e) => {
                tracing::error!(container_id = %r.id, error = %e, "cannot record container exit");
                None
            }
        }
    }

    /// Waits in the background for the monitor of `id` to exit, then collects the exit.
    fn watch(self: &Arc<Self>, id: String, handle: MonitorHandle) {
        let this = Arc::downgrade(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(container_id = %id, "no async runtime; the container's exit is collected on demand");
            return;
        };
        rt.spawn(async move {
            if let Err(e) = handle.exited().await {
                tracing::warn!(container_id = %id, error = %e, "cannot watch the monitor");
                return;
            }
            if let Some(this) = this.upgrade() {
                if let Some(entry) = this.entry(&id) {
                    this.collect_exit(&entry);
                }
            }
        });
    }

    fn mount_rootfs(&self, id: &str, layers: &[PathBuf]) -> Result<(), SandboxError> {
        let dir = self.dir(id);
        let rootfs = dir.join("rootfs");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| SandboxError::io(d, e))?;
        }
        let mut lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        if lowers.is_empty() {
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(|e| SandboxError::io(&empty, e))?;
            lowers.push(empty);
        }
        let join = |l: &[PathBuf]| {
            l.iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":")
        };
        let mut lowerdir = join(&lowers);
        if lowerdir.len() > 3000 {
            // The mount data is limited to a page: use short links to the layers.
            let links = dir.join("l");
            std::fs::create_dir_all(&links).map_err(|e| SandboxError::io(&links, e))?;
            let mut short = Vec::new();
            for (i, l) in lowers.iter().enumerate() {
                let link = links.join(i.to_string());
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(l, &link).map_err(|e| SandboxError::io(&link, e))?;
                short.push(link);
            }
            lowerdir = join(&short);
        }
        for p in lowers.iter().chain([&upper, &work]) {
            let s = p.to_string_lossy();
            if s.contains(',') || s.contains(':') {
                return Err(runtime_err(
                    "mount rootfs",
                    format!("layer path {s:?} contains ',' or ':'"),
                ));
            }
        }
        let data = format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| {
            runtime_err(
                "mount rootfs",
                format!("overlay on {}: {e}", rootfs.display()),
            )
        })
    }

    fn unmount_rootfs(&self, id: &str) {
        unmount_all(&self.dir(id).join("rootfs"));
    }

    /// Creates a container: validates the request, reserves the name, mounts the rootfs and
    /// writes the runc bundle. Nothing runs until [`ContainerManager::start`].
    pub async fn create(
        self: &Arc<Self>,
        config: ContainerConfig,
        pod: PodContext,
        image: ImageInfo,
    ) -> Result<String, SandboxError> {
        spec::validate(&config, &pod, &self.settings.seccomp_profile_root)?;
        let image_config = spec::ImageConfig::parse(&image.config_json)?;
        let stop = stop_signal(
            config
                .stop_signal
                .as_deref()
                .or(image_config.stop_signal.as_deref())
                .unwrap_or(""),
        )?;
        let log_path = spec::log_path(&pod, &config.log_path)?;
        let id = crate::id::new_id()?;
        let key = name_key(&pod.id, &config.name, config.attempt);
        {
            let mut inner = self.lock();
            if let Some(other) = inner.names.get(&key) {
                return Err(SandboxError::AlreadyExists {
                    name: format!("{}_{}", config.name, config.attempt),
                    id: other.clone(),
                });
            }
            inner.names.insert(key.clone(), id.clone());
        }
        let this = self.clone();
        let id2 = id.clone();
        let result = tokio::task::spawn_blocking(move || match image.unikernel.clone() {
            Some(info) => {
                this.prepare_vm(&id2, config, pod, image, info, image_config, stop, log_path)
            }
            None => this.prepare(&id2, config, pod, image, image_config, stop, log_path),
        })
        .await
        .map_err(|e| runtime_err("create", e.to_string()))
        .and_then(|r| r);
        match result {
            Ok(record) => {
                let entry = Arc::new(Entry {
                    record: Mutex::new(record.clone()),
                    op: tokio::sync::Mutex::new(()),
                    exit: Mutex::new(()),
                });
                self.lock().containers.insert(id.clone(), entry);
                tracing::info!(container_id = %id, pod_sandbox_id = %record.pod_id, name = %record.config.name, "container created");
                self.emit(EventKind::Created, &record);
                Ok(id)
            }
            Err(e) => {
                self.unmount_rootfs(&id);
                let _ = remove_dir(&self.dir(&id));
                let _ = remove_dir(&self.state_dir(&id));
                self.lock().names.remove(&key);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        id: &str,
        config: ContainerConfig,
        pod: PodContext,
        image: ImageInfo,
        image_config: spec::ImageConfig,
        stop: String,
        log_path: Option<PathBuf>,
    ) -> Result<ContainerRecord, SandboxError> {
        let s = &config.security;
        let user = user::resolve(
            image_config.user.as_deref().unwrap_or(""),
            s.run_as_user,
            &s.run_as_username,
            s.run_as_group,
            &s.supplemental_groups,
            s.supplemental_groups_strict,
            &image.layer_dirs,
        )?;
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(&dir, e))?;
        let sdir = self.state_dir(id);
        std::fs::create_dir_all(&sdir).map_err(|e| SandboxError::io(&sdir, e))?;
        let cgroups_path =
            cgroups::cgroups_path(self.settings.cgroup_driver, &pod.cgroup_parent, id);
        let rootfs = dir.join("rootfs");
        let spec = spec::build(
            &config,
            &spec::SpecContext {
                id,
                pod: &pod,
                image: &image_config,
                user: &user,
                rootfs: &rootfs,
                cgroups_path: cgroups_path.clone(),
                seccomp_root: &self.settings.seccomp_profile_root,
                min_oom_score_adj: own_oom_score_adj(),
                cgroup_v2: cgroups::is_v2(),
                apparmor_profile: apparmor::profile(
                    &config.security,
                    apparmor::host_enabled(),
                    &self.settings.state.join("apparmor"),
                )?,
            },
        )?;
        let spec_path = dir.join("config.json");
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| runtime_err("write spec", e.to_string()))?;
        crate::monitor::write_replace(&spec_path, &json)
            .map_err(|e| SandboxError::io(&spec_path, e))?;
        self.mount_rootfs(id, &image.layer_dirs)?;
        // Mount targets the image lacks are created by runc inside the rootfs (upper layer).
        let record = ContainerRecord {
            id: id.to_owned(),
            pod_id: pod.id.clone(),
            backend: Backend::Runc,
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path,
            cgroups_path,
            stop_signal: stop,
            vm: None,
            config,
            pod,
            image,
        };
        self.save(&record)?;
        Ok(record)
    }

    fn launch(&self, r: &ContainerRecord) -> Launch {
        let sdir = self.state_dir(&r.id);
        // The VM backend plugs in here with `Launch::Command` and `Backend::Process`.
        Launch::Runc {
            runc: self.runc.binary.clone(),
            root: self.runc.root.clone(),
            systemd_cgroup: self.runc.systemd_cgroup,
            bundle: self.dir(&r.id),
            container_pid_file: sdir.join("container.pid"),
            runc_log: sdir.join("runc.log"),
            // Short: unix socket paths are limited to 108 bytes.
            console_socket: r.config.tty.then(|| {
                self.settings
                    .state
                    .join(format!("tty-{}.sock", &r.id[..16.min(r.id.len())]))
            }),
            start: true,
        }
    }

    /// Starts a created container: its monitor runs `runc run --detach` (one runc process, where
    /// `runc create` + `runc start` took two). A failed start leaves the container `Exited`
    /// with reason `StartError`, as before.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), SandboxError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let _op = entry.op.lock().await;
        let r = Self::snapshot(&entry);
        if r.state != ContainerState::Created {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("container {id} is {:?}, not Created", r.state),
            });
        }
        let sdir = self.state_dir(id);
        std::fs::create_dir_all(&sdir).map_err(|e| SandboxError::io(&sdir, e))?;
        // A monitor left from a start that crid did not finish (it died before recording the
        // container as running): delete that half-started container first.
        if let Some(stale) = MonitorHandle::attach(&self.monitor_pid_file(id), id) {
            tracing::warn!(container_id = %id, monitor = stale.pid, "removing a half-started container");
            if r.backend == Backend::Runc {
                let _ = self.runc.delete(id).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), stale.exited()).await;
        }
        let _ = std::fs::remove_file(self.exit_file(id));
        let _ = std::fs::remove_file(self.exit_fallback(id));
        touch_log(r.log_path.as_deref())?;
        let launch = if r.backend == Backend::Process {
            let this = self.clone();
            let vm_id = id.to_owned();
            let launched = tokio::task::spawn_blocking(move || this.vm_launch(&vm_id))
                .await
                .map_err(|e| runtime_err("start", e.to_string()))?;
            match launched {
                Ok(l) => l,
                Err(e) => {
                    self.start_failed(&entry, e.to_string()).await;
                    return Err(e);
                }
            }
        } else {
            self.launch(&r)
        };
        let spec = MonitorSpec {
            id: id.to_owned(),
            launch,
            log_path: r.log_path.clone(),
            exit_file: self.exit_file(id),
            exit_fallback: Some(self.exit_fallback(id)),
            pid_file: self.monitor_pid_file(id),
            oom_cgroup: Some(cgroups::controller_dir("memory", &r.cgroups_path)),
            stdin: self.attach_socket(&r).map(|socket| StdinSpec {
                socket,
                stdin: r.config.stdin,
                once: r.config.stdin_once,
            }),
        };
        let exe = self.settings.monitor_exe.clone();
        let spec_path = sdir.join("monitor.json");
        // Taken before the monitor starts the process: a short-lived one may have exited by
        // the time it reports, and finished_at must not precede started_at.
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
        .map_err(|e| runtime_err("start", e.to_string()))?
        .map_err(|e| runtime_err("start monitor", e.to_string()));
        let pid = match ready {
            Ok(crate::monitor::Ready { pid: Some(pid), .. }) => pid,
            Ok(crate::monitor::Ready { error, .. }) => {
                let msg = error.unwrap_or_else(|| "monitor gave no pid".into());
                return Err(self.start_failed(&entry, msg).await);
            }
            Err(e) => return Err(self.start_failed(&entry, e.to_string()).await),
        };
        let handle = MonitorHandle::attach(&self.monitor_pid_file(id), id);
        let rec = self.update(&entry, |r| {
            r.state = ContainerState::Running;
            r.pid = pid;
            r.started_at = started_at;
        })?;
        tracing::info!(container_id = %id, pid, "container started");
        self.emit(EventKind::Started, &rec);
        match handle {
            Some(h) => self.watch(id.to_owned(), h),
            // The monitor is already gone: the container exited at once.
            None => {
                self.collect_exit(&entry);
            }
        }
        Ok(())
    }

    async fn start_failed(&self, entry: &Entry, msg: String) -> SandboxError {
        let r = Self::snapshot(entry);
        let id = r.id;
        if r.backend == Backend::Process {
            self.vm_release(&id);
        } else {
            let _ = self.runc.delete(&id).await;
        }
        let _ = self.update(entry, |r| {
            r.state = ContainerState::Exited;
            r.exit_code = 128;
            r.finished_at = now_ns();
            r.reason = "StartError".into();
            r.message = msg.clone();
        });
        tracing::error!(container_id = %id, error = %msg, "start failed");
        // runc reports ENOSPC only as text: a start that failed on a full disk under the
        // container's rootfs is RESOURCE_EXHAUSTED, as the same failure in crid itself is.
        let dir = self.dir(&id);
        if crate::sys::is_full(&dir) {
            return SandboxError::DiskFull {
                op: "start".into(),
                path: dir,
                reason: msg,
            };
        }
        runtime_err("start", msg)
    }

    /// Waits up to `timeout` for the monitor of `id` to exit; true when it has.
    async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        match MonitorHandle::attach(&self.monitor_pid_file(id), id) {
            None => true,
            Some(h) => tokio::time::timeout(timeout, h.exited()).await.is_ok(),
        }
    }

    async fn signal(
        &self,
        r: &ContainerRecord,
        signal: &str,
        all: bool,
    ) -> Result<(), SandboxError> {
        match r.backend {
            Backend::Runc => self.runc.kill(&r.id, signal, all).await,
            Backend::Process => {
                let sig = signal
                    .parse::<nix::sys::signal::Signal>()
                    .map_err(|e| runtime_err("kill", e.to_string()))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(r.pid), sig)
                    .map_err(|e| runtime_err("kill", e.to_string()))
            }
        }
    }

    /// Stops a running container: its stop signal, `timeout` to exit, then SIGKILL.
    /// Stopping a container that does not run is a no-op; an unknown id is `NotFound`.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let _op = entry.op.lock().await;
        self.stop_locked(&entry, timeout).await
    }

    async fn stop_locked(&self, entry: &Entry, timeout: Duration) -> Result<(), SandboxError> {
        let r = Self::snapshot(entry);
        if r.state != ContainerState::Running {
            return Ok(());
        }
        let id = r.id.as_str();
        if !timeout.is_zero() {
            // A guest is asked to shut down (ACPI power button) where its VMM can ask it.
            let asked = r.backend == Backend::Process && self.vm_request_shutdown(&r.id).await;
            let requested = if asked {
                Ok(())
            } else {
                self.signal(&r, &r.stop_signal, false).await
            };
            match requested {
                Ok(()) => {
                    if self.wait_exit(id, timeout).await {
                        self.collect_exit(entry);
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(container_id = %id, error = %e, "stop signal failed"),
            }
        }
        if let Err(e) = self.signal(&r, "SIGKILL", r.backend == Backend::Runc).await {
            tracing::warn!(container_id = %id, error = %e, "SIGKILL failed");
        }
        if self.wait_exit(id, Duration::from_secs(30)).await {
            self.collect_exit(entry);
            Ok(())
        } else {
            Err(runtime_err(
                "stop",
                format!("container {id} did not exit after SIGKILL"),
            ))
        }
    }

    /// Removes a container, stopping it first if it runs. An unknown id is fine.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        self.stop_locked(&entry, Duration::ZERO).await?;
        // The exit may have been seen before the monitor finished: it still writes exit.json
        // into the directory about to be removed (ENOTEMPTY under load). Let it end first.
        if !self.wait_exit(id, Duration::from_secs(10)).await {
            tracing::warn!(container_id = %id, "the monitor is still running at removal");
        }
        if Self::snapshot(&entry).backend == Backend::Runc {
            self.runc.delete(id).await?;
        } else {
            self.vm_release(id);
        }
        let this_dir = self.dir(id);
        let state_dir = self.state_dir(id);
        let rootfs = this_dir.join("rootfs");
        tokio::task::spawn_blocking(move || discard(&rootfs, &this_dir, &state_dir))
            .await
            .map_err(|e| runtime_err("remove", e.to_string()))??;
        let record = Self::snapshot(&entry);
        {
            let mut inner = self.lock();
            inner.containers.remove(id);
            if inner.names.get(&record.name_key()).is_some_and(|v| v == id) {
                inner.names.remove(&record.name_key());
            }
        }
        tracing::info!(container_id = %id, "container removed");
        self.emit(EventKind::Deleted, &record);
        Ok(())
    }

    /// The container's record, with an exit collected if one happened unnoticed.
    pub fn get(&self, id: &str) -> Result<ContainerRecord, SandboxError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let r = Self::snapshot(&entry);
        if r.state == ContainerState::Running && self.has_exit(id) {
            if let Some(updated) = self.collect_exit(&entry) {
                return Ok(updated);
            }
            return Ok(Self::snapshot(&entry));
        }
        Ok(r)
    }

    pub fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let entries: Vec<Arc<Entry>> = self.lock().containers.values().cloned().collect();
        let mut out: Vec<ContainerRecord> = entries
            .iter()
            .map(|e| Self::snapshot(e))
            .filter(|r| filter.matches(r))
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// The OCI spec the container was created with (for verbose status).
    pub fn spec_json(&self, id: &str) -> Option<serde_json::Value> {
        if let Some(vm) = self.entry(id).and_then(|e| Self::snapshot(&e).vm) {
            return Some(serde_json::json!({ "unikernel": vm }));
        }
        let bytes = std::fs::read(self.dir(id).join("config.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Runs `cmd` in a running container; on timeout the process is killed and
    /// [`SandboxError::Timeout`] returned.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, SandboxError> {
        let r = self.get(id)?;
        if r.state != ContainerState::Running {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("container {id} is not running"),
            });
        }
        if cmd.is_empty() {
            return Err(SandboxError::InvalidArgument {
                reason: "exec command is empty".into(),
            });
        }
        if r.backend != Backend::Runc {
            return Err(SandboxError::Unimplemented {
                reason: format!(
                    "exec is not supported in unikernel container {id}: the guest has no shell"
                ),
            });
        }
        let spec = self
            .spec_json(id)
            .ok_or_else(|| runtime_err("exec", "the container's OCI spec is missing"))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let tag = crate::id::new_id()?;
        let sdir = self.state_dir(id);
        let process_path = sdir.join(format!("exec-{}.json", &tag[..16]));
        let pid_path = sdir.join(format!("exec-{}.pid", &tag[..16]));
        std::fs::write(&process_path, process.to_string())
            .map_err(|e| SandboxError::io(&process_path, e))?;
        let out = self
            .runc
            .exec(id, &process_path, &pid_path, timeout, EXEC_OUTPUT_CAP)
            .await;
        let _ = std::fs::remove_file(&process_path);
        let out = out?;
        if out.timed_out {
            return Err(SandboxError::Timeout {
                op: format!("exec in container {id}"),
                secs: timeout.map_or(0, |t| t.as_secs()),
            });
        }
        Ok(out)
    }

    /// Applies new resources to a created or running container.
    pub async fn update_resources(
        self: &Arc<Self>,
        id: &str,
        resources: Resources,
    ) -> Result<(), SandboxError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let _op = entry.op.lock().await;
        let r = Self::snapshot(&entry);
        let oci = spec::linux_resources(&resources, cgroups::is_v2())?;
        if r.backend == Backend::Process {
            if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
                return Err(SandboxError::FailedPrecondition {
                    reason: format!("container {id} is not running"),
                });
            }
            let this = self.clone();
            let (rec, res) = (r.clone(), resources.clone());
            let vm = tokio::task::spawn_blocking(move || this.vm_update_resources(&rec, &res))
                .await
                .map_err(|e| runtime_err("update", e.to_string()))??;
            self.update(&entry, |r| {
                r.config.resources = resources;
                r.vm = Some(vm);
            })?;
            return Ok(());
        }
        match r.state {
            ContainerState::Running => {
                let path = self.state_dir(id).join("resources.json");
                let json =
                    serde_json::to_vec(&oci).map_err(|e| runtime_err("update", e.to_string()))?;
                std::fs::write(&path, json).map_err(|e| SandboxError::io(&path, e))?;
                let res = self.runc.update(id, &path).await;
                let _ = std::fs::remove_file(&path);
                res?;
            }
            ContainerState::Created => {
                let path = self.dir(id).join("config.json");
                let mut spec: serde_json::Value = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| runtime_err("update", "the container's OCI spec is missing"))?;
                let devices = spec["linux"]["resources"]["devices"].clone();
                let mut new =
                    serde_json::to_value(&oci).map_err(|e| runtime_err("update", e.to_string()))?;
                new["devices"] = devices;
                spec["linux"]["resources"] = new;
                let json = serde_json::to_vec_pretty(&spec)
                    .map_err(|e| runtime_err("update", e.to_string()))?;
                crate::monitor::write_atomic(&path, &json)
                    .map_err(|e| SandboxError::io(&path, e))?;
            }
            _ => {
                return Err(SandboxError::FailedPrecondition {
                    reason: format!("container {id} is not running"),
                });
            }
        }
        self.update(&entry, |r| r.config.resources = resources)?;
        Ok(())
    }

    /// Makes the monitor reopen the container's log file.
    pub fn reopen_log(&self, id: &str) -> Result<(), SandboxError> {
        let r = self.get(id)?;
        if r.state != ContainerState::Running {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("container {id} is not running"),
            });
        }
        let handle = MonitorHandle::attach(&self.monitor_pid_file(id), id).ok_or_else(|| {
            SandboxError::FailedPrecondition {
                reason: format!("container {id} has no running monitor"),
            }
        })?;
        // The new file is created here first, as containerd does; the monitor then opens it.
        touch_log(r.log_path.as_deref())?;
        handle
            .reopen_log()
            .map_err(|e| runtime_err("reopen log", e.to_string()))?;
        Ok(())
    }

    /// CPU, memory and writable-layer usage.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats, SandboxError> {
        let r = self.get(id)?;
        let upper = self.dir(id).join("upper");
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

    /// The writable layer (mount point for file system stats).
    pub fn writable_layer(&self, id: &str) -> PathBuf {
        self.dir(id).join("upper")
    }
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
    fn stop_signals_are_normalised() {
        assert_eq!(stop_signal("").unwrap(), "SIGTERM");
        assert_eq!(stop_signal("sigquit").unwrap(), "SIGQUIT");
        assert_eq!(stop_signal("INT").unwrap(), "SIGINT");
        assert_eq!(stop_signal("9").unwrap(), "9");
        assert!(stop_signal("SIG TERM; rm").is_err());
    }

    #[test]
    fn filters_match() {
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "1".to_string());
        let r = ContainerRecord {
            id: "abcdef".into(),
            pod_id: "p1".into(),
            config: ContainerConfig {
                labels: labels.clone(),
                ..Default::default()
            },
            pod: PodContext::default(),
            image: ImageInfo::default(),
            backend: Backend::Runc,
            state: ContainerState::Running,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path: None,
            cgroups_path: String::new(),
            stop_signal: "SIGTERM".into(),
            vm: None,
        };
        assert!(ContainerFilter::default().matches(&r));
        assert!(
            ContainerFilter {
                id_prefix: "abc".into(),
                labels,
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !ContainerFilter {
                pod_id: "p2".into(),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !ContainerFilter {
                state: Some(ContainerState::Exited),
                ..Default::default()
            }
            .matches(&r)
        );
    }
}
