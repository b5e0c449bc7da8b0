//! The container record, the one piece of state the manager and every backend share, and
//! small helpers both sides use. Depends on no other file of `container` but its
//! configuration types.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cgroups;
use super::config::{ContainerConfig, ImageInfo, PodContext};
use crate::SandboxError;
use crate::vm::ExitMapping;
use crate::vm::accel::AccelDecision;
use crate::vm::guestfiles::MountNote;
use crate::vm::launch::{self, VmRequest};

/// ExecSync output limit per stream.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// CRI container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// What runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Backend {
    /// `runc run --detach` under the monitor.
    #[default]
    Runc,
    /// An arbitrary process under the monitor (a VMM), signalled directly.
    Process,
}

/// Everything crid knows about a container; persisted as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub pod: PodContext,
    pub image: ImageInfo,
    pub backend: Backend,
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 when not yet.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The container's init process as seen from the host.
    pub pid: i32,
    pub log_path: Option<PathBuf>,
    pub cgroups_path: String,
    /// The signal `StopContainer` sends first.
    pub stop_signal: String,
    /// The VM backend's own state, for unikernel containers (`Backend::Process`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmState>,
    /// The OCI runtime binary that runs it (`Backend::Runc`), chosen at create time from the
    /// pod's RuntimeClass handler; empty in records written before runtimes were selectable
    /// (runc).
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub oci_runtime: PathBuf,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// Usage of one container.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerStats {
    pub timestamp: i64,
    pub cgroup: cgroups::CgroupStats,
    pub writable_bytes: u64,
    pub writable_inodes: u64,
}

impl ContainerRecord {
    /// A container just created by `backend`: state Created, created now, no process and no
    /// exit yet, no cgroup, VM state or OCI runtime (a backend sets those it has).
    pub fn created(
        backend: Backend,
        id: String,
        config: ContainerConfig,
        pod: PodContext,
        image: ImageInfo,
        log_path: Option<PathBuf>,
        stop_signal: String,
    ) -> ContainerRecord {
        ContainerRecord {
            pod_id: pod.id.clone(),
            backend,
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path,
            cgroups_path: String::new(),
            stop_signal,
            vm: None,
            oci_runtime: PathBuf::new(),
            id,
            config,
            pod,
            image,
        }
    }
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Creates (or opens) a container's log file as its monitor will, so that a full disk or an
/// unusable log directory is the request's error (RESOURCE_EXHAUSTED on ENOSPC) rather than a
/// line in the monitor's log.
pub fn touch_log(path: Option<&Path>) -> Result<(), SandboxError> {
    let Some(path) = path else { return Ok(()) };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| SandboxError::io(path, e))?;
    Ok(())
}

pub fn runtime_err(op: &str, reason: impl Into<String>) -> SandboxError {
    SandboxError::Runtime {
        op: op.into(),
        reason: reason.into(),
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Some(Ok(b))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    a.dev() != b.dev()
}

/// What crid keeps about a VM container, in its record (`ContainerRecord::vm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub request: VmRequest,
    pub accel: AccelDecision,
    /// Set once started.
    pub exit_mapping: Option<ExitMapping>,
    pub argv: Vec<String>,
    pub guest_cmdline: String,
    /// How QEMU's `pc` machine boots the guest (set once started, from the launch plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<crate::vm::qemu::Firmware>,
    /// How each CRI mount (and the pod's `/etc/hosts` and `/etc/resolv.conf`) reached the
    /// guest, or why it did not.
    #[serde(default)]
    pub mount_notes: Vec<MountNote>,
    /// urunc's keys that pod or container annotations set over the image's (`request.info`
    /// holds the result): key → `VALUE (pod annotation)` or `VALUE (container annotation)`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotation_keys: BTreeMap<String, String>,
}

/// The container exit code for the code the monitor recorded.
pub fn exit_code(vm: Option<&VmState>, code: i32) -> i32 {
    match vm.and_then(|s| s.exit_mapping) {
        Some(m) => launch::container_exit_code(m, code),
        None => code,
    }
}
