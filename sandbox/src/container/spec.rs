//! Building a container's OCI runtime spec (`config.json` for runc) from the CRI request, the
//! image config and the pod, with `oci-spec`, once [`super::validate`] checked the request.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{
    Capabilities, Hook, HookBuilder, Hooks, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp,
    Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::Deserialize;

use super::caps::{capabilities, parse_capability};
use super::config::{
    ContainerConfig, NsSource, OciHook, OciHooks, PodContext, Propagation, Resources, Rlimit,
    SeccompProfile,
};
use super::user::ResolvedUser;
use super::validate::{check_resources, localhost_profile};
use crate::error::{SandboxError, invalid};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// runc's and containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's and containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The parts of an OCI image config a container uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ImageConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// Parses the `config` object of an OCI image config JSON.
    pub fn parse(config_json: &str) -> Result<ImageConfig, SandboxError> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<ImageConfig>,
        }
        if config_json.trim().is_empty() {
            return Ok(ImageConfig::default());
        }
        let outer: Outer = serde_json::from_str(config_json)
            .map_err(|e| invalid(format!("image config is not valid JSON: {e}")))?;
        Ok(outer.config.unwrap_or_default())
    }
}

/// The process argv, merged as Kubernetes defines: `command` replaces the image's Entrypoint
/// (and drops its Cmd); `args` replaces the image's Cmd.
pub fn process_args(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>, SandboxError> {
    let argv: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else {
        let entry = image.entrypoint.clone().unwrap_or_default();
        let cmd = if args.is_empty() {
            image.cmd.clone().unwrap_or_default()
        } else {
            args.to_vec()
        };
        entry.into_iter().chain(cmd).collect()
    };
    if argv.is_empty() {
        return Err(invalid(
            "no command specified: neither the request nor the image has one",
        ));
    }
    Ok(argv)
}

/// Image `Env` overridden key by key by the request's envs.
pub fn merge_env(image: &[String], envs: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = image.to_vec();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.into());
    }
    for (k, v) in envs {
        let kv = format!("{k}={v}");
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) == k)
        {
            Some(e) => *e = kv,
            None => out.push(kv),
        }
    }
    out
}

fn id_mappings(m: &crate::pod::IdMapping) -> Result<Vec<LinuxIdMapping>, SandboxError> {
    Ok(vec![
        LinuxIdMappingBuilder::default()
            .container_id(m.container_id)
            .host_id(m.host_id)
            .size(m.length)
            .build()
            .map_err(oci_err)?,
    ])
}

/// The character and block devices directly under the host's `/dev`, except those runc
/// always creates itself. Unreadable entries are skipped: this only widens what a privileged
/// container sees.
fn host_devices() -> Vec<LinuxDevice> {
    const RUNC_DEFAULTS: &[&str] = &[
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
    ];
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if RUNC_DEFAULTS.contains(&name) {
            continue;
        }
        // symlink_metadata: a link such as /dev/fd is not a device.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let Some(typ) = device_type(&meta) else {
            continue;
        };
        let rdev = meta.rdev();
        let device = LinuxDeviceBuilder::default()
            .path(e.path())
            .typ(typ)
            .major(nix::sys::stat::major(rdev) as i64)
            .minor(nix::sys::stat::minor(rdev) as i64)
            .file_mode(meta.mode() & 0o777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(d) = device {
            out.push(d);
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// The OCI type of a character or block device; `None` for anything else.
fn device_type(meta: &std::fs::Metadata) -> Option<LinuxDeviceType> {
    let ft = meta.file_type();
    if ft.is_char_device() {
        Some(LinuxDeviceType::C)
    } else if ft.is_block_device() {
        Some(LinuxDeviceType::B)
    } else {
        None
    }
}

/// The seccomp profile of a container whose bounding capability set is `caps`. A privileged
/// container runs without one, whatever profile it names (Kubernetes' rule; containerd and
/// CRI-O do the same, and critest checks a `Localhost` profile is ignored).
fn seccomp(
    config: &ContainerConfig,
    seccomp_root: &Path,
    caps: &Capabilities,
) -> Result<Option<LinuxSeccomp>, SandboxError> {
    let s = &config.security;
    match &s.seccomp {
        SeccompProfile::Unconfined => Ok(None),
        _ if s.privileged => Ok(None),
        SeccompProfile::RuntimeDefault => super::seccomp::runtime_default(caps).map(Some),
        SeccompProfile::Localhost(p) => {
            let path = localhost_profile(p, seccomp_root)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(format!("cannot read seccomp profile {p:?}: {e}")))?;
            let profile: LinuxSeccomp = serde_json::from_str(&text)
                .map_err(|e| invalid(format!("seccomp profile {p:?} is invalid: {e}")))?;
            Ok(Some(profile))
        }
    }
}

fn oci_err(e: oci_spec::OciSpecError) -> SandboxError {
    SandboxError::Runtime {
        op: "build OCI spec".into(),
        reason: e.to_string(),
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SandboxError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(oci_err)
}

fn bind(
    dest: &str,
    source: &Path,
    readonly: bool,
    propagation: &str,
) -> Result<Mount, SandboxError> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            propagation.to_string(),
            if readonly { "ro" } else { "rw" }.to_string(),
        ])
        .build()
        .map_err(oci_err)
}

