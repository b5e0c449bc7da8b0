//! Container handlers: lifecycle, status, list, resources, logs, exec_sync and stats.
//! Each converts the CRI request into `sandbox::container` terms, calls the container manager
//! and converts the answer back.

use std::collections::HashMap;
use std::time::Duration;

use proto::cri;
use sandbox::PidNamespace;
use sandbox::container::{
    ContainerFilter, ContainerRecord, ContainerState, ContainerStats, Propagation, Resources,
};
use sandbox::pod::PodRecord;
use tonic::Status;

pub use crate::cri::convert::{container_config, resources};
use crate::cri::convert::{sorted, to_cri_map};
use crate::cri::error::Failure;
use crate::metrics::Metrics;
use crate::state::State;

fn resources_to_cri(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(s, l)| cri::HugepageLimit {
                page_size: s.clone(),
                limit: *l,
            })
            .collect(),
        unified: to_cri_map(&r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// The PID namespace a container asks for, in domain terms (`None`: the pod's).
fn pid_namespace(options: Option<&cri::NamespaceOption>) -> Result<Option<PidNamespace>, Status> {
    let Some(o) = options else {
        return Ok(None);
    };
    let mode = cri::NamespaceMode::try_from(o.pid)
        .map_err(|_| Status::invalid_argument(format!("unknown PID mode {}", o.pid)))?;
    Ok(Some(match mode {
        cri::NamespaceMode::Node => PidNamespace::Node,
        cri::NamespaceMode::Container => PidNamespace::Container,
        cri::NamespaceMode::Pod => PidNamespace::Pod,
        cri::NamespaceMode::Target => PidNamespace::Target(o.target_id.clone()),
    }))
}

pub async fn create_container(
    state: &State,
    r: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let c = r
        .config
        .ok_or_else(|| Status::invalid_argument("CreateContainer without config"))?;
    let ns_options = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let config = container_config(c)?;
    let pid = pid_namespace(ns_options.as_ref())?;
    let id = state
        .runtime
        .create_container(&r.pod_sandbox_id, config, pid)
        .await
        .map_err(Failure::from)?;
    tracing::Span::current().record("container_id", id.as_str());
    Ok(cri::CreateContainerResponse { container_id: id })
}

pub async fn start_container(
    state: &State,
    metrics: &Metrics,
    r: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    let started = std::time::Instant::now();
    state
        .runtime
        .start_container(&r.container_id)
        .await
        .map_err(Failure::from)?;
    // For a unikernel, StartContainer returns once its VMM runs under the monitor.
    if let Ok(record) = state.containers.get(&r.container_id) {
        if let Some(u) = &record.image.unikernel {
            let vmm = serde_json::to_value(u.hypervisor)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into());
            metrics.observe_vm_boot(&vmm, started.elapsed());
        }
    }
    Ok(cri::StartContainerResponse {})
}

pub async fn stop_container(
    state: &State,
    r: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    let timeout = Duration::from_secs(u64::try_from(r.timeout).unwrap_or(0));
    state
        .runtime
        .stop_container(&r.container_id, timeout)
        .await
        .map_err(Failure::from)?;
    Ok(cri::StopContainerResponse {})
}

pub async fn remove_container(
    state: &State,
    r: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    state
        .runtime
        .remove_container(&r.container_id)
        .await
        .map_err(Failure::from)?;
    Ok(cri::RemoveContainerResponse {})
}

fn state_to_cri(s: ContainerState) -> i32 {
    (match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }) as i32
}

fn metadata(r: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: r.config.name.clone(),
        attempt: r.config.attempt,
    }
}

fn image_spec(r: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.image.reference.clone(),
        ..Default::default()
    }
}

/// A record as a CRI `ContainerStatus`.
pub fn status_to_cri(r: &ContainerRecord) -> cri::ContainerStatus {
    let user = r.config.security.run_as_user;
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: state_to_cri(r.state),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: r.image.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: to_cri_map(&r.config.labels),
        annotations: to_cri_map(&r.config.annotations),
        mounts: r
            .config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                // An image volume's host path is crid's own mount, not the caller's.
                host_path: match m.image {
                    Some(_) => String::new(),
                    None => m.host_path.clone(),
                },
                image: m.image.as_ref().map(|i| cri::ImageSpec {
                    image: i.reference.clone(),
                    image_ref: i.image_id.clone(),
                    ..Default::default()
                }),
                image_sub_path: m
                    .image
                    .as_ref()
                    .map(|i| i.sub_path.clone())
                    .unwrap_or_default(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: match m.propagation {
                    Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
                } as i32,
                ..Default::default()
            })
            .collect(),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        resources: Some(cri::ContainerResources {
            linux: Some(resources_to_cri(&r.config.resources)),
            windows: None,
        }),
        image_id: r.image.id.clone(),
        user: user.map(|uid| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid,
                gid: r.config.security.run_as_group.unwrap_or(0),
                supplemental_groups: r.config.security.supplemental_groups.clone(),
            }),
        }),
        // The signal StopContainer sends: the config's, else the image's, else SIGTERM.
        stop_signal: crate::cri::convert::stop_signal_to_cri(&r.stop_signal),
    }
}

