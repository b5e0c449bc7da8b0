//! crid's NRI integration: the runtime's lifecycle hooks ([`sandbox::hooks::Hooks`]) sent to
//! NRI plugins through the `nri` crate's adaptation, pods and containers converted to NRI
//! messages, and what plugins send back (adjustments, container updates) converted to
//! domain changes. Plugins may change annotations, environment, mounts, devices, the
//! command, OCI hooks, rlimits, resources and `oom_score_adj`; CDI devices, seccomp,
//! namespace, sysctl, scheduler and RDT changes are not applied.

use std::sync::{Arc, Weak};
use std::time::Duration;

use nri::api;
use nri::transport::BoxFuture;
use sandbox::container::{
    ContainerConfig, ContainerFilter, ContainerRecord, ContainerState, DeviceSpec, MountSpec,
    OciHook, OciHooks, Resources, Rlimit,
};
use sandbox::hooks::{ContainerHook, HookError, HookFuture, Hooks};
use sandbox::pod::{PodFilter, PodRecord};

use crate::config::NriConfig;

/// Starts the NRI socket and installs the hooks; `None` when `[nri] enable = false`.
pub fn start(
    config: &NriConfig,
    runtime: &Arc<sandbox::Runtime>,
) -> Result<Option<Arc<nri::Adaptation>>, nri::NriError> {
    if !config.enable {
        return Ok(None);
    }
    let settings = nri::Settings {
        socket: config.socket_path.clone(),
        registration_timeout: Duration::from_millis(config.registration_timeout_ms.max(1)),
        request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
        runtime_name: "crid".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
    };
    let state = Arc::new(State {
        runtime: Arc::downgrade(runtime),
    });
    let adaptation = nri::Adaptation::start(settings, state)?;
    runtime.set_hooks(Arc::new(NriHooks {
        nri: adaptation.clone(),
    }));
    Ok(Some(adaptation))
}

/// The runtime's side of synchronization and unsolicited updates.
struct State {
    runtime: Weak<sandbox::Runtime>,
}

impl nri::RuntimeState for State {
    fn synchronize(&self) -> BoxFuture<nri::SyncState> {
        let runtime = self.runtime.clone();
        Box::pin(async move {
            let Some(runtime) = runtime.upgrade() else {
                return nri::SyncState {
                    pods: Vec::new(),
                    containers: Vec::new(),
                    guard: Box::new(()),
                };
            };
            let guard = runtime.exclusive().await;
            let pods = runtime.pods.list(&PodFilter::default());
            let containers = runtime.containers.list(&ContainerFilter::default());
            nri::SyncState {
                pods: pods.iter().map(pod).collect(),
                containers: containers.iter().map(container).collect(),
                guard: Box::new(guard),
            }
        })
    }

    fn update_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
        evict: Vec<api::ContainerEviction>,
    ) -> BoxFuture<Vec<api::ContainerUpdate>> {
        let runtime = self.runtime.clone();
        Box::pin(async move {
            let Some(runtime) = runtime.upgrade() else {
                return updates;
            };
            for e in evict {
                tracing::info!(container_id = %e.container_id, reason = %e.reason, "NRI plugin evicts the container");
                if let Err(err) = runtime
                    .stop_container(&e.container_id, Duration::ZERO)
                    .await
                {
                    tracing::warn!(container_id = %e.container_id, error = %err, "NRI eviction failed");
                }
            }
            apply_updates(&runtime, updates).await
        })
    }
}

/// Applies plugin-requested resource updates (over the container's current resources);
/// returns the failed ones that may not fail.
async fn apply_updates(
    runtime: &sandbox::Runtime,
    updates: Vec<api::ContainerUpdate>,
) -> Vec<api::ContainerUpdate> {
    let mut failed = Vec::new();
    for u in updates {
        let Some(new) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
            continue;
        };
        let result = match runtime.containers.get(&u.container_id) {
            Ok(record) => {
                let mut resources = record.config.resources.clone();
                apply_resources(&mut resources, new);
                runtime
                    .containers
                    .update_resources(&u.container_id, resources)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(container_id = %u.container_id, error = %e, "NRI container update failed");
            if !u.ignore_failure {
                failed.push(u);
            }
        }
    }
    failed
}

struct NriHooks {
    nri: Arc<nri::Adaptation>,
}

