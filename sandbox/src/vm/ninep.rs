//! The container's root file system shared with a `unikraft` guest on QEMU over QEMU's
//! built-in virtio-9p, as urunc does for Unikraft when `mountRootfs` is true.
//!
//! urunc's convention (its QEMU backend and Unikraft command line): a `local` fsdev with
//! `security_model=none` on a legacy virtio-9p PCI device (`disable-modern=on,
//! disable-legacy=off`: Unikraft's x86 virtio-9p driver is a legacy PCI one) with the mount tag
//! `fs0`, mounted as `/` by the kernel parameters of [`root_params`].
//!
//! No extra process: QEMU serves the directory itself. Its `local` backend opens the export
//! while QEMU is still root, before `-chroot` into the empty directory and `-runas` the
//! container's unprivileged uid, and reaches every file relative to that descriptor, so the
//! export keeps working after both (checked by hand with QEMU 7.2 and by
//! `vm_boot::unikraft_9p_root_under_chroot_and_runas`). From then on the guest's file
//! operations run as that uid: `security_model=none` (urunc's choice) is the one that works
//! for an unprivileged server, since `passthrough` would fail on every `chown` of a created
//! file and `mapped-*` needs extended attributes written on root-owned files. So the guest
//! reads what the uid may read (the image's files are mostly world-readable), and writes only
//! where the uid may write: files and directories owned by root and not world-writable (the
//! overlay's own root, most of the image's directories, a root-owned 0755 volume) are
//! read-only to the guest (kubelet's emptyDirs, 0777, and termination log, 0666, stay
//! writable), and what it creates is owned by that uid on the host.
//!
//! Creating a file or directory needs a `/proc` in QEMU's chroot: QEMU 7.2's `local` backend
//! sets the mode of what it creates (and serves `chmod`) through `/proc/self/fd/N`, so under
//! `-chroot` into an empty directory every create failed with `ENOENT` (and the new file was
//! unlinked again), seen with the test guest's 9p client. [`mount_proc`] gives the chroot a
//! proc instance that shows nothing but process directories (`subset=pid`) and of those only
//! the ones of QEMU's own uid (`hidepid=invisible`; the uid is the container's alone), i.e.
//! QEMU itself; `nosuid`, `nodev`, `noexec`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::path_arg;
use crate::SandboxError;

/// The mount tag urunc gives the share and the guest mounts as `/`.
pub const TAG: &str = "fs0";
/// QEMU's id of the fsdev.
const FSDEV_ID: &str = "crid-9p";

/// QEMU's arguments exporting `root` on a virtio-9p PCI device.
pub fn qemu_args(root: &Path) -> Result<Vec<String>, SandboxError> {
    let root = path_arg(root)?;
    Ok(vec![
        "-fsdev".into(),
        format!("local,id={FSDEV_ID},path={root},security_model=none"),
        "-device".into(),
        format!(
            "virtio-9p-pci,fsdev={FSDEV_ID},mount_tag={TAG},disable-modern=on,disable-legacy=off"
        ),
    ])
}

/// The Unikraft kernel parameters mounting the share as the root: `vfs.fstab` for current
/// Unikraft (0.16.1 on), `vfs.rootdev`/`vfs.rootfs` for older releases.
pub fn root_params(current: bool) -> Vec<String> {
    if current {
        vec![format!("vfs.fstab=[ \"{TAG}:/:9pfs:::\" ]")]
    } else {
        vec![format!("vfs.rootdev={TAG}"), "vfs.rootfs=9pfs".into()]
    }
}

/// Where [`mount_proc`] mounts proc in QEMU's chroot.
fn proc_dir(chroot: &Path) -> PathBuf {
    chroot.join("proc")
}

/// Mounts the restricted proc instance QEMU's 9p server needs at `<chroot>/proc` (see the
/// module documentation), over nothing: one left by an earlier start that was not released is
/// detached first, so mounts never stack.
pub fn mount_proc(chroot: &Path) -> Result<(), SandboxError> {
    let dir = proc_dir(chroot);
    std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(&dir, e))?;
    detach_all(&dir);
    nix::mount::mount(
        Some("proc"),
        &dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("subset=pid,hidepid=invisible"),
    )
    .map_err(|e| SandboxError::io(&dir, e.into()))
}

/// Undoes [`mount_proc`] (detached: QEMU may still be going away); fine when nothing is
/// mounted.
pub fn unmount_proc(chroot: &Path) {
    let dir = proc_dir(chroot);
    if !dir.exists() {
        return;
    }
    detach_all(&dir);
    let _ = std::fs::remove_dir(&dir);
}

/// Detaches whatever is mounted at `dir` (bounded: at most 16 mounts stacked there).
fn detach_all(dir: &Path) {
    for _ in 0..16 {
        match nix::mount::umount2(dir, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => return,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount QEMU's proc");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_exports_the_root_on_a_legacy_9p_device_tagged_fs0() {
        assert_eq!(
            qemu_args(Path::new("/c/1/rootfs")).unwrap().join(" "),
            "-fsdev local,id=crid-9p,path=/c/1/rootfs,security_model=none \
             -device virtio-9p-pci,fsdev=crid-9p,mount_tag=fs0,disable-modern=on,disable-legacy=off"
        );
        assert!(qemu_args(Path::new("/c/1,x/rootfs")).is_err());
    }

    #[test]
    fn unikraft_mounts_fs0_as_root_in_both_forms() {
        assert_eq!(root_params(true), ["vfs.fstab=[ \"fs0:/:9pfs:::\" ]"]);
        assert_eq!(root_params(false), ["vfs.rootdev=fs0", "vfs.rootfs=9pfs"]);
    }
}
