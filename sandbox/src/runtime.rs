//! The domain façade: [`Runtime`] owns pods, containers, the image leases their containers
//! hold and the pods' PID namespace holders, and applies the rules that span them (a pod's
//! containers stop and go before the pod; a container leases its image), and tells the
//! lifecycle [`Hooks`] (NRI) about each step. The gRPC layer calls this and the managers'
//! read methods.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OnceCell, OwnedRwLockWriteGuard, RwLock};

use imagestore::ImageStore;

use crate::SandboxError;
use crate::container::{
    ContainerConfig, ContainerFilter, ContainerManager, ContainerRecord, ContainerState, EventKind,
    ImageInfo, NsSource, PodContext, Resources,
};
use crate::hooks::{ContainerHook, Hooks};
use crate::monitor::pidns;
use crate::pod::{NsMode, PidHolder, PodConfig, PodFilter, PodManager, PodRecord, PodState};

/// How long a PID namespace holder may take to report its pid.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the runtime keeps its own files.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Volatile state; the holders' empty root is `<state>/pidns-root`.
    pub state: PathBuf,
    /// The crid executable (`crid-monitor` is looked for next to it).
    pub monitor_exe: PathBuf,
}

/// The PID namespace a container asks for, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// The host's.
    Node,
    /// One of its own.
    Container,
    /// The pod's, held by the pod's holder.
    Pod,
    /// That of another running container.
    Target(String),
}

/// Pods, containers and images as one runtime.
pub struct Runtime {
    pub pods: Arc<PodManager>,
    pub containers: Arc<ContainerManager>,
    pub images: ImageStore,
    settings: RuntimeSettings,
    /// Serialises starting PID namespace holders, so a pod gets one.
    holders: tokio::sync::Mutex<()>,
    hooks: OnceLock<Arc<dyn Hooks>>,
    /// Creating a pod or container holds it shared, a hook observer taking a snapshot of all
    /// pods and containers holds it exclusively ([`Runtime::exclusive`]): nothing created
    /// meanwhile is missed by both the snapshot and the create hook.
    creating: Arc<RwLock<()>>,
    /// The `Stop` hook of each container, run once (by the first of `StopContainer`, the
    /// exit watcher, `RemoveContainer`; the others wait for it).
    stop_hooks: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
}

impl Runtime {
    pub fn new(
        pods: Arc<PodManager>,
        containers: Arc<ContainerManager>,
        images: ImageStore,
        settings: RuntimeSettings,
    ) -> Result<Runtime, SandboxError> {
        let root = holder_root(&settings);
        std::fs::create_dir_all(&root).map_err(|e| SandboxError::io(&root, e))?;
        end_unknown_holders(&pods, &root);
        Ok(Runtime {
            pods,
            containers,
            images,
            settings,
            holders: tokio::sync::Mutex::new(()),
            hooks: OnceLock::new(),
            creating: Arc::new(RwLock::new(())),
            stop_hooks: Mutex::new(HashMap::new()),
        })
    }

