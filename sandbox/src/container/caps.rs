//! Capabilities: the names CRI requests and seccomp profiles give, and the set a container's
//! process gets (containerd's defaults, or for a privileged one all that crid itself holds),
//! for the OCI spec (`spec.rs`) and the default seccomp profile's capability conditions
//! (`seccomp.rs`).

use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability};

use crate::error::{SandboxError, invalid};

/// Capabilities a non-privileged container gets by default (containerd's and Docker's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability runc 1.1 knows (a privileged container gets them all).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Parses a capability name (`NET_ADMIN` or `CAP_NET_ADMIN`, any case).
pub fn parse_capability(name: &str) -> Result<Capability, SandboxError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| invalid(format!("unknown capability {name:?}")))
}

/// The capability set the process gets.
pub fn capabilities(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<Capabilities, SandboxError> {
    // "All" means all that crid itself may hand out: runc cannot grant a capability outside
    // its own bounding set (hosts without CAP_SYS_RESOURCE, for one), as containerd also does.
    let bounding = host_bounding_set();
    let all = || -> Result<Capabilities, SandboxError> {
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
            .map(|(_, c)| parse_capability(c))
            .collect()
    };
    let mut caps: Capabilities = if privileged {
        all()?
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| parse_capability(c))
            .collect::<Result<_, _>>()?
    };
    if add.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        caps = all()?;
    }
    let drop_all = drop.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    if drop_all {
        caps.clear();
    }
    for c in add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        caps.insert(parse_capability(c)?);
    }
    if !drop_all {
        for c in drop {
            caps.remove(&parse_capability(c)?);
        }
    }
    Ok(caps)
}

/// The capability bounding set of this process (`CapBnd`; bit N is capability N, the order of
/// [`ALL_CAPABILITIES`]), or every capability when it cannot be read.
fn host_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_bnd(&status))
        .unwrap_or(u64::MAX)
}

fn parse_cap_bnd(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn privileged_gets_the_bounding_set() {
        assert_eq!(
            parse_cap_bnd("Name:\tx\nCapBnd:\t000001fffeffffff\n"),
            Some(0x1fffeffffff)
        );
        assert_eq!(parse_cap_bnd("Name:\tx\n"), None);
        let c = capabilities(true, &[], &[]).unwrap();
        let bounding = host_bounding_set();
        for (bit, name) in ALL_CAPABILITIES.iter().enumerate() {
            let cap = parse_capability(name).unwrap();
            assert_eq!(c.contains(&cap), bounding & (1 << bit) != 0, "{name}");
        }
    }

    #[test]
    fn capabilities_add_drop_all() {
        let c = capabilities(false, &v(&["NET_ADMIN"]), &v(&["CAP_KILL"])).unwrap();
        assert!(c.contains(&Capability::NetAdmin) && !c.contains(&Capability::Kill));
        let c = capabilities(false, &v(&["SYS_TIME"]), &v(&["ALL"])).unwrap();
        assert_eq!(c.len(), 1);
        let c = capabilities(false, &v(&["ALL"]), &[]).unwrap();
        assert!(c.contains(&Capability::SysAdmin));
        assert!(capabilities(false, &v(&["NOT_A_CAP"]), &[]).is_err());
    }
}