impl Hooks for NriHooks {
    fn run_pod<'a>(&'a self, p: &'a PodRecord) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            self.nri
                .run_pod_sandbox(&pod(p))
                .await
                .map_err(HookError::new)
        })
    }

    fn stop_pod<'a>(&'a self, p: &'a PodRecord) -> HookFuture<'a, ()> {
        Box::pin(async move { self.nri.stop_pod_sandbox(&pod(p)).await })
    }

    fn remove_pod<'a>(&'a self, p: &'a PodRecord) -> HookFuture<'a, ()> {
        Box::pin(async move { self.nri.remove_pod_sandbox(&pod(p)).await })
    }

    fn update_pod<'a>(
        &'a self,
        p: &'a PodRecord,
        overhead: Option<&'a Resources>,
        resources: Option<&'a Resources>,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            self.nri
                .update_pod_sandbox(
                    &pod(p),
                    overhead.map(linux_resources),
                    resources.map(linux_resources),
                )
                .await
                .map_err(HookError::new)
        })
    }

    fn post_update_pod<'a>(&'a self, p: &'a PodRecord) -> HookFuture<'a, ()> {
        Box::pin(async move { self.nri.post_update_pod_sandbox(&pod(p)).await })
    }

    fn create_container<'a>(
        &'a self,
        p: &'a PodRecord,
        id: &'a str,
        config: &'a mut ContainerConfig,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let c = api::Container {
                id: id.to_owned(),
                pod_sandbox_id: p.id.clone(),
                state: api::ContainerState::Unknown as i32,
                ..config_view(config)
            };
            let adjust = self
                .nri
                .create_container(&pod(p), &c)
                .await
                .map_err(HookError::new)?;
            apply_adjustment(config, &adjust);
            Ok(())
        })
    }

    fn update_container<'a>(
        &'a self,
        p: &'a PodRecord,
        c: &'a ContainerRecord,
        resources: &'a mut Resources,
    ) -> HookFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let own = self
                .nri
                .update_container(&pod(p), &container(c), &linux_resources(resources))
                .await
                .map_err(HookError::new)?;
            for u in own {
                if let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                    apply_resources(resources, r);
                }
            }
            Ok(())
        })
    }

    fn container_event<'a>(
        &'a self,
        event: ContainerHook,
        p: &'a PodRecord,
        c: &'a ContainerRecord,
    ) -> HookFuture<'a, ()> {
        Box::pin(async move {
            let (p, c) = (pod(p), container(c));
            match event {
                ContainerHook::PostCreate => self.nri.post_create_container(&p, &c).await,
                ContainerHook::Start => self.nri.start_container(&p, &c).await,
                ContainerHook::PostStart => self.nri.post_start_container(&p, &c).await,
                ContainerHook::Stop => self.nri.stop_container(&p, &c).await,
                ContainerHook::Remove => self.nri.remove_container(&p, &c).await,
                ContainerHook::PostUpdate => self.nri.post_update_container(&p, &c).await,
            }
        })
    }
}

fn pod(p: &PodRecord) -> api::PodSandbox {
    api::PodSandbox {
        id: p.id.clone(),
        name: p.config.metadata.name.clone(),
        uid: p.config.metadata.uid.clone(),
        namespace: p.config.metadata.namespace.clone(),
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.config.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            cgroup_parent: p.cgroup_parent.clone(),
            ..Default::default()
        }),
        pid: p.pid_holder.as_ref().map_or(0, |h| h.pid),
        ips: p.ips.clone(),
    }
}

