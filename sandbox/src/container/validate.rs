//! Checks on an untrusted container request, made before anything is created: paths that
//! must stay where they are put (mounts, devices, the log, `Localhost` seccomp profiles),
//! capability names, sizes execve and runc can take, user and group ids, and the user
//! namespace, which must be the pod's.

use std::path::{Component, Path, PathBuf};

use super::caps::parse_capability;
use super::config::{ContainerConfig, PodContext, Propagation, Resources, SeccompProfile};
use crate::SandboxError;
use crate::error::invalid;

/// The smallest memory limit accepted (Docker's `linuxMinMemory`): runc's own init is charged
/// to the container's cgroup, so below this runc cannot even start the container.
pub const MIN_MEMORY_LIMIT: i64 = 6 << 20;
/// The longest single argument or `KEY=value` entry: the kernel's `MAX_ARG_STRLEN` (execve
/// fails with `E2BIG` beyond it).
pub const MAX_ARG_LEN: usize = 128 << 10;
/// The most bytes of argv and environment together (a quarter of the default 8 MiB stack
/// limit is what execve allows; half of that leaves room for the image's own).
pub const MAX_ARGS_TOTAL: usize = 1 << 20;

/// Whether `p` is absolute and has no `..` component.
fn clean_absolute(p: &str) -> bool {
    let path = Path::new(p);
    path.is_absolute() && !path.components().any(|c| matches!(c, Component::ParentDir))
}

fn under(path: &str, dir: &str) -> bool {
    let p = Path::new(path);
    p.starts_with(dir)
}

/// The log path inside the pod's log directory, refusing anything that escapes it.
pub fn log_path(pod: &PodContext, log_path: &str) -> Result<Option<PathBuf>, SandboxError> {
    if log_path.is_empty() {
        return Ok(None);
    }
    let Some(dir) = pod
        .log_directory
        .as_ref()
        .filter(|d| !d.as_os_str().is_empty())
    else {
        return Err(invalid(format!(
            "log_path {log_path:?} given but the pod has no log_directory"
        )));
    };
    let rel = Path::new(log_path);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid(format!(
            "log_path {log_path:?} must be relative to the log directory without `..`"
        )));
    }
    Ok(Some(dir.join(rel)))
}

/// Resolves a `Localhost` seccomp profile path. With an empty `root` any clean absolute path
/// is taken, as kubelet resolves profiles itself (under its own `seccomp` directory) and sends
/// the absolute path; containerd and CRI-O take it so too. With a `root`, relative paths
/// resolve there and nothing outside it (symlinks included) is taken.
pub fn localhost_profile(path: &str, root: &Path) -> Result<PathBuf, SandboxError> {
    let p = path.strip_prefix("localhost/").unwrap_or(path);
    if root.as_os_str().is_empty() {
        if !clean_absolute(p) {
            return Err(invalid(format!(
                "seccomp profile {path:?} must be an absolute path without `..` (no \
                 runtime.seccomp_profile_root is set to resolve relative ones)"
            )));
        }
        return Ok(PathBuf::from(p));
    }
    let p = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        root.join(p)
    };
    if !clean_absolute(&p.to_string_lossy()) || !p.starts_with(root) {
        return Err(invalid(format!(
            "seccomp profile {path:?} is outside the profile root {}",
            root.display()
        )));
    }
    // Symlinks inside the root must not lead out of it either.
    if let (Ok(real), Ok(real_root)) = (p.canonicalize(), root.canonicalize()) {
        if !real.starts_with(&real_root) {
            return Err(invalid(format!(
                "seccomp profile {path:?} resolves outside the profile root"
            )));
        }
    }
    Ok(p)
}

/// Resource values no container can run with.
pub fn check_resources(r: &Resources) -> Result<(), SandboxError> {
    if r.memory_limit_in_bytes > 0 && r.memory_limit_in_bytes < MIN_MEMORY_LIMIT {
        return Err(invalid(format!(
            "memory limit {} bytes is below the minimum of {MIN_MEMORY_LIMIT} bytes",
            r.memory_limit_in_bytes
        )));
    }
    Ok(())
}

/// The command, args and env must fit what execve accepts.
fn check_process_size(config: &ContainerConfig) -> Result<(), SandboxError> {
    let mut total = 0usize;
    let args = config.command.iter().chain(&config.args).map(String::len);
    let env = config.envs.iter().map(|(k, v)| k.len() + 1 + v.len());
    for len in args.chain(env) {
        if len > MAX_ARG_LEN {
            return Err(invalid(format!(
                "a command argument or environment variable of {len} bytes is longer than {MAX_ARG_LEN}"
            )));
        }
        total = total.saturating_add(len + 1);
    }
    if total > MAX_ARGS_TOTAL {
        return Err(invalid(format!(
            "command, args and environment are {total} bytes, more than {MAX_ARGS_TOTAL}"
        )));
    }
    Ok(())
}

