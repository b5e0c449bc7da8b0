//! Containers: the [`ContainerManager`] keeps their records under `<root>/containers/<id>/`,
//! the CRI state machine (`Created → Running → Exited`, `Unknown` when the truth is lost), name
//! reservation and lifecycle events, and leaves what runs a container to one
//! [`ContainerBackend`] chosen at create time ([`backend`]): [`RuncBackend`] (the overlayfs
//! rootfs over the image's shared layers, the OCI spec from [`spec`], runc) or [`VmBackend`]
//! (a unikernel image as a guest of its hypervisor). Both run their process under the
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
pub mod backend;
mod caps;
pub mod cgroups;
pub mod config;
mod image_volume;
mod overlay;
mod record;
mod runc;
mod seccomp;
pub mod spec;
mod unikernel_keys;
pub mod user;
mod userns_volume;
pub mod validate;
pub mod vm;
mod vm_armed;
mod vm_rootfs;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::broadcast;

pub use self::backend::{
    ContainerBackend, ContainerDirs, ContainerExit, ExitWatch, NewContainer, StartError, Started,
    Supervisor,
};
pub use self::config::{
    AppArmorProfile, ContainerConfig, DeviceSpec, ImageInfo, ImageVolume, MountSpec, NsSource,
    OciHook, OciHooks, PodContext, Propagation, Resources, Rlimit, SeccompProfile, SecurityContext,
};
pub use self::record::{
    Backend, ContainerRecord, ContainerState, ContainerStats, EXEC_OUTPUT_CAP, VmState,
};
use self::record::{now_ns, runtime_err};
pub use self::runc::RuncBackend;
pub use self::vm::VmBackend;
use crate::error::{SandboxError, invalid};
use crate::pod::{CgroupDriver, PodRecord};
use crate::runc::{ExecOutput, OciRuntimes, Runc};

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

/// Settings of the container manager.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// crid's persistent root; records live in `<root>/containers`.
    pub root: PathBuf,
    /// crid's volatile state dir; an OCI runtime's root is `<state>/<its name>`.
    pub state: PathBuf,
    /// RuntimeClass handler → OCI runtime binary of its ordinary containers.
    pub oci_runtimes: BTreeMap<String, PathBuf>,
    pub cgroup_driver: CgroupDriver,
    /// The crid binary, run as `crid monitor`.
    pub monitor_exe: PathBuf,
    pub seccomp_profile_root: PathBuf,
    /// The VM backend's settings (crid's `[vm]`).
    pub vm: crate::vm::launch::VmSettings,
}

/// The backends a manager runs containers with, one per [`Backend`] kind.
#[derive(Clone)]
pub struct Backends {
    /// OCI images.
    pub runc: Arc<dyn ContainerBackend>,
    /// Unikernel images.
    pub vm: Arc<dyn ContainerBackend>,
}

impl Backends {
    /// runc and the hypervisors of this host, as configured.
    pub fn host(settings: &ContainerSettings) -> Backends {
        let supervisor = Supervisor {
            dirs: ContainerDirs {
                root: settings.root.clone(),
                state: settings.state.clone(),
            },
            monitor_exe: settings.monitor_exe.clone(),
        };
        let kvm = crate::vm::accel::probe_host();
        tracing::info!(kvm = %kvm.detail, accelerator = ?settings.vm.accelerator, "VM settings");
        let pool =
            crate::vm::pool::on_host(&settings.vm, &kvm, &settings.monitor_exe, &settings.state);
        let qemu_pool = crate::vm::qemu_pool::on_host(
            &settings.vm,
            &kvm,
            &settings.monitor_exe,
            &settings.state,
        );
        let vm = VmBackend {
            settings: settings.vm.clone(),
            kvm,
            pool,
            qemu_pool,
            armed: Default::default(),
            supervisor: supervisor.clone(),
            cgroup_driver: settings.cgroup_driver,
        };
        Backends {
            vm: Arc::new(vm),
            runc: Arc::new(RuncBackend {
                runtimes: OciRuntimes {
                    by_handler: settings.oci_runtimes.clone(),
                    state: settings.state.clone(),
                    systemd_cgroup: settings.cgroup_driver == CgroupDriver::Systemd,
                },
                supervisor,
                cgroup_driver: settings.cgroup_driver,
                seccomp_profile_root: settings.seccomp_profile_root.clone(),
            }),
        }
    }

