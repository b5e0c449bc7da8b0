//! crid-vmm: the microVM monitor crid runs unikernel containers with (hypervisor `crid`).
//!
//! Built from the rust-vmm crates: `kvm-ioctls` for the VM, `vm-memory` for guest RAM,
//! `linux-loader` for PVH ELF, vmlinux and bzImage kernels, `vm-superio` for the serial port and
//! the i8042 controller, `virtio-queue` for the rings of virtio-net and virtio-blk, `seccompiler` for the thread
//! filters. One process per guest: it boots
//! the kernel, copies the guest's serial output to stdout (crid's monitor turns it into the CRI
//! log) and exits with the guest's status — the byte written to the debug-exit port, 0 on a
//! reset — or 1 with a message on stderr when the VMM itself fails.
//!
//! Modules: [`memory`] (address space), [`boot`] (loaders and boot structures), [`cpu`]
//! (vCPU registers), [`devices`] (port-I/O bus, virtio-mmio, virtio-net and virtio-blk), [`vm`] (set-up
//! and run loop), [`handover`] (the prepared mode's protocol), [`seccomp`],
//! and `sys`, the only module with `unsafe`.

pub mod boot;
pub mod cpu;
pub mod devices;
pub mod handover;
pub mod memory;
pub mod seccomp;
mod sys;
pub mod vm;

use std::path::PathBuf;

pub use devices::GuestExit;

/// What to boot and how to confine the VMM.
#[derive(Debug, Clone)]
pub struct Config {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Drop to this uid/gid once `/dev/kvm` and the files are open.
    pub user: Option<(u32, u32)>,
    /// Chroot here (an empty directory) before dropping privileges.
    pub chroot: Option<PathBuf>,
    /// Install the seccomp filter on every thread (on unless debugging).
    pub seccomp: bool,
    /// A virtio-net device on this tap.
    pub net: Option<NetConfig>,
    /// A virtio-blk device on this disk.
    pub disk: Option<DiskConfig>,
    /// `cgroup.procs` files the VMM moves itself into (its container's cgroup, one per
    /// hierarchy) before it writes a guest page (on cgroup v1 before it opens `/dev/kvm`): see
    /// [`vm::run`].
    pub cgroup_procs: Vec<PathBuf>,
    /// A network namespace (a pin) the VMM enters first, before it opens the tap by name.
    pub netns: Option<PathBuf>,
}

/// The guest's block device: a raw disk file (or block device), opened before the VMM drops
/// its privileges.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub disk: Disk,
    /// Offered with `VIRTIO_BLK_F_RO` (and a path opened read-only); the guest's writes fail.
    pub read_only: bool,
}

/// Where the disk comes from.
#[derive(Debug, Clone)]
pub enum Disk {
    Path(PathBuf),
    /// An inherited descriptor of the open disk.
    Fd(i32),
}

/// The guest's network device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub tap: Tap,
    pub mac: [u8; 6],
}

/// Where the tap comes from.
#[derive(Debug, Clone)]
pub enum Tap {
    /// An existing tap device, opened by name in the VMM's network namespace.
    Name(String),
    /// An inherited descriptor of a tap opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    Fd(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{op}: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("boot: {0}")]
    Boot(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("guest: {0}")]
    Guest(String),
}

impl VmmError {
    pub(crate) fn kvm(op: &'static str, source: kvm_ioctls::Error) -> Self {
        VmmError::Kvm { op, source }
    }

    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Self {
        VmmError::Io { what, source }
    }
}

/// The process exit status for how the guest ended.
pub fn exit_status(exit: GuestExit) -> i32 {
    match exit {
        GuestExit::Code(n) => i32::from(n),
        GuestExit::Reset | GuestExit::Shutdown => 0,
    }
}

/// Exit status when the VMM itself fails (the message is on stderr).
pub const VMM_FAILURE: i32 = 1;

/// Ends the VMM as `result` says: the guest's status ([`exit_status`]), or [`VMM_FAILURE`] with
/// the message on stderr. Any thread may call it, since the vCPU that ends the guest may not
/// be the main thread's (see [`vm`]); the exit ends the threads still in `KVM_RUN`.
pub fn end(result: Result<GuestExit, VmmError>) -> ! {
    match result {
        Ok(exit) => exit_once(exit_status(exit)),
        Err(e) => {
            eprintln!("crid-vmm: {e}");
            exit_once(VMM_FAILURE)
        }
    }
}

/// Ends the VMM with status 0 before its guest ran (crid let go of it).
pub fn end_unstarted() -> ! {
    exit_once(0)
}

/// Exits the process with `status`, once: a thread that comes second waits for the first
/// one's exit instead of running the C library's exit handlers again at the same time.
fn exit_once(status: i32) -> ! {
    static ENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if ENDING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    std::process::exit(status)
}
