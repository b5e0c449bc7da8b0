//! The root file system of a guest that mounts its container's root (urunc's `mountRootfs`),
//! built on the host as a runc container's is and shared with the guest as a directory: a
//! `linux` guest's over virtiofs ([`crate::vm::virtiofs`]), a `unikraft` guest's over QEMU's 9p
//! ([`crate::vm::ninep`]; its guest writes are limited to what QEMU's uid may write).
//!
//! At `StartContainer`: the image's layers as an overlay at `<container>/rootfs` (upper and work
//! directories next to it, as for runc; `nodev`, `nosuid`), then bind mounts (recursive,
//! `nodev`, `nosuid`; read-only where the CRI mount is) at their container paths: crid's
//! `/etc/crid` (read-only: `env`, the workload's environment as `export` lines, `process`, its
//! working directory, uid and gid, and `args`, its argv as a `set --` line: neither goes on the
//! kernel command line, which holds 2 KiB), the pod's `/etc/hosts` and `/etc/resolv.conf`, then the
//! CRI mounts in their order. A mount target is resolved inside the root file system, as runc
//! does: symbolic links are followed within it (`RESOLVE_IN_ROOT`), never out to the host;
//! missing directories (and an empty file for a file mount) are created in the upper layer.
//! The guest sees it all live: host changes (a ConfigMap update) and its writes (an emptyDir,
//! `/dev/termination-log`, which kubelet then reads) are shared, read-only mounts refuse writes.
//! When the guest is gone everything is detached (`MNT_DETACH` of the overlay takes the binds
//! with it); the upper layer goes with the container's directory.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::record::runtime_err;
use crate::error::{SandboxError, invalid};
use crate::vm::guestfiles::{self, GuestMount};
use crate::vm::virtiofs::SharedRoot;

/// Where the guest finds crid's files (`env`, `process`).
pub const GUEST_ETC: &str = "/etc/crid";

/// The host directory (in the container's directory) bound at [`GUEST_ETC`].
fn etc_dir(dir: &Path) -> PathBuf {
    dir.join("guest-etc")
}

/// `process`: the workload's working directory, uid and gid as shell assignments.
pub fn process_file(root: &SharedRoot) -> String {
    format!(
        "CRID_CWD='{}'\nCRID_UID={}\nCRID_GID={}\n",
        root.workdir.replace('\'', r"'\''"),
        root.uid,
        root.gid
    )
}

/// Mounts the shared root of the container whose directory is `dir` (see the module
/// documentation), for a workload of `argv` and `env`. On error nothing stays mounted.
pub fn mount(
    dir: &Path,
    layers: &[PathBuf],
    mounts: &[GuestMount],
    argv: &[String],
    env: &[(String, String)],
    root: &SharedRoot,
) -> Result<(), SandboxError> {
    let etc = etc_dir(dir);
    std::fs::create_dir_all(&etc).map_err(|e| SandboxError::io(&etc, e))?;
    for (name, text) in [
        ("env", guestfiles::env_file(env)),
        ("process", process_file(root)),
        ("args", guestfiles::args_file(argv)),
    ] {
        let path = etc.join(name);
        crate::monitor::write_replace(&path, text.as_bytes())
            .map_err(|e| SandboxError::io(&path, e))?;
    }
    let rootfs = &root.rootfs;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [rootfs, &upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| SandboxError::io(d, e))?;
    }
    unmount(rootfs);
    let mut lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    if lowers.is_empty() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| SandboxError::io(&empty, e))?;
        lowers.push(empty);
    }
    super::runc::mount_overlay(
        dir,
        rootfs,
        &upper,
        &work,
        &lowers,
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
    )?;
    let binds = std::iter::once(GuestMount {
        container_path: GUEST_ETC.into(),
        host_path: etc,
        readonly: true,
    })
    .chain(mounts.iter().cloned());
    for m in binds {
        if let Err(e) = bind(rootfs, &m) {
            unmount(rootfs);
            return Err(e);
        }
    }
    Ok(())
}

