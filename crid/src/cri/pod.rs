//! Pod sandbox handlers: run, stop, remove, status, list, stats and metrics. Each converts the CRI
//! request into `sandbox::pod` terms and back; the pod manager does the work.

use std::collections::HashMap;

use proto::cri;
use sandbox::container::{ContainerFilter, ContainerState};
use sandbox::pod::{NsMode, PodFilter, PodMetadata, PodRecord, PodState, metrics};
use tonic::Status;

pub use crate::cri::convert::pod_config;
use crate::cri::convert::{sorted, to_cri_map};
use crate::cri::error::Failure;
use crate::state::State;

fn ns_mode_to_cri(mode: NsMode) -> i32 {
    (match mode {
        NsMode::Pod => cri::NamespaceMode::Pod,
        NsMode::Container => cri::NamespaceMode::Container,
        NsMode::Node => cri::NamespaceMode::Node,
        NsMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

pub async fn run_pod_sandbox(
    state: &State,
    r: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = pod_config(r)?;
    let id = state.runtime.run_pod(config).await.map_err(Failure::from)?;
    tracing::Span::current().record("pod_sandbox_id", id.as_str());
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

pub async fn stop_pod_sandbox(
    state: &State,
    r: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    state
        .runtime
        .stop_pod(&r.pod_sandbox_id)
        .await
        .map_err(Failure::from)?;
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove_pod_sandbox(
    state: &State,
    r: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    state
        .runtime
        .remove_pod(&r.pod_sandbox_id)
        .await
        .map_err(Failure::from)?;
    Ok(cri::RemovePodSandboxResponse {})
}

fn state_to_cri(s: PodState) -> i32 {
    (match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready,
    }) as i32
}

fn metadata_to_cri(m: &PodMetadata) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

pub fn status_to_cri(r: &PodRecord) -> cri::PodSandboxStatus {
    let ns = &r.config.namespaces;
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata_to_cri(&r.config.metadata)),
        state: state_to_cri(r.state),
        created_at: r.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: r.primary_ip().to_owned(),
            additional_ips: r
                .ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: ns_mode_to_cri(ns.network),
                    pid: ns_mode_to_cri(ns.pid),
                    ipc: ns_mode_to_cri(ns.ipc),
                    target_id: ns.target_id.clone(),
                    userns_options: None,
                }),
            }),
        }),
        labels: to_cri_map(&r.config.labels),
        annotations: to_cri_map(&r.config.annotations),
        runtime_handler: r.config.runtime_handler.clone(),
    }
}

pub async fn pod_sandbox_status(
    state: &State,
    r: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let record = state.pods.get(&r.pod_sandbox_id).map_err(Failure::from)?;
    let mut info = HashMap::new();
    if r.verbose {
        info.insert(
            "info".into(),
            serde_json::to_string(&record).unwrap_or_default(),
        );
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status_to_cri(&record)),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

pub async fn list_pod_sandbox(
    state: &State,
    r: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    let filter = r.filter.unwrap_or_default();
    let state_filter = match filter.state {
        None => None,
        Some(v) => match cri::PodSandboxState::try_from(v.state) {
            Ok(cri::PodSandboxState::SandboxReady) => Some(PodState::Ready),
            Ok(cri::PodSandboxState::SandboxNotready) => Some(PodState::NotReady),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown pod state {}",
                    v.state
                )));
            }
        },
    };
    let filter = PodFilter {
        id_prefix: filter.id,
        state: state_filter,
        labels: sorted(filter.label_selector),
    };
    let items = state
        .pods
        .list(&filter)
        .iter()
        .map(|r| cri::PodSandbox {
            id: r.id.clone(),
            metadata: Some(metadata_to_cri(&r.config.metadata)),
            state: state_to_cri(r.state),
            created_at: r.created_at,
            labels: to_cri_map(&r.config.labels),
            annotations: to_cri_map(&r.config.annotations),
            runtime_handler: r.config.runtime_handler.clone(),
        })
        .collect();
    Ok(cri::ListPodSandboxResponse { items })
}

