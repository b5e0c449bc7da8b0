//! The operations the benchmarks time, through the CRI API only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::cri;
use regex::Regex;

use super::first_byte::{self, FirstByte};
use crate::client::Cri;

/// One runtime under test.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub cri: Cri,
    /// Matches the command lines of the daemon and all its per-pod processes.
    pub procs: Regex,
    /// Parent of the pods' log directories.
    pub log_root: PathBuf,
    /// Pods share one PID namespace (the CRI default, what critest sends) instead of one per
    /// container (what kubelet sends without `shareProcessNamespace`).
    pub pod_pid: bool,
}

/// Timings of one pod + container cold start.
#[derive(Debug, Clone)]
pub struct Started {
    pub pod_id: String,
    pub container_id: String,
    pub run_pod: Duration,
    pub create: Duration,
    pub start: Duration,
    /// When CreateContainer was sent.
    pub create_sent: Instant,
}

impl Started {
    /// When StartContainer returned.
    pub fn start_returned(&self) -> Instant {
        self.create_sent + self.create + self.start
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn pod_config(target: &Target, tag: &str, host_network: bool) -> cri::PodSandboxConfig {
    let namespaces = namespaces(host_network, target.pod_pid);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("bench-{tag}-{}-{n}", std::process::id());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: target.log_root.join(&name).to_string_lossy().into_owned(),
        // As kubelet does for pods without shareProcessNamespace.
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: HashMap::from([("crid-bench".to_string(), "1".to_string())]),
        ..Default::default()
    }
}

/// [`kubelet_namespaces`], with the node's network for host-network pods and one PID
/// namespace for the pod with `pod_pid`.
fn namespaces(host_network: bool, pod_pid: bool) -> cri::NamespaceOption {
    let mut ns = kubelet_namespaces();
    if host_network {
        ns.network = cri::NamespaceMode::Node as i32;
    }
    if pod_pid {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
    ns
}

fn container_config(
    image: &str,
    command: &[&str],
    host_network: bool,
    pod_pid: bool,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: LOG_PATH.into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(host_network, pod_pid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// kubelet's namespaces for an ordinary pod: the pod's network and IPC, a PID namespace per
/// container.
fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// RunPodSandbox, CreateContainer, StartContainer, each timed, in a pod with its own network
/// (CNI) under the default runtime handler.
pub async fn cold_start(
    target: &Target,
    image: &str,
    command: &[&str],
    tag: &str,
) -> anyhow::Result<Started> {
    let pod = pod_config(target, tag, false);
    let container = container_config(image, command, false, target.pod_pid);
    Ok(start(target, pod, container, "", None).await?.0)
}

/// The container's log file name (`log_path`), in the pod's log directory.
const LOG_PATH: &str = "app.log";

/// [`cold_start`] in a pod with its own network or, with `host_network`, the node's, under a
/// runtime handler (RuntimeClass; `urunc` for unikernel images), the container's log watched
/// for its first byte from before the pod's start (see [`first_byte`]): `timeout` bounds the
/// wait, `poll` is the interval where the log cannot be watched.
#[allow(clippy::too_many_arguments)]
pub async fn cold_start_watched(
    target: &Target,
    image: &str,
    command: &[&str],
    tag: &str,
    host_network: bool,
    handler: &str,
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<(Started, FirstByte)> {
    let pod = pod_config(target, tag, host_network);
    let container = container_config(image, command, host_network, target.pod_pid);
    let (s, watcher) = start(target, pod, container, handler, Some((timeout, poll))).await?;
    Ok((s, watcher.context("no watcher")?))
}

/// [`cold_start_watched`] with the requests kubelet builds for a Deployment's pod
/// ([`crate::kubelet`]: long names, its own network, the service-account token, `/etc/hosts`
/// and termination-log mounts, the `kubernetes` Service's environment, a declared port 8080,
/// security context, annotations) whose container runs `command` (none: the image's) under
/// limits of 500m CPU and `memory_limit` bytes, its node files under the target's log root.
#[allow(clippy::too_many_arguments)]
pub async fn kubelet_start_watched(
    target: &Target,
    image: &str,
    command: &[&str],
    tag: &str,
    memory_limit: i64,
    handler: &str,
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<(Started, FirstByte)> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("bench-{tag}-{}-{n}-7f9c8d6b5-x2x9z", std::process::id());
    let kubelet = crate::kubelet::KubeletPod::new(&target.log_root.join("kubelet"), &name, "bench")
        .context("the pod's node files")?;
    let mut pod = kubelet.sandbox_config();
    pod.labels.insert("crid-bench".into(), "1".into());
    let container = kubelet
        .container("app", image)
        .command(command)
        .port("http", 8080)
        .limits(500, memory_limit)
        .build()
        .context("the container's node files")?;
    let (s, watcher) = start(target, pod, container, handler, Some((timeout, poll))).await?;
    Ok((s, watcher.context("no watcher")?))
}

/// RunPodSandbox of `config`, CreateContainer of `container` in it and StartContainer, each
/// timed; with `watch` (timeout, poll interval), the container's log watched from before the
/// pod's start.
async fn start(
    target: &Target,
    config: cri::PodSandboxConfig,
    container: cri::ContainerConfig,
    handler: &str,
    watch: Option<(Duration, Duration)>,
) -> anyhow::Result<(Started, Option<FirstByte>)> {
    let mut rt = target.cri.runtime.clone();
    let log = first_byte::log_file(&config.log_directory, &container.log_path);
    // As kubelet does before RunPodSandbox; the watch needs the directory.
    let log_dir = log.parent().context("log path without a directory")?;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("log directory {}", log_dir.display()))?;
    let watcher = watch.map(|(timeout, poll)| FirstByte::watch(&log, timeout, poll));
    let t0 = Instant::now();
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let t1 = Instant::now();
    let container_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let t2 = Instant::now();
    rt.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .context("StartContainer")?;
    let t3 = Instant::now();
    let started = Started {
        pod_id,
        container_id,
        run_pod: t1 - t0,
        create: t2 - t1,
        start: t3 - t2,
        create_sent: t1,
    };
    Ok((started, watcher))
}

/// StopContainer (no grace period), RemoveContainer, StopPodSandbox, RemovePodSandbox.
pub async fn teardown(target: &Target, started: &Started) -> anyhow::Result<Duration> {
    let mut rt = target.cri.runtime.clone();
    let t0 = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: started.container_id.clone(),
        timeout: 0,
    })
    .await
    .context("StopContainer")?;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: started.container_id.clone(),
    })
    .await
    .context("RemoveContainer")?;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: started.pod_id.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: started.pod_id.clone(),
    })
    .await
    .context("RemovePodSandbox")?;
    Ok(t0.elapsed())
}