/// Converts CRI resources into OCI `LinuxResources` (without devices). `cgroup_v2` decides
/// whether `unified` entries are kept (runc refuses them on cgroup v1).
pub fn linux_resources(r: &Resources, cgroup_v2: bool) -> Result<LinuxResources, SandboxError> {
    check_resources(r)?;
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    let mut mem = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes > 0 {
        mem = mem.limit(r.memory_limit_in_bytes);
        if r.memory_swap_limit_in_bytes > 0 {
            mem = mem.swap(r.memory_swap_limit_in_bytes);
        }
    }
    let mut res = LinuxResourcesBuilder::default()
        .cpu(cpu.build().map_err(oci_err)?)
        .memory(mem.build().map_err(oci_err)?);
    if !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(size.clone())
                    .limit(*limit as i64)
                    .build()
                    .map_err(oci_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        res = res.hugepage_limits(limits);
    }
    if cgroup_v2 && !r.unified.is_empty() {
        res = res.unified(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    res.build().map_err(oci_err)
}

/// Everything [`build`] needs besides the request.
#[derive(Debug, Clone)]
pub struct SpecContext<'a> {
    pub id: &'a str,
    pub pod: &'a PodContext,
    pub image: &'a ImageConfig,
    pub user: &'a ResolvedUser,
    pub rootfs: &'a Path,
    pub cgroups_path: String,
    pub seccomp_root: &'a Path,
    /// The lowest oom_score_adj crid may give (its own, without CAP_SYS_RESOURCE).
    pub min_oom_score_adj: i64,
    pub cgroup_v2: bool,
    /// `process.apparmorProfile` (see `container::apparmor`).
    pub apparmor_profile: Option<String>,
}

fn namespace(
    typ: LinuxNamespaceType,
    mode: &NsSource,
) -> Result<Option<oci_spec::runtime::LinuxNamespace>, SandboxError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    Ok(match mode {
        NsSource::Host => None,
        NsSource::New => Some(b.build().map_err(oci_err)?),
        NsSource::Join(p) => Some(b.path(p.clone()).build().map_err(oci_err)?),
    })
}

/// Builds the OCI spec of a validated request.
/// The OCI rlimits of `limits`; an unknown kind is `InvalidArgument`.
fn rlimits(limits: &[Rlimit]) -> Result<Vec<PosixRlimit>, SandboxError> {
    limits
        .iter()
        .map(|l| {
            let typ: PosixRlimitType = serde_json::from_value(serde_json::json!(l.kind))
                .map_err(|_| invalid(format!("unknown rlimit {:?}", l.kind)))?;
            PosixRlimitBuilder::default()
                .typ(typ)
                .hard(l.hard)
                .soft(l.soft)
                .build()
                .map_err(oci_err)
        })
        .collect()
}

