//! crid's `RuntimeDefault` seccomp profile: an allow-list kept as data
//! (`seccomp_default.json`), turned into the OCI profile of one container by its capability
//! set and the host's architecture.
//!
//! The file groups system calls with a comment each. A group applies when the host's
//! architecture is in its `arches` (every architecture when absent), the container's capability
//! set holds its `withCapability` and lacks its `withoutCapability`. Everything not allowed
//! fails with `EPERM`; `clone3` without `CAP_SYS_ADMIN` fails with `ENOSYS` so that libc falls
//! back to `clone`, whose flags seccomp can inspect.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde::{Deserialize, Serialize};

use super::caps::parse_capability;
use crate::SandboxError;

/// The profile as data (see the module documentation for its format).
const PROFILE: &str = include_str!("seccomp_default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    /// For readers of the file; required so that every profile says what it is.
    #[serde(rename = "comment")]
    _comment: String,
    default_action: String,
    default_errno_ret: u32,
    /// Seccomp architectures per Rust target architecture (`std::env::consts::ARCH`).
    architectures: std::collections::BTreeMap<String, Vec<String>>,
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Group {
    /// For readers of the file; required so that every group says why it is allowed.
    #[serde(rename = "comment")]
    _comment: String,
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    with_capability: Option<String>,
    #[serde(default)]
    without_capability: Option<String>,
}

/// One argument condition, in the OCI format (`value` is the mask for `SCMP_CMP_MASKED_EQ`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn profile() -> Result<Profile, SandboxError> {
    serde_json::from_str(PROFILE).map_err(|e| broken(e.to_string()))
}

fn broken(reason: String) -> SandboxError {
    SandboxError::Runtime {
        op: "seccomp".into(),
        reason: format!("built-in profile: {reason}"),
    }
}

/// Whether the container's capability set `caps` is named by `name` (a capability of the file).
fn holds(caps: &HashSet<Capability>, name: &str) -> Result<bool, SandboxError> {
    Ok(caps.contains(&parse_capability(name)?))
}