    /// Installs the lifecycle hooks (once) and watches container exits for their `Stop` hook.
    pub fn set_hooks(self: &Arc<Self>, hooks: Arc<dyn Hooks>) {
        if self.hooks.set(hooks).is_err() {
            return;
        }
        let mut events = self.containers.subscribe();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "container events lagged; some exits reach the hooks at removal"
                        );
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(this) = this.upgrade() else { return };
                if event.kind == EventKind::Stopped {
                    // In its own task: a slow hook must not hold up the other exits.
                    tokio::spawn(async move { this.stop_hook(&event.container_id).await });
                }
            }
        });
    }

    /// Holds off pod and container creation until the guard is dropped.
    pub async fn exclusive(&self) -> OwnedRwLockWriteGuard<()> {
        self.creating.clone().write_owned().await
    }

    fn hooks(&self) -> Option<&Arc<dyn Hooks>> {
        self.hooks.get()
    }

    /// Runs the `Stop` hook of a container once; later callers wait for the first.
    async fn stop_hook(&self, id: &str) {
        let Some(hooks) = self.hooks() else { return };
        let Ok(record) = self.containers.get(id) else {
            return;
        };
        let Ok(pod) = self.pods.record(&record.pod_id) else {
            return;
        };
        let cell = self
            .lock_stop_hooks()
            .entry(id.to_owned())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let record = self.containers.get(id).unwrap_or(record);
            hooks
                .container_event(ContainerHook::Stop, &pod, &record)
                .await;
        })
        .await;
    }

    fn lock_stop_hooks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceCell<()>>>> {
        self.stop_hooks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a pod; a pod with a pod-wide PID namespace gets its holder now, off the path of
    /// its first container.
    /// With hooks, the pod stays invisible until the `run_pod` hook accepted it.
    pub async fn run_pod(&self, config: PodConfig) -> Result<String, SandboxError> {
        let _creating = self.creating.read().await;
        let id = match self.hooks() {
            Some(_) => self.pods.run_hidden(config).await?,
            None => self.pods.run(config).await?,
        };
        let pod = self.pods.record(&id)?;
        let mut result = Ok(());
        if pod.pid_mode == NsMode::Pod {
            result = self.pod_pid_holder(&pod).await.map(|_| ());
        }
        if let (Ok(()), Some(hooks)) = (&result, self.hooks()) {
            result = hooks
                .run_pod(&pod)
                .await
                .map_err(|source| SandboxError::Hook {
                    event: "RunPodSandbox",
                    source,
                });
        }
        if let Err(e) = result {
            let _ = self.end_pid_holder(&id);
            let _ = self.pods.stop(&id).await;
            let _ = self.pods.remove(&id).await;
            return Err(e);
        }
        self.pods.publish(&id);
        Ok(id)
    }

    /// Stops a pod's containers, then its PID namespace holder, then the pod (network last).
    /// A pod that does not exist is stopped already.
    /// The `stop_pod` hook runs once, for a ready pod, after its containers stopped.
    pub async fn stop_pod(&self, id: &str) -> Result<(), SandboxError> {
        for record in self.pod_containers(id) {
            self.containers.stop(&record.id, Duration::ZERO).await?;
            self.stop_hook(&record.id).await;
        }
        self.stop_pod_hook(id).await;
        self.end_pid_holder(id)?;
        self.pods.stop(id).await
    }

    async fn stop_pod_hook(&self, id: &str) {
        if let (Some(hooks), Ok(pod)) = (self.hooks(), self.pods.get(id)) {
            if pod.state == PodState::Ready {
                hooks.stop_pod(&pod).await;
            }
        }
    }

    /// Removes a pod's containers (releasing their image leases), its holder, then the pod.
    pub async fn remove_pod(&self, id: &str) -> Result<(), SandboxError> {
        for record in self.pod_containers(id) {
            self.remove_container(&record.id).await?;
        }
        self.stop_pod_hook(id).await;
        let pod = self.pods.record(id).ok();
        self.end_pid_holder(id)?;
        self.pods.remove(id).await?;
        if let (Some(hooks), Some(pod)) = (self.hooks(), pod) {
            hooks.remove_pod(&pod).await;
        }
        Ok(())
    }

    /// Creates a container in a ready pod, in the PID namespace it asks for (`None`: the
    /// pod's mode), and leases its image.
    pub async fn create_container(
        &self,
        pod_id: &str,
        mut config: ContainerConfig,
        pid: Option<PidNamespace>,
    ) -> Result<String, SandboxError> {
        let _creating = self.creating.read().await;
        let pod = self.pods.get_ready(pod_id)?;
        let pid = pid.unwrap_or(match pod.pid_mode {
            NsMode::Node => PidNamespace::Node,
            NsMode::Pod => PidNamespace::Pod,
            _ => PidNamespace::Container,
        });
        let ns = match pid {
            PidNamespace::Node => NsSource::Host,
            PidNamespace::Container => NsSource::New,
            PidNamespace::Pod => self.pod_pid_holder(&pod).await?,
            PidNamespace::Target(target) => {
                let target = self.containers.get(&target)?;
                if target.state != ContainerState::Running || target.pid <= 0 {
                    return Err(SandboxError::FailedPrecondition {
                        reason: format!("PID namespace target {} is not running", target.id),
                    });
                }
                NsSource::Join(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)))
            }
        };
        config.security.pid = Some(ns.clone());
        let image = self.image_info(&config.image)?;
        self.resolve_image_volumes(&mut config, &image)?;
        let id = crate::id::new_id()?;
        if let Some(hooks) = self.hooks() {
            hooks
                .create_container(&pod, &id, &mut config)
                .await
                .map_err(|source| SandboxError::Hook {
                    event: "CreateContainer",
                    source,
                })?;
        }
        let leases = container_leases(&id, &image.id, &config);
        let id = self
            .containers
            .create_with_id(id, config, PodContext::from_pod(&pod, ns), image.clone())
            .await?;
        for (holder, image_id) in leases {
            if let Err(e) = self.images.add_lease(&holder, &image_id) {
                tracing::warn!(container_id = %id, image = %image_id, error = %e, "cannot lease the image");
            }
        }
        self.container_hook(ContainerHook::PostCreate, &id).await;
        Ok(id)
    }

    /// New resources of a pod (kubelet resized its cgroup itself; crid keeps no pod-level
    /// resources): only the hooks hear of it, and may refuse.
    pub async fn update_pod(
        &self,
        id: &str,
        overhead: Option<Resources>,
        resources: Option<Resources>,
    ) -> Result<(), SandboxError> {
        let pod = self.pods.get(id)?;
        if let Some(hooks) = self.hooks() {
            hooks
                .update_pod(&pod, overhead.as_ref(), resources.as_ref())
                .await
                .map_err(|source| SandboxError::Hook {
                    event: "UpdatePodSandbox",
                    source,
                })?;
            hooks.post_update_pod(&pod).await;
        }
        Ok(())
    }

    /// Starts a created container, between the `Start` and `PostStart` hooks.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<(), SandboxError> {
        self.container_hook(ContainerHook::Start, id).await;
        self.containers.start(id).await?;
        self.container_hook(ContainerHook::PostStart, id).await;
        Ok(())
    }

    /// New resources for a container, as the `update_container` hook leaves them.
    pub async fn update_container(
        &self,
        id: &str,
        mut resources: Resources,
    ) -> Result<(), SandboxError> {
        if let Some(hooks) = self.hooks() {
            let record = self.containers.get(id)?;
            let pod = self.pods.record(&record.pod_id)?;
            hooks
                .update_container(&pod, &record, &mut resources)
                .await
                .map_err(|source| SandboxError::Hook {
                    event: "UpdateContainer",
                    source,
                })?;
        }
        self.containers.update_resources(id, resources).await?;
        self.container_hook(ContainerHook::PostUpdate, id).await;
        Ok(())
    }

    async fn container_hook(&self, event: ContainerHook, id: &str) {
        let Some(hooks) = self.hooks() else { return };
        let Ok(record) = self.containers.get(id) else {
            return;
        };
        if let Ok(pod) = self.pods.record(&record.pod_id) {
            hooks.container_event(event, &pod, &record).await;
        }
    }

    /// Fills in the image id and layers of each image volume from the image store: the image
    /// must be there already (kubelet pulls it first), as containerd and CRI-O require.
    fn resolve_image_volumes(
        &self,
        config: &mut ContainerConfig,
        image: &ImageInfo,
    ) -> Result<(), SandboxError> {
        for m in &mut config.mounts {
            let Some(volume) = &mut m.image else { continue };
            let failed = |source| SandboxError::ImageVolume {
                container_path: m.container_path.clone(),
                source: Box::new(source),
            };
            if image.unikernel.is_some() {
                return Err(failed(SandboxError::Unimplemented {
                    reason: "a unikernel container cannot mount image volumes".into(),
                }));
            }
            let found = self
                .images
                .resolve(&volume.reference)
                .map_err(|e| failed(e.into()))?;
            volume.layer_dirs = self
                .images
                .layer_dirs(&found)
                .map_err(|e| failed(e.into()))?;
            volume.image_id = found.id;
        }
        Ok(())
    }

    /// Stops a container; one that does not exist is stopped already.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        match self.containers.stop(id, timeout).await {
            Err(SandboxError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
            Ok(()) => {
                self.stop_hook(id).await;
                Ok(())
            }
        }
    }

    /// Sets the image store's leases to those of the recorded containers: at start-up, before
    /// serving. The leases file is not synced to disk (see `imagestore`), so after a power
    /// loss it may be older than the records, or torn; rebuilt here, a lease exists exactly
    /// while its container's record does.
    pub fn rebuild_image_leases(&self) -> Result<(), SandboxError> {
        let leases = self
            .containers
            .list(&ContainerFilter::default())
            .iter()
            .flat_map(|r| container_leases(&r.id, &r.image.id, &r.config))
            .collect();
        self.images.set_leases(leases)?;
        Ok(())
    }

    /// Removes a container and releases its image leases (its own image and its image
    /// volumes'); the `Stop` hook runs first if it has not, then `Remove`.
    pub async fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        let volumes = match self.containers.get(id) {
            Ok(r) => r.config.mounts.iter().filter(|m| m.image.is_some()).count(),
            Err(_) => 0,
        };
        let before = match self.hooks() {
            Some(_) => {
                self.stop_hook(id).await;
                self.containers.get(id).ok()
            }
            None => None,
        };
        self.containers.remove(id).await?;
        let holders =
            std::iter::once(id.to_owned()).chain((0..volumes).map(|n| volume_lease(id, n)));
        for holder in holders {
            if let Err(e) = self.images.remove_lease(&holder) {
                tracing::warn!(container_id = %id, error = %e, "cannot release an image lease");
            }
        }
        if let (Some(hooks), Some(record)) = (self.hooks(), before) {
            if let Ok(pod) = self.pods.record(&record.pod_id) {
                hooks
                    .container_event(ContainerHook::Remove, &pod, &record)
                    .await;
            }
        }
        self.lock_stop_hooks().remove(id);
        Ok(())
    }

    /// A pod's containers, hidden infrastructure containers (of older crid versions) last.
    fn pod_containers(&self, pod_id: &str) -> Vec<ContainerRecord> {
        let filter = ContainerFilter {
            pod_id: pod_id.to_owned(),
            ..Default::default()
        };
        let mut list = self.containers.list(&filter);
        list.sort_by_key(|r| r.config.pod_infra);
        list
    }

    /// The image a container is created from, as the container backend needs it.
    fn image_info(&self, reference: &str) -> Result<ImageInfo, SandboxError> {
        let image = self.images.resolve(reference)?;
        let layer_dirs = self.images.layer_dirs(&image)?;
        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone());
        Ok(ImageInfo {
            id: image.id.clone(),
            reference: reference.to_owned(),
            image_ref,
            config_json: image.config_json.clone(),
            layer_dirs,
            unikernel: image.unikernel.clone(),
        })
    }

    /// The pod-wide PID namespace, that of the pod's holder, started on first need.
    async fn pod_pid_holder(&self, pod: &PodRecord) -> Result<NsSource, SandboxError> {
        let _guard = self.holders.lock().await;
        let pod = self.pods.record(&pod.id)?;
        if let Some(h) = &pod.pid_holder {
            return match holder_alive(h) {
                true => Ok(NsSource::Join(PathBuf::from(format!(
                    "/proc/{}/ns/pid",
                    h.pid
                )))),
                false => Err(SandboxError::FailedPrecondition {
                    reason: format!("the PID namespace holder of pod {} is not running", pod.id),
                }),
            };
        }
        let exe = self.settings.monitor_exe.clone();
        let root = holder_root(&self.settings);
        let log = pod.paths.dir.join("pid-holder.log");
        let userns = pod.paths.userns.clone();
        let pid = tokio::task::spawn_blocking(move || {
            pidns::spawn(&exe, &root, userns.as_deref(), &log, HOLDER_TIMEOUT)
        })
        .await
        .map_err(|e| SandboxError::Runtime {
            op: "start PID namespace holder".into(),
            reason: e.to_string(),
        })?
        .map_err(|e| SandboxError::Runtime {
            op: "start PID namespace holder".into(),
            reason: e.to_string(),
        })?;
        let holder = PidHolder {
            pid: u32::try_from(pid).unwrap_or(0),
            start_time: pidns::start_time(pid).unwrap_or(0),
        };
        if let Err(e) = self.pods.set_pid_holder(&pod.id, Some(holder.clone())) {
            kill_holder(&holder);
            return Err(e);
        }
        tracing::info!(pod_sandbox_id = %pod.id, pid, "pod PID namespace holder started");
        Ok(NsSource::Join(PathBuf::from(format!("/proc/{pid}/ns/pid"))))
    }

    /// Kills the pod's PID namespace holder, if it has one, and forgets it.
    fn end_pid_holder(&self, pod_id: &str) -> Result<(), SandboxError> {
        let Ok(pod) = self.pods.record(pod_id) else {
            return Ok(());
        };
        if let Some(h) = &pod.pid_holder {
            kill_holder(h);
            self.pods.set_pid_holder(pod_id, None)?;
        }
        Ok(())
    }
}

