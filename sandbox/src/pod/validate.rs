//! Checks on untrusted pod configuration, made before anything is created: metadata,
//! namespaces, user namespace mappings, sysctls, cgroup parents, DNS, hostnames, port mappings
//! and bandwidth annotations.

use std::net::IpAddr;

use crate::error::{SandboxError, invalid};
use crate::pod::{
    CgroupDriver, IdMapping, NsMode, PodConfig, PodKind, PodUserns, UsernsOptions, files,
};

/// Which namespace a sysctl lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNs {
    Net,
    Ipc,
}

/// Checks one sysctl against the allow-list (`kernel.shm*`, `kernel.msg*`, `kernel.sem`,
/// `fs.mqueue.*`, `net.*`) and against injection in key and value; returns the namespace it
/// must be written in.
pub fn sysctl(key: &str, value: &str) -> Result<SysctlNs, SandboxError> {
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..");
    if !key_ok {
        return Err(invalid(format!("sysctl name {key:?} is not valid")));
    }
    if value.len() > 4096 || value.chars().any(|c| c.is_control() || c == '=') {
        return Err(invalid(format!(
            "sysctl {key} has an invalid value {value:?}"
        )));
    }
    if key.starts_with("net.") {
        Ok(SysctlNs::Net)
    } else if key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.")
    {
        Ok(SysctlNs::Ipc)
    } else {
        Err(invalid(format!(
            "sysctl {key} is not namespaced (allowed: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)"
        )))
    }
}

/// The file under `/proc/sys` a valid sysctl name refers to.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// A cgroup parent for the driver in use: a `.slice` unit name for systemd, an absolute path
/// without `..` for cgroupfs. Empty means "no parent given".
pub fn cgroup_parent(driver: CgroupDriver, parent: &str) -> Result<(), SandboxError> {
    if parent.is_empty() {
        return Ok(());
    }
    if parent.len() > 4096 || parent.chars().any(|c| c.is_control()) {
        return Err(invalid(format!("cgroup parent {parent:?} is not valid")));
    }
    match driver {
        CgroupDriver::Systemd => {
            let ok = parent.ends_with(".slice")
                && parent.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '\\')
                });
            if !ok {
                return Err(invalid(format!(
                    "cgroup parent {parent:?} is not a systemd slice name (the systemd cgroup driver is in use)"
                )));
            }
        }
        CgroupDriver::Cgroupfs => {
            if !parent.starts_with('/') || parent.split('/').any(|c| c == "..") {
                return Err(invalid(format!(
                    "cgroup parent {parent:?} is not an absolute cgroup path (the cgroupfs driver is in use)"
                )));
            }
        }
    }
    Ok(())
}

/// `nobody`, the id the init of a pod-wide PID namespace runs as (`monitor::pidns`).
const NOBODY: u32 = 65534;

/// Checks a pod's configuration for a pod of `kind` under cgroup `driver`, as far as it needs
/// no host state: metadata, namespace modes, the user namespace (a runc pod's only, sharing
/// no namespace with the host, mapping `nobody` where the pod has its own PID namespace),
/// sysctls against the namespaces they live in, the cgroup parent, DNS, the hostname and port
/// mappings. Returns the pod's user namespace.
pub fn pod(
    config: &PodConfig,
    kind: PodKind,
    driver: CgroupDriver,
) -> Result<Option<PodUserns>, SandboxError> {
    let m = &config.metadata;
    if m.name.is_empty() || m.namespace.is_empty() || m.uid.is_empty() {
        return Err(invalid("metadata needs name, namespace and uid"));
    }
    let ns = &config.namespaces;
    if matches!(ns.network, NsMode::Container | NsMode::Target)
        || matches!(ns.ipc, NsMode::Container | NsMode::Target)
    {
        return Err(invalid("network and IPC namespaces must be POD or NODE"));
    }
    if ns.pid == NsMode::Target && ns.target_id.is_empty() {
        return Err(invalid("PID namespace TARGET needs a target id"));
    }
    let userns = ns.user.as_ref().map(user_namespace).transpose()?.flatten();
    if let Some(u) = userns {
        if kind != PodKind::Runc {
            return Err(invalid(format!(
                "runtime handler {:?} does not support user namespaces",
                config.runtime_handler
            )));
        }
        // As Kubernetes: a pod in its own user namespace shares no namespace with the host
        // (which that user namespace would not own).
        if ns.network == NsMode::Node || ns.ipc == NsMode::Node || ns.pid == NsMode::Node {
            return Err(invalid(
                "a pod with a user namespace cannot use the host's network, IPC or PID namespace",
            ));
        }
        // The init of a pod-wide PID namespace runs as `nobody` inside the user namespace.
        let maps_nobody = |m: &crate::pod::IdMapping| {
            u64::from(m.container_id) + u64::from(m.length) > u64::from(NOBODY)
        };
        if ns.pid == NsMode::Pod && (!maps_nobody(&u.uid) || !maps_nobody(&u.gid)) {
            return Err(invalid(format!(
                "a pod-wide PID namespace in a user namespace needs ids up to {NOBODY} mapped"
            )));
        }
    }
    for (key, value) in &config.sysctls {
        match sysctl(key, value)? {
            SysctlNs::Net if ns.network == NsMode::Node => {
                return Err(invalid(format!(
                    "sysctl {key} is not allowed in a host-network pod"
                )));
            }
            SysctlNs::Ipc if ns.ipc == NsMode::Node => {
                return Err(invalid(format!(
                    "sysctl {key} is not allowed in a host-IPC pod"
                )));
            }
            _ => {}
        }
    }
    cgroup_parent(driver, &config.cgroup_parent)?;
    let dns = &config.dns;
    for word in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
        if !files::valid_dns_word(word) {
            return Err(invalid(format!("invalid DNS config entry {word:?}")));
        }
    }
    for s in &dns.servers {
        if s.parse::<IpAddr>().is_err() {
            return Err(invalid(format!("DNS server {s:?} is not an IP address")));
        }
    }
    hostname(config)?;
    for p in &config.port_mappings {
        let port_ok = |p: i32| (0..=65535).contains(&p);
        if !port_ok(p.host_port) || !(1..=65535).contains(&p.container_port) {
            return Err(invalid(format!("invalid port mapping {p:?}")));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(format!("invalid host IP {:?}", p.host_ip)));
        }
    }
    Ok(userns)
}

