//! CRI requests converted into domain requests, with no daemon state: everything here is a pure
//! function of the message (and is compiled into the `cri_request` fuzz target by path, so it
//! uses nothing of `crate` but this file).

use std::collections::{BTreeMap, HashMap};

use proto::cri;
use sandbox::container::{
    AppArmorProfile, ContainerConfig, DeviceSpec, ImageVolume, MountSpec, Propagation, Resources,
    SeccompProfile, SecurityContext,
};
use sandbox::pod::{
    DnsConfig, IdMapping, NamespaceOptions, NsMode, PodConfig, PodMetadata, PortMapping,
    UsernsOptions,
};
use tonic::Status;

/// The most bytes of labels and of annotations a pod or container may carry, each: the limit
/// Kubernetes puts on an object's annotations (`TotalAnnotationSizeLimitB`). Records, statuses
/// and list answers repeat them, so a few huge ones would push `ListPodSandbox` past the gRPC
/// message limit for every client.
pub const MAX_METADATA_BYTES: usize = 256 << 10;

/// A CRI map (labels, annotations, selectors, sysctls) in the domain's sorted form.
pub fn sorted(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// A domain map back in CRI's form.
pub fn to_cri_map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `map` (labels or annotations), refused when larger than [`MAX_METADATA_BYTES`].
fn metadata_map(
    what: &str,
    m: HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Status> {
    let size: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what} are {size} bytes, more than {MAX_METADATA_BYTES}"
        )));
    }
    Ok(sorted(m))
}

/// CRI resources in domain terms.
pub fn resources(r: Option<cri::LinuxContainerResources>) -> Resources {
    let r = r.unwrap_or_default();
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        unified: sorted(r.unified),
    }
}

#[allow(deprecated)] // seccomp_profile_path: older kubelets still send it.
fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<SeccompProfile, Status> {
    if let Some(p) = &sc.seccomp {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompProfile::RuntimeDefault)
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                Ok(SeccompProfile::Localhost(p.localhost_ref.clone()))
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    // The deprecated string form.
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(path) => Ok(SeccompProfile::Localhost(path.to_owned())),
            None => Err(Status::invalid_argument(format!(
                "unknown seccomp profile {p:?}"
            ))),
        },
    }
}

#[allow(deprecated)] // apparmor_profile: older kubelets still send it.
fn apparmor(sc: &cri::LinuxContainerSecurityContext) -> Result<AppArmorProfile, Status> {
    if let Some(p) = &sc.apparmor {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(AppArmorProfile::RuntimeDefault)
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(AppArmorProfile::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                Ok(AppArmorProfile::Localhost(p.localhost_ref.clone()))
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown AppArmor profile type {}",
                p.profile_type
            ))),
        };
    }
    // The deprecated string form.
    match sc.apparmor_profile.as_str() {
        "" | "unconfined" => Ok(AppArmorProfile::Unconfined),
        "runtime/default" => Ok(AppArmorProfile::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(name) => Ok(AppArmorProfile::Localhost(name.to_owned())),
            None => Err(Status::invalid_argument(format!(
                "unknown AppArmor profile {p:?}"
            ))),
        },
    }
}

/// One environment variable. cri-api carries the value as bytes since Kubernetes 1.34, but an
/// OCI process environment is a list of JSON strings, so a value must be UTF-8.
fn env(kv: cri::KeyValue) -> Result<(String, String), Status> {
    match String::from_utf8(kv.value) {
        Ok(value) => Ok((kv.key, value)),
        Err(_) => Err(Status::invalid_argument(format!(
            "environment variable {:?} has a value that is not UTF-8",
            kv.key
        ))),
    }
}