/// What a container's configuration says, in NRI terms (no id or state yet).
fn config_view(c: &ContainerConfig) -> api::Container {
    api::Container {
        name: c.name.clone(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        args: c.command.iter().chain(&c.args).cloned().collect(),
        env: c.envs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        mounts: c
            .mounts
            .iter()
            .map(|m| api::Mount {
                destination: m.container_path.clone(),
                r#type: "bind".into(),
                source: m.host_path.clone(),
                options: vec!["rbind".into(), if m.readonly { "ro" } else { "rw" }.into()],
            })
            .collect(),
        hooks: (!c.hooks.is_empty()).then(|| hooks_to_nri(&c.hooks)),
        rlimits: c
            .rlimits
            .iter()
            .map(|r| api::PosixRlimit {
                r#type: r.kind.clone(),
                hard: r.hard,
                soft: r.soft,
            })
            .collect(),
        linux: Some(api::LinuxContainer {
            devices: c
                .devices
                .iter()
                .map(|d| api::LinuxDevice {
                    path: d.container_path.clone(),
                    ..Default::default()
                })
                .collect(),
            resources: Some(linux_resources(&c.resources)),
            oom_score_adj: Some(api::OptionalInt {
                value: c.resources.oom_score_adj,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn hooks_to_nri(h: &OciHooks) -> api::Hooks {
    let list = |hs: &[OciHook]| {
        hs.iter()
            .map(|h| api::Hook {
                path: h.path.clone(),
                args: h.args.clone(),
                env: h.env.clone(),
                timeout: h.timeout.map(|value| api::OptionalInt { value }),
            })
            .collect()
    };
    api::Hooks {
        prestart: list(&h.prestart),
        create_runtime: list(&h.create_runtime),
        create_container: list(&h.create_container),
        start_container: list(&h.start_container),
        poststart: list(&h.poststart),
        poststop: list(&h.poststop),
    }
}

/// Adds the plugins' hooks after the container's own, point by point.
fn append_hooks(into: &mut OciHooks, h: &api::Hooks) {
    let add = |into: &mut Vec<OciHook>, hs: &[api::Hook]| {
        into.extend(hs.iter().map(|h| OciHook {
            path: h.path.clone(),
            args: h.args.clone(),
            env: h.env.clone(),
            timeout: h.timeout.map(|t| t.value),
        }))
    };
    add(&mut into.prestart, &h.prestart);
    add(&mut into.create_runtime, &h.create_runtime);
    add(&mut into.create_container, &h.create_container);
    add(&mut into.start_container, &h.start_container);
    add(&mut into.poststart, &h.poststart);
    add(&mut into.poststop, &h.poststop);
}

fn container(r: &ContainerRecord) -> api::Container {
    let mut c = config_view(&r.config);
    c.id = r.id.clone();
    c.pod_sandbox_id = r.pod_id.clone();
    c.state = match r.state {
        ContainerState::Created => api::ContainerState::Created,
        ContainerState::Running => api::ContainerState::Running,
        ContainerState::Exited => api::ContainerState::Stopped,
        ContainerState::Unknown => api::ContainerState::Unknown,
    } as i32;
    if let Some(l) = c.linux.as_mut() {
        l.cgroups_path = r.cgroups_path.clone();
    }
    c.pid = u32::try_from(r.pid).unwrap_or(0);
    c.created_at = r.created_at;
    c.started_at = r.started_at;
    c.finished_at = r.finished_at;
    c.exit_code = r.exit_code;
    c.status_reason = r.reason.clone();
    c.status_message = r.message.clone();
    c
}

fn linux_resources(r: &Resources) -> api::LinuxResources {
    let i64v = |v: i64| (v != 0).then_some(api::OptionalInt64 { value: v });
    let u64v = |v: i64| {
        u64::try_from(v)
            .ok()
            .filter(|v| *v != 0)
            .map(|value| api::OptionalUInt64 { value })
    };
    api::LinuxResources {
        memory: Some(api::LinuxMemory {
            limit: i64v(r.memory_limit_in_bytes),
            swap: i64v(r.memory_swap_limit_in_bytes),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: u64v(r.cpu_shares),
            quota: i64v(r.cpu_quota),
            period: u64v(r.cpu_period),
            cpus: r.cpuset_cpus.clone(),
            mems: r.cpuset_mems.clone(),
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| api::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: r.unified.clone(),
        pids: None,
    }
}

/// What `new` sets, over `r`.
fn apply_resources(r: &mut Resources, new: &api::LinuxResources) {
    let i64_of = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(m) = &new.memory {
        if let Some(v) = m.limit {
            r.memory_limit_in_bytes = v.value;
        }
        if let Some(v) = m.swap {
            r.memory_swap_limit_in_bytes = v.value;
        }
    }
    if let Some(c) = &new.cpu {
        if let Some(v) = c.shares {
            r.cpu_shares = i64_of(v.value);
        }
        if let Some(v) = c.quota {
            r.cpu_quota = v.value;
        }
        if let Some(v) = c.period {
            r.cpu_period = i64_of(v.value);
        }
        if !c.cpus.is_empty() {
            r.cpuset_cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            r.cpuset_mems = c.mems.clone();
        }
    }
    if !new.hugepage_limits.is_empty() {
        r.hugepage_limits = new
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect();
    }
    for (k, v) in &new.unified {
        r.unified.insert(k.clone(), v.clone());
    }
}

/// Applies the merged adjustment of the plugins to a container being created.
fn apply_adjustment(config: &mut ContainerConfig, a: &api::ContainerAdjustment) {
    use nri::adjust::removal;
    for (k, v) in &a.annotations {
        match removal(k) {
            Some(k) => {
                config.annotations.remove(k);
            }
            None => {
                config.annotations.insert(k.clone(), v.clone());
            }
        }
    }
    for kv in &a.env {
        let name = removal(&kv.key).unwrap_or(&kv.key);
        config.envs.retain(|(k, _)| k != name);
        if removal(&kv.key).is_none() {
            config.envs.push((kv.key.clone(), kv.value.clone()));
        }
    }
    for m in &a.mounts {
        let dest = removal(&m.destination).unwrap_or(&m.destination);
        config.mounts.retain(|x| x.container_path != dest);
        if removal(&m.destination).is_none() {
            config.mounts.push(MountSpec {
                container_path: m.destination.clone(),
                host_path: m.source.clone(),
                readonly: m.options.iter().any(|o| o == "ro"),
                ..Default::default()
            });
        }
    }
    if !a.args.is_empty() {
        config.command = a.args.clone();
        config.args.clear();
    }
    if let Some(h) = &a.hooks {
        append_hooks(&mut config.hooks, h);
    }
    for r in &a.rlimits {
        config.rlimits.retain(|x| x.kind != r.r#type);
        config.rlimits.push(Rlimit {
            kind: r.r#type.clone(),
            hard: r.hard,
            soft: r.soft,
        });
    }
    if let Some(l) = &a.linux {
        for d in &l.devices {
            config.devices.retain(|x| x.container_path != d.path);
            config.devices.push(DeviceSpec {
                container_path: d.path.clone(),
                host_path: d.path.clone(),
                permissions: "rwm".into(),
            });
        }
        if let Some(r) = &l.resources {
            apply_resources(&mut config.resources, r);
        }
        if let Some(v) = l.oom_score_adj {
            config.resources.oom_score_adj = v.value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustment_changes_env_annotations_mounts_and_resources() {
        let mut config = ContainerConfig {
            envs: vec![("KEEP".into(), "1".into()), ("DROP".into(), "1".into())],
            ..Default::default()
        };
        config.annotations.insert("gone".into(), "x".into());
        let adjust = api::ContainerAdjustment {
            annotations: [
                ("-gone".to_string(), String::new()),
                ("new".into(), "y".into()),
            ]
            .into_iter()
            .collect(),
            env: vec![
                api::KeyValue {
                    key: "-DROP".into(),
                    value: String::new(),
                },
                api::KeyValue {
                    key: "ADDED".into(),
                    value: "2".into(),
                },
            ],
            mounts: vec![api::Mount {
                destination: "/data".into(),
                source: "/srv/data".into(),
                options: vec!["ro".into()],
                ..Default::default()
            }],
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory {
                        limit: Some(api::OptionalInt64 { value: 64 << 20 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            hooks: Some(api::Hooks {
                poststop: vec![api::Hook {
                    path: "/bin/true".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            rlimits: vec![api::PosixRlimit {
                r#type: "RLIMIT_NOFILE".into(),
                hard: 10,
                soft: 5,
            }],
            args: Vec::new(),
        };
        apply_adjustment(&mut config, &adjust);
        assert_eq!(config.hooks.poststop[0].path, "/bin/true");
        assert_eq!(config.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(
            config.envs,
            vec![("KEEP".into(), "1".into()), ("ADDED".into(), "2".into())]
        );
        assert!(!config.annotations.contains_key("gone"));
        assert_eq!(config.annotations["new"], "y");
        assert_eq!(config.mounts[0].host_path, "/srv/data");
        assert!(config.mounts[0].readonly);
        assert_eq!(config.resources.memory_limit_in_bytes, 64 << 20);
    }

    #[test]
    fn resources_round_trip_through_nri() {
        let r = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 128 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let mut back = Resources::default();
        apply_resources(&mut back, &linux_resources(&r));
        assert_eq!(back, r);
    }
}
