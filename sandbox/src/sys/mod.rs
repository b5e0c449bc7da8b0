//! Kernel operations of pods: mounts and writes inside pinned namespaces, behind [`PodSys`] so
//! the pod manager can be tested over a fake; namespace creation itself is `cni::netns`, except
//! for pods with a user namespace (`userns`).

use std::io;
use std::path::{Path, PathBuf};

use cni::CniError;
use cni::netns::{self, NsKind};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::SandboxError;

pub mod userns;

pub use userns::UsernsPlan;

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Mounts a fresh tmpfs of `size_bytes` at `path` (created if missing), mode 1777, with
/// nosuid/nodev/noexec, as `/dev/shm` of a pod.
pub fn mount_shm(path: &Path, size_bytes: u64) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(|e| SandboxError::io(path, e))?;
    let data = format!("mode=1777,size={size_bytes}");
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| SandboxError::io(path, nix_io(e)))
}

/// Lazily unmounts whatever is mounted at `path`; nothing mounted is fine.
pub fn unmount(path: &Path) -> Result<(), SandboxError> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            // Stacked mounts: keep going until nothing is left.
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(SandboxError::io(path, nix_io(e))),
        }
    }
}

/// Writes `(path under /proc/sys, value)` pairs from inside the given namespaces (the files
/// under `/proc/sys/net` and the IPC ones resolve to the writer's namespaces).
pub fn write_sysctls(
    pins: &[(NsKind, PathBuf)],
    writes: Vec<(String, String)>,
) -> Result<(), SandboxError> {
    if writes.is_empty() {
        return Ok(());
    }
    netns::run_in(pins, move || {
        for (path, value) in &writes {
            std::fs::write(path, value.as_bytes())
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        }
        Ok(())
    })
    .map_err(SandboxError::Network)
}

/// The host's hostname (what host-network pods see); empty if it cannot be read.
pub fn node_hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether the file system holding `path` has no free blocks or no free inodes left (so a
/// failure that happened there is most likely ENOSPC, whatever a child process printed).
pub fn is_full(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() == 0 || s.files_available() == 0)
        .unwrap_or(false)
}

/// The bytes an unprivileged writer may still use on the file system holding `path`; `None`
/// when it cannot be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path)
        .ok()
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
}

/// Size and inodes of the file system holding `dir`: (bytes it can hold, inodes, free
/// inodes); zeros when it cannot be read.
pub fn fs_capacity(dir: &Path) -> (u64, u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => (
            s.blocks() * s.fragment_size(),
            s.files(),
            s.files_available(),
        ),
        Err(_) => (0, 0, 0),
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent)
        .map(|p| p.dev() != m.dev())
        .unwrap_or(false)
}

/// The kernel operations the pod manager needs, behind one narrow trait so its unit tests can
/// record them instead of needing root. [`HostSys`] is the real one.
pub trait PodSys: Send + Sync + 'static {
    /// New namespaces of the given kinds pinned at their paths; the hostname is set in the
    /// UTS namespace when given.
    fn create_namespaces(
        &self,
        pins: &[(NsKind, PathBuf)],
        hostname: Option<String>,
    ) -> Result<(), SandboxError>;
    /// A new user namespace (`plan`) owning new namespaces of the given kinds, all pinned; the
    /// hostname is set in the UTS namespace when given (see [`userns`]).
    fn create_user_namespaces(
        &self,
        plan: &UsernsPlan,
        pins: &[(NsKind, PathBuf)],
        hostname: Option<String>,
    ) -> Result<(), SandboxError> {
        let _ = (plan, pins, hostname);
        Err(SandboxError::Unimplemented {
            reason: "user namespaces are not supported here".into(),
        })
    }
    fn remove_pin(&self, path: &Path) -> Result<(), SandboxError>;
    fn is_pinned(&self, path: &Path) -> bool;
    fn mount_shm(&self, path: &Path, size_bytes: u64) -> Result<(), SandboxError>;
    fn unmount(&self, path: &Path) -> Result<(), SandboxError>;
    fn write_sysctls(
        &self,
        pins: &[(NsKind, PathBuf)],
        writes: Vec<(String, String)>,
    ) -> Result<(), SandboxError>;
}

/// The host's kernel, with the network namespaces it makes ahead of need.
#[derive(Debug, Clone, Default)]
pub struct HostSys {
    netns_pool: std::sync::Arc<netns::NetnsPool>,
}

impl PodSys for HostSys {
    fn create_namespaces(
        &self,
        pins: &[(NsKind, PathBuf)],
        hostname: Option<String>,
    ) -> Result<(), SandboxError> {
        let uts = pins
            .iter()
            .find(|(k, _)| *k == NsKind::Uts)
            .map(|(_, p)| p.clone());
        netns::create(&self.netns_pool, pins, move || {
            let (Some(h), Some(uts)) = (hostname, uts) else {
                return Ok(());
            };
            nix::unistd::sethostname(h).map_err(|e| CniError::NsSetup {
                step: "set hostname in UTS namespace",
                path: uts,
                source: nix_io(e),
            })
        })
        .map_err(SandboxError::Namespaces)
    }

    fn create_user_namespaces(
        &self,
        plan: &UsernsPlan,
        pins: &[(NsKind, PathBuf)],
        hostname: Option<String>,
    ) -> Result<(), SandboxError> {
        userns::create(plan, pins, hostname)
    }

    fn remove_pin(&self, path: &Path) -> Result<(), SandboxError> {
        netns::remove(path).map_err(SandboxError::Namespaces)
    }

    fn is_pinned(&self, path: &Path) -> bool {
        netns::is_pinned(path)
    }

    fn mount_shm(&self, path: &Path, size_bytes: u64) -> Result<(), SandboxError> {
        mount_shm(path, size_bytes)
    }

    fn unmount(&self, path: &Path) -> Result<(), SandboxError> {
        unmount(path)
    }

    fn write_sysctls(
        &self,
        pins: &[(NsKind, PathBuf)],
        writes: Vec<(String, String)>,
    ) -> Result<(), SandboxError> {
        write_sysctls(pins, writes)
    }
}
