//! Image volumes (Kubernetes' image volume source, KEP 4639): an image crid holds, mounted
//! read-only into a container.
//!
//! Each image volume of a container is a read-only overlay of the image's shared layer
//! directories at `<root>/containers/<id>/volumes/<n>` (`nodev`, `nosuid`; no upper layer, so
//! nothing can write to the layers). The container gets a read-only bind of that overlay, or of
//! the directory `sub_path` names inside it, like any other CRI mount. In a pod with a user
//! namespace the layers are id-mapped through it first, as for the rootfs, so the image's files
//! belong to the container's root. The mounts go with the container's directory when it is
//! removed or its creation fails.

use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::config::{ImageVolume, MountSpec, PodUsernsJoin};
use crate::SandboxError;
use crate::error::invalid;

/// The directory under a container's directory that holds its image volumes.
const VOLUMES: &str = "volumes";

/// `e` as the failure of the image volume at `m` (the message kubelet recognises).
fn failed(m: &MountSpec, e: SandboxError) -> SandboxError {
    SandboxError::ImageVolume {
        container_path: m.container_path.clone(),
        source: Box::new(e),
    }
}

/// Checks an image volume as the caller gave it, before anything is mounted.
pub fn validate(m: &MountSpec, image: &ImageVolume) -> Result<(), SandboxError> {
    check(m, image).map_err(|e| failed(m, e))
}

fn check(m: &MountSpec, image: &ImageVolume) -> Result<(), SandboxError> {
    if !m.host_path.is_empty() {
        return Err(invalid(format!(
            "host path {:?} given; an image volume takes none",
            m.host_path
        )));
    }
    if !m.readonly {
        return Err(invalid("an image volume must be read-only"));
    }
    if image.reference.is_empty() {
        return Err(invalid("no image named"));
    }
    let sub = Path::new(&image.sub_path);
    if sub
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid(format!(
            "image sub path {:?} escapes the image: it must be relative, without `..`",
            image.sub_path
        )));
    }
    Ok(())
}

/// Mounts the container's image volumes under `dir` (the container's directory) and points
/// each one's `host_path` at what the container gets: the image root or its sub path.
pub fn mount_all(
    dir: &Path,
    mounts: &mut [MountSpec],
    userns: Option<&PodUsernsJoin>,
) -> Result<(), SandboxError> {
    let volumes = dir.join(VOLUMES);
    for (n, m) in mounts.iter_mut().enumerate() {
        let Some(image) = &m.image else { continue };
        let target = volumes.join(n.to_string());
        let source = mount_image(&volumes, &target, n, &image.layer_dirs, userns).and_then(|()| {
            sub_dir(&target, &image.sub_path)
                .map_err(|reason| invalid(format!("image sub path {:?}: {reason}", image.sub_path)))
        });
        match source {
            Ok(source) => m.host_path = source.to_string_lossy().into_owned(),
            Err(e) => return Err(failed(m, e)),
        }
    }
    Ok(())
}

/// Detaches every image volume mounted under the container directory `dir`, and any id-mapped
/// layer a crash left under `<n>.idmap/` (writable binds of the shared layers: the directory's
/// recursive removal must never reach them). Bounded; fine to repeat, and when there are none.
pub fn unmount_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join(VOLUMES)) else {
        return;
    };
    let detach = |path: &Path| {
        for _ in 0..4 {
            if nix::mount::umount2(path, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "idmap") {
            for layer in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                detach(&layer.path());
            }
        } else {
            detach(&path);
        }
    }
}

/// A read-only overlay of `layers` (bottom first) at `target`, id-mapped through `userns`.
fn mount_image(
    volumes: &Path,
    target: &Path,
    n: usize,
    layers: &[PathBuf],
    userns: Option<&PodUsernsJoin>,
) -> Result<(), SandboxError> {
    std::fs::create_dir_all(target).map_err(|e| SandboxError::io(target, e))?;
    let mut lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    let mapped = match userns {
        Some(u) => {
            super::userns_volume::idmap_layers(&volumes.join(format!("{n}.idmap")), &lowers, u)?
        }
        None => Vec::new(),
    };
    if !mapped.is_empty() {
        lowers = mapped.clone();
    }
    let result = mount_overlay(volumes, target, n, lowers);
    // The overlay keeps its own references to the id-mapped layers.
    for m in &mapped {
        let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(m);
    }
    result
}

