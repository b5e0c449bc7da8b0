//! A pod's user namespace and id-mapped mounts for it.
//!
//! The namespace comes from a short-lived helper process (`monitor::userns`) that unshares it
//! with the pod's network, IPC and UTS namespaces, which it therefore owns. crid writes its id
//! maps, pins all four like `cni::netns` pins (an empty file with an nsfs bind mount on it)
//! and lets the helper exit. Containers join the pinned user namespace first, then the others.
//!
//! Files keep their on-disk owners: an image layer or a volume is made usable by mounting it
//! id-mapped through the pod's user namespace (`mount_setattr(MOUNT_ATTR_IDMAP)`, kernel 5.12+;
//! overlayfs takes id-mapped lower layers since 5.19), so the image's root-owned files are the
//! container's root's, and files a container creates land on disk with the container's ids.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni::netns::{self, NsKind};
use nix::mount::{MsFlags, mount};

use crate::error::SandboxError;
use crate::monitor::userns as helper;
use crate::pod::{IdMapping, PodUserns};

/// How long the helper may take to report that its namespaces exist.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

fn step<'a>(step: &'static str, path: &'a Path) -> impl Fn(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::UserNamespace {
        step,
        path: path.to_owned(),
        source,
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The `/proc/PID/uid_map` (or `gid_map`) line of one range.
pub fn map_line(m: &IdMapping) -> String {
    format!("{} {} {}\n", m.container_id, m.host_id, m.length)
}

fn proc_name(kind: NsKind) -> &'static str {
    match kind {
        NsKind::Net => "net",
        NsKind::Ipc => "ipc",
        NsKind::Uts => "uts",
    }
}

/// Whether this host can run pods in user namespaces as crid makes them: user namespaces
/// enabled (`user.max_user_namespaces` > 0) and a kernel whose overlayfs takes id-mapped lower
/// layers (5.19+). One sysctl read and `uname` per call.
pub fn supported() -> bool {
    let enabled = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    enabled && kernel_at_least(&release, (5, 19))
}

/// Whether every directory from `/` down to `dir` lets others search it (`o+x`). A container
/// process in a user namespace is "others" for crid's root-owned directories, and runc looks
/// up the rootfs and the bind-mount sources from inside the container's user namespace, so
/// crid's root and state directories must be reachable that way (containerd makes its root
/// 0711 for the same reason).
pub fn searchable_by_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // A directory not made yet is made by crid (0755).
    dir.ancestors().all(|d| match std::fs::metadata(d) {
        Ok(m) => m.is_dir() && m.permissions().mode() & 0o001 != 0,
        Err(e) => d.as_os_str().is_empty() || e.kind() == io::ErrorKind::NotFound,
    })
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `want`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// What [`create`] needs besides the namespaces to pin.
#[derive(Debug, Clone)]
pub struct UsernsPlan {
    /// The crid executable (the helper is `crid-monitor` next to it, or `crid monitor`).
    pub exe: PathBuf,
    /// Where the user namespace is pinned.
    pub pin: PathBuf,
    pub mappings: PodUserns,
    /// The helper's stderr.
    pub log: PathBuf,
}

/// Makes a user namespace with `plan.mappings` owning new namespaces of the kinds in `pins`,
/// pins them all, and sets the hostname in the UTS one when given. On failure nothing stays
/// pinned. Blocking.
pub fn create(
    plan: &UsernsPlan,
    pins: &[(NsKind, PathBuf)],
    hostname: Option<String>,
) -> Result<(), SandboxError> {
    let all: Vec<(Option<NsKind>, PathBuf)> = std::iter::once((None, plan.pin.clone()))
        .chain(pins.iter().map(|(k, p)| (Some(*k), p.clone())))
        .collect();
    let result = create_pinned(plan, &all, hostname);
    if result.is_err() {
        for (_, pin) in &all {
            let _ = netns::remove(pin);
        }
    }
    result
}

