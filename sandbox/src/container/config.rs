//! The container request as the sandbox crate sees it (crid converts CRI messages into these),
//! and the facts about the pod a container joins.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a container gets one of its namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NsSource {
    /// A new namespace of its own.
    #[default]
    New,
    /// The host's namespace.
    Host,
    /// The namespace bind-mounted (or held by a process) at this path.
    Join(PathBuf),
}

/// What a container needs to know about its pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PodContext {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub network: NsSource,
    pub ipc: NsSource,
    pub uts: NsSource,
    /// The pod-wide PID namespace, when the pod shares one (`NamespaceMode::POD`) or the host's.
    pub pid: NsSource,
    pub hostname: String,
    /// Files to bind into the container when they exist.
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// The pod's shared `/dev/shm` (a tmpfs mount), when it has one.
    pub shm_dir: Option<PathBuf>,
    /// `PodSandboxConfig.log_directory`; container `log_path`s are relative to it.
    pub log_directory: Option<PathBuf>,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub privileged: bool,
    /// The pod's handler is one of `runtime.unikernel_handlers`.
    pub is_unikernel: bool,
    /// The pod's runtime handler (RuntimeClass), as given to `RunPodSandbox`.
    #[serde(default)]
    pub runtime_handler: String,
    /// The pod's own user namespace, which the container joins; `None`: the host's.
    #[serde(default)]
    pub userns: Option<PodUsernsJoin>,
    /// The pod's network interface as its CNI result names it; `None`: no CNI network, or a
    /// pod of an older version ([`crate::pod::POD_IFNAME`]).
    #[serde(default)]
    pub ifname: Option<String>,
    /// The pod's annotations under urunc's `com.urunc.unikernel.` prefix, which its unikernel
    /// containers take (the container module's private `unikernel_keys` applies them).
    #[serde(default)]
    pub unikernel_annotations: BTreeMap<String, String>,
}

/// A pod's user namespace as a container joins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUsernsJoin {
    /// Its pin.
    pub path: PathBuf,
    pub mappings: crate::pod::PodUserns,
}

/// Mount propagation of a CRI mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MountSpec {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Read-only all the way down, submounts included (runc's `rro`: `mount_setattr` with
    /// `AT_RECURSIVE`); needs `readonly` and private propagation.
    #[serde(default)]
    pub recursive_readonly: bool,
    pub propagation: Propagation,
    pub selinux_relabel: bool,
    /// Set for an image volume: the filesystem of an image crid holds, mounted read-only
    /// (`host_path` is empty in the request and filled in by crid when it mounts the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageVolume>,
}

/// An image mounted as a volume (Kubernetes' image volume source, KEP 4639).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageVolume {
    /// The image as the caller named it.
    pub reference: String,
    /// A directory inside the image to mount instead of its root; relative, "" for the root.
    pub sub_path: String,
    /// Filled in by crid from the image store: the image id (`PullImageResponse.image_ref`).
    #[serde(default)]
    pub image_id: String,
    /// Filled in by crid from the image store: the image's layer directories, bottom first.
    #[serde(default)]
    pub layer_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceSpec {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// (page size such as "2MB", limit in bytes).
    pub hugepage_limits: Vec<(String, u64)>,
    pub unified: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SeccompProfile {
    /// What the CRI calls unspecified; crid treats it as `Unconfined`, like containerd.
    #[default]
    Unconfined,
    RuntimeDefault,
    /// An absolute path to a JSON profile under the configured profile root.
    Localhost(String),
}

/// The AppArmor profile asked for (see `container::apparmor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AppArmorProfile {
    /// What the CRI calls unspecified, and `Unconfined`.
    #[default]
    Unconfined,
    RuntimeDefault,
    /// The name of a profile loaded on the host.
    Localhost(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SecurityContext {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub add_ambient_capabilities: Vec<String>,
    pub privileged: bool,
    /// PID namespace mode asked for this container: `New` (container), `Host` (node) or the
    /// pod's (target/pod modes resolve to a path by crid).
    pub pid: Option<NsSource>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    /// CRI `SupplementalGroupsPolicy` Strict: the image's `/etc/group` adds no groups.
    #[serde(default)]
    pub supplemental_groups_strict: bool,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: SeccompProfile,
    /// Records written before AppArmor was supported have none.
    #[serde(default)]
    pub apparmor: AppArmorProfile,
    /// The user namespace the request names (kubelet repeats the pod's); it must be the pod's.
    #[serde(default)]
    pub userns: Option<crate::pod::UsernsOptions>,
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    /// The image as the caller named it.
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub devices: Vec<DeviceSpec>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: Resources,
    pub security: SecurityContext,
    pub stop_signal: Option<String>,
    /// A pod infrastructure container of an older crid (the PID namespace holder was a pause
    /// container then; now it is `monitor::pidns`): still hidden from `ListContainers` and
    /// stopped last, so pods created before an upgrade stop and go cleanly.
    #[serde(default)]
    pub pod_infra: bool,
    /// OCI hooks runc runs for this container. Only node plugins (NRI) add them; a CRI
    /// request cannot.
    #[serde(default, skip_serializing_if = "OciHooks::is_empty")]
    pub hooks: OciHooks,
    /// POSIX resource limits of the container's process, from node plugins (NRI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
}

/// An OCI hook: a host program runc runs at one point of the container's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OciHook {
    /// Absolute path on the host.
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Seconds; `None`: runc's default.
    pub timeout: Option<i64>,
}

/// OCI hooks by the point they run at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OciHooks {
    pub prestart: Vec<OciHook>,
    pub create_runtime: Vec<OciHook>,
    pub create_container: Vec<OciHook>,
    pub start_container: Vec<OciHook>,
    pub poststart: Vec<OciHook>,
    pub poststop: Vec<OciHook>,
}

impl OciHooks {
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty()
            && self.create_runtime.is_empty()
            && self.create_container.is_empty()
            && self.start_container.is_empty()
            && self.poststart.is_empty()
            && self.poststop.is_empty()
    }
}

/// A POSIX resource limit, `kind` as OCI names it (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Rlimit {
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

/// The image a container runs, resolved by crid through the image store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ImageInfo {
    /// `sha256:...` image id.
    pub id: String,
    /// The reference to report (`ContainerStatus.image`).
    pub reference: String,
    /// The digested reference (`ContainerStatus.image_ref`).
    pub image_ref: String,
    /// Raw OCI image config JSON.
    pub config_json: String,
    /// Layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
    /// Set when the image is a unikernel artifact: the container runs as a VM.
    #[serde(default)]
    pub unikernel: Option<imagestore::UnikernelInfo>,
}