/// Converts a CRI container config (the PID namespace is resolved separately).
pub fn container_config(c: cri::ContainerConfig) -> Result<ContainerConfig, Status> {
    let metadata = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("container config has no metadata"))?;
    let image = c
        .image
        .map(|i| i.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("container config has no image"))?;
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for m in c.mounts {
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
            Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown mount propagation {}",
                    m.propagation
                )));
            }
        };
        // An image volume: crid resolves the image and mounts it (`sandbox` checks the rest).
        let image = m
            .image
            .filter(|i| !i.image.is_empty())
            .map(|i| ImageVolume {
                reference: i.image,
                sub_path: m.image_sub_path,
                ..Default::default()
            });
        mounts.push(MountSpec {
            container_path: m.container_path,
            host_path: m.host_path,
            readonly: m.readonly,
            recursive_readonly: m.recursive_read_only,
            propagation,
            selinux_relabel: m.selinux_relabel,
            image,
        });
    }
    let seccomp = seccomp(&sc)?;
    let apparmor = apparmor(&sc)?;
    Ok(ContainerConfig {
        name: metadata.name,
        attempt: metadata.attempt,
        image,
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c.envs.into_iter().map(env).collect::<Result<_, _>>()?,
        mounts,
        devices: c
            .devices
            .into_iter()
            .map(|d| DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: metadata_map("labels", c.labels)?,
        annotations: metadata_map("annotations", c.annotations)?,
        log_path: c.log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: resources(linux.resources),
        security: SecurityContext {
            add_capabilities: caps.add_capabilities,
            drop_capabilities: caps.drop_capabilities,
            add_ambient_capabilities: caps.add_ambient_capabilities,
            privileged: sc.privileged,
            pid: None,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            run_as_username: sc.run_as_username,
            readonly_rootfs: sc.readonly_rootfs,
            supplemental_groups: sc.supplemental_groups,
            supplemental_groups_strict: sc.supplemental_groups_policy
                == cri::SupplementalGroupsPolicy::Strict as i32,
            no_new_privs: sc.no_new_privs,
            masked_paths: sc.masked_paths,
            readonly_paths: sc.readonly_paths,
            userns: sc
                .namespace_options
                .as_ref()
                .and_then(|n| n.userns_options.as_ref())
                .map(userns_options)
                .transpose()?,
            seccomp,
            apparmor,
        },
        stop_signal: stop_signal(c.stop_signal)?,
        pod_infra: false,
        hooks: Default::default(),
        rlimits: Vec::new(),
    })
}

/// The signal name (as runc's `kill` takes it) of a CRI `Signal` (Kubernetes 1.33+,
/// `ContainerStopSignals`); `None` for `RUNTIME_DEFAULT`: the image's StopSignal or SIGTERM.
fn stop_signal(value: i32) -> Result<Option<String>, Status> {
    match cri::Signal::try_from(value) {
        Ok(cri::Signal::RuntimeDefault) => Ok(None),
        // SIGRTMINPLUS1 → SIGRTMIN+1, SIGRTMAXMINUS1 → SIGRTMAX-1.
        Ok(s) => Ok(Some(
            s.as_str_name()
                .replacen("PLUS", "+", 1)
                .replacen("MINUS", "-", 1),
        )),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown stop signal {value}"
        ))),
    }
}

/// The CRI `Signal` of a stop signal name crid recorded (`SIGTERM`, `SIGRTMIN+1`); a number or
/// a name CRI has no value for is `RUNTIME_DEFAULT`.
pub fn stop_signal_to_cri(name: &str) -> i32 {
    let name = name.replacen('+', "PLUS", 1).replacen('-', "MINUS", 1);
    cri::Signal::from_str_name(&name).unwrap_or(cri::Signal::RuntimeDefault) as i32
}

fn ns_mode(value: i32, what: &str) -> Result<NsMode, Status> {
    match cri::NamespaceMode::try_from(value) {
        Ok(cri::NamespaceMode::Pod) => Ok(NsMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NsMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NsMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NsMode::Target),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown {what} namespace mode {value}"
        ))),
    }
}

/// A CRI `UserNamespace` as asked for (`sandbox::pod::validate` checks it).
fn userns_options(u: &cri::UserNamespace) -> Result<UsernsOptions, Status> {
    let maps = |m: &[cri::IdMapping]| {
        m.iter()
            .map(|m| IdMapping {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect()
    };
    Ok(UsernsOptions {
        mode: ns_mode(u.mode, "user")?,
        uids: maps(&u.uids),
        gids: maps(&u.gids),
    })
}

fn protocol(value: i32) -> Result<String, Status> {
    match cri::Protocol::try_from(value) {
        Ok(cri::Protocol::Tcp) => Ok("tcp".into()),
        Ok(cri::Protocol::Udp) => Ok("udp".into()),
        Ok(cri::Protocol::Sctp) => Ok("sctp".into()),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown port protocol {value}"
        ))),
    }
}