    fn of(&self, kind: Backend) -> &Arc<dyn ContainerBackend> {
        match kind {
            Backend::Runc => &self.runc,
            Backend::Process => &self.vm,
        }
    }

    /// The backend a new container gets: the VM backend for a unikernel image (which checks
    /// the pod's RuntimeClass handler allows it), runc for the others.
    fn choose(&self, image: &ImageInfo) -> &Arc<dyn ContainerBackend> {
        match image.unikernel {
            Some(_) => &self.vm,
            None => &self.runc,
        }
    }
}

struct Entry {
    record: Mutex<ContainerRecord>,
    /// Serialises lifecycle operations on one container (never held by the store lock).
    op: tokio::sync::Mutex<()>,
    /// Serialises collecting the exit (which may release a guest's tap and cgroup, seconds of
    /// work) without holding `record`, so status and list calls never wait for it.
    exit: Mutex<()>,
}

impl Entry {
    fn new(record: ContainerRecord) -> Arc<Entry> {
        Arc::new(Entry {
            record: Mutex::new(record),
            op: tokio::sync::Mutex::new(()),
            exit: Mutex::new(()),
        })
    }
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Arc<Entry>>,
    names: HashMap<String, String>,
}

/// All containers of this node.
pub struct ContainerManager {
    dirs: ContainerDirs,
    seccomp_profile_root: PathBuf,
    backends: Backends,
    inner: Mutex<Inner>,
    events: broadcast::Sender<ContainerEvent>,
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
            ifname: pod.ifname.clone(),
            userns: match (&pod.paths.userns, pod.userns) {
                (Some(path), Some(mappings)) => Some(config::PodUsernsJoin {
                    path: path.clone(),
                    mappings,
                }),
                _ => None,
            },
            unikernel_annotations: unikernel_keys::pod_keys(&pod.config.annotations),
        }
    }
}

/// The directory under `<root>/containers` that holds quarantined records.
const QUARANTINE: &str = "quarantine";

/// Unmounts a container's rootfs and removes its directories.
fn discard(rootfs: &Path, dir: &Path, state_dir: &Path) -> Result<(), SandboxError> {
    unmount_all(rootfs);
    image_volume::unmount_all(dir);
    // Volume copies and id-mapped layers: the directory is removed recursively next, which
    // must not reach into them.
    if !userns_volume::unmount_all(dir) {
        return Err(SandboxError::FailedPrecondition {
            reason: format!("{} still holds a mounted volume", dir.display()),
        });
    }
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
        Err(invalid(format!("invalid stop signal {name:?}")))
    }
}

impl ContainerManager {
    /// Loads the containers recorded under `<root>/containers` and re-attaches to the
    /// monitors still running, with runc and the host's hypervisors as backends. Must be
    /// called inside the tokio runtime (it spawns watchers).
    pub fn open(settings: ContainerSettings) -> Result<Arc<ContainerManager>, SandboxError> {
        let backends = Backends::host(&settings);
        ContainerManager::with_backends(settings, backends)
    }

