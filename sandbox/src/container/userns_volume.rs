//! Volumes of a container in a pod with its own user namespace. runc (1.1) bind-mounts a
//! volume from inside the container's user namespace, where crid's root-owned directories are
//! "others" and kubelet's `/var/lib/kubelet` (0700 on most hosts) cannot even be entered; and
//! a plain bind shows the files' host owners, unmapped there, as the overflow id. So crid
//! mounts each host-path volume itself first, under the container's directory
//! (`mounts/<n>`), id-mapped through the pod's user namespace (files owned by id N on disk are
//! the container's id N, as Kubernetes expects of user-namespaced pods' volumes), and hands
//! runc that copy. A file system that cannot be id-mapped is bound as it is (same tree, owners
//! unmapped). Volumes with mount propagation keep the host path: a copy of the tree would not
//! receive the host's later mounts.

use std::path::{Path, PathBuf};

use nix::mount::MntFlags;

use super::config::{MountSpec, PodUsernsJoin, Propagation};
use crate::SandboxError;
use crate::sys::userns::{IDMAP_STEP, idmapped_bind};

const MOUNTS: &str = "mounts";

/// The container's mounts with each private host-path volume replaced by its id-mapped copy
/// under `<dir>/mounts/<n>` (mounted here). On failure, what was mounted is left for
/// [`unmount_all`] (the container's directory is discarded).
pub fn mount_all(
    dir: &Path,
    mounts: &[MountSpec],
    userns: &PodUsernsJoin,
) -> Result<Vec<MountSpec>, SandboxError> {
    let base = dir.join(MOUNTS);
    let mut out = mounts.to_vec();
    for (n, m) in out.iter_mut().enumerate() {
        if m.image.is_some() || m.propagation != Propagation::Private {
            continue;
        }
        let source = PathBuf::from(&m.host_path);
        // A missing source is the spec builder's InvalidArgument.
        let Ok(meta) = std::fs::metadata(&source) else {
            continue;
        };
        let target = base.join(n.to_string());
        std::fs::create_dir_all(&base).map_err(|e| SandboxError::io(&base, e))?;
        let made = if meta.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| SandboxError::io(&target, e))?;
        match idmapped_bind(&source, &target, Some(&userns.path), true) {
            Ok(()) => {}
            Err(SandboxError::UserNamespace {
                step, source: e, ..
            }) if step == IDMAP_STEP && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(volume = %m.host_path, "file system cannot be id-mapped; bound as it is");
                idmapped_bind(&source, &target, None, true)?;
            }
            Err(e) => return Err(e),
        }
        m.host_path = target.to_string_lossy().into_owned();
    }
    Ok(out)
}

/// Detaches every volume copy and id-mapped layer under the container directory `dir`; false
/// if one is still mounted, in which case `dir` must not be removed (a recursive removal would
/// reach into the volume).
pub fn unmount_all(dir: &Path) -> bool {
    let mut clear = true;
    for sub in [MOUNTS, "idmap"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            // Until the kernel says it is not a mount point (EINVAL) or gone (ENOENT).
            let unmounted = (0..8).any(|_| {
                matches!(
                    nix::mount::umount2(&path, MntFlags::MNT_DETACH),
                    Err(nix::Error::EINVAL | nix::Error::ENOENT)
                )
            });
            if !unmounted {
                tracing::error!(path = %path.display(), "a volume copy is still mounted; keeping the container directory");
                clear = false;
            }
        }
    }
    clear
}

/// Each layer id-mapped through the pod's user namespace at `<base>/<n>`; on failure none
/// stays mounted. The caller detaches them once its overlay holds them.
pub(super) fn idmap_layers(
    base: &Path,
    layers: &[PathBuf],
    userns: &PodUsernsJoin,
) -> Result<Vec<PathBuf>, SandboxError> {
    let mut mapped = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let target = base.join(i.to_string());
        let done = std::fs::create_dir_all(&target)
            .map_err(|e| SandboxError::io(&target, e))
            .and_then(|()| idmapped_bind(layer, &target, Some(&userns.path), false));
        if let Err(e) = done {
            for m in mapped.iter().chain([&target]) {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(m);
            }
            return Err(e);
        }
        mapped.push(target);
    }
    Ok(mapped)
}