pub async fn list_containers(
    state: &State,
    r: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let filter = ContainerFilter {
        id_prefix: f.id,
        state: match f.state {
            None => None,
            Some(v) => Some(match cri::ContainerState::try_from(v.state) {
                Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
                Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
                Ok(cri::ContainerState::ContainerUnknown) => ContainerState::Unknown,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown container state {}",
                        v.state
                    )));
                }
            }),
        },
        pod_id: f.pod_sandbox_id,
        labels: sorted(f.label_selector),
    };
    let containers = state
        .containers
        .list(&filter)
        .iter()
        .filter(|r| !r.config.pod_infra)
        .map(|r| cri::Container {
            id: r.id.clone(),
            pod_sandbox_id: r.pod_id.clone(),
            metadata: Some(metadata(r)),
            image: Some(image_spec(r)),
            image_ref: r.image.image_ref.clone(),
            state: state_to_cri(r.state),
            created_at: r.created_at,
            labels: to_cri_map(&r.config.labels),
            annotations: to_cri_map(&r.config.annotations),
            image_id: r.image.id.clone(),
        })
        .collect();
    Ok(cri::ListContainersResponse { containers })
}

pub async fn container_status(
    state: &State,
    r: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let record = state
        .containers
        .get(&r.container_id)
        .map_err(Failure::from)?;
    let mut info = HashMap::new();
    if r.verbose {
        let verbose = serde_json::json!({
            "id": record.id,
            "sandboxID": record.pod_id,
            "pid": record.pid,
            "cgroupsPath": record.cgroups_path,
            "runtimeSpec": state.containers.spec_json(&record.id),
            "config": record.config,
        });
        info.insert("info".into(), verbose.to_string());
    }
    let mut status = status_to_cri(&record);
    if let Some(user) = state
        .containers
        .spec_json(&record.id)
        .and_then(|spec| process_user(&spec))
    {
        status.user = Some(user);
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(status),
        info,
    })
}

/// The identity the container's processes run with, from its OCI spec: uid, gid, and every
/// group they hold (the gid among them), as kubelet reads it for SupplementalGroupsPolicy.
fn process_user(spec: &serde_json::Value) -> Option<cri::ContainerUser> {
    let user = &spec["process"]["user"];
    let id = |v: &serde_json::Value| v.as_i64();
    let (uid, gid) = (id(&user["uid"])?, id(&user["gid"])?);
    let mut groups: Vec<i64> = user["additionalGids"]
        .as_array()
        .map(|a| a.iter().filter_map(id).collect())
        .unwrap_or_default();
    groups.push(gid);
    groups.sort_unstable();
    groups.dedup();
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid,
            gid,
            supplemental_groups: groups,
        }),
    })
}

pub async fn update_container_resources(
    state: &State,
    r: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let Some(linux) = r.linux else {
        return Ok(cri::UpdateContainerResourcesResponse {});
    };
    state
        .runtime
        .update_container(&r.container_id, resources(Some(linux)))
        .await
        .map_err(Failure::from)?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

pub async fn reopen_container_log(
    state: &State,
    r: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    state
        .containers
        .reopen_log(&r.container_id)
        .map_err(Failure::from)?;
    Ok(cri::ReopenContainerLogResponse {})
}

/// Room left in a response for framing and the exit code.
const MESSAGE_OVERHEAD: usize = 4096;

pub async fn exec_sync(
    state: &State,
    r: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    let timeout = (r.timeout > 0).then(|| Duration::from_secs(r.timeout as u64));
    let out = state
        .containers
        .exec_sync(&r.container_id, r.cmd, timeout)
        .await
        .map_err(Failure::from)?;
    // Each stream is capped at 16 MiB; together they must also fit one gRPC message.
    let budget = state
        .config
        .grpc
        .max_message_size
        .saturating_sub(MESSAGE_OVERHEAD);
    let (stdout, stderr) = fit_output(out.stdout, out.stderr, budget);
    Ok(cri::ExecSyncResponse {
        stdout,
        stderr,
        exit_code: out.exit_code,
    })
}

/// Truncates stdout and stderr to `budget` bytes together. stderr keeps up to half the budget
/// (it usually says what went wrong), stdout gets the rest, stderr any room stdout leaves.
fn fit_output(mut stdout: Vec<u8>, mut stderr: Vec<u8>, budget: usize) -> (Vec<u8>, Vec<u8>) {
    let reserved = stderr.len().min(budget / 2);
    stdout.truncate(budget - reserved);
    stderr.truncate(budget - stdout.len());
    (stdout, stderr)
}

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn stats_to_cri(state: &State, r: &ContainerRecord, s: &ContainerStats) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(metadata(r)),
            labels: to_cri_map(&r.config.labels),
            annotations: to_cri_map(&r.config.annotations),
        }),
        cpu: Some(cri::CpuUsage {
            timestamp: s.timestamp,
            usage_core_nano_seconds: u64v(s.cgroup.cpu_usage_ns),
            usage_nano_cores: None,
            psi: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp: s.timestamp,
            working_set_bytes: u64v(s.cgroup.memory_working_set),
            available_bytes: None,
            usage_bytes: u64v(s.cgroup.memory_usage),
            rss_bytes: u64v(s.cgroup.memory_rss),
            page_faults: u64v(s.cgroup.page_faults),
            major_page_faults: u64v(s.cgroup.major_page_faults),
            psi: None,
        }),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: s.timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: state
                    .containers
                    .writable_layer(&r.id)
                    .to_string_lossy()
                    .into_owned(),
            }),
            used_bytes: u64v(s.writable_bytes),
            inodes_used: u64v(s.writable_inodes),
        }),
        swap: None,
        io: None,
    }
}

