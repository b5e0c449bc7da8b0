//! The container's root file system as an ext4 image on the guest's first virtio-blk disk (the
//! "block root"), for `linux` guests that mount their container's root (urunc's
//! `mountRootfs=true`) where no shared file system is offered: Firecracker, Cloud Hypervisor
//! and crid-vmm, and QEMU when the container also says `useDMBlock=true` (urunc's block root
//! from a devmapper snapshot; crid builds the block device itself).
//!
//! At `StartContainer` the container backend mounts the root file system a virtiofs guest would
//! share (`crate::container::vm_rootfs`: the image's layers as an overlay with `/etc/crid` and
//! the CRI mounts bound in), [`build`] copies that tree into `<run_dir>/rootfs.ext4` with
//! `mkfs.ext4 -d` (e2fsprogs), and the tree is unmounted again. The raw image becomes the
//! guest's first disk, read-write; the kernel command line says `crid.root=block:vda`
//! ([`ROOT_PARAM`]) and the guest's init mounts it and runs the workload in it as over virtiofs.
//! It is a copy: the guest's writes (an emptyDir, `/dev/termination-log`) stay in the image and
//! go with it when the guest ends, host changes after the start (a ConfigMap update) do not
//! reach the guest, and read-only mounts are writable copies.
//!
//! Untrusted content: the tree is walked first without following symbolic links, counting
//! bytes and entries; past [`MAX_BYTES`] or [`MAX_ENTRIES`] (or [`MAX_DEPTH`] levels) the start
//! is `ResourceExhausted` before anything is written. `mkfs.ext4 -d` copies symbolic links as
//! links and device nodes, FIFOs and sockets as inodes of the new file system (it never opens
//! them), so the host is read only through the files in the tree, and what the image holds
//! exists only inside the guest. The image's size is what the tree needs plus room for the
//! guest's own writes ([`HEADROOM_BYTES`]): the guest can fill its disk, not the host's; the
//! host file system must have that much free (else `ResourceExhausted`), though the file is
//! sparse and uses about the tree's size until the guest writes. `mkfs.ext4` runs with a clean
//! environment and is killed after five minutes (`DeadlineExceeded`).
//!
//! Built per container, not cached per image: the CRI mounts and `/etc/crid` differ for every
//! container, a per-image image would need a second disk for them and an overlay in the guest,
//! and the build is short next to a guest's boot (README, Performance: 0.3 s for 54 MiB in
//! 1500 files, 0.6–1.5 s for 145 MiB in 6090 files, measured here).

use std::path::{Path, PathBuf};

use crate::SandboxError;

/// The image in the container's run directory.
pub const IMAGE: &str = "rootfs.ext4";
/// e2fsprogs' mkfs (`VmSettings::binary` looks it up; Debian: `/usr/sbin/mkfs.ext4`).
pub const MKFS: &str = "mkfs.ext4";
/// The kernel command line parameter telling the guest's init its root is the first
/// virtio-blk disk.
pub const ROOT_PARAM: &str = "crid.root=block:vda";
/// Upper bound of the tree's file data (apparent sizes, each file rounded up to a block).
pub const MAX_BYTES: u64 = 4 << 30;
/// Upper bound of the tree's entries (files, directories, links, nodes).
pub const MAX_ENTRIES: u64 = 500_000;
/// Upper bound of the tree's depth.
pub const MAX_DEPTH: usize = 256;
/// Free space in the image for the guest's writes.
pub const HEADROOM_BYTES: u64 = 64 << 20;
/// Free inodes in the image for the guest's new files.
const HEADROOM_INODES: u64 = 4096;
/// How long `mkfs.ext4` may take.
const MKFS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;

/// What a tree holds: data bytes (each entry rounded up to whole blocks) and entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

/// The limits of one build (the constants above, smaller in tests).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: MAX_BYTES,
            max_entries: MAX_ENTRIES,
        }
    }
}

fn too_large(limits: &Limits, what: &str) -> SandboxError {
    SandboxError::GuestRootTooLarge {
        reason: format!(
            "the container's root file system {what}; a guest's block root holds at most {} MiB \
             in {} entries",
            limits.max_bytes >> 20,
            limits.max_entries
        ),
    }
}