    /// [`ContainerManager::open`] with the backends given (fakes, in tests that need no root).
    pub fn with_backends(
        settings: ContainerSettings,
        backends: Backends,
    ) -> Result<Arc<ContainerManager>, SandboxError> {
        let dirs = ContainerDirs {
            root: settings.root.clone(),
            state: settings.state.clone(),
        };
        for d in [dirs.root.join("containers"), dirs.state.join("containers")] {
            std::fs::create_dir_all(&d).map_err(|e| SandboxError::io(&d, e))?;
        }
        let (events, _) = broadcast::channel(1024);
        let manager = Arc::new(ContainerManager {
            dirs,
            seccomp_profile_root: settings.seccomp_profile_root,
            backends,
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

    fn backend(&self, r: &ContainerRecord) -> &Arc<dyn ContainerBackend> {
        self.backends.of(r.backend)
    }

    /// The VM policy and what the host's KVM offers, for `Status` verbose info.
    pub fn vm_host_report(&self) -> serde_json::Value {
        self.backends.vm.host_report()
    }

    /// The attach socket of container `id`'s monitor, when it has one.
    pub fn attach_socket_of(&self, id: &str) -> Result<Option<PathBuf>, SandboxError> {
        let r = self.get(id)?;
        Ok(self.backend(&r).attach_socket(&r))
    }

    /// How to call the OCI runtime of container `id`, for streaming `exec`; `None` for a
    /// container without one (a unikernel guest).
    pub fn oci_runtime_of(&self, id: &str) -> Result<Option<Runc>, SandboxError> {
        let r = self.get(id)?;
        Ok(self.backend(&r).oci_runtime(&r))
    }

    /// Whether `Exec` and attaching stdin can reach container `id`'s processes (not in a
    /// unikernel guest).
    pub fn supports_exec(&self, id: &str) -> Result<bool, SandboxError> {
        let r = self.get(id)?;
        Ok(self.backend(&r).supports_exec())
    }

    fn save(&self, record: &ContainerRecord) -> Result<(), SandboxError> {
        let path = self.dirs.dir(&record.id).join("record.json");
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
        let dir = self.dirs.root.join("containers");
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
            let entry = Entry::new(record.clone());
            {
                let mut inner = self.lock();
                inner.names.insert(record.name_key(), id.clone());
                inner.containers.insert(id.clone(), entry.clone());
            }
            count += 1;
            let backend = self.backend(&record);
            match record.state {
                ContainerState::Running => {
                    if let Some(watch) = backend.reattach(&record) {
                        tracing::info!(container_id = %id, "re-attached to running container");
                        self.watch(id, watch);
                    } else {
                        self.collect_exit(&entry);
                    }
                }
                // A container that can no longer start (its pod's namespaces went with a
                // reboot) is reported exited, as the CRI expects after a reboot.
                ContainerState::Created if !backend.startable(&record) => {
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
                ContainerState::Created | ContainerState::Exited | ContainerState::Unknown => {}
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
        let qdir = self.dirs.root.join("containers").join(QUARANTINE);
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

    /// Without a record the backend is unknown: each releases what it may hold.
    async fn release_unrecorded(&self, id: &str) {
        self.backends.runc.release_unrecorded(id).await;
        self.backends.vm.release_unrecorded(id).await;
        let this_dir = self.dirs.dir(id);
        let state_dir = self.dirs.state_dir(id);
        let rootfs = this_dir.join("rootfs");
        let _ = tokio::task::spawn_blocking(move || discard(&rootfs, &this_dir, &state_dir)).await;
        tracing::info!(container_id = %id, "quarantined container released");
    }

    /// Unmounts the rootfs and removes the container's directories (best effort).
    fn discard_files(&self, id: &str) {
        let this_dir = self.dirs.dir(id);
        let _ = discard(
            &this_dir.join("rootfs"),
            &this_dir,
            &self.dirs.state_dir(id),
        );
    }

    /// Asks the backend how the container ended and marks it exited.
    fn collect_exit(&self, entry: &Entry) -> Option<ContainerRecord> {
        // The exit watcher and on-demand collection (stop, status) may race here: the first
        // caller releases what the run held and moves the record out of Running, the others
        // find it done. (A loser used to rewrite record.json too, racing a RemoveContainer
        // that was deleting the directory: ENOTEMPTY under load.)
        let _exit = entry.exit.lock().unwrap_or_else(|p| p.into_inner());
        let r = Self::snapshot(entry);
        if r.state != ContainerState::Running {
            return None;
        }
        // Before anyone can see the container exited, and outside the record's lock.
        let exit = self.backend(&r).collect_exit(&r);
        let updated = self.update_if(entry, |r| {
            if r.state != ContainerState::Running {
                return false;
            }
            r.state = ContainerState::Exited;
            r.exit_code = exit.exit_code;
            r.finished_at = exit.finished_at;
            r.reason = exit.reason;
            if !exit.message.is_empty() {
                r.message = exit.message;
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

    /// Waits in the background for the container to end, then collects the exit.
    fn watch(self: &Arc<Self>, id: String, exited: ExitWatch) {
        let this = Arc::downgrade(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(container_id = %id, "no async runtime; the container's exit is collected on demand");
            return;
        };
        rt.spawn(async move {
            exited.await;
            if let Some(this) = this.upgrade() {
                if let Some(entry) = this.entry(&id) {
                    this.collect_exit(&entry);
                }
            }
        });
    }

    /// Creates a container: validates the request, reserves the name and has the backend the
    /// image needs prepare it. Nothing runs until [`ContainerManager::start`].
    pub async fn create(
        self: &Arc<Self>,
        config: ContainerConfig,
        pod: PodContext,
        image: ImageInfo,
    ) -> Result<String, SandboxError> {
        let id = crate::id::new_id()?;
        self.create_with_id(id, config, pod, image).await
    }

    /// [`ContainerManager::create`] under an id from `crate::id::new_id` that the caller
    /// chose before, to show it to a lifecycle hook.
    pub(crate) async fn create_with_id(
        self: &Arc<Self>,
        id: String,
        config: ContainerConfig,
        pod: PodContext,
        image: ImageInfo,
    ) -> Result<String, SandboxError> {
        validate::request(&config, &pod, &self.seccomp_profile_root)?;
        let image_config = spec::ImageConfig::parse(&image.config_json)?;
        let image = unikernel_keys::tune(image, &pod, &config.annotations)?;
        let stop = stop_signal(
            config
                .stop_signal
                .as_deref()
                .or(image_config.stop_signal.as_deref())
                .unwrap_or(""),
        )?;
        let log_path = validate::log_path(&pod, &config.log_path)?;
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
        let siblings = self.list(&ContainerFilter {
            pod_id: pod.id.clone(),
            ..Default::default()
        });
        let backend = self.backends.choose(&image).clone();
        let new = NewContainer {
            id: id.clone(),
            config,
            pod,
            image,
            image_config,
            stop_signal: stop,
            log_path,
            siblings,
        };
        // The rest runs in a task of its own, to its end whatever becomes of the caller: a
        // call its client gave up on (a deadline, a cancellation drops it) must not leave a
        // record on disk and the name reserved with no container the manager knows (nor the
        // guest the backend began arming once the record was saved), which no retry, list or
        // removal of the pod could reach. The container is recorded, or undone, either way.
        let this = self.clone();
        tokio::spawn(async move {
            let saving = this.clone();
            let result = tokio::task::spawn_blocking(move || {
                for d in [saving.dirs.dir(&new.id), saving.dirs.state_dir(&new.id)] {
                    std::fs::create_dir_all(&d).map_err(|e| SandboxError::io(&d, e))?;
                }
                let record = backend.create(new)?;
                saving.save(&record)?;
                // Here, not once a worker has taken the call up again: what the backend starts
                // (a guest's arming) is on the way to the container's start.
                backend.created(&record);
                Ok(record)
            })
            .await
            .map_err(|e| runtime_err("create", e.to_string()))
            .and_then(|r| r);
            match result {
                Ok(record) => {
                    this.lock()
                        .containers
                        .insert(id.clone(), Entry::new(record.clone()));
                    tracing::info!(container_id = %id, pod_sandbox_id = %record.pod_id, name = %record.config.name, "container created");
                    this.emit(EventKind::Created, &record);
                    Ok(id)
                }
                Err(e) => {
                    this.discard_files(&id);
                    this.lock().names.remove(&key);
                    Err(e)
                }
            }
        })
        .instrument(tracing::Span::current())
        .await
        .map_err(|e| runtime_err("create", e.to_string()))?
    }

    /// Starts a created container. A failed start leaves the container `Exited` with reason
    /// `StartError`.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), SandboxError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let _op = entry.op.lock().await;
        let mut r = Self::snapshot(&entry);
        if r.state != ContainerState::Created {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("container {id} is {:?}, not Created", r.state),
            });
        }
        let started = match self.backend(&r).start(&mut r).await {
            Ok(started) => started,
            Err(StartError::NotStarted(e)) => return Err(e),
            Err(StartError::Failed { message, error }) => {
                let _ = self.update(&entry, |rec| {
                    rec.vm = r.vm.clone();
                    rec.state = ContainerState::Exited;
                    rec.exit_code = 128;
                    rec.finished_at = now_ns();
                    rec.reason = "StartError".into();
                    rec.message = message.clone();
                });
                tracing::error!(container_id = %id, error = %message, "start failed");
                return Err(error);
            }
        };
        let rec = self.update(&entry, |rec| {
            rec.vm = r.vm.clone();
            rec.state = ContainerState::Running;
            rec.pid = started.pid;
            rec.started_at = started.started_at;
        })?;
        tracing::info!(container_id = %id, pid = started.pid, "container started");
        self.emit(EventKind::Started, &rec);
        match started.exited {
            Some(watch) => self.watch(id.to_owned(), watch),
            // The container is already gone: it exited at once.
            None => {
                self.collect_exit(&entry);
            }
        }
        Ok(())
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
        let backend = self.backend(&r);
        if !timeout.is_zero() {
            // A guest is asked to shut down (ACPI power button) where its VMM can ask it.
            let requested = if backend.request_shutdown(&r).await {
                Ok(())
            } else {
                backend.kill(&r, &r.stop_signal, false).await
            };
            match requested {
                Ok(()) => {
                    if backend.wait_exit(&r, timeout).await {
                        self.collect_exit(entry);
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(container_id = %id, error = %e, "stop signal failed"),
            }
        }
        if let Err(e) = backend.kill(&r, "SIGKILL", true).await {
            tracing::warn!(container_id = %id, error = %e, "SIGKILL failed");
        }
        if backend.wait_exit(&r, Duration::from_secs(30)).await {
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
        let r = Self::snapshot(&entry);
        let backend = self.backend(&r);
        // The exit may have been seen before the monitor finished: it still writes exit.json
        // into the directory about to be removed (ENOTEMPTY under load). Let it end first.
        if !backend.wait_exit(&r, Duration::from_secs(10)).await {
            tracing::warn!(container_id = %id, "the monitor is still running at removal");
        }
        backend.remove(&r).await?;
        let this_dir = self.dirs.dir(id);
        let state_dir = self.dirs.state_dir(id);
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
        if r.state == ContainerState::Running && self.backend(&r).has_exit(&r) {
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

    /// The runtime spec the container was created with (for verbose status).
    pub fn spec_json(&self, id: &str) -> Option<serde_json::Value> {
        let r = Self::snapshot(&*self.entry(id)?);
        self.backend(&r).spec_json(&r)
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
            return Err(invalid("exec command is empty"));
        }
        self.backend(&r).exec_sync(&r, cmd, timeout).await
    }

    /// Applies new resources to a created or running container.
    pub async fn update_resources(
        self: &Arc<Self>,
        id: &str,
        resources: Resources,
    ) -> Result<(), SandboxError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let _op = entry.op.lock().await;
        let mut r = Self::snapshot(&entry);
        self.backend(&r)
            .update_resources(&mut r, &resources)
            .await?;
        self.update(&entry, |rec| {
            rec.config.resources = resources;
            rec.vm = r.vm;
        })?;
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
        self.backend(&r).reopen_log(&r)
    }

    /// CPU, memory and writable-layer usage.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats, SandboxError> {
        let r = self.get(id)?;
        self.backend(&r).stats(&r).await
    }

    /// The writable layer (mount point for file system stats).
    pub fn writable_layer(&self, id: &str) -> PathBuf {
        self.dirs.dir(id).join("upper")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            oci_runtime: PathBuf::new(),
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