pub async fn pod_sandbox_stats(
    state: &State,
    r: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    let pod = state.pods.get(&r.pod_sandbox_id).map_err(Failure::from)?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(crate::cri::container::pod_stats(state, &pod).await),
    })
}

/// Kubernetes 1.36 calls this after it resized the pod's cgroup itself; crid keeps no pod-level
/// resources of its own (containers carry theirs): the pod must exist, and NRI plugins hear
/// of the change.
pub async fn update_pod_sandbox_resources(
    state: &State,
    r: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse, Status> {
    let overhead = r.overhead.map(|o| crate::cri::convert::resources(Some(o)));
    let resources = r.resources.map(|o| crate::cri::convert::resources(Some(o)));
    state
        .runtime
        .update_pod(&r.pod_sandbox_id, overhead, resources)
        .await
        .map_err(Failure::from)?;
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}

pub async fn list_pod_sandbox_stats(
    state: &State,
    r: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let filter = PodFilter {
        id_prefix: f.id,
        state: None,
        labels: sorted(f.label_selector),
    };
    let mut stats = Vec::new();
    for pod in state.pods.list(&filter) {
        stats.push(crate::cri::container::pod_stats(state, &pod).await);
    }
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

pub fn list_metric_descriptors() -> cri::ListMetricDescriptorsResponse {
    let descriptors = metrics::DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: d.labels.iter().map(|l| l.to_string()).collect(),
        })
        .collect();
    cri::ListMetricDescriptorsResponse { descriptors }
}

/// cAdvisor-named metrics of every ready pod and its running containers (`sandbox::pod::metrics`).
pub async fn list_pod_sandbox_metrics(
    state: &State,
) -> Result<cri::ListPodSandboxMetricsResponse, Status> {
    let ready = PodFilter {
        state: Some(PodState::Ready),
        ..PodFilter::default()
    };
    let mut work = Vec::new();
    for pod in state.pods.list(&ready) {
        let running = ContainerFilter {
            pod_id: pod.id.clone(),
            state: Some(ContainerState::Running),
            ..ContainerFilter::default()
        };
        let containers: Vec<_> = state
            .containers
            .list(&running)
            .into_iter()
            .map(|c| {
                let upper = state.containers.writable_layer(&c.id);
                (c, upper)
            })
            .collect();
        work.push((pod, containers));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    // Reading cgroups, /proc and walking writable layers blocks.
    let pods = tokio::task::spawn_blocking(move || {
        work.into_iter()
            .map(|(pod, containers)| {
                let now_s = (now / 1_000_000_000) as u64;
                let network = containers
                    .iter()
                    .find(|(c, _)| c.pid > 0)
                    .map(|(c, _)| metrics::network_samples(&pod, c.pid))
                    .unwrap_or_default();
                let container_metrics = containers
                    .iter()
                    .map(|(c, upper)| {
                        let (bytes, _) = sandbox::container::cgroups::disk_usage(upper);
                        let s = metrics::container_samples(c, &pod, upper, bytes, now_s);
                        cri::ContainerMetrics {
                            container_id: s.container_id,
                            metrics: s.samples.iter().map(|m| metric(m, now)).collect(),
                        }
                    })
                    .collect();
                cri::PodSandboxMetrics {
                    pod_sandbox_id: pod.id.clone(),
                    metrics: network.iter().map(|m| metric(m, now)).collect(),
                    container_metrics,
                }
            })
            .collect()
    })
    .await
    .map_err(|e| Status::internal(format!("metrics task failed: {e}")))?;
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics: pods })
}

fn metric(s: &metrics::Sample, timestamp: i64) -> cri::Metric {
    cri::Metric {
        name: s.name.into(),
        timestamp,
        metric_type: match s.kind {
            metrics::MetricKind::Counter => cri::MetricType::Counter,
            metrics::MetricKind::Gauge => cri::MetricType::Gauge,
        } as i32,
        label_values: s.labels.clone(),
        value: Some(cri::UInt64Value { value: s.value }),
    }
}