/// Walks `root` (crossing mount points, as the bind-mounted volumes are; never following a
/// symbolic link) and counts what an ext4 copy of it needs, failing as soon as a limit is
/// passed.
pub fn usage(root: &Path, limits: &Limits) -> Result<Usage, SandboxError> {
    let mut total = Usage::default();
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if depth >= MAX_DEPTH {
            return Err(too_large(
                limits,
                &format!("is nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| SandboxError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SandboxError::io(&dir, e))?;
            let meta = entry
                .metadata() // lstat: a link is counted, not followed
                .map_err(|e| SandboxError::io(entry.path(), e))?;
            total.entries += 1;
            total.bytes = total
                .bytes
                .saturating_add(meta.len().div_ceil(BLOCK).max(1) * BLOCK);
            if total.entries > limits.max_entries {
                return Err(too_large(
                    limits,
                    &format!("has more than {} entries", limits.max_entries),
                ));
            }
            if total.bytes > limits.max_bytes {
                return Err(too_large(
                    limits,
                    &format!("holds more than {} MiB", limits.max_bytes >> 20),
                ));
            }
            if meta.is_dir() {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    Ok(total)
}

/// The image's size and inode count for a tree of `usage`: the data, the inode tables, about
/// 1/16 for ext4's own metadata (bitmaps, group descriptors, extent blocks), and the headroom;
/// in whole MiB.
pub fn geometry(usage: Usage) -> (u64, u64) {
    let inodes = usage.entries + HEADROOM_INODES;
    let bytes = usage.bytes + inodes * INODE_SIZE;
    let size = (bytes + bytes / 16 + HEADROOM_BYTES).div_ceil(1 << 20) << 20;
    (size, inodes)
}

/// `mkfs.ext4`'s arguments for copying `source` into `image` with `inodes` inodes: 4 KiB
/// blocks, no reserved blocks and no journal (the image lives as long as one guest), labelled
/// `crid-root`.
pub fn mkfs_args(source: &Path, image: &Path, inodes: u64) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-I",
        "256",
        "-m",
        "0",
        "-O",
        "^has_journal",
        "-L",
        "crid-root",
        "-N",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(inodes.to_string().into());
    args.push("-d".into());
    args.push(source.into());
    args.push(image.into());
    args
}

/// Builds `image` (mode 0600, replaced if there) from the tree at `source` with `mkfs` (see the
/// module documentation). On error no image is left.
pub fn build(
    mkfs: &Path,
    source: &Path,
    image: &Path,
    limits: &Limits,
) -> Result<Usage, SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let usage = usage(source, limits)?;
    let (size, inodes) = geometry(usage);
    let dir = image.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    let _ = std::fs::remove_file(image);
    if let Some(free) = crate::sys::free_bytes(dir).filter(|free| *free < size) {
        return Err(SandboxError::DiskFull {
            op: "build the guest's root image".into(),
            path: image.to_path_buf(),
            reason: format!("it needs {} MiB, {} MiB are free", size >> 20, free >> 20),
        });
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .map_err(|e| SandboxError::io(image, e))?;
    let made = file
        .set_len(size)
        .map_err(|e| SandboxError::io(image, e))
        .and_then(|()| {
            drop(file);
            run_mkfs(mkfs, source, image, inodes)
        });
    if let Err(e) = made {
        let _ = std::fs::remove_file(image);
        return Err(e);
    }
    Ok(usage)
}

/// Runs `mkfs`, killed past [`MKFS_TIMEOUT`] (a tree on a hung network or FUSE mount would
/// otherwise hold `StartContainer` for ever).
fn run_mkfs(mkfs: &Path, source: &Path, image: &Path, inodes: u64) -> Result<(), SandboxError> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = std::process::Command::new(mkfs)
        .args(mkfs_args(source, image, inodes))
        .env_clear()
        .envs(crate::monitor::child_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped()) // a few lines with -q, within the pipe's buffer
        .spawn()
        .map_err(|e| SandboxError::io(mkfs, e))?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| SandboxError::io(mkfs, e))? {
            break status;
        }
        if started.elapsed() > MKFS_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Timeout {
                op: "build the guest's root image".into(),
                secs: MKFS_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let reason = stderr.trim().to_owned();
    let dir = image.parent().unwrap_or(Path::new("/"));
    if crate::sys::is_full(dir) {
        return Err(SandboxError::DiskFull {
            op: "build the guest's root image".into(),
            path: image.to_path_buf(),
            reason,
        });
    }
    Err(SandboxError::Runtime {
        op: "build the guest's root image".into(),
        reason: format!("{} failed ({status}): {reason}", mkfs.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("etc/app")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("etc/app/greeting"), "hello").unwrap();
        std::fs::write(root.join("bin/big"), vec![7u8; 10_000]).unwrap();
        // Links are copied as links, never followed: one to a host file and one to the
        // directory above must neither be read nor counted as what they point at.
        std::os::unix::fs::symlink("/etc/shadow", root.join("etc/shadow-link")).unwrap();
        std::os::unix::fs::symlink("..", root.join("etc/up")).unwrap();
    }

    #[test]
    fn usage_counts_blocks_and_entries_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let u = usage(dir.path(), &Limits::default()).unwrap();
        // etc, etc/app, greeting, bin, big (3 blocks), two links.
        assert_eq!(u.entries, 7);
        assert_eq!(u.bytes, (6 + 3) * BLOCK);
        let (size, inodes) = geometry(u);
        assert_eq!(inodes, 7 + HEADROOM_INODES);
        assert!(size >= HEADROOM_BYTES && size % (1 << 20) == 0, "{size}");
    }

    #[test]
    fn past_the_limits_is_resource_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        for limits in [
            Limits {
                max_bytes: 4 * BLOCK,
                max_entries: 100,
            },
            Limits {
                max_bytes: 1 << 30,
                max_entries: 3,
            },
        ] {
            let err = usage(dir.path(), &limits).unwrap_err();
            assert_eq!(err.kind(), imagestore::ErrorKind::ResourceExhausted);
            assert!(err.to_string().contains("block root"), "{err}");
        }
        let image = dir.path().join("out/rootfs.ext4");
        let limits = Limits {
            max_bytes: 1 << 30,
            max_entries: 3,
        };
        assert!(build(Path::new("/nonexistent-mkfs"), dir.path(), &image, &limits).is_err());
        assert!(!image.exists());
    }

    #[test]
    fn a_failing_mkfs_is_an_error_with_its_message_and_leaves_no_image() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("root");
        tree(&src);
        let fake = dir.path().join("mkfs.ext4");
        let env = dir.path().join("env");
        let script = format!(
            "#!/bin/sh\ncat /proc/$$/environ > {}\necho 'no luck' >&2\nexit 1\n",
            env.display()
        );
        std::fs::write(&fake, script).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let image = dir.path().join("vm/rootfs.ext4");
        let err = build(&fake, &src, &image, &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::Internal);
        assert!(err.to_string().contains("no luck"), "{err}");
        assert!(!image.exists());
        // Like every child of crid, mkfs starts with `PATH` as its only variable.
        let vars = std::fs::read(&env).unwrap();
        let names: Vec<&[u8]> = vars
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .filter_map(|v| v.split(|b| *b == b'=').next())
            .collect();
        assert_eq!(names, [b"PATH"]);
    }

    #[test]
    fn mkfs_arguments() {
        let args = mkfs_args(Path::new("/c/rootfs"), Path::new("/c/vm/rootfs.ext4"), 4103);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-q -F -t ext4 -b 4096 -I 256 -m 0 -O ^has_journal -L crid-root -N 4103 \
             -d /c/rootfs /c/vm/rootfs.ext4"
        );
    }

    /// With e2fsprogs installed: the image is an ext4 file system (its superblock's magic at
    /// byte 1080) holding the tree's file, with the links as links (debugfs reads the image).
    #[test]
    fn builds_an_ext4_image_of_the_tree() {
        let Ok(mkfs) = crate::vm::find_binary(MKFS, &crate::vm::default_binary_dirs()) else {
            eprintln!("skipped: {MKFS} is not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("root");
        tree(&src);
        let image = dir.path().join("vm/rootfs.ext4");
        build(&mkfs, &src, &image, &Limits::default()).unwrap();
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(&bytes[1080..1082], &[0x53, 0xef]);
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            meta.len(),
            geometry(usage(&src, &Limits::default()).unwrap()).0
        );
        let debugfs = mkfs.with_file_name("debugfs");
        if debugfs.exists() {
            let run = |req: &str| {
                let out = std::process::Command::new(&debugfs)
                    .args(["-R", req])
                    .arg(&image)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert_eq!(run("cat /etc/app/greeting"), "hello");
            let stat = run("stat /etc/shadow-link");
            assert!(stat.contains("Type: symlink"), "{stat}");
            assert!(stat.contains("/etc/shadow"), "{stat}");
        }
    }
}