/// Detaches the shared root and every mount under it (bounded).
pub fn unmount(rootfs: &Path) {
    for _ in 0..8 {
        if nix::mount::umount2(rootfs, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Binds `m.host_path` at `m.container_path` inside `rootfs`.
fn bind(rootfs: &Path, m: &GuestMount) -> Result<(), SandboxError> {
    let fail = |reason: String| runtime_err("mount into the guest's root", reason);
    let is_dir = std::fs::metadata(&m.host_path)
        .map_err(|e| SandboxError::io(&m.host_path, e))?
        .is_dir();
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("{}: {e}", rootfs.display())))?;
    let rel = relative(&m.container_path)?;
    let target =
        target(&root, &rel, is_dir).map_err(|e| fail(format!("{}: {e}", m.container_path)))?;
    let at = |fd: &OwnedFd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    nix::mount::mount(
        Some(&m.host_path),
        &at(&target),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "bind {} at {}: {e}",
            m.host_path.display(),
            m.container_path
        ))
    })?;
    // The new mount's root, resolved again, takes the flags.
    let mounted =
        open_in_root(&root, &rel).map_err(|e| fail(format!("{}: {e}", m.container_path)))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if m.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        None::<&str>,
        &at(&mounted),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| fail(format!("remount {} ({flags:?}): {e}", m.container_path)))
}

/// A container path as a path relative to the root (checked: absolute, no `..`).
fn relative(container_path: &str) -> Result<String, SandboxError> {
    let p = std::path::Path::new(container_path);
    let ok = p.is_absolute()
        && p.components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    let rel = container_path.trim_start_matches('/').trim_end_matches('/');
    if !ok || rel.is_empty() {
        return Err(invalid(format!(
            "mount container path {container_path:?} is not absolute, is the root or contains '..'"
        )));
    }
    Ok(rel.to_owned())
}

fn open_in_root(root: &OwnedFd, rel: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// The mount target `rel` inside `root`, made where missing: directories above it, and a
/// directory (`is_dir`) or an empty file at it. Every step resolves within `root`.
fn target(root: &OwnedFd, rel: &str, is_dir: bool) -> rustix::io::Result<OwnedFd> {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for i in 0..parts.len() {
        let here = parts[..=i].join("/");
        match open_in_root(root, &here) {
            Ok(fd) if i + 1 == parts.len() => return Ok(fd),
            Ok(_) => continue,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        let above;
        let parent = if i == 0 {
            root
        } else {
            above = open_in_root(root, &parts[..i].join("/"))?;
            &above
        };
        let name = parts[i];
        if is_dir || i + 1 < parts.len() {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
        } else {
            match rustix::fs::openat(
                parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
        }
        if i + 1 == parts.len() {
            return open_in_root(root, &here);
        }
    }
    Err(rustix::io::Errno::INVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_file_quotes_the_working_directory() {
        let root = SharedRoot {
            rootfs: "/c/rootfs".into(),
            workdir: "/srv/it's here".into(),
            uid: 1000,
            gid: 100,
            socket: "/run/crid/vfs-c.sock".into(),
            transport: Default::default(),
        };
        assert_eq!(
            process_file(&root),
            "CRID_CWD='/srv/it'\\''s here'\nCRID_UID=1000\nCRID_GID=100\n"
        );
    }

    #[test]
    fn targets_are_made_inside_the_root_and_links_stay_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root_dir.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute link in the image: resolved inside the root, not on the host.
        let in_root = root_dir.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&in_root).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("etc/app")).unwrap();
        // A dangling one is refused, nothing is made on the host.
        std::os::unix::fs::symlink("/nonexistent-crid-test", root_dir.join("etc/gone")).unwrap();
        let root = rustix::fs::open(
            &root_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        target(&root, "etc/app/conf", true).unwrap();
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        assert!(in_root.join("conf").is_dir());
        assert!(target(&root, "etc/gone/conf", true).is_err());
        assert!(!Path::new("/nonexistent-crid-test").exists());
        target(&root, "dev/termination-log", false).unwrap();
        assert!(root_dir.join("dev/termination-log").is_file());
        assert!(relative("/a/../b").is_err());
        assert!(relative("a").is_err());
        assert!(relative("/").is_err());
        assert_eq!(
            relative("/dev/termination-log/").unwrap(),
            "dev/termination-log"
        );
    }
}