/// The OCI hooks of `hooks`; a hook path must be absolute.
fn oci_hooks(hooks: &OciHooks) -> Result<Hooks, SandboxError> {
    let list = |hs: &[OciHook]| -> Result<Option<Vec<Hook>>, SandboxError> {
        if hs.is_empty() {
            return Ok(None);
        }
        hs.iter()
            .map(|h| {
                if !h.path.starts_with('/') {
                    return Err(invalid(format!(
                        "OCI hook path {:?} is not absolute",
                        h.path
                    )));
                }
                let mut b = HookBuilder::default().path(&h.path);
                if !h.args.is_empty() {
                    b = b.args(h.args.clone());
                }
                if !h.env.is_empty() {
                    b = b.env(h.env.clone());
                }
                if let Some(t) = h.timeout {
                    b = b.timeout(t);
                }
                b.build().map_err(oci_err)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let mut out = Hooks::default();
    #[allow(deprecated)] // prestart: deprecated by OCI, still run by runc and sent by NRI
    out.set_prestart(list(&hooks.prestart)?);
    out.set_create_runtime(list(&hooks.create_runtime)?);
    out.set_create_container(list(&hooks.create_container)?);
    out.set_start_container(list(&hooks.start_container)?);
    out.set_poststart(list(&hooks.poststart)?);
    out.set_poststop(list(&hooks.poststop)?);
    Ok(out)
}

/// The process's working directory: the CRI's, else the image's `WorkingDir`, else `/`.
pub fn working_dir(config: &ContainerConfig, image: &ImageConfig) -> String {
    if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

pub fn build(config: &ContainerConfig, cx: &SpecContext<'_>) -> Result<Spec, SandboxError> {
    let s = &config.security;
    let privileged = s.privileged;
    let args = process_args(&config.command, &config.args, cx.image)?;
    let env = merge_env(cx.image.env.as_deref().unwrap_or_default(), &config.envs);
    let cwd = working_dir(config, cx.image);
    if !Path::new(&cwd).is_absolute() {
        return Err(invalid(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }
    let caps = capabilities(privileged, &s.add_capabilities, &s.drop_capabilities)?;
    let ambient: Capabilities = s
        .add_ambient_capabilities
        .iter()
        .filter(|c| !c.eq_ignore_ascii_case("ALL"))
        .map(|c| parse_capability(c))
        .collect::<Result<_, _>>()?;
    let mut with_ambient = caps.clone();
    with_ambient.extend(ambient.iter().copied());
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(with_ambient.clone())
        .effective(with_ambient.clone())
        .permitted(with_ambient.clone())
        .inheritable(ambient.clone())
        .ambient(ambient)
        .build()
        .map_err(oci_err)?;
    let mut user = UserBuilder::default()
        .uid(cx.user.uid)
        .gid(cx.user.gid)
        .additional_gids(cx.user.additional_gids.clone());
    if let Some(name) = &cx.user.username {
        user = user.username(name.clone());
    }
    let oom = config
        .resources
        .oom_score_adj
        .max(cx.min_oom_score_adj)
        .clamp(-1000, 1000) as i32;
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(user.build().map_err(oci_err)?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(s.no_new_privs)
        .oom_score_adj(oom);
    if let Some(profile) = &cx.apparmor_profile {
        process = process.apparmor_profile(profile.clone());
    }
    if !config.rlimits.is_empty() {
        process = process.rlimits(rlimits(&config.rlimits)?);
    }
    let process = process.build().map_err(oci_err)?;

    // Mounts: the defaults, then the pod's files, then the request's, parents first.
    let requested: HashSet<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/'))
        .collect();
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            if privileged {
                &["nosuid", "noexec", "nodev", "rw"]
            } else {
                &["nosuid", "noexec", "nodev", "ro"]
            },
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            if privileged {
                &["nosuid", "noexec", "nodev", "relatime", "rw"]
            } else {
                &["nosuid", "noexec", "nodev", "relatime", "ro"]
            },
        )?,
    ];
    if !requested.contains("/dev/shm") {
        match (&cx.pod.ipc, &cx.pod.shm_dir) {
            (NsSource::Host, _) => {
                mounts.push(bind("/dev/shm", Path::new("/dev/shm"), false, "rprivate")?)
            }
            (_, Some(dir)) if dir.is_dir() => {
                mounts.push(bind("/dev/shm", dir, false, "rprivate")?)
            }
            _ => mounts.push(mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            )?),
        }
    }
    for (dest, src) in [
        ("/etc/hosts", &cx.pod.hosts_file),
        ("/etc/resolv.conf", &cx.pod.resolv_conf),
        ("/etc/hostname", &cx.pod.hostname_file),
    ] {
        if let Some(src) = src.as_ref().filter(|p| p.is_file()) {
            if !requested.contains(dest) {
                mounts.push(bind(dest, src, s.readonly_rootfs, "rprivate")?);
            }
        }
    }
    let mut cri_mounts = config.mounts.clone();
    cri_mounts.sort_by_key(|m| Path::new(&m.container_path).components().count());
    let mut rootfs_propagation = None;
    for m in &cri_mounts {
        let host = Path::new(&m.host_path);
        if std::fs::symlink_metadata(host).is_err() {
            return Err(invalid(format!(
                "mount host path {:?} does not exist",
                m.host_path
            )));
        }
        let propagation = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => {
                rootfs_propagation.get_or_insert("rslave");
                "rslave"
            }
            Propagation::Bidirectional => {
                rootfs_propagation = Some("rshared");
                "rshared"
            }
        };
        let mut mount = bind(&m.container_path, host, m.readonly, propagation)?;
        let mut options = mount.options().clone().unwrap_or_default();
        if m.recursive_readonly {
            options.push("rro".into());
        }
        // crid mounts image volumes nodev and nosuid; runc's read-only remount must repeat
        // them, or a user namespace (where they are locked) refuses it.
        if m.image.is_some() {
            options.extend(["nodev".into(), "nosuid".into()]);
        }
        mount.set_options(Some(options));
        mounts.push(mount);
    }

    // Namespaces.
    let pid_mode = s.pid.clone().unwrap_or_else(|| cx.pod.pid.clone());
    let user = match &cx.pod.userns {
        Some(u) => NsSource::Join(u.path.clone()),
        None => NsSource::Host,
    };
    let namespaces = [
        // runc joins the user namespace first: it owns the pod's others.
        namespace(LinuxNamespaceType::User, &user)?,
        namespace(LinuxNamespaceType::Mount, &NsSource::New)?,
        namespace(LinuxNamespaceType::Network, &cx.pod.network)?,
        namespace(LinuxNamespaceType::Ipc, &cx.pod.ipc)?,
        namespace(LinuxNamespaceType::Uts, &cx.pod.uts)?,
        namespace(LinuxNamespaceType::Pid, &pid_mode)?,
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();

    // Devices.
    let mut device_rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(oci_err)?,
    ];
    let mut devices = Vec::new();
    for d in &config.devices {
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| invalid(format!("device {:?}: {e}", d.host_path)))?;
        let typ = device_type(&meta)
            .ok_or_else(|| invalid(format!("{:?} is not a device", d.host_path)))?;
        let rdev = meta.rdev();
        let (major, minor) = (
            nix::sys::stat::major(rdev) as i64,
            nix::sys::stat::minor(rdev) as i64,
        );
        devices.push(
            LinuxDeviceBuilder::default()
                .path(d.container_path.clone())
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(oci_err)?,
        );
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            &d.permissions
        };
        device_rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(perms)
                .build()
                .map_err(oci_err)?,
        );
    }
    if privileged {
        // A privileged container sees the host's devices, as with containerd and Docker (the
        // device cgroup rule above already allows them all).
        for d in host_devices() {
            if !devices.iter().any(|x| x.path() == d.path()) {
                devices.push(d);
            }
        }
    }
    let mut resources = linux_resources(&config.resources, cx.cgroup_v2)?;
    resources.set_devices(Some(device_rules));

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(cx.cgroups_path.clone())
        .devices(devices)
        .sysctl(
            cx.pod
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    if !privileged {
        let masked = if s.masked_paths.is_empty() {
            DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect()
        } else {
            s.masked_paths.clone()
        };
        let readonly = if s.readonly_paths.is_empty() {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect()
        } else {
            s.readonly_paths.clone()
        };
        linux = linux.masked_paths(masked).readonly_paths(readonly);
    }
    if let Some(p) = rootfs_propagation {
        linux = linux.rootfs_propagation(p);
    }
    if let Some(u) = &cx.pod.userns {
        // runc wants the maps of a user namespace it joins too (it chowns what it makes for
        // the container's root to them).
        linux = linux
            .uid_mappings(id_mappings(&u.mappings.uid)?)
            .gid_mappings(id_mappings(&u.mappings.gid)?);
    }
    if let Some(profile) = seccomp(config, cx.seccomp_root, &with_ambient)? {
        linux = linux.seccomp(profile);
    }

    let mut annotations: BTreeMap<String, String> = config.annotations.clone();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        config.name.clone(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), cx.pod.id.clone());

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path(cx.rootfs)
                .readonly(s.readonly_rootfs)
                .build()
                .map_err(oci_err)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux.build().map_err(oci_err)?)
        .annotations(
            annotations
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .map_err(oci_err)?;
    if !config.hooks.is_empty() {
        spec.set_hooks(Some(oci_hooks(&config.hooks)?));
    }
    if cx.pod.uts == NsSource::New && !cx.pod.hostname.is_empty() {
        spec.set_hostname(Some(cx.pod.hostname.clone()));
    } else {
        spec.set_hostname(None);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::MountSpec;
    use crate::container::validate;

    fn user(uid: u32, gid: u32) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: vec![],
            username: None,
        }
    }

    /// Container `c1` of `pod`: rootfs `/r/rootfs`, cgroup `/crid/c1`, profiles under `/s`.
    fn context<'a>(
        pod: &'a PodContext,
        image: &'a ImageConfig,
        user: &'a ResolvedUser,
    ) -> SpecContext<'a> {
        SpecContext {
            id: "c1",
            pod,
            image,
            user,
            rootfs: Path::new("/r/rootfs"),
            cgroups_path: "/crid/c1".into(),
            seccomp_root: Path::new("/s"),
            min_oom_score_adj: 0,
            cgroup_v2: false,
            apparmor_profile: None,
        }
    }

    fn img(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: (!entry.is_empty()).then(|| entry.iter().map(|s| s.to_string()).collect()),
            cmd: (!cmd.is_empty()).then(|| cmd.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_merge_like_kubernetes() {
        let image = img(&["/ep"], &["c1", "c2"]);
        assert_eq!(
            process_args(&[], &[], &image).unwrap(),
            v(&["/ep", "c1", "c2"])
        );
        assert_eq!(
            process_args(&v(&["/cmd"]), &[], &image).unwrap(),
            v(&["/cmd"])
        );
        assert_eq!(
            process_args(&[], &v(&["a"]), &image).unwrap(),
            v(&["/ep", "a"])
        );
        assert_eq!(
            process_args(&v(&["/cmd"]), &v(&["a"]), &image).unwrap(),
            v(&["/cmd", "a"])
        );
        let image = img(&[], &["sh"]);
        assert_eq!(process_args(&[], &[], &image).unwrap(), v(&["sh"]));
        assert_eq!(process_args(&[], &v(&["x"]), &image).unwrap(), v(&["x"]));
        assert!(process_args(&[], &[], &img(&[], &[])).is_err());
    }

    #[test]
    fn env_overrides_by_key() {
        let env = merge_env(
            &v(&["PATH=/bin", "A=1", "B=2"]),
            &[("A".into(), "x=y".into()), ("C".into(), "3".into())],
        );
        assert_eq!(env, v(&["PATH=/bin", "A=x=y", "B=2", "C=3"]));
        assert!(merge_env(&[], &[])[0].starts_with("PATH="));
    }

    #[test]
    fn spec_has_the_expected_shape() {
        let pod = PodContext {
            id: "pod1".into(),
            network: NsSource::Join("/run/netns/x".into()),
            ipc: NsSource::New,
            uts: NsSource::New,
            pid: NsSource::New,
            hostname: "h".into(),
            ..Default::default()
        };
        let mut config = ContainerConfig {
            name: "c".into(),
            args: v(&["echo", "hi"]),
            ..Default::default()
        };
        config.resources.memory_limit_in_bytes = 64 << 20;
        config.resources.oom_score_adj = -998;
        config.security.seccomp = SeccompProfile::RuntimeDefault;
        config.security.readonly_rootfs = true;
        let image = ImageConfig::parse(r#"{"config":{"Env":["PATH=/bin"],"Cmd":["sh"]}}"#).unwrap();
        let user = user(1, 2);
        let cx = context(&pod, &image, &user);
        let spec = build(&config, &cx).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(json["process"]["oomScoreAdj"], 0);
        assert_eq!(json["process"]["user"]["uid"], 1);
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["hostname"], "h");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/netns/x")
        );
        assert!(json["linux"]["maskedPaths"].as_array().unwrap().len() > 5);
        assert!(json["process"].get("apparmorProfile").is_none());
        let cx = SpecContext {
            apparmor_profile: Some("crid-default".into()),
            ..cx
        };
        let json = serde_json::to_value(build(&config, &cx).unwrap()).unwrap();
        assert_eq!(json["process"]["apparmorProfile"], "crid-default");
        // Privileged: no seccomp filter, not even the Localhost profile it names.
        config.security.privileged = true;
        config.security.seccomp = SeccompProfile::Localhost("/no/such/profile.json".into());
        let json = serde_json::to_value(build(&config, &cx).unwrap()).unwrap();
        assert!(json["linux"].get("seccomp").is_none(), "{}", json["linux"]);
        // A recursive read-only mount gets runc's `rro` on top of `ro`.
        config.mounts.push(MountSpec {
            host_path: "/tmp".into(),
            container_path: "/rro".into(),
            readonly: true,
            recursive_readonly: true,
            ..Default::default()
        });
        let json = serde_json::to_value(build(&config, &cx).unwrap()).unwrap();
        let rro = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/rro")
            .unwrap();
        assert_eq!(
            rro["options"],
            serde_json::json!(["rbind", "rprivate", "ro", "rro"])
        );
        // No user namespace unless the pod has one.
        assert!(json.pointer("/linux/uidMappings").is_none());
        assert!(!ns.iter().any(|n| n["type"] == "user"));
        // OCI hooks and rlimits (from node plugins) reach the spec; bad ones are refused.
        assert!(json.get("hooks").is_none());
        config.hooks.create_container.push(OciHook {
            path: "/usr/local/bin/hook".into(),
            args: vec!["hook".into(), "create".into()],
            timeout: Some(5),
            ..Default::default()
        });
        config.rlimits.push(Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            hard: 4096,
            soft: 1024,
        });
        let json = serde_json::to_value(build(&config, &cx).unwrap()).unwrap();
        assert_eq!(
            json["hooks"]["createContainer"][0]["path"],
            "/usr/local/bin/hook"
        );
        assert_eq!(json["hooks"]["createContainer"][0]["timeout"], 5);
        assert!(json["hooks"].get("poststop").is_none());
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}])
        );
        config.rlimits[0].kind = "RLIMIT_BOGUS".into();
        assert!(matches!(
            build(&config, &cx),
            Err(SandboxError::InvalidArgument { .. })
        ));
        config.rlimits.clear();
        config.hooks.poststop.push(OciHook {
            path: "relative".into(),
            ..Default::default()
        });
        assert!(matches!(
            build(&config, &cx),
            Err(SandboxError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn a_pod_user_namespace_is_joined_with_its_maps() {
        use crate::container::config::PodUsernsJoin;
        use crate::pod::{IdMapping, NsMode, PodUserns, UsernsOptions};
        let map = IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100_000,
        };
        let pod = PodContext {
            network: NsSource::Join("/s/netns/p".into()),
            ipc: NsSource::Join("/s/ipcns/p".into()),
            uts: NsSource::Join("/s/utsns/p".into()),
            userns: Some(PodUsernsJoin {
                path: "/s/userns/p".into(),
                mappings: PodUserns { uid: map, gid: map },
            }),
            ..Default::default()
        };
        let mut config = ContainerConfig {
            name: "c".into(),
            args: v(&["cat", "/proc/self/uid_map"]),
            ..Default::default()
        };
        let image = ImageConfig::parse(r#"{"config":{}}"#).unwrap();
        let user = user(0, 0);
        let cx = context(&pod, &image, &user);
        let json = serde_json::to_value(build(&config, &cx).unwrap()).unwrap();
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns[0]["type"], "user");
        assert_eq!(ns[0]["path"], "/s/userns/p");
        let expected = serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 100000}]);
        assert_eq!(json["linux"]["uidMappings"], expected);
        assert_eq!(json["linux"]["gidMappings"], expected);

        // kubelet repeats the pod's options on the container: the same passes, others do not.
        let root = Path::new("/s");
        config.security.userns = Some(UsernsOptions {
            mode: NsMode::Pod,
            uids: vec![map],
            gids: vec![map],
        });
        assert!(validate::request(&config, &pod, root).is_ok());
        config.security.userns.as_mut().unwrap().uids[0].host_id = 2000;
        let e = validate::request(&config, &pod, root).unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument);
        config.security.userns = Some(UsernsOptions {
            mode: NsMode::Node,
            ..Default::default()
        });
        assert!(validate::request(&config, &pod, root).is_err());
        let host_pod = PodContext::default();
        assert!(validate::request(&config, &host_pod, root).is_ok());
    }
}
