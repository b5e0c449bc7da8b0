//! The VM backend's only unsafe code: the KVM API version ioctl, the tap creation ioctls
//! and extended attributes; and the arming thread's time slice (on the monitor's calls).
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use crate::monitor::sys::{sched_setattr, short_slices};

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

/// The calling thread on short time slices until this is dropped
/// ([`crate::monitor::sys::short_slices`], as a monitor asks for them while it supervises),
/// then on the default slice again, its niceness kept. Nothing changes where the kernel refuses
/// or the thread is not `SCHED_OTHER`.
pub(crate) struct ShortSlices {
    /// The thread's attributes, when it got short slices.
    before: Option<libc::sched_attr>,
}

impl ShortSlices {
    pub(crate) fn new() -> ShortSlices {
        ShortSlices {
            before: short_slices().ok().flatten(),
        }
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
    use crate::monitor::sys::{SHORT_SLICE_NS, sched_getattr};

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