pub async fn container_stats(
    state: &State,
    r: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    let record = state
        .containers
        .get(&r.container_id)
        .map_err(Failure::from)?;
    let stats = state
        .containers
        .stats(&record.id)
        .await
        .map_err(Failure::from)?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(stats_to_cri(state, &record, &stats)),
    })
}

pub async fn list_container_stats(
    state: &State,
    r: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let filter = ContainerFilter {
        id_prefix: f.id,
        state: None,
        pod_id: f.pod_sandbox_id,
        labels: sorted(f.label_selector),
    };
    let mut stats = Vec::new();
    for record in state.containers.list(&filter) {
        if record.config.pod_infra {
            continue;
        }
        if let Ok(s) = state.containers.stats(&record.id).await {
            stats.push(stats_to_cri(state, &record, &s));
        }
    }
    Ok(cri::ListContainerStatsResponse { stats })
}

/// Stats of one pod: the sum of its running containers, each listed too.
pub async fn pod_stats(state: &State, pod: &PodRecord) -> cri::PodSandboxStats {
    let filter = ContainerFilter {
        pod_id: pod.id.clone(),
        ..Default::default()
    };
    let mut containers = Vec::new();
    let (mut cpu, mut ws, mut usage, mut rss) = (0u64, 0u64, 0u64, 0u64);
    let mut ts = 0;
    for record in state.containers.list(&filter) {
        if record.state != ContainerState::Running || record.config.pod_infra {
            continue;
        }
        if let Ok(s) = state.containers.stats(&record.id).await {
            cpu += s.cgroup.cpu_usage_ns;
            ws += s.cgroup.memory_working_set;
            usage += s.cgroup.memory_usage;
            rss += s.cgroup.memory_rss;
            ts = s.timestamp;
            containers.push(stats_to_cri(state, &record, &s));
        }
    }
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.config.metadata.name.clone(),
                uid: pod.config.metadata.uid.clone(),
                namespace: pod.config.metadata.namespace.clone(),
                attempt: pod.config.metadata.attempt,
            }),
            labels: to_cri_map(&pod.config.labels),
            annotations: to_cri_map(&pod.config.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(cpu),
                usage_nano_cores: None,
                psi: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u64v(ws),
                usage_bytes: u64v(usage),
                rss_bytes: u64v(rss),
                ..Default::default()
            }),
            network: None,
            process: None,
            containers,
            io: None,
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::fit_output;

    #[test]
    fn exec_output_fits_the_budget_and_keeps_stderr() {
        let v = |n: usize, b: u8| vec![b; n];
        // A flood on stdout no longer pushes out a short stderr (it did: stderr got nothing).
        let (o, e) = fit_output(v(100, b'o'), v(5, b'e'), 50);
        assert_eq!((o.len(), e.len()), (45, 5));
        let (o, e) = fit_output(v(100, b'o'), v(100, b'e'), 50);
        assert_eq!((o.len(), e.len()), (25, 25));
        let (o, e) = fit_output(v(10, b'o'), v(100, b'e'), 50);
        assert_eq!((o.len(), e.len()), (10, 40));
        let (o, e) = fit_output(v(10, b'o'), v(10, b'e'), 50);
        assert_eq!((o.len(), e.len()), (10, 10));
        let (o, e) = fit_output(vec![], v(100, b'e'), 50);
        assert_eq!((o.len(), e.len()), (0, 50));
    }
}
