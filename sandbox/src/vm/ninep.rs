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

use std::path::Path;

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
