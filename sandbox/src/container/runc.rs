//! The OCI runtime backend: an OCI bundle (`config.json` from [`super::spec`]) over an overlayfs
//! rootfs of the image's shared layers, run by the container's monitor with `<runtime> run
//! --detach`; kill, update, exec and delete through the runtime's command line. The runtime
//! (crun or runc) is the one the pod's RuntimeClass handler names, recorded at create time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backend::{
    ContainerBackend, ContainerDirs, ContainerExit, ExitWatch, NewContainer, StartError, Started,
    Supervisor, start_failure,
};
use super::config::{PodUsernsJoin, Resources};
use super::record::{
    Backend, ContainerRecord, ContainerState, ContainerStats, EXEC_OUTPUT_CAP, is_mount_point,
    runtime_err,
};
use super::{apparmor, cgroups, image_volume, spec, user, userns_volume};
use crate::SandboxError;
use crate::monitor::{Launch, StdinSpec};
use crate::pod::CgroupDriver;
use crate::runc::{ExecOutput, OciRuntimes, Runc};

/// Containers run by an OCI runtime (runc's command line, which crun shares).
pub struct RuncBackend {
    pub runtimes: OciRuntimes,
    pub supervisor: Supervisor,
    pub cgroup_driver: CgroupDriver,
    pub seccomp_profile_root: PathBuf,
}