/// The `RuntimeDefault` profile for a container with capability set `caps` (its bounding set)
/// on this host's architecture.
pub fn runtime_default(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, SandboxError> {
    for_arch(caps, std::env::consts::ARCH)
}

fn for_arch(caps: &HashSet<Capability>, arch: &str) -> Result<LinuxSeccomp, SandboxError> {
    let profile = profile()?;
    let architectures = profile
        .architectures
        .get(arch)
        .ok_or_else(|| broken(format!("no seccomp architectures for {arch}")))?;
    let mut syscalls = Vec::new();
    for g in &profile.groups {
        if g.arches
            .as_ref()
            .is_some_and(|a| !a.iter().any(|a| a == arch))
        {
            continue;
        }
        if let Some(c) = &g.with_capability {
            if !holds(caps, c)? {
                continue;
            }
        }
        if let Some(c) = &g.without_capability {
            if holds(caps, c)? {
                continue;
            }
        }
        let mut rule = serde_json::json!({"names": g.names, "action": g.action});
        if let Some(errno) = g.errno_ret {
            rule["errnoRet"] = errno.into();
        }
        if !g.args.is_empty() {
            rule["args"] = serde_json::to_value(&g.args).map_err(|e| broken(e.to_string()))?;
        }
        syscalls.push(rule);
    }
    let json = serde_json::json!({
        "defaultAction": profile.default_action,
        "defaultErrnoRet": profile.default_errno_ret,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    serde_json::from_value(json).map_err(|e| broken(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::caps::DEFAULT_CAPABILITIES;

    fn default_caps() -> HashSet<Capability> {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| parse_capability(c).unwrap())
            .collect()
    }

    /// The rules of `profile` that name `syscall`: (action, errno, number of argument checks).
    fn rules_for(profile: &LinuxSeccomp, syscall: &str) -> Vec<(String, Option<u32>, usize)> {
        let json = serde_json::to_value(profile).unwrap();
        json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == syscall))
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_owned(),
                    r["errnoRet"].as_u64().map(|e| e as u32),
                    r["args"].as_array().map_or(0, Vec::len),
                )
            })
            .collect()
    }

    #[test]
    fn the_file_parses_and_names_real_capabilities_and_actions() {
        let p = profile().unwrap();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, libc::EPERM as u32);
        let actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"];
        let ops = ["SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_MASKED_EQ"];
        for g in &p.groups {
            assert!(!g.names.is_empty(), "{g:?}");
            assert!(actions.contains(&g.action.as_str()), "{g:?}");
            assert!(g.args.iter().all(|a| ops.contains(&a.op.as_str())), "{g:?}");
            for c in g.with_capability.iter().chain(&g.without_capability) {
                parse_capability(c).unwrap();
            }
            for a in g.arches.iter().flatten() {
                assert!(p.architectures.contains_key(a), "{g:?}");
            }
        }
        // An unconditional allowance names each system call once.
        let mut seen = HashSet::new();
        for g in p.groups.iter().filter(|g| {
            g.args.is_empty() && g.with_capability.is_none() && g.without_capability.is_none()
        }) {
            for n in &g.names {
                assert!(seen.insert(n.clone()), "{n} is listed twice");
            }
        }
        for arch in ["x86_64", "aarch64"] {
            for_arch(&default_caps(), arch).unwrap();
        }
    }

    #[test]
    fn a_default_container_is_refused_namespaces_mounts_and_io_uring() {
        let p = for_arch(&default_caps(), "x86_64").unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        for refused in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "bpf",
            "keyctl",
            "add_key",
            "kexec_load",
            "init_module",
            "reboot",
            "userfaultfd",
            "open_by_handle_at",
            "perf_event_open",
        ] {
            assert!(rules_for(&p, refused).is_empty(), "{refused} is allowed");
        }
        // clone only without namespace flags; clone3 falls back; socket but AF_VSOCK;
        // personality for five values.
        assert_eq!(
            rules_for(&p, "clone"),
            vec![("SCMP_ACT_ALLOW".into(), None, 1)]
        );
        assert_eq!(
            rules_for(&p, "clone3"),
            vec![("SCMP_ACT_ERRNO".into(), Some(libc::ENOSYS as u32), 0)]
        );
        assert_eq!(
            rules_for(&p, "socket"),
            vec![("SCMP_ACT_ALLOW".into(), None, 1)]
        );
        assert_eq!(rules_for(&p, "personality").len(), 5);
        for allowed in ["read", "execve", "chown", "setuid", "arch_prctl", "ptrace"] {
            assert_eq!(
                rules_for(&p, allowed),
                vec![("SCMP_ACT_ALLOW".into(), None, 0)],
                "{allowed}"
            );
        }
        // Default capabilities include CAP_SYS_CHROOT, not CAP_SYS_TIME.
        assert!(!rules_for(&p, "chroot").is_empty());
        assert!(rules_for(&p, "settimeofday").is_empty());
        // Only x86 gets arch_prctl, only arm set_tls.
        assert!(rules_for(&p, "set_tls").is_empty());
        let arm = for_arch(&default_caps(), "aarch64").unwrap();
        assert!(rules_for(&arm, "arch_prctl").is_empty());
        assert!(!rules_for(&arm, "set_tls").is_empty());
    }

    #[test]
    fn cap_sys_admin_opens_namespaces_and_unfilters_clone() {
        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        let p = for_arch(&caps, "x86_64").unwrap();
        for allowed in ["unshare", "setns", "mount", "clone3"] {
            assert_eq!(
                rules_for(&p, allowed),
                vec![("SCMP_ACT_ALLOW".into(), None, 0)],
                "{allowed}"
            );
        }
        assert_eq!(
            rules_for(&p, "clone"),
            vec![("SCMP_ACT_ALLOW".into(), None, 0)]
        );
        // io_uring stays refused even then.
        assert!(rules_for(&p, "io_uring_setup").is_empty());
    }
}
