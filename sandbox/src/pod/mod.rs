//! Pod sandboxes without a pause container: each pod is a set of pinned namespaces (network,
//! IPC, UTS), a directory of files its containers bind-mount (hostname, hosts, resolv.conf,
//! a 64 MiB shm tmpfs), a CNI attachment and a record on disk.
//!
//! [`PodManager`] is the one entry point: `run`, `stop`, `remove`, `get`, `list`. Name
//! reservation follows kubelet's retry rule: a duplicate (name, namespace, uid, attempt) gets
//! `AlreadyExists`, unless the first request is still creating the pod or gave up waiting
//! for it, in which case the duplicate waits and gets the same pod.

pub mod files;
mod manager;
pub mod metrics;
pub mod store;
pub mod validate;
mod warm;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use manager::{PodManager, PodSettings};

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";

/// The cgroup driver pods' cgroup parents are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

/// The name the configuration and the CRI status use (serde's too).
impl std::fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        })
    }
}

/// How a pod's namespace of one kind is provided (CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NsMode {
    /// One namespace for the whole pod.
    #[default]
    Pod,
    /// One per container (PID only).
    Container,
    /// The host's.
    Node,
    /// Another container's (PID only).
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    /// The container whose PID namespace `Target` refers to.
    pub target_id: String,
    /// The user namespace asked for; `None` is the host's (`NamespaceMode::NODE`).
    #[serde(default)]
    pub user: Option<UsernsOptions>,
}

/// One range of a user namespace's id map: `length` ids from `container_id` inside are
/// `host_id`.. outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

/// CRI `UserNamespace` as asked for, before [`validate::user_namespace`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsOptions {
    pub mode: NsMode,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

/// A pod's own user namespace: its one uid range and one gid range, each mapping container id
/// 0. Every container of the pod joins it; see `sys::userns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUserns {
    pub uid: IdMapping,
    pub gid: IdMapping,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// The pod's identity as kubelet names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// What kind of containers a pod may hold, decided by its runtime handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodKind {
    /// Ordinary containers run by runc.
    Runc,
    /// May also hold unikernel containers run as VMs.
    Unikernel,
}

/// A `RunPodSandbox` request in domain terms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodConfig {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: DnsConfig,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub namespaces: NamespaceOptions,
    pub runtime_handler: String,
    pub privileged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

/// Where a pod's pieces are. `None` for a namespace means the host's is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPaths {
    /// `<state>/pods/<id>`.
    pub dir: PathBuf,
    /// The pod's user namespace (`<state>/userns/<id>`), which owns its other namespaces.
    #[serde(default)]
    pub userns: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    /// The pod's `/dev/shm`: a tmpfs under `dir`, or the host's `/dev/shm` for host-IPC pods.
    pub shm: PathBuf,
}

/// The process that holds a pod-wide PID namespace (`NamespaceMode::POD` for PID): the init
/// of that namespace (`monitor::pidns`). Recorded with [`PodManager::set_pid_holder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidHolder {
    pub pid: u32,
    /// Its start time (`/proc/PID/stat`), so a reused pid is never taken for it; 0 (records of
    /// older versions, whose holder was a container) never matches.
    #[serde(default)]
    pub start_time: u64,
}

/// Everything crid knows about a pod; persisted as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: PodConfig,
    pub kind: PodKind,
    pub state: PodState,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub paths: PodPaths,
    /// Pod IPs, the primary first.
    pub ips: Vec<String>,
    /// The CNI network the pod is attached to, while it is.
    pub network: Option<String>,
    /// The pod's interface in its network namespace, as the CNI result names it (else the
    /// `CNI_IFNAME` crid passed, [`POD_IFNAME`]); `None` for a pod never attached to a CNI
    /// network, and in records of older versions, whose interface was [`POD_IFNAME`].
    #[serde(default)]
    pub ifname: Option<String>,
    pub cgroup_driver: CgroupDriver,
    /// The cgroup parent for the pod's containers (`config.cgroup_parent`, validated for
    /// `cgroup_driver`); empty means the runtime's default.
    pub cgroup_parent: String,
    /// PID namespace mode; `Pod` asks the container backend for a namespace holder.
    pub pid_mode: NsMode,
    pub pid_holder: Option<PidHolder>,
    /// The pod's user namespace mappings (pinned at `paths.userns`); `None`: the host's.
    #[serde(default)]
    pub userns: Option<PodUserns>,
}

impl PodRecord {
    pub fn host_network(&self) -> bool {
        self.config.namespaces.network == NsMode::Node
    }

    /// The primary IP, empty for host-network pods.
    pub fn primary_ip(&self) -> &str {
        self.ips.first().map(String::as_str).unwrap_or_default()
    }
}

/// `ListPodSandbox` filter in domain terms.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// Matches ids starting with this.
    pub id_prefix: String,
    pub state: Option<PodState>,
    /// Every pair must be among the pod's labels.
    pub labels: BTreeMap<String, String>,
}

impl PodFilter {
    pub fn matches(&self, r: &PodRecord) -> bool {
        r.id.starts_with(&self.id_prefix)
            && self.state.is_none_or(|s| s == r.state)
            && self
                .labels
                .iter()
                .all(|(k, v)| r.config.labels.get(k) == Some(v))
    }
}
