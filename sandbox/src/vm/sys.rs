//! The VM backend's only unsafe code: the KVM API version ioctl, the tap creation ioctls,
//! the arming thread's time slice and extended attributes.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// `KVM_GET_API_VERSION` = `_IO(KVMIO = 0xAE, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// Asks an open `/dev/kvm` for its API version.
pub(crate) fn kvm_api_version(kvm: &std::fs::File) -> std::io::Result<i32> {
    // SAFETY: the fd is a valid open file for the duration of the call; KVM_GET_API_VERSION takes
    // no argument and touches no user memory.
    let ret = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates a persistent tap device `name` (no packet information header) in the calling
/// thread's network namespace, as `ip tuntap add mode tap` does: `TUNSETIFF` on
/// `/dev/net/tun`, then `TUNSETPERSIST` so the device outlives the descriptor, which is closed
/// on return. The VMM attaches to it by name later.
pub(crate) fn create_persistent_tap(name: &str) -> std::io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // std opens with O_CLOEXEC: no child inherits the device.
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data (arrays, integers, a union of them and a pointer that
    // stays unused): all zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // The flags fit in a c_short (IFF_TAP 0x2 | IFF_NO_PI 0x1000).
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the descriptor is open for the call; TUNSETIFF reads and writes one `ifreq`
    // through the pointer, which points to a live, initialised value (the name NUL-terminated
    // by the zeroing, since it is shorter than IFNAMSIZ).
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value and touches no user memory.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The time slice [`ShortSlices`] asks for: the shortest the kernel grants.
const SHORT_SLICE_NS: u64 = 100_000;

/// The calling thread on short time slices until this is dropped (EEVDF, Linux 6.12+: a
/// `SCHED_OTHER` thread's `sched_runtime` is its slice), then on the default slice again; its
/// niceness is kept and a child it starts meanwhile gets the default
/// (`SCHED_FLAG_RESET_ON_FORK`). A thread with a shorter slice than the running one preempts it
/// when it wakes, and keeps the CPU while it is due it, where it would otherwise wait until
/// that one has run its slice (1.4 ms on this project's 2-CPU hosts); its share of the CPU is
/// the same. Nothing changes where the kernel refuses or the thread is not `SCHED_OTHER`.
pub(crate) struct ShortSlices {
    /// The thread's attributes, when it got short slices.
    before: Option<libc::sched_attr>,
}

impl ShortSlices {
    pub(crate) fn new() -> ShortSlices {
        let before = sched_getattr().ok().filter(|attr| {
            attr.sched_policy == libc::SCHED_OTHER as u32
                && sched_setattr(&libc::sched_attr {
                    sched_runtime: SHORT_SLICE_NS,
                    sched_flags: attr.sched_flags | libc::SCHED_FLAG_RESET_ON_FORK as u64,
                    ..*attr
                })
                .is_ok()
        });
        ShortSlices { before }
    }
}

impl Drop for ShortSlices {
    fn drop(&mut self) {
        if let Some(attr) = &self.before {
            // A `sched_runtime` of 0 is the default slice (`sched_getattr` reports the slice in
            // force, default or not).
            let _ = sched_setattr(&libc::sched_attr {
                sched_runtime: 0,
                ..*attr
            });
        }
    }
}

/// The size of `sched_attr` as the kernel takes it.
fn sched_attr_size() -> u32 {
    u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(u32::MAX)
}

/// The calling thread's scheduling attributes.
fn sched_getattr() -> std::io::Result<libc::sched_attr> {
    // SAFETY: sched_attr is plain old data; all zeroes is a valid value, filled in below.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size` bytes into `attr`, which is that large; pid 0
    // is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            sched_attr_size(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    attr.size = sched_attr_size();
    Ok(attr)
}

/// Sets the calling thread's scheduling attributes.
fn sched_setattr(attr: &libc::sched_attr) -> std::io::Result<()> {
    // SAFETY: `attr` points to a live sched_attr of `attr.size` bytes, which the kernel only
    // reads; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            attr as *const libc::sched_attr,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets an extended attribute (tests only).
#[cfg(test)]
pub(crate) fn set_xattr(path: &std::path::Path, name: &std::ffi::CStr, value: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: NUL-terminated strings and a value slice that outlive the call.
    let r = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's slice as `/proc/thread-self/sched` shows it (`se.slice`, in ns);
    /// `None` on a kernel without EEVDF's slices.
    fn own_slice() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    #[test]
    fn short_slices_last_as_long_as_the_guard_and_keep_the_niceness() {
        std::thread::spawn(|| {
            let Some(default) = own_slice() else { return };
            // SAFETY: gettid has no arguments; setpriority on the calling thread's own id
            // only raises its niceness, which needs no privilege.
            unsafe {
                let tid = libc::gettid();
                assert_eq!(
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 3),
                    0
                );
            }
            {
                let _short = ShortSlices::new();
                assert_eq!(own_slice(), Some(SHORT_SLICE_NS));
                assert_eq!(sched_getattr().unwrap().sched_nice, 3);
                let out = std::process::Command::new("cat")
                    .arg("/proc/self/sched")
                    .output()
                    .unwrap();
                let child = String::from_utf8_lossy(&out.stdout);
                let child = child.lines().find(|l| l.starts_with("se.slice")).unwrap();
                assert!(child.ends_with(&format!(" {default}")), "{child}");
            }
            assert_eq!(own_slice(), Some(default));
            assert_eq!(sched_getattr().unwrap().sched_nice, 3);
        })
        .join()
        .unwrap();
    }
}
