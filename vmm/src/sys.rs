//! The few calls that need `unsafe`: registering guest memory with KVM, reading KVM's
//! coalesced I/O ring, opening the tap, entering a network namespace, replacing standard
//! input, dropping privileges and the timer that interrupts the boot vCPU for a partial line
//! of output. Everything else in the VMM goes through safe wrappers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::ptr::NonNull;
use std::sync::atomic::{Ordering, fence};

use kvm_bindings::{
    KVM_COALESCED_MMIO_PAGE_OFFSET, kvm_coalesced_mmio, kvm_coalesced_mmio_ring,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{VcpuFd, VmFd};
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
        // which `vm::run` leaks so that it is never unmapped while the process lives, so KVM
        // never sees the range unmapped or reused; the slots do not
        // overlap because the regions of a GuestMemoryMmap never do.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// A VM's coalesced I/O ring (`KVM_REGISTER_COALESCED_MMIO`): the writes KVM queued there
/// instead of leaving `KVM_RUN`, oldest first. One page, the same for every vCPU of the VM,
/// mapped from one vCPU's descriptor; its one reader is whoever holds the [`CoalescedRing`]
/// (the port-I/O bus, under its lock).
pub struct CoalescedRing {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    size: usize,
}

// SAFETY: the mapping is the process's for as long as the value lives (unmapped only on drop)
// and only the value's owner reads or advances it (`pop` takes `&mut self`); the kernel's
// side is written under its own lock, and `pop` orders its reads against it.
unsafe impl Send for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring of `vcpu`'s VM (KVM must have `KVM_CAP_COALESCED_PIO`, or it fails).
    pub fn map(vcpu: &VcpuFd) -> io::Result<CoalescedRing> {
        // SAFETY: sysconf takes a constant and touches no memory.
        let size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(io::Error::last_os_error()),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * size as libc::off_t;
        // SAFETY: a new shared mapping of one page of the vCPU's descriptor at KVM's offset
        // for the ring: it overlaps nothing of ours, and KVM refuses it when it has no ring.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(CoalescedRing { ring, size })
    }

    /// How many entries the page holds (the kernel's `KVM_COALESCED_MMIO_MAX`).
    fn capacity(&self) -> u32 {
        ((self.size - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    /// Takes the oldest queued write off the ring.
    pub fn pop(&mut self) -> Option<kvm_coalesced_mmio> {
        let ring = self.ring.as_ptr();
        // SAFETY: `ring` points at the mapped page, whose header the kernel writes
        // concurrently: volatile reads of aligned u32s see whole values.
        let (first, last) = unsafe {
            (
                std::ptr::addr_of!((*ring).first).read_volatile(),
                std::ptr::addr_of!((*ring).last).read_volatile(),
            )
        };
        if first == last || first >= self.capacity() {
            return None;
        }
        // The kernel writes an entry before it moves `last` past it (smp_wmb).
        fence(Ordering::Acquire);
        // SAFETY: `first` is below the ring's capacity, so the entry lies inside the page, and
        // the kernel does not write it again until `first` has moved past it.
        let entry = unsafe {
            std::ptr::addr_of!((*ring).coalesced_mmio)
                .cast::<kvm_coalesced_mmio>()
                .add(first as usize)
                .read_volatile()
        };
        // The entry is read before the kernel may reuse its slot.
        fence(Ordering::Release);
        // SAFETY: as above; only this reader writes `first`.
        unsafe {
            std::ptr::addr_of_mut!((*ring).first).write_volatile((first + 1) % self.capacity());
        }
        Some(entry)
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: the page was mapped in `map` with this size and nothing refers to it after
        // the value is gone.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.size) };
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens the existing tap device `name` (non-blocking, close-on-exec) with virtio-net headers
/// of `vnet_hdr_len` bytes in front of every frame.
pub fn open_tap(name: &str, vnet_hdr_len: i32) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad tap name"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_nonblock()
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an `ifreq` (name + flags, padded to 40 bytes), which `IfReq`
    // matches in layout and size; `req` outlives the call and the fd is a tun fd we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at a live local.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &vnet_hdr_len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Takes over an inherited tap descriptor (opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`):
/// close-on-exec, non-blocking, with `vnet_hdr_len`-byte headers.
pub fn tap_from_fd(fd: i32, vnet_hdr_len: i32) -> io::Result<File> {
    let file = File::from(adopt_fd(fd)?);
    // SAFETY: F_GETFL on a descriptor we own; integer arguments only.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own; integer arguments only.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at a live local.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &vnet_hdr_len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

/// Takes over an inherited descriptor of the disk (close-on-exec).
pub fn disk_from_fd(fd: i32) -> io::Result<File> {
    Ok(File::from(adopt_fd(fd)?))
}

/// Takes over an inherited descriptor given on the command line.
fn adopt_fd(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only checks that `fd` is open; it touches no memory.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not open"),
        ));
    }
    // SAFETY: the caller passed this descriptor to us to own (the tap or the disk, never the
    // same one: `vm::run` refuses that); nothing else in the process refers to it, and it was just checked to be open. The close-on-exec flag is set
    // below so no later exec could inherit it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD with FD_CLOEXEC on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
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

/// Moves the calling thread into the network namespace pinned at `path` (threads started later
/// inherit it).
pub fn join_netns(path: &Path) -> io::Result<()> {
    let ns = File::open(path)?;
    // SAFETY: setns takes an open descriptor, which `ns` keeps open across the call, and a
    // namespace type; no memory is passed.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts `/dev/null` on standard input (in place of the hand-over socket, once it has served).
pub fn stdin_to_null() -> io::Result<()> {
    let null = File::open("/dev/null")?;
    // SAFETY: dup2 onto descriptor 0 with a descriptor `null` keeps open across the call; it
    // replaces standard input, which nothing in the process holds a Rust handle to but the
    // hand-over, which is done with it.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The signal a [`ThreadTimer`] sends: the first real-time signal the C library leaves free.
fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Does nothing: the signal is only there to interrupt the thread's blocking call (`KVM_RUN`
/// returns `EINTR`).
extern "C" fn interrupt_only(_: libc::c_int) {}

/// A timer that interrupts the thread that made it: its signal has a handler that does
/// nothing, installed without `SA_RESTART`, so a blocking call of that thread (`KVM_RUN`)
/// returns `EINTR` when it fires. Any thread of the process may set it.
pub struct ThreadTimer {
    id: libc::timer_t,
}

// SAFETY: a `timer_t` is the kernel's id of a timer of this process (glibc keeps it as a small
// integer in a pointer); any thread may set it with `timer_settime`, and it is deleted only on
// drop, by its one owner.
unsafe impl Send for ThreadTimer {}

impl ThreadTimer {
    /// A timer signalling the calling thread, disarmed.
    pub fn for_this_thread() -> io::Result<ThreadTimer> {
        let signal = timer_signal();
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) that is then
        // filled in; the handler is an `extern "C" fn(c_int)` that touches nothing, so it is
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupt_only as extern "C" fn(libc::c_int) as usize;
            if libc::sigemptyset(&mut action.sa_mask) != 0
                || libc::sigaction(signal, &action, std::ptr::null_mut()) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        // SAFETY: an all-zero sigevent is a valid value whose used fields are then set; the
        // kernel reads it during the call only, and writes the new timer's id to `id`.
        let id = unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = signal;
            event.sigev_notify_thread_id = tid;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) != 0 {
                return Err(io::Error::last_os_error());
            }
            id
        };
        Ok(ThreadTimer { id })
    }

    /// Fires every `period` from now on, or never again with `None`.
    pub fn set_period(&self, period: Option<std::time::Duration>) -> io::Result<()> {
        let spec = period.map_or(
            libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            |p| libc::timespec {
                tv_sec: p.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(p.subsec_nanos()),
            },
        );
        let value = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: `self.id` is a live timer of this process (deleted only on drop) and `value`
        // is a valid itimerspec the kernel only reads.
        if unsafe { libc::timer_settime(self.id, 0, &value, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: `self.id` is a live timer of this process, deleted once, here.
        unsafe { libc::timer_delete(self.id) };
    }
}