fn mount_overlay(
    volumes: &Path,
    target: &Path,
    n: usize,
    mut lowers: Vec<PathBuf>,
) -> Result<(), SandboxError> {
    // overlayfs needs two lower layers when it has no upper one.
    if lowers.len() < 2 {
        let empty = volumes.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| SandboxError::io(&empty, e))?;
        lowers.push(empty);
    }
    for l in &lowers {
        let s = l.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(SandboxError::Runtime {
                op: "mount image volume".into(),
                reason: format!("layer path {s:?} contains ',' or ':'"),
            });
        }
    }
    let lowerdir = super::overlay::lowerdir(&lowers, &volumes.join(format!("{n}.links")))?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .map_err(|e| SandboxError::Runtime {
        op: "mount image volume".into(),
        reason: format!("overlay on {}: {e}", target.display()),
    })
}

/// The directory `sub` names inside `root`, resolved by the kernel without leaving `root`: a
/// `..` or a symlink (absolute or relative) that would lead out of the image is refused, not
/// followed on the host.
fn sub_dir(root: &Path, sub: &str) -> Result<PathBuf, String> {
    if sub.is_empty() {
        return Ok(root.to_owned());
    }
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the image root: {e}"))?;
    let fd = rustix::fs::openat2(
        &root_fd,
        sub,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => "does not exist in the image".to_owned(),
        rustix::io::Errno::NOTDIR => "is not a directory".to_owned(),
        rustix::io::Errno::XDEV => "leads out of the image".to_owned(),
        e => e.to_string(),
    })?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| format!("cannot read where it resolved to: {e}"))?;
    // RESOLVE_BENEATH guarantees it; checked again because the path is handed to runc.
    if !path.starts_with(root) {
        return Err("leads out of the image".to_owned());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(sub_path: &str) -> (MountSpec, ImageVolume) {
        let image = ImageVolume {
            reference: "busybox".into(),
            sub_path: sub_path.into(),
            ..Default::default()
        };
        let m = MountSpec {
            container_path: "/mnt".into(),
            readonly: true,
            image: Some(image.clone()),
            ..Default::default()
        };
        (m, image)
    }

    #[test]
    fn requests_are_checked_before_mounting() {
        for ok in ["", "etc", "usr/share", "./etc"] {
            let (m, i) = volume(ok);
            assert!(validate(&m, &i).is_ok(), "{ok:?}");
        }
        for bad in ["/etc", "../x", "etc/../../x", "a/.."] {
            let (m, i) = volume(bad);
            let e = validate(&m, &i).unwrap_err();
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{bad:?}");
            assert!(e.to_string().starts_with("ImageVolumeMountFailed"), "{e}");
        }
        let (mut m, i) = volume("");
        m.readonly = false;
        assert!(validate(&m, &i).is_err(), "a writable image volume");
        let (mut m, i) = volume("");
        m.host_path = "/etc".into();
        assert!(
            validate(&m, &i).is_err(),
            "an image volume with a host path"
        );
        let (m, mut i) = volume("");
        i.reference.clear();
        assert!(
            validate(&m, &i).is_err(),
            "an image volume without an image"
        );
    }

    #[test]
    fn sub_paths_resolve_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().canonicalize().unwrap();
        std::fs::create_dir_all(r.join("etc/ssl")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../", r.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("ssl", r.join("etc/inner")).unwrap();
        assert_eq!(sub_dir(&r, "").unwrap(), r);
        assert_eq!(sub_dir(&r, "etc").unwrap(), r.join("etc"));
        assert_eq!(sub_dir(&r, "etc/inner").unwrap(), r.join("etc/ssl"));
        let err = |sub: &str| sub_dir(&r, sub).unwrap_err();
        assert_eq!(err("missing"), "does not exist in the image");
        assert_eq!(err("etc/passwd"), "is not a directory");
        assert_eq!(err("abs"), "leads out of the image");
        assert_eq!(err("etc/up"), "leads out of the image");
    }
}