/// Checks everything in the request that can be checked without side effects.
pub fn request(
    config: &ContainerConfig,
    pod: &PodContext,
    seccomp_root: &Path,
) -> Result<(), SandboxError> {
    if config.name.is_empty() {
        return Err(invalid("container metadata.name is empty"));
    }
    for m in &config.mounts {
        if let Some(image) = &m.image {
            super::image_volume::validate(m, image)?;
        } else if !clean_absolute(&m.host_path) {
            return Err(invalid(format!(
                "mount host path {:?} must be absolute without `..`",
                m.host_path
            )));
        }
        if !clean_absolute(&m.container_path) {
            return Err(invalid(format!(
                "mount container path {:?} must be absolute without `..`",
                m.container_path
            )));
        }
        if under(&m.container_path, "/proc") {
            return Err(invalid(format!(
                "mounting over {:?} is not allowed",
                m.container_path
            )));
        }
        // A recursive read-only mount must be read-only, and private: propagation would
        // bring in new submounts that are writable.
        if m.recursive_readonly && (!m.readonly || m.propagation != Propagation::Private) {
            return Err(invalid(format!(
                "recursive read-only mount {:?} needs readonly and PROPAGATION_PRIVATE",
                m.container_path
            )));
        }
    }
    for d in &config.devices {
        if !clean_absolute(&d.host_path) || !clean_absolute(&d.container_path) {
            return Err(invalid(format!(
                "device paths {:?} -> {:?} must be absolute without `..`",
                d.host_path, d.container_path
            )));
        }
        if d.permissions.chars().any(|c| !"rwm".contains(c)) {
            return Err(invalid(format!(
                "device permissions {:?} are not a subset of rwm",
                d.permissions
            )));
        }
    }
    let s = &config.security;
    for c in s
        .add_capabilities
        .iter()
        .chain(&s.drop_capabilities)
        .chain(&s.add_ambient_capabilities)
    {
        if !c.eq_ignore_ascii_case("ALL") {
            parse_capability(c)?;
        }
    }
    if let SeccompProfile::Localhost(p) = &s.seccomp {
        localhost_profile(p, seccomp_root)?;
    }
    crate::container::apparmor::validate(s, crate::container::apparmor::host_enabled())?;
    log_path(pod, &config.log_path)?;
    check_resources(&config.resources)?;
    check_process_size(config)?;
    for (k, _) in &config.envs {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(invalid(format!("invalid environment variable name {k:?}")));
        }
    }
    if config
        .security
        .run_as_user
        .is_some_and(|u| !(0..=super::user::MAX_ID).contains(&u))
    {
        return Err(invalid("run_as_user is out of range"));
    }
    if config
        .security
        .run_as_group
        .is_some_and(|g| !(0..=super::user::MAX_ID).contains(&g))
    {
        return Err(invalid("run_as_group is out of range"));
    }
    // A group alone would pair with the image's user, which the caller did not ask for
    // (containerd and CRI-O refuse it too).
    if s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty() {
        return Err(invalid(
            "run_as_group is set without run_as_user or run_as_username",
        ));
    }
    // A container runs in its pod's user namespace (or the host's, as its pod): one that asks
    // for another is refused, as by containerd.
    if let Some(asked) = &s.userns {
        let asked = crate::pod::validate::user_namespace(asked)?;
        if asked != pod.userns.as_ref().map(|u| u.mappings) {
            return Err(invalid(
                "the container's user namespace options differ from its pod's",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::MountSpec;
    use crate::container::spec::linux_resources;

    /// Without a profile root any clean absolute path is a profile (what kubelet and critest
    /// send); with one, only what lies under it.
    #[test]
    fn localhost_profile_paths() {
        let none = Path::new("");
        for ok in [
            "/var/lib/kubelet/seccomp/p.json",
            "localhost//tmp/critest/p.json",
        ] {
            assert!(localhost_profile(ok, none).is_ok(), "{ok}");
        }
        for bad in ["p.json", "localhost/p.json", "/a/../etc/p.json", ""] {
            let e = localhost_profile(bad, none).unwrap_err();
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{bad}");
        }
        let root = Path::new("/var/lib/kubelet/seccomp");
        assert_eq!(
            localhost_profile("localhost/p.json", root).unwrap(),
            root.join("p.json")
        );
        assert!(localhost_profile("/var/lib/kubelet/seccomp/a/p.json", root).is_ok());
        for bad in [
            "/tmp/p.json",
            "localhost/../p.json",
            "/var/lib/kubelet/seccomp/../x",
        ] {
            let e = localhost_profile(bad, root).unwrap_err();
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn bad_requests_are_invalid() {
        let root = Path::new("/var/lib/kubelet/seccomp");
        let pod = PodContext {
            log_directory: Some("/var/log/pods/x".into()),
            ..Default::default()
        };
        let base = ContainerConfig {
            name: "c".into(),
            ..Default::default()
        };
        assert!(request(&base, &pod, root).is_ok());
        type Case = Box<dyn Fn(&mut ContainerConfig)>;
        let mount = |host: &'static str, container: &'static str| -> Case {
            Box::new(move |c| {
                c.mounts.push(MountSpec {
                    host_path: host.into(),
                    container_path: container.into(),
                    ..Default::default()
                })
            })
        };
        let cases: Vec<Case> = vec![
            mount("rel", "/x"),
            mount("/a/../etc", "/x"),
            mount("/tmp", "/proc"),
            mount("/tmp", "/proc/sys"),
            Box::new(|c| c.security.add_capabilities.push("BOGUS".into())),
            Box::new(|c| c.security.seccomp = SeccompProfile::Localhost("/etc/passwd".into())),
            Box::new(|c| {
                c.security.seccomp = SeccompProfile::Localhost("localhost/../../x.json".into())
            }),
            Box::new(|c| c.log_path = "../escape.log".into()),
            Box::new(|c| c.log_path = "/abs.log".into()),
            Box::new(|c| c.security.run_as_user = Some(1 << 31)),
            Box::new(|c| {
                c.mounts.push(MountSpec {
                    host_path: "/tmp".into(),
                    container_path: "/rro".into(),
                    recursive_readonly: true,
                    ..Default::default()
                })
            }),
            Box::new(|c| {
                c.mounts.push(MountSpec {
                    host_path: "/tmp".into(),
                    container_path: "/rro".into(),
                    readonly: true,
                    recursive_readonly: true,
                    propagation: Propagation::HostToContainer,
                    ..Default::default()
                })
            }),
            // critest: "RunAsGroup is set without RunAsUser".
            Box::new(|c| c.security.run_as_group = Some(1000)),
            Box::new(|c| c.resources.memory_limit_in_bytes = 1),
            Box::new(|c| c.resources.memory_limit_in_bytes = MIN_MEMORY_LIMIT - 1),
            Box::new(|c| c.envs.push(("BIG".into(), "x".repeat(MAX_ARG_LEN)))),
            Box::new(|c| c.args.push("y".repeat(MAX_ARG_LEN + 1))),
            Box::new(|c| {
                c.envs = (0..10)
                    .map(|i| (format!("E{i}"), "z".repeat(120_000)))
                    .collect()
            }),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut c = base.clone();
            f(&mut c);
            let e = request(&c, &pod, root).expect_err(&format!("case {i}"));
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "case {i}");
        }
        let mut ok = base.clone();
        ok.mounts.push(MountSpec {
            host_path: "/tmp".into(),
            container_path: "/procfoo".into(),
            ..Default::default()
        });
        ok.log_path = "c/0.log".into();
        ok.security.seccomp = SeccompProfile::Localhost("localhost/p.json".into());
        ok.envs.push(("BIG".into(), "x".repeat(MAX_ARG_LEN - 4)));
        assert!(request(&ok, &pod, root).is_ok());
        // A group with a user, by id or by name.
        let mut with_group = ok.clone();
        with_group.security.run_as_group = Some(1000);
        with_group.security.run_as_user = Some(1000);
        assert!(request(&with_group, &pod, root).is_ok());
        with_group.security.run_as_user = None;
        with_group.security.run_as_username = "nobody".into();
        assert!(request(&with_group, &pod, root).is_ok());
        for limit in [-1, 0, MIN_MEMORY_LIMIT, i64::MAX] {
            ok.resources.memory_limit_in_bytes = limit;
            assert!(request(&ok, &pod, root).is_ok(), "{limit}");
            assert!(linux_resources(&ok.resources, true).is_ok(), "{limit}");
        }
        ok.resources.memory_limit_in_bytes = 1;
        assert!(linux_resources(&ok.resources, true).is_err());
    }
}