/// The hostname of the pod's UTS namespace: the one the config names (at most 64 characters,
/// letters, digits, `-`, `.`, `_`), else [`files::hostname_from_name`] of the pod's name.
pub fn hostname(config: &PodConfig) -> Result<String, SandboxError> {
    let valid = |h: &str| {
        !h.is_empty()
            && h.len() <= 64
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if !config.hostname.is_empty() {
        if !valid(&config.hostname) {
            return Err(invalid(format!("invalid hostname {:?}", config.hostname)));
        }
        return Ok(config.hostname.clone());
    }
    let derived = files::hostname_from_name(&config.metadata.name);
    if !valid(&derived) {
        return Err(invalid(format!(
            "the pod has no hostname and its name {:?} does not give one",
            config.metadata.name
        )));
    }
    Ok(derived)
}

/// The pod user namespace a CRI `UserNamespace` asks for: `None` for `NODE` (the host's, no
/// mappings allowed); for `POD`, exactly one uid and one gid range (as containerd, and as
/// kubelet sends), each mapping container id 0, not overflowing, not including host id 0 (the
/// host's root); `CONTAINER` and `TARGET` are not user namespace modes.
pub fn user_namespace(opts: &UsernsOptions) -> Result<Option<PodUserns>, SandboxError> {
    match opts.mode {
        NsMode::Node => {
            if !opts.uids.is_empty() || !opts.gids.is_empty() {
                return Err(invalid(format!(
                    "user namespace mode NODE takes no mappings (got {} uid and {} gid mappings)",
                    opts.uids.len(),
                    opts.gids.len()
                )));
            }
            Ok(None)
        }
        NsMode::Pod => Ok(Some(PodUserns {
            uid: one_mapping("uid", &opts.uids)?,
            gid: one_mapping("gid", &opts.gids)?,
        })),
        NsMode::Container | NsMode::Target => Err(invalid(format!(
            "user namespace mode {:?} is not supported (POD or NODE)",
            opts.mode
        ))),
    }
}

fn one_mapping(what: &str, maps: &[IdMapping]) -> Result<IdMapping, SandboxError> {
    let [m] = maps else {
        return Err(invalid(format!(
            "user namespace mode POD needs exactly one {what} mapping, got {}",
            maps.len()
        )));
    };
    // The kernel's ids are u32 with u32::MAX reserved (the invalid id -1).
    let end = |start: u32| u64::from(start) + u64::from(m.length);
    if m.length == 0
        || end(m.container_id) > u64::from(u32::MAX)
        || end(m.host_id) > u64::from(u32::MAX)
    {
        return Err(invalid(format!("{what} mapping {m:?} is out of range")));
    }
    if m.container_id != 0 {
        return Err(invalid(format!(
            "{what} mapping {m:?} does not map container id 0"
        )));
    }
    if m.host_id == 0 {
        return Err(invalid(format!(
            "{what} mapping {m:?} maps the host's id 0 into the pod"
        )));
    }
    Ok(*m)
}

/// A Kubernetes bandwidth quantity ("10M", "1Gi", "500k") in bits per second.
pub fn bandwidth(annotation: &str, value: &str) -> Result<u64, SandboxError> {
    let bad = || {
        invalid(format!(
            "annotation {annotation}: {value:?} is not a bandwidth"
        ))
    };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, suffix) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    let bits = n.checked_mul(mult).ok_or_else(bad)?;
    if bits == 0 {
        return Err(bad());
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_allow_list() {
        assert_eq!(sysctl("net.ipv4.ip_forward", "1").unwrap(), SysctlNs::Net);
        assert_eq!(
            sysctl("net.ipv4.conf.eth0.forwarding", "1").unwrap(),
            SysctlNs::Net
        );
        assert_eq!(sysctl("kernel.shmmax", "100000").unwrap(), SysctlNs::Ipc);
        assert_eq!(sysctl("kernel.msgmax", "8192").unwrap(), SysctlNs::Ipc);
        assert_eq!(
            sysctl("kernel.sem", "250 32000 32 128").unwrap(),
            SysctlNs::Ipc
        );
        assert_eq!(sysctl("fs.mqueue.msg_max", "10").unwrap(), SysctlNs::Ipc);
        for (k, v) in [
            ("kernel.hostname", "x"),
            ("kernel.semx", "1"),
            ("vm.overcommit_memory", "1"),
            ("net.ipv4/../../kernel.core_pattern", "x"),
            ("net.ipv4..ip_forward", "1"),
            ("net.ipv4.ip_forward+", "1"),
            ("net.ipv4.ip_forward=1", "1"),
            ("net.ipv4.ip_forward\n", "1"),
            ("net/ipv4/ip_forward", "1"),
            (".net.x", "1"),
            ("", "1"),
            ("net.ipv4.ip_forward", "1\nkernel.x=1"),
            ("net.ipv4.ip_forward", "1=2"),
        ] {
            assert!(sysctl(k, v).is_err(), "{k:?}={v:?}");
        }
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }

    #[test]
    fn cgroup_parents() {
        assert!(cgroup_parent(CgroupDriver::Cgroupfs, "/kubepods/besteffort/pod1").is_ok());
        assert!(cgroup_parent(CgroupDriver::Cgroupfs, "").is_ok());
        assert!(cgroup_parent(CgroupDriver::Cgroupfs, "kubepods").is_err());
        assert!(cgroup_parent(CgroupDriver::Cgroupfs, "/kubepods/../../x").is_err());
        assert!(cgroup_parent(CgroupDriver::Systemd, "kubepods-besteffort-pod1.slice").is_ok());
        assert!(cgroup_parent(CgroupDriver::Systemd, "/kubepods/pod1").is_err());
    }

    #[test]
    fn user_namespace_mappings() {
        let map = |container_id, host_id, length| IdMapping {
            container_id,
            host_id,
            length,
        };
        let opts = |mode, uids: Vec<IdMapping>| UsernsOptions {
            mode,
            gids: uids.clone(),
            uids,
        };
        let good = map(0, 1000, 100_000);
        assert_eq!(user_namespace(&opts(NsMode::Node, vec![])).unwrap(), None);
        assert_eq!(
            user_namespace(&opts(NsMode::Pod, vec![good])).unwrap(),
            Some(PodUserns {
                uid: good,
                gid: good
            })
        );
        let mut split = opts(NsMode::Pod, vec![good]);
        split.gids = vec![map(0, 2000, 65536)];
        assert_eq!(user_namespace(&split).unwrap().unwrap().gid.host_id, 2000);
        for bad in [
            // critest's error cases: two ranges, container id 0 unmapped, CONTAINER, TARGET.
            opts(NsMode::Pod, vec![good, map(0, 2000, 100_000)]),
            opts(NsMode::Pod, vec![map(1, 1000, 100_000)]),
            opts(NsMode::Container, vec![]),
            opts(NsMode::Target, vec![]),
            opts(NsMode::Pod, vec![]),
            opts(NsMode::Node, vec![good]),
            opts(NsMode::Pod, vec![map(0, 1000, 0)]),
            opts(NsMode::Pod, vec![map(0, u32::MAX - 10, 11)]),
            opts(NsMode::Pod, vec![map(0, 0, 65536)]),
        ] {
            let e = user_namespace(&bad).unwrap_err();
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{bad:?}");
        }
        let mut no_gids = opts(NsMode::Pod, vec![good]);
        no_gids.gids.clear();
        assert!(user_namespace(&no_gids).is_err());
    }

    #[test]
    fn bandwidth_quantities() {
        assert_eq!(bandwidth("a", "10M").unwrap(), 10_000_000);
        assert_eq!(bandwidth("a", "1Mi").unwrap(), 1 << 20);
        assert_eq!(bandwidth("a", "500").unwrap(), 500);
        for bad in ["", "x", "10X", "-1", "0", "99999999999999999999T"] {
            assert!(bandwidth("a", bad).is_err(), "{bad}");
        }
    }
}