/// The lowest `oom_score_adj` this process may set (without `CAP_SYS_RESOURCE`, its own).
fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl RuncBackend {
    fn dirs(&self) -> &ContainerDirs {
        &self.supervisor.dirs
    }

    /// Mounts the overlay rootfs over `layers`. In a pod with a user namespace the layers are
    /// id-mapped through it first (mounts under `idmap/`, detached once the overlay holds
    /// them) and the upper layer belongs to the container's root, so the image's files are
    /// the container's root's and what it writes lands on disk with its host ids.
    fn mount_rootfs(
        &self,
        id: &str,
        layers: &[PathBuf],
        userns: Option<&PodUsernsJoin>,
    ) -> Result<(), SandboxError> {
        let dir = self.dirs().dir(id);
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
        let mapped = match userns {
            Some(u) => {
                let (uid, gid) = (u.mappings.uid.host_id, u.mappings.gid.host_id);
                std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
                    .map_err(|e| SandboxError::io(&upper, e))?;
                userns_volume::idmap_layers(&dir.join("idmap"), &lowers, u)?
            }
            None => Vec::new(),
        };
        if !mapped.is_empty() {
            lowers = mapped.clone();
        }
        let result = mount_overlay(
            &dir,
            &rootfs,
            &upper,
            &work,
            &lowers,
            nix::mount::MsFlags::empty(),
        );
        // The overlay keeps its own references to the layers it was given.
        for m in &mapped {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(m);
        }
        result
    }

    /// How to call the runtime that runs `r`.
    fn runc(&self, r: &ContainerRecord) -> Runc {
        self.runtimes.runc(&r.oci_runtime)
    }

    fn launch(&self, r: &ContainerRecord) -> Launch {
        let sdir = self.dirs().state_dir(&r.id);
        let runc = self.runc(r);
        Launch::Runc {
            runc: runc.binary,
            root: runc.root,
            systemd_cgroup: runc.systemd_cgroup,
            bundle: self.dirs().dir(&r.id),
            container_pid_file: sdir.join("container.pid"),
            runc_log: sdir.join("runc.log"),
            // Short: unix socket paths are limited to 108 bytes.
            console_socket: r.config.tty.then(|| self.dirs().short_socket("tty", &r.id)),
            start: true,
        }
    }

    /// The OCI spec the container was created with.
    fn read_spec(&self, id: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.dirs().dir(id).join("config.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The overlay mount itself (`lowers` top first), with mount `flags` (a VM's shared root is
/// `nodev`, `nosuid`).
pub(super) fn mount_overlay(
    dir: &Path,
    rootfs: &Path,
    upper: &Path,
    work: &Path,
    lowers: &[PathBuf],
    flags: nix::mount::MsFlags,
) -> Result<(), SandboxError> {
    let lowerdir = super::overlay::lowerdir(lowers, &dir.join("l"))?;
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
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
        rootfs,
        Some("overlay"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| {
        runtime_err(
            "mount rootfs",
            format!("overlay on {}: {e}", rootfs.display()),
        )
    })
}

#[async_trait::async_trait]
impl ContainerBackend for RuncBackend {
    fn kind(&self) -> Backend {
        Backend::Runc
    }

    fn create(&self, new: NewContainer) -> Result<ContainerRecord, SandboxError> {
        let NewContainer {
            id,
            mut config,
            pod,
            image,
            image_config,
            stop_signal,
            log_path,
            siblings: _,
        } = new;
        let user = user::resolve_for(
            &config.security,
            image_config.user.as_deref(),
            &image.layer_dirs,
        )?;
        let dir = self.dirs().dir(&id);
        let cgroups_path = cgroups::cgroups_path(self.cgroup_driver, &pod.cgroup_parent, &id);
        let rootfs = dir.join("rootfs");
        image_volume::mount_all(&dir, &mut config.mounts, pod.userns.as_ref())?;
        // In a user namespace, runc binds the copies crid made of the volumes (the record keeps
        // the host paths).
        let spec_config = match &pod.userns {
            Some(u) => {
                let mut c = config.clone();
                c.mounts = userns_volume::mount_all(&dir, &config.mounts, u)?;
                std::borrow::Cow::Owned(c)
            }
            None => std::borrow::Cow::Borrowed(&config),
        };
        let spec = spec::build(
            &spec_config,
            &spec::SpecContext {
                id: &id,
                pod: &pod,
                image: &image_config,
                user: &user,
                rootfs: &rootfs,
                cgroups_path: cgroups_path.clone(),
                seccomp_root: &self.seccomp_profile_root,
                min_oom_score_adj: own_oom_score_adj(),
                cgroup_v2: cgroups::is_v2(),
                apparmor_profile: apparmor::profile(
                    &config.security,
                    apparmor::host_enabled(),
                    &self.dirs().state.join("apparmor"),
                )?,
            },
        )?;
        let spec_path = dir.join("config.json");
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| runtime_err("write spec", e.to_string()))?;
        crate::monitor::write_replace(&spec_path, &json)
            .map_err(|e| SandboxError::io(&spec_path, e))?;
        self.mount_rootfs(&id, &image.layer_dirs, pod.userns.as_ref())?;
        // Mount targets the image lacks are created by runc inside the rootfs (upper layer).
        Ok(ContainerRecord {
            cgroups_path,
            oci_runtime: self.runtimes.for_handler(&pod.runtime_handler),
            ..ContainerRecord::created(Backend::Runc, id, config, pod, image, log_path, stop_signal)
        })
    }

    /// Only a reboot takes a recorded container's rootfs mount away (crid mounts before it
    /// records); its pod's namespaces went with it.
    fn startable(&self, r: &ContainerRecord) -> bool {
        is_mount_point(&self.dirs().dir(&r.id).join("rootfs"))
    }

    /// The monitor runs `runc run --detach` (one runc process, where `runc create` + `runc
    /// start` took two).
    async fn start(&self, r: &mut ContainerRecord) -> Result<Started, StartError> {
        let stale = self.supervisor.prepare(r).map_err(StartError::NotStarted)?;
        if stale.is_some() {
            let _ = self.runc(r).delete(&r.id).await;
        }
        self.supervisor
            .ready_to_launch(r, stale)
            .await
            .map_err(StartError::NotStarted)?;
        let stdin = self.attach_socket(r).map(|socket| StdinSpec {
            socket,
            stdin: r.config.stdin,
            once: r.config.stdin_once,
        });
        match self.supervisor.launch(r, self.launch(r), stdin).await {
            Ok(started) => Ok(started),
            Err(message) => {
                let _ = self.runc(r).delete(&r.id).await;
                Err(start_failure(&self.dirs().dir(&r.id), message))
            }
        }
    }

    async fn kill(&self, r: &ContainerRecord, signal: &str, all: bool) -> Result<(), SandboxError> {
        self.runc(r).kill(&r.id, signal, all).await
    }

    async fn wait_exit(&self, r: &ContainerRecord, timeout: Duration) -> bool {
        self.supervisor.wait_exit(&r.id, timeout).await
    }

    fn has_exit(&self, r: &ContainerRecord) -> bool {
        self.supervisor.has_exit(&r.id)
    }

    fn collect_exit(&self, r: &ContainerRecord) -> ContainerExit {
        ContainerExit::from_record(self.supervisor.load_exit(&r.id).as_ref(), |c| c)
    }

    fn reattach(&self, r: &ContainerRecord) -> Option<ExitWatch> {
        self.supervisor.watch(&r.id)
    }

    /// A running container through `runc update`; a created one in its bundle's spec.
    async fn update_resources(
        &self,
        r: &mut ContainerRecord,
        resources: &Resources,
    ) -> Result<(), SandboxError> {
        let id = r.id.as_str();
        let oci = spec::linux_resources(resources, cgroups::is_v2())?;
        match r.state {
            ContainerState::Running => {
                let path = self.dirs().state_dir(id).join("resources.json");
                let json =
                    serde_json::to_vec(&oci).map_err(|e| runtime_err("update", e.to_string()))?;
                std::fs::write(&path, json).map_err(|e| SandboxError::io(&path, e))?;
                let res = self.runc(r).update(id, &path).await;
                let _ = std::fs::remove_file(&path);
                res
            }
            ContainerState::Created => {
                let path = self.dirs().dir(id).join("config.json");
                let mut spec = self
                    .read_spec(id)
                    .ok_or_else(|| runtime_err("update", "the container's OCI spec is missing"))?;
                let devices = spec["linux"]["resources"]["devices"].clone();
                let mut new =
                    serde_json::to_value(&oci).map_err(|e| runtime_err("update", e.to_string()))?;
                new["devices"] = devices;
                spec["linux"]["resources"] = new;
                let json = serde_json::to_vec_pretty(&spec)
                    .map_err(|e| runtime_err("update", e.to_string()))?;
                crate::monitor::write_atomic(&path, &json).map_err(|e| SandboxError::io(&path, e))
            }
            _ => Err(SandboxError::FailedPrecondition {
                reason: format!("container {id} is not running"),
            }),
        }
    }

    async fn stats(&self, r: &ContainerRecord) -> Result<ContainerStats, SandboxError> {
        self.supervisor.stats(r).await
    }

    /// `runc exec` with the container's process settings and `cmd`; on timeout the process is
    /// killed and [`SandboxError::Timeout`] returned.
    async fn exec_sync(
        &self,
        r: &ContainerRecord,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, SandboxError> {
        let id = r.id.as_str();
        let spec = self
            .read_spec(id)
            .ok_or_else(|| runtime_err("exec", "the container's OCI spec is missing"))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let tag = crate::id::new_id()?;
        let sdir = self.dirs().state_dir(id);
        let process_path = sdir.join(format!("exec-{}.json", &tag[..16]));
        let pid_path = sdir.join(format!("exec-{}.pid", &tag[..16]));
        std::fs::write(&process_path, process.to_string())
            .map_err(|e| SandboxError::io(&process_path, e))?;
        let out = self
            .runc(r)
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

    fn supports_exec(&self) -> bool {
        true
    }

    fn oci_runtime(&self, r: &ContainerRecord) -> Option<Runc> {
        Some(self.runc(r))
    }

    fn spec_json(&self, r: &ContainerRecord) -> Option<serde_json::Value> {
        self.read_spec(&r.id)
    }

    /// `attach` in the state directory of a container started with stdin or a terminal, or
    /// without a CRI log (attach then reads its output there), or a short name in the state
    /// root when that path would be too long for a unix socket.
    fn attach_socket(&self, r: &ContainerRecord) -> Option<PathBuf> {
        if !(r.config.stdin || r.config.tty || r.log_path.is_none()) {
            return None;
        }
        let path = self.dirs().state_dir(&r.id).join("attach");
        if path.as_os_str().len() < 100 {
            return Some(path);
        }
        Some(self.dirs().short_socket("att", &r.id))
    }

    fn reopen_log(&self, r: &ContainerRecord) -> Result<(), SandboxError> {
        self.supervisor.reopen_log(r)
    }

    async fn remove(&self, r: &ContainerRecord) -> Result<(), SandboxError> {
        self.runc(r).delete(&r.id).await
    }

    async fn release_unrecorded(&self, id: &str) {
        for runc in self.runtimes.all() {
            if let Err(e) = runc.delete(id).await {
                tracing::warn!(container_id = %id, runtime = %runc.binary.display(), error = %e, "cannot delete the container");
            }
        }
        // runc's init is gone with `delete --force`; what is left is the monitor.
        self.supervisor.end_unrecorded(id).await;
    }
}