fn create_pinned(
    plan: &UsernsPlan,
    all: &[(Option<NsKind>, PathBuf)],
    hostname: Option<String>,
) -> Result<(), SandboxError> {
    let holder =
        helper::spawn(&plan.exe, &plan.log, HELPER_TIMEOUT).map_err(step("start", &plan.pin))?;
    let proc = PathBuf::from(format!("/proc/{}", holder.pid()));
    for (file, m) in [
        ("uid_map", &plan.mappings.uid),
        ("gid_map", &plan.mappings.gid),
    ] {
        let path = proc.join(file);
        std::fs::write(&path, map_line(m)).map_err(step("write id map", &path))?;
    }
    for (kind, pin) in all {
        let name = kind.map_or("user", proc_name);
        if let Some(parent) = pin.parent() {
            std::fs::create_dir_all(parent).map_err(step("create directory", parent))?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(pin)
            .map_err(step("create pin file", pin))?;
        mount(
            Some(&proc.join("ns").join(name)),
            pin.as_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_io)
        .map_err(step("bind mount", pin))?;
    }
    holder.finish();
    let uts = all.iter().find(|(k, _)| *k == Some(NsKind::Uts));
    if let (Some(name), Some((_, pin))) = (hostname, uts) {
        // crid, root of the parent user namespace, may enter the pod's UTS namespace.
        netns::run_in(&[(NsKind::Uts, pin.clone())], move || {
            nix::unistd::sethostname(name).map_err(nix_io)
        })
        .map_err(|e| SandboxError::UserNamespace {
            step: "set hostname",
            path: pin.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

// The new mount API, which `nix` and `libc` (for glibc targets) do not wrap.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path holds a NUL"))
}

/// The step of [`idmapped_bind`] that id-maps: its failure with `EINVAL` means the file
/// system (or one below, with `recursive`) cannot be id-mapped.
pub const IDMAP_STEP: &str = "id-map (mount_setattr)";

/// Mounts a copy of the mount tree at `src` (a directory or file; with its submounts when
/// `recursive`) at `dst` (an existing directory or file), id-mapped through the user namespace
/// pinned at `userns` when given: a file owned by id N on disk is seen as owned by the host id
/// the namespace maps N to. Without `userns`, a plain bind of the same shape.
pub fn idmapped_bind(
    src: &Path,
    dst: &Path,
    userns: Option<&Path>,
    recursive: bool,
) -> Result<(), SandboxError> {
    let ns = userns
        .map(|u| File::open(u).map_err(step("open user namespace", u)))
        .transpose()?;
    let c_src = c_path(src).map_err(step("open_tree", src))?;
    let c_dst = c_path(dst).map_err(step("move_mount", dst))?;
    let rec = if recursive { libc::AT_RECURSIVE } else { 0 };
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated path, which lives until the call returns, and
    // returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_src.as_ptr(), flags) };
    if fd < 0 {
        return Err(step("open_tree", src)(io::Error::last_os_error()));
    }
    let fd = i32::try_from(fd).map_err(|_| step("open_tree", src)(io::Error::other("fd")))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let empty = c"";
    if let Some(ns) = &ns {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: ns.as_raw_fd() as u64,
        };
        // SAFETY: mount_setattr reads `size` bytes of `attr`, a live `struct mount_attr`, and
        // the empty NUL-terminated path; it keeps neither.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH | rec,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(step(IDMAP_STEP, src)(io::Error::last_os_error()));
        }
    }
    // SAFETY: move_mount reads the two NUL-terminated paths, live for the call, and attaches
    // the detached tree held by `tree`; no memory is kept.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c_dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(step("move_mount", dst)(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines() {
        let m = IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100_000,
        };
        assert_eq!(map_line(&m), "0 1000 100000\n");
    }

    #[test]
    fn searchable_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(tmp.path(), 0o711);
        // (Whatever is above the temp dir is world-searchable on a sane host.)
        if searchable_by_others(tmp.path()) {
            assert!(searchable_by_others(&inner));
            set(&tmp.path().join("a"), 0o700);
            assert!(!searchable_by_others(&inner));
        }
        assert!(!searchable_by_others(&tmp.path().join("a/missing")));
    }

    #[test]
    fn kernel_releases() {
        assert!(kernel_at_least("6.18.44-fc-v1300", (5, 19)));
        assert!(kernel_at_least("5.19.0", (5, 19)));
        assert!(!kernel_at_least("5.10.0-28-amd64", (5, 19)));
        assert!(!kernel_at_least("garbage", (5, 19)));
    }
}