/// Removes `image` if present, then times its pull.
pub async fn pull(target: &Target, image: &str) -> anyhow::Result<Duration> {
    let mut images = target.cri.images.clone();
    let spec = cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(spec.clone()),
        })
        .await
        .context("RemoveImage")?;
    let t0 = Instant::now();
    images
        .pull_image(cri::PullImageRequest {
            image: Some(spec),
            auth: None,
            sandbox_config: None,
        })
        .await
        .context("PullImage")?;
    Ok(t0.elapsed())
}

/// Pulls `image` unless the runtime already has it.
pub async fn ensure_image(target: &Target, image: &str) -> anyhow::Result<()> {
    let mut images = target.cri.images.clone();
    let spec = cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    let present = images
        .image_status(cri::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await?
        .into_inner()
        .image
        .is_some();
    if !present {
        images
            .pull_image(cri::PullImageRequest {
                image: Some(spec),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("pull {image} on {}", target.name))?;
    }
    Ok(())
}

/// Removes every pod the benchmark left behind (label `crid-bench=1`).
pub async fn sweep(target: &Target) -> anyhow::Result<()> {
    let mut rt = target.cri.runtime.clone();
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("crid-bench".to_string(), "1".to_string())]),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    for pod in pods {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id,
            })
            .await;
    }
    Ok(())
}