/// The image leases container `id` holds: its own image's, and one per image volume (holder
/// -> image id).
fn container_leases(id: &str, image_id: &str, config: &ContainerConfig) -> Vec<(String, String)> {
    let volumes = config
        .mounts
        .iter()
        .filter_map(|m| m.image.as_ref().map(|i| i.image_id.clone()));
    std::iter::once((id.to_owned(), image_id.to_owned()))
        .chain(volumes.enumerate().map(|(n, v)| (volume_lease(id, n), v)))
        .collect()
}

/// The lease holder of a container's `n`th image volume (the container itself holds the
/// lease of its own image).
fn volume_lease(container_id: &str, n: usize) -> String {
    format!("{container_id}/volume/{n}")
}

fn holder_root(settings: &RuntimeSettings) -> PathBuf {
    settings.state.join("pidns-root")
}

/// Whether the recorded holder still runs (the same process, not a reuse of its pid).
fn holder_alive(h: &PidHolder) -> bool {
    let Ok(pid) = i32::try_from(h.pid) else {
        return false;
    };
    pid > 0 && h.start_time != 0 && pidns::start_time(pid) == Some(h.start_time)
}

/// Kills the holders started with this crid's holder root that belong to no known pod (its
/// record was lost or quarantined while crid was down): their pid was only in that record,
/// so nothing would ever stop them.
fn end_unknown_holders(pods: &PodManager, root: &Path) {
    let known: HashSet<u32> = pods
        .list(&PodFilter::default())
        .iter()
        .filter_map(|p| p.pid_holder.as_ref())
        .filter(|h| holder_alive(h))
        .map(|h| h.pid)
        .collect();
    for pid in pidns::holders_with_root(root) {
        if u32::try_from(pid).is_ok_and(|p| known.contains(&p)) {
            continue;
        }
        tracing::warn!(pid, "killing the PID namespace holder of an unknown pod");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// SIGKILL to the holder (which ends its PID namespace), unless it is gone already.
fn kill_holder(h: &PidHolder) {
    if holder_alive(h) {
        if let Ok(pid) = i32::try_from(h.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
