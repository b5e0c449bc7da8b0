//! The domain façade: [`Runtime`] owns pods, containers, the image leases their containers
//! hold and the pods' PID namespace holders, and applies the rules that span them (a pod's
//! containers stop and go before the pod; a container leases its image). The gRPC layer calls
//! this and the managers' read methods; it holds no state of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imagestore::ImageStore;

use crate::SandboxError;
use crate::container::{
    ContainerConfig, ContainerFilter, ContainerManager, ContainerRecord, ContainerState, ImageInfo,
    NsSource, PodContext,
};
use crate::monitor::pidns;
use crate::pod::{NsMode, PidHolder, PodConfig, PodManager, PodRecord};

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
        Ok(Runtime {
            pods,
            containers,
            images,
            settings,
            holders: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs a pod; a pod with a pod-wide PID namespace gets its holder now, off the path of
    /// its first container.
    pub async fn run_pod(&self, config: PodConfig) -> Result<String, SandboxError> {
        let id = self.pods.run(config).await?;
        let pod = self.pods.get(&id)?;
        if pod.pid_mode == NsMode::Pod {
            if let Err(e) = self.pod_pid_holder(&pod).await {
                let _ = self.pods.stop(&id).await;
                let _ = self.pods.remove(&id).await;
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Stops a pod's containers, then its PID namespace holder, then the pod (network last).
    /// A pod that does not exist is stopped already.
    pub async fn stop_pod(&self, id: &str) -> Result<(), SandboxError> {
        for record in self.pod_containers(id) {
            self.containers.stop(&record.id, Duration::ZERO).await?;
        }
        self.end_pid_holder(id)?;
        self.pods.stop(id).await
    }

    /// Removes a pod's containers (releasing their image leases), its holder, then the pod.
    pub async fn remove_pod(&self, id: &str) -> Result<(), SandboxError> {
        for record in self.pod_containers(id) {
            self.remove_container(&record.id).await?;
        }
        self.end_pid_holder(id)?;
        self.pods.remove(id).await
    }

    /// Creates a container in a ready pod, in the PID namespace it asks for (`None`: the
    /// pod's mode), and leases its image.
    pub async fn create_container(
        &self,
        pod_id: &str,
        mut config: ContainerConfig,
        pid: Option<PidNamespace>,
    ) -> Result<String, SandboxError> {
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
        let id = self
            .containers
            .create(config, PodContext::from_pod(&pod, ns), image.clone())
            .await?;
        if let Err(e) = self.images.add_lease(&id, &image.id) {
            tracing::warn!(container_id = %id, error = %e, "cannot lease the image");
        }
        Ok(id)
    }

    /// Stops a container; one that does not exist is stopped already.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        match self.containers.stop(id, timeout).await {
            Err(SandboxError::NotFound { .. }) => Ok(()),
            r => r,
        }
    }

    /// Removes a container and releases its image lease.
    pub async fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        self.containers.remove(id).await?;
        if let Err(e) = self.images.remove_lease(id) {
            tracing::warn!(container_id = %id, error = %e, "cannot release the image lease");
        }
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
        let pod = self.pods.get(&pod.id)?;
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
        let pid =
            tokio::task::spawn_blocking(move || pidns::spawn(&exe, &root, &log, HOLDER_TIMEOUT))
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
        let Ok(pod) = self.pods.get(pod_id) else {
            return Ok(());
        };
        if let Some(h) = &pod.pid_holder {
            kill_holder(h);
            self.pods.set_pid_holder(pod_id, None)?;
        }
        Ok(())
    }
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
