//! The few calls that need `unsafe`: registering guest memory with KVM, opening the tap and
//! dropping privileges. Everything else in the VMM goes through safe wrappers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;

/// Hands every region of `mem` to KVM as one memory slot each.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> io::Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: u32::try_from(slot).map_err(|_| io::Error::other("too many memory slots"))?,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range [as_ptr, as_ptr + len) is an anonymous mapping owned by `mem`,
        // which `main` keeps alive until the process exits, so KVM never sees it unmapped; the
        // slots do not overlap because the regions of a GuestMemoryMmap never do.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Confines the process once every file it needs is open: optionally chroots into `root`,
/// then drops to `uid`/`gid` with no supplementary groups and sets no_new_privs (required for
/// an unprivileged seccomp filter, and it keeps the process from regaining privileges).
pub fn confine(root: Option<&Path>, user: Option<(u32, u32)>) -> io::Result<()> {
    if let Some(root) = root {
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in chroot path"))?;
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        if unsafe { libc::chroot(c.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        std::env::set_current_dir("/")?;
    }
    if let Some((uid, gid)) = user {
        // SAFETY: setgroups with a zero count reads no memory.
        if unsafe { libc::setgroups(0, std::ptr::null()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscalls on integers; the group goes first while we may still change it.
        if unsafe { libc::setresgid(gid, gid, gid) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; after this the process has no way back to root.
        if unsafe { libc::setresuid(uid, uid, uid) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    no_new_privs()
}

/// Sets no_new_privs on the calling thread (inherited by threads spawned after it).
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the default action of the stop signals and unblocks them: a VMM started by a
/// supervisor that ignores or blocks them (both are inherited across exec) must still end on
/// `SIGTERM`, crid's stop signal for it.
pub fn default_stop_signals() -> io::Result<()> {
    const STOP: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset initialises it anyway.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in STOP {
        // SAFETY: SIG_DFL is always a valid disposition for these catchable signals, and no
        // handler of ours is replaced (the VMM installs none).
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `set` is initialised and `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