/// The domain request of a `RunPodSandbox`.
pub fn pod_config(r: cri::RunPodSandboxRequest) -> Result<PodConfig, Status> {
    let config = r
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox needs a config"))?;
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("the pod config needs metadata"))?;
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let ns = security.namespace_options.unwrap_or_default();
    let dns = config.dns_config.unwrap_or_default();
    let port_mappings = config
        .port_mappings
        .into_iter()
        .map(|p| {
            Ok(PortMapping {
                protocol: protocol(p.protocol)?,
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(PodConfig {
        metadata: PodMetadata {
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt: metadata.attempt,
        },
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: DnsConfig {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        port_mappings,
        labels: metadata_map("labels", config.labels)?,
        annotations: metadata_map("annotations", config.annotations)?,
        cgroup_parent: linux.cgroup_parent,
        sysctls: sorted(linux.sysctls),
        namespaces: NamespaceOptions {
            network: ns_mode(ns.network, "network")?,
            pid: ns_mode(ns.pid, "PID")?,
            ipc: ns_mode(ns.ipc, "IPC")?,
            target_id: ns.target_id,
            user: ns.userns_options.as_ref().map(userns_options).transpose()?,
        },
        runtime_handler: r.runtime_handler,
        privileged: security.privileged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_conversion_keeps_fields_and_refuses_missing_metadata() {
        let c = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 2,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            mounts: vec![cri::Mount {
                container_path: "/m".into(),
                host_path: "/tmp".into(),
                propagation: cri::MountPropagation::PropagationBidirectional as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = container_config(c.clone()).unwrap();
        assert_eq!((d.name.as_str(), d.attempt), ("c", 2));
        assert_eq!(d.envs, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(d.mounts[0].propagation, Propagation::Bidirectional);
        assert_eq!(d.security.seccomp, SeccompProfile::Unconfined);
        assert_eq!(d.stop_signal, None, "RUNTIME_DEFAULT");
        for (signal, name) in [
            (cri::Signal::Sigquit, "SIGQUIT"),
            (cri::Signal::Sigrtminplus1, "SIGRTMIN+1"),
            (cri::Signal::Sigrtmaxminus2, "SIGRTMAX-2"),
        ] {
            let mut with = c.clone();
            with.stop_signal = signal as i32;
            let d = container_config(with).unwrap();
            assert_eq!(d.stop_signal.as_deref(), Some(name));
            assert_eq!(stop_signal_to_cri(name), signal as i32, "{name} back");
        }
        assert_eq!(stop_signal_to_cri("9"), cri::Signal::RuntimeDefault as i32);
        let mut bad = c.clone();
        bad.stop_signal = 1000;
        assert_eq!(
            container_config(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut bad = c.clone();
        bad.envs[0].value = vec![0xff, 0xfe];
        assert_eq!(
            container_config(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut bad = c.clone();
        bad.metadata = None;
        assert_eq!(
            container_config(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut big = c.clone();
        big.annotations
            .insert("a".into(), "x".repeat(MAX_METADATA_BYTES));
        assert_eq!(
            container_config(big).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut pod = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata::default()),
            ..Default::default()
        };
        pod.labels
            .insert("l".into(), "y".repeat(MAX_METADATA_BYTES));
        let r = cri::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        };
        assert_eq!(
            pod_config(r).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut bad = c;
        bad.mounts[0].propagation = 9;
        assert_eq!(
            container_config(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    #[allow(deprecated)]
    fn seccomp_profiles_convert() {
        let mut sc = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: "/p.json".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            seccomp(&sc).unwrap(),
            SeccompProfile::Localhost("/p.json".into())
        );
        sc.seccomp = None;
        sc.seccomp_profile_path = "runtime/default".into();
        assert_eq!(seccomp(&sc).unwrap(), SeccompProfile::RuntimeDefault);
        sc.seccomp_profile_path = "bogus".into();
        assert!(seccomp(&sc).is_err());
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_profiles_convert() {
        let profile = |t: cri::security_profile::ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let mut sc = cri::LinuxContainerSecurityContext::default();
        assert_eq!(apparmor(&sc).unwrap(), AppArmorProfile::Unconfined);
        sc.apparmor = Some(profile(
            cri::security_profile::ProfileType::Localhost,
            "k8s-web",
        ));
        assert_eq!(
            apparmor(&sc).unwrap(),
            AppArmorProfile::Localhost("k8s-web".into())
        );
        sc.apparmor = Some(profile(
            cri::security_profile::ProfileType::RuntimeDefault,
            "",
        ));
        // The field wins over the deprecated string.
        sc.apparmor_profile = "unconfined".into();
        assert_eq!(apparmor(&sc).unwrap(), AppArmorProfile::RuntimeDefault);
        sc.apparmor = None;
        assert_eq!(apparmor(&sc).unwrap(), AppArmorProfile::Unconfined);
        sc.apparmor_profile = "runtime/default".into();
        assert_eq!(apparmor(&sc).unwrap(), AppArmorProfile::RuntimeDefault);
        sc.apparmor_profile = "localhost/k8s-db".into();
        assert_eq!(
            apparmor(&sc).unwrap(),
            AppArmorProfile::Localhost("k8s-db".into())
        );
        sc.apparmor_profile = "docker/default".into();
        assert_eq!(
            apparmor(&sc).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        sc.apparmor = Some(cri::SecurityProfile {
            profile_type: 99,
            localhost_ref: String::new(),
        });
        assert_eq!(
            apparmor(&sc).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
