//! Preparing a unikernel container for its monitor, in one call: resolve the image's files,
//! choose the accelerator, wire the pod network, build the launch plan and write its files.
//! The container backend then hands [`PreparedVm::argv`], with the network namespace and the
//! cgroup the VMM joins between fork and exec, to the monitor (`Launch::Command`),
//! maps the recorded exit status with [`LaunchPlan::guest_exit_code`], and calls [`release`]
//! when the container is stopped or removed.
//!
//! What the VMM gets (QEMU; see [`super::qemu`] and [`super::cgroup`]): its own cgroup (the
//! container's), an unprivileged uid/gid of its own (`vmm_uid_base` + a hash of the container
//! id, within `vmm_uid_count`; 0 keeps VMMs root), an empty chroot directory, a QMP socket for
//! graceful stops, and — for a block device — a qcow2 overlay over the image's file.
//! crid-vmm drops privileges the same way; it, Firecracker, Cloud Hypervisor and Solo5 (these
//! three as root in the cgroup) get a private copy (a reflink where the file system can) of the
//! block file, since they take raw files only. A guest with a block root (see
//! [`super::blockroot`]) gets the container's raw root image, built by the container backend,
//! as its first disk on every hypervisor.

use std::path::{Path, PathBuf};

use imagestore::{HypervisorKind, UnikernelInfo};
use serde::{Deserialize, Serialize};

use super::accel::{self, AccelDecision, AcceleratorMode, KvmProbe};
use super::blockroot;
use super::cgroup::{Devices, Limits, VmCgroup};
use super::guestfiles::{self, GuestMount};
use super::net;
use super::virtiofs::{self, SharedRoot, Transport};
use super::{
    DEFAULT_MEMORY_MIB, GuestNet, LaunchPlan, MacAddr, VmSpec, default_binary_dirs, find_binary,
    hypervisor_for, resolve_in_layers,
};
use crate::error::{SandboxError, invalid};

/// Node-wide VM settings (crid's `[vm]` configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSettings {
    pub accelerator: AcceleratorMode,
    /// Where hypervisor binaries are looked up.
    pub binary_dirs: Vec<PathBuf>,
    /// Guest memory when the container sets no memory limit.
    pub default_memory_mib: u64,
    /// Upper bound of vCPUs per guest.
    pub max_vcpus: u32,
    /// Per-binary overrides (`qemu-system-x86_64` → a name searched in `binary_dirs` or an
    /// absolute path), from crid's `vm.*_path` settings.
    pub binaries: Vec<(String, PathBuf)>,
    /// VMMs that can drop privileges run as uid = gid = `vmm_uid_base` + (a hash of the
    /// container id modulo `vmm_uid_count`); a count of 0 keeps them root.
    pub vmm_uid_base: u32,
    pub vmm_uid_count: u32,
    /// Added to the guest's memory for the container cgroup's memory limit (the VMM's own
    /// memory), when the container has a memory limit.
    pub vmm_memory_overhead_mib: u64,
    /// Firmware for QEMU's `pc` machine (see [`super::qemu`]); `None`, or a file that is not
    /// there, keeps QEMU's SeaBIOS.
    pub qemu_firmware: Option<PathBuf>,
    /// crid's PCI firmware, where crid installed it ([`super::pcishim::install`]): QEMU's
    /// `pc` machine boots PCI guests with it; `None` (`vm.pci_shim =
    /// false`) gives them SeaBIOS.
    #[serde(default)]
    pub pci_shim: Option<PathBuf>,
    /// QEMU's microvm build (an absolute path, or a name searched in `binary_dirs`), which
    /// starts faster than the full binary, for the guests it can run (see [`super::qemu`]);
    /// `None`, or a binary that is not there, runs every guest on the full one.
    #[serde(default)]
    pub qemu_microvm: Option<PathBuf>,
    /// Runtime handlers whose pods run unikernel images as VMs (`runtime.unikernel_handlers`).
    pub unikernel_handlers: Vec<String>,
    /// Other handlers whose pods still run a unikernel image as a VM when they meet one
    /// (`runtime.unikernel_autodetect_handlers`); under any other handler such an image is
    /// `FailedPrecondition`.
    pub autodetect_handlers: Vec<String>,
    /// Images annotated for these hypervisors run on crid-vmm when their guest is compatible
    /// (`vm.crid_vmm_for`; see [`super::crid_vmm::substitute`]).
    #[serde(default)]
    pub crid_vmm_for: Vec<HypervisorKind>,
    /// How many crid-vmm guests of the default memory size are kept prepared
    /// (`vm.crid_vmm_pool`; see [`super::pool`]); 0 prepares none.
    #[serde(default)]
    pub crid_vmm_pool: usize,
    /// QEMU processes kept started and paused for PCI guests in a pod network
    /// (`vm.qemu_pool`; see [`super::qemu_pool`]); 0 prepares none.
    pub qemu_pool: usize,
}

impl VmSettings {
    /// The memory limit of the VMM's cgroup for a guest of `guest_mib` MiB: the guest's RAM
    /// plus [`VmSettings::vmm_memory_overhead_mib`] where the container has a memory limit
    /// (`memory_limit_bytes` > 0), none where it has not (see [`super::cgroup`]).
    pub fn cgroup_memory_bytes(&self, memory_limit_bytes: i64, guest_mib: u64) -> Option<u64> {
        (memory_limit_bytes > 0).then(|| {
            guest_mib
                .saturating_add(self.vmm_memory_overhead_mib)
                .saturating_mul(1024 * 1024)
        })
    }

    /// Finds a monitor binary: its override (absolute, or a name searched in `binary_dirs`),
    /// else its own name in `binary_dirs`. `FailedPrecondition` naming it when absent.
    pub fn binary(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let wanted = self
            .binaries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| PathBuf::from(name));
        self.resolve(name, &wanted)
    }

    /// Finds `wanted`: an absolute path as it is, a bare name in `binary_dirs` (`name` names
    /// the binary in errors).
    fn resolve(&self, name: &str, wanted: &Path) -> Result<PathBuf, SandboxError> {
        if wanted.is_absolute() {
            let dir = wanted.parent().map(Path::to_path_buf).unwrap_or_default();
            let file = wanted
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or(name)
                .to_string();
            return find_binary(&file, &[dir]);
        }
        match wanted.to_str() {
            Some(n) if !n.contains('/') => find_binary(n, &self.binary_dirs),
            _ => Err(SandboxError::MissingBinary {
                binary: wanted.display().to_string(),
                searched: "a relative path is not searched".into(),
            }),
        }
    }

    /// QEMU's microvm build, when configured and installed.
    pub fn qemu_microvm(&self) -> Option<PathBuf> {
        let wanted = self.qemu_microvm.as_ref()?;
        self.resolve(super::qemu::MICROVM_BINARY, wanted).ok()
    }
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            accelerator: AcceleratorMode::Auto,
            binary_dirs: default_binary_dirs(),
            default_memory_mib: DEFAULT_MEMORY_MIB,
            max_vcpus: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(1))
                .unwrap_or(1),
            binaries: vec![(virtiofs::BINARY.into(), virtiofs::DEFAULT_PATH.into())],
            vmm_uid_base: DEFAULT_VMM_UID_BASE,
            vmm_uid_count: DEFAULT_VMM_UID_COUNT,
            vmm_memory_overhead_mib: DEFAULT_VMM_MEMORY_OVERHEAD_MIB,
            qemu_firmware: Some(PathBuf::from(DEFAULT_QEMU_FIRMWARE)),
            pci_shim: None,
            qemu_microvm: Some(PathBuf::from(super::qemu::MICROVM_BINARY)),
            unikernel_handlers: vec!["urunc".into(), "unikernel".into()],
            autodetect_handlers: vec![],
            crid_vmm_for: vec![],
            crid_vmm_pool: 0,
            qemu_pool: 0,
        }
    }
}

/// Debian's qboot (package `qemu-system-data`).
pub const DEFAULT_QEMU_FIRMWARE: &str = "/usr/share/qemu/qboot.rom";

/// First uid of the VMMs' range: far above login users and the usual subordinate-id ranges.
pub const DEFAULT_VMM_UID_BASE: u32 = 2_000_000_000;
/// Size of the VMMs' uid range.
pub const DEFAULT_VMM_UID_COUNT: u32 = 1_000_000;
/// QEMU's own memory on top of the guest's (device models, and TCG's translation cache).
pub const DEFAULT_VMM_MEMORY_OVERHEAD_MIB: u64 = 160;

impl VmSettings {
    /// The uid (= gid) the VMM of `container_id` runs as; `None` when VMMs stay root. Two
    /// containers share a uid only on a hash collision within the range.
    pub fn vmm_uid(&self, container_id: &str) -> Option<u32> {
        if self.vmm_uid_count == 0 {
            return None;
        }
        // FNV-1a: stable across crid versions and restarts.
        let mut h: u32 = 0x811c_9dc5;
        for b in container_id.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let uid = self
            .vmm_uid_base
            .checked_add(h % self.vmm_uid_count)
            .filter(|u| *u != 0 && *u != u32::MAX)?;
        Some(uid)
    }
}

/// One unikernel container to prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRequest {
    pub container_id: String,
    pub info: UnikernelInfo,
    /// The image's unpacked layer directories, bottom-most first.
    pub layer_dirs: Vec<PathBuf>,
    /// The pod's network namespace; `None` runs the guest without a network.
    pub netns: Option<PathBuf>,
    /// The CNI interface in that namespace (`eth0`).
    pub iface: String,
    /// CRI `memory_limit_in_bytes` (0: none).
    pub memory_limit_bytes: i64,
    /// CRI `cpu_quota` / `cpu_period` (0: none).
    pub cpu_quota: i64,
    pub cpu_period: i64,
    /// CRI command + args (empty: the image's command line).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The container's private directory for the plan's files and its block image copy.
    pub run_dir: PathBuf,
    /// The container's cgroup, relative to each hierarchy's root (see [`super::cgroup`]);
    /// `None` leaves the VMM in the monitor's cgroup.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// CRI `cpu_shares` (0: none).
    #[serde(default)]
    pub cpu_shares: i64,
    /// Where the VMM's control socket goes (QEMU's QMP), for graceful stops; a short path
    /// (unix socket paths are limited to 108 bytes).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// CRI mounts copied into the guest (see [`super::guestfiles`]); only for guests that
    /// [`guestfiles::takes_files`].
    #[serde(default)]
    pub mounts: Vec<GuestMount>,
    /// The ports the guest serves (kubelet's `io.kubernetes.container.ports`): with any, the
    /// guest is routed behind the pod namespace instead of taking over its interface (see
    /// [`net::setup_routed_with`]).
    #[serde(default)]
    pub ports: Vec<net::GuestPort>,
    /// The pod's DNS servers (from its `resolv.conf`), for guests that take them.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// The container's root file system, shared with a QEMU guest as a directory (`linux`
    /// over [`virtiofs`], `unikraft` over 9p, see [`super::ninep`]); mounted by the container backend before [`prepare`]. The mounts and
    /// the environment are in it, so nothing is copied into the initrd.
    #[serde(default)]
    pub shared_root: Option<SharedRoot>,
}

/// A prepared guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVm {
    pub plan: LaunchPlan,
    /// The VMM's command line; the monitor runs it directly (no shell, no `nsenter`).
    pub argv: Vec<String>,
    /// The pod's network namespace, which the VMM joins between fork and exec.
    pub netns: Option<PathBuf>,
    /// The container cgroup's `cgroup.procs` files, joined the same way (crid-vmm, which joins
    /// them itself, gets them on its command line instead).
    pub cgroup_procs: Vec<PathBuf>,
    pub net: Option<GuestNet>,
    pub accel: AccelDecision,
}

/// Guest memory in MiB for a CRI memory limit (rounded up; the default when unset).
pub fn memory_mib(limit_bytes: i64, default_mib: u64) -> u64 {
    match u64::try_from(limit_bytes) {
        Ok(0) | Err(_) => default_mib.max(1),
        Ok(b) => b.div_ceil(1024 * 1024).max(1),
    }
}

/// vCPUs for a CRI CPU quota/period (rounded up, at least 1, at most `max`).
pub fn vcpus(quota: i64, period: i64, max: u32) -> u32 {
    if quota <= 0 || period <= 0 {
        return 1;
    }
    let n = quota / period + i64::from(quota % period != 0);
    u32::try_from(n).unwrap_or(u32::MAX).clamp(1, max.max(1))
}

/// The host path of the guest's kernel in the image's layers.
pub fn kernel(req: &VmRequest) -> Result<PathBuf, SandboxError> {
    resolve_in_layers(&req.layer_dirs, &req.info.binary)
}

/// Checks a request without side effects (for `CreateContainer`): the guest/hypervisor pair,
/// the image's files, the accelerator and the hypervisor binary. Returns the accelerator
/// decision.
pub fn check(
    req: &VmRequest,
    settings: &VmSettings,
    host: &KvmProbe,
) -> Result<AccelDecision, SandboxError> {
    let info = &req.info;
    super::check_pair(info)?;
    kernel(req)?;
    for p in info.initrd.iter().chain(info.block.iter()) {
        resolve_in_layers(&req.layer_dirs, p)?;
    }
    let accel = accel::decide(
        settings.accelerator,
        info.unikernel_type,
        info.hypervisor,
        host,
    )?;
    settings.binary(hypervisor_for(info.hypervisor).binary_name())?;
    if req.shared_root.as_ref().is_some_and(uses_virtiofsd) {
        settings.binary(virtiofs::BINARY)?;
    }
    if block_root(req).is_some() {
        settings.binary(blockroot::MKFS)?;
    }
    Ok(accel)
}

/// The container exit code for a VMM exit code as the monitor records it (the exit status, or
/// 128 + signal). With QEMU's debug-exit an odd status `(N << 1) | 1` is the guest's `N`; since
/// the monitor reports a signal death as `128 + signal`, codes that read as a kill by SIGHUP,
/// SIGINT, SIGQUIT, SIGABRT, SIGKILL, SIGSEGV or SIGTERM stay as they are (so a guest exit code
/// of 64 or more can be misread as such a signal).
pub fn container_exit_code(mapping: super::ExitMapping, code: i32) -> i32 {
    const KILLS: [i32; 7] = [1, 2, 3, 6, 9, 11, 15];
    match mapping {
        super::ExitMapping::Direct => code,
        super::ExitMapping::QemuDebugExit => {
            if code > 128 && KILLS.contains(&(code - 128)) {
                code
            } else if code & 1 == 1 {
                code >> 1
            } else {
                code
            }
        }
    }
}

/// What an entry was started with that a container's plan must use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// The tap in the pool's namespace.
    pub tap: String,
    pub mac: MacAddr,
    pub uid: u32,
    /// The pool's empty directory.
    pub chroot: PathBuf,
    /// The QMP socket as QEMU was given it.
    pub qmp: PathBuf,
    /// The RAM file as QEMU was given it (unlinked once crid has it open).
    pub ram: PathBuf,
}

impl Seat {
    /// `spec` on this seat: its tap (for the address the guest gets, `net`'s), MAC, uid,
    /// chroot, QMP socket and RAM file are the seat's.
    pub fn apply(&self, spec: &VmSpec, net: Option<GuestNet>) -> VmSpec {
        VmSpec {
            net: net.map(|n| GuestNet {
                tap: self.tap.clone(),
                mac: self.mac,
                ..n
            }),
            vmm_user: Some((self.uid, self.uid)),
            chroot: Some(self.chroot.clone()),
            control_socket: Some(self.qmp.clone()),
            guest_ram: Some(self.ram.clone()),
            ..spec.clone()
        }
    }

    /// Whether the guest `spec` (its network not set up yet) fits the entry whose command line
    /// is `entry_argv`: its kernel is a PVH ELF (crid loads only those; another boots with
    /// SeaBIOS the usual way) and its command line on this seat is the entry's.
    pub fn fits(&self, spec: &VmSpec, entry_argv: &[String], qemu: &Path) -> bool {
        let probe = self.apply(spec, Some(placeholder_net()));
        super::qemu::is_pvh_elf(&spec.kernel)
            && self.argv(&probe, qemu).ok().as_deref() == Some(entry_argv)
    }

    /// The QEMU command line (program first) for `spec` on this seat.
    pub fn argv(&self, spec: &VmSpec, qemu: &Path) -> Result<Vec<String>, SandboxError> {
        let plan = super::plan_with(spec, qemu)?;
        let mut argv = vec![plan.program.display().to_string()];
        argv.extend(plan.args);
        Ok(argv)
    }
}

/// A network whose addresses are unknown: they reach the guest on its command line, in the
/// boot block, not QEMU's.
pub fn placeholder_net() -> GuestNet {
    GuestNet {
        tap: String::new(),
        ip: std::net::Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gateway: None,
        mac: MacAddr([0; 6]),
        mtu: 0,
    }
}

/// A prepared QEMU ([`super::qemu_pool`]) the guest is to be handed: [`prepare_pooled`] sets
/// the guest up on its seat and hands it the kernel, tap, cgroup and QMP socket instead of
/// planning a QEMU to start.
#[derive(Clone, Copy)]
pub struct Pooled<'a> {
    pub seat: &'a Seat,
    /// The entry's command line (see [`Seat::argv`]).
    pub argv: &'a [String],
    /// The guest's RAM.
    pub ram: &'a std::fs::File,
    /// The QEMU.
    pub vmm_pid: i32,
    /// The pool's network namespace, where the entry's tap is.
    pub netns: &'a Path,
}

/// Prepares the guest (see the module documentation). On error nothing is left behind.
pub fn prepare(
    req: &VmRequest,
    settings: &VmSettings,
    host: &KvmProbe,
) -> Result<PreparedVm, SandboxError> {
    prepare_with(req, settings, host, None)?.ok_or_else(|| SandboxError::Runtime {
        op: "prepare".into(),
        reason: "no prepared QEMU was asked for".into(),
    })
}

/// [`prepare`] on a prepared QEMU; `None` when the guest does not fit it (its command line
/// would not be the entry's): then nothing was set up and the start goes the usual way.
pub fn prepare_pooled(
    req: &VmRequest,
    settings: &VmSettings,
    host: &KvmProbe,
    pooled: Pooled<'_>,
) -> Result<Option<PreparedVm>, SandboxError> {
    prepare_with(req, settings, host, Some(pooled))
}

fn prepare_with(
    req: &VmRequest,
    settings: &VmSettings,
    host: &KvmProbe,
    pooled: Option<Pooled<'_>>,
) -> Result<Option<PreparedVm>, SandboxError> {
    let info = &req.info;
    super::check_pair(info)?;
    let kernel = kernel(req)?;
    let image_initrd = info
        .initrd
        .as_ref()
        .map(|p| resolve_in_layers(&req.layer_dirs, p))
        .transpose()?;
    let block_src = info
        .block
        .as_ref()
        .map(|p| resolve_in_layers(&req.layer_dirs, p))
        .transpose()?;
    let accel = accel::decide(
        settings.accelerator,
        info.unikernel_type,
        info.hypervisor,
        host,
    )?;
    // Fail on a missing VMM before touching the network.
    let vmm = settings.binary(hypervisor_for(info.hypervisor).binary_name())?;
    let is_qemu = info.hypervisor == HypervisorKind::Qemu;
    let shared_root = req
        .shared_root
        .as_ref()
        .filter(|root| is_qemu && root.transport != Transport::Block);
    // Built by the container backend before (see [`blockroot`]).
    let block_root = block_root(req);
    if let Some(image) = &block_root {
        if !image.is_file() {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("the guest's root image {} was not built", image.display()),
            });
        }
    }
    let virtiofsd = shared_root
        .filter(|root| uses_virtiofsd(root))
        .map(|_| settings.binary(virtiofs::BINARY))
        .transpose()?;
    std::fs::create_dir_all(&req.run_dir).map_err(|e| SandboxError::io(&req.run_dir, e))?;
    let undo = |e: SandboxError| {
        let _ = release(req);
        e
    };
    // Mounts and the environment file reach an initrd guest in a private copy of its initrd,
    // unless they are in its shared root.
    let files_in_initrd = image_initrd.is_some()
        && guestfiles::takes_files(info)
        && shared_root.is_none()
        && block_root.is_none();
    let initrd = match image_initrd {
        Some(base) if files_in_initrd => {
            let out = req.run_dir.join(INITRD_COPY);
            let own: Vec<String> = std::iter::once(&info.binary)
                .chain(info.initrd.iter())
                .chain(info.block.iter())
                .map(|p| p.display().to_string())
                .chain(std::iter::once("/urunc.json".to_owned()))
                .collect();
            // urunc's `mountRootfs=false`: the guest gets only its initrd, mounts and env.
            let rootfs: &[PathBuf] = if info.mount_rootfs == Some(false) {
                &[]
            } else {
                &req.layer_dirs
            };
            let argv = super::cmdline::workload_argv(&req.args, &info.cmdline);
            guestfiles::build_initrd(&base, rootfs, &own, &req.mounts, &req.env, &argv, &out)
                .map_err(undo)?;
            Some(out)
        }
        other => other,
    };
    // The guest writes to its block device, never to the shared layer file: QEMU gets a qcow2
    // overlay backed by it (read-only), the others a private copy. A block root is the
    // container's own raw image instead (such images have no block file of their own).
    let block = match block_src {
        _ if block_root.is_some() => block_root.clone(),
        Some(src) if is_qemu => Some(create_overlay(settings, &src, &req.run_dir).map_err(undo)?),
        Some(src) => {
            let dst = req.run_dir.join(BLOCK_COPY);
            std::fs::copy(&src, &dst).map_err(|e| undo(SandboxError::io(&dst, e)))?;
            Some(dst)
        }
        None => None,
    };
    // QEMU and crid-vmm drop to their own uid after setting up, chrooted into an empty directory.
    let drops_privileges = is_qemu || info.hypervisor == HypervisorKind::Crid;
    let (vmm_user, chroot) = match settings.vmm_uid(&req.container_id) {
        // Its own uid, and the pool's empty directory (see `Pooled`).
        _ if pooled.is_some() => (None, None),
        Some(uid) if drops_privileges => {
            let dir = req.run_dir.join(CHROOT_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| undo(SandboxError::io(&dir, e)))?;
            (Some((uid, uid)), Some(dir))
        }
        _ => (None, None),
    };
    if let Some(dir) = chroot
        .as_ref()
        .filter(|_| shared_root.is_some_and(|root| root.transport == Transport::NineP))
    {
        super::ninep::mount_proc(dir).map_err(undo)?;
    }
    let firmware = settings
        .qemu_firmware
        .clone()
        .filter(|_| is_qemu)
        .filter(|fw| {
            let there = fw.is_file();
            if !there {
                tracing::warn!(firmware = %fw.display(), "QEMU firmware missing: SeaBIOS boots the pc machine");
            }
            there
        });
    let control_socket = req.control_socket.clone().filter(|_| is_qemu);
    if let Some(sock) = &control_socket {
        let _ = std::fs::remove_file(sock);
    }
    let tap = net::tap_name(&req.container_id);
    let mem = memory_mib(req.memory_limit_bytes, settings.default_memory_mib);
    let spec_with = |net: Option<GuestNet>| VmSpec {
        info: info.clone(),
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        block: block.clone(),
        block_overlay: is_qemu && block_root.is_none(),
        memory_mib: mem,
        vcpus: vcpus(req.cpu_quota, req.cpu_period, settings.max_vcpus),
        net,
        args: req.args.clone(),
        // An initrd guest reads its environment from the file in its initrd (or shared root
        // over virtiofs): the kernel command line holds 2 KiB and passes init at most 32
        // variables. Unikraft reads it from its command line only (`env.vars`), 9p root or not.
        env: if files_in_initrd || block_root.is_some() || shared_root.is_some_and(uses_virtiofsd) {
            vec![]
        } else {
            req.env.clone()
        },
        argv_in_initrd: files_in_initrd,
        accelerator: accel.accelerator,
        run_dir: req.run_dir.clone(),
        vmm_user,
        chroot: chroot.clone(),
        control_socket: control_socket.clone(),
        firmware: firmware.clone(),
        pci_shim: settings.pci_shim.clone().filter(|_| is_qemu),
        dns: req.dns.clone(),
        shared_dir: shared_root
            .filter(|root| uses_virtiofsd(root))
            .map(virtiofs::shared_dir),
        ninep_root: shared_root
            .filter(|root| root.transport == Transport::NineP)
            .map(|root| root.rootfs.clone()),
        block_root: block_root.is_some(),
        qemu_microvm: settings.qemu_microvm().filter(|_| is_qemu),
        guest_ram: None,
    };
    // A prepared QEMU fits when the command line the guest would get on its seat is the
    // entry's; checked before anything of the entry's is touched.
    if let Some(p) = &pooled {
        if req.netns.is_none() || !p.seat.fits(&spec_with(None), p.argv, &vmm) {
            let _ = release(req);
            return Ok(None);
        }
    }
    let limits = Limits {
        memory_bytes: settings.cgroup_memory_bytes(req.memory_limit_bytes, mem),
        cpu_quota: req.cpu_quota,
        cpu_period: req.cpu_period,
        cpu_shares: req.cpu_shares,
        devices: match info.hypervisor {
            HypervisorKind::Crid => Devices::CridVmm,
            _ => Devices::Vmm,
        },
    };
    // A prepared QEMU's move into its cgroup is the longest step of its hand-over (a running
    // process's migration waits for the thread-group lock, once per v1 hierarchy): it runs
    // while the tap is wired and the command line checked.
    let joining = match (&pooled, &req.cgroup) {
        (Some(p), Some(rel)) => {
            let (cg, pid) = (VmCgroup::new(rel.clone()), p.vmm_pid);
            Some(std::thread::spawn(move || join_running(&cg, &limits, pid)))
        }
        _ => None,
    };
    let staged = (|| {
        let guest_net = match (&req.netns, &pooled) {
            (Some(ns), Some(p)) => Some(net::adopt_guest_net(
                p.netns,
                &p.seat.tap,
                ns,
                &req.iface,
                &tap,
                &req.ports,
                p.seat.mac,
            )?),
            (Some(ns), None) => Some(net::setup_guest_net(ns, &req.iface, &tap, &req.ports)?),
            (None, _) => None,
        };
        let spec = match &pooled {
            Some(p) => p
                .seat
                .apply(&spec_with(guest_net.clone()), guest_net.clone()),
            None => spec_with(guest_net.clone()),
        };
        let plan = super::plan_with(&spec, &vmm)?;
        plan.write_files()?;
        let mut argv = vec![plan.program.display().to_string()];
        argv.extend(plan.args.iter().cloned());
        if pooled.is_some_and(|p| p.argv != argv.as_slice()) {
            return Ok(None);
        }
        Ok(Some((guest_net, spec, plan, argv)))
    })();
    // Joined before anything is undone, so that the cgroup is removed after it was made.
    let joined = joining.map(|h| {
        h.join().unwrap_or_else(|_| {
            Err(SandboxError::Runtime {
                op: "join the cgroup".into(),
                reason: "the thread panicked".into(),
            })
        })
    });
    let (guest_net, spec, plan, mut argv) = match staged {
        Ok(Some(staged)) => staged,
        Ok(None) => {
            let _ = release(req);
            return Ok(None);
        }
        Err(e) => return Err(undo(e)),
    };
    if let Some(Err(e)) = joined {
        return Err(undo(e));
    }
    let mut cgroup_procs = Vec::new();
    if let Some(rel) = req.cgroup.as_ref().filter(|_| pooled.is_none()) {
        let cg = VmCgroup::new(rel.clone());
        cg.create(&limits).map_err(undo)?;
        if info.hypervisor == HypervisorKind::Crid {
            // crid-vmm joins the cgroup itself, before it writes a guest page or opens the tap
            // or the disk, in a way that avoids the grace period a thread-group migration can
            // wait for: see [`super::cgroup`] and the `vmm` crate's `vm::run`.
            for procs in cg.procs_files() {
                argv.extend([
                    "--cgroup-procs".into(),
                    super::path_arg(&procs).map_err(undo)?,
                ]);
            }
        } else {
            cgroup_procs = cg.procs_files();
        }
    }
    if let Some(p) = &pooled {
        hand_over(
            p,
            &kernel,
            &plan.guest_cmdline,
            mem,
            control_socket.as_deref(),
        )
        .map_err(undo)?;
    }
    // The share's daemon, listening before the VMM starts (in the VMM's cgroup).
    if let (Some(root), Some(binary)) = (shared_root, &virtiofsd) {
        virtiofs::start(binary, root, &req.run_dir, &cgroup_procs).map_err(undo)?;
    }
    tracing::info!(
        container_id = %req.container_id,
        hypervisor = info.hypervisor.as_str(),
        vmm = %plan.program.display(),
        accelerator = %accel.accelerator,
        vmm_uid = ?spec.vmm_user.map(|u| u.0),
        "unikernel guest prepared"
    );
    Ok(Some(PreparedVm {
        plan,
        argv,
        netns: req.netns.clone(),
        cgroup_procs,
        net: guest_net,
        accel,
    }))
}

/// Creates the cgroup with `limits` and moves the running process `pid` into it: its
/// `cgroup.procs` files move every thread.
fn join_running(cg: &VmCgroup, limits: &Limits, pid: i32) -> Result<(), SandboxError> {
    cg.create(limits)?;
    let pid = pid.to_string();
    for procs in cg.procs_files() {
        std::fs::write(&procs, &pid).map_err(|e| SandboxError::io(&procs, e))?;
    }
    Ok(())
}

/// What a prepared QEMU gets of its guest besides the tap and the cgroup: the kernel and its
/// command line in its RAM, and its QMP socket where the container's is expected.
fn hand_over(
    pooled: &Pooled<'_>,
    kernel: &Path,
    cmdline: &str,
    memory_mib: u64,
    control_socket: Option<&Path>,
) -> Result<(), SandboxError> {
    let ram_end = super::bootblock::ram_below_4g(memory_mib << 20);
    super::bootblock::PvhKernel::read(kernel, ram_end)?.load(
        pooled.ram,
        &pooled.seat.ram,
        cmdline,
    )?;
    if let Some(sock) = control_socket {
        std::fs::rename(&pooled.seat.qmp, sock).map_err(|e| SandboxError::io(sock, e))?;
    }
    Ok(())
}

/// The per-container block files in the run directory.
const BLOCK_COPY: &str = "block.img";
const BLOCK_OVERLAY: &str = "block.qcow2";
/// The guest's initrd with its files appended.
const INITRD_COPY: &str = "initrd.img";
/// The VMM's (empty) chroot directory in the run directory.
const CHROOT_DIR: &str = "chroot";

/// `qemu-img create -f qcow2 -F raw -b BASE OVERLAY`: a copy-on-write overlay of the image's
/// block file, the size of the base. QEMU opens the base read-only.
fn create_overlay(
    settings: &VmSettings,
    base: &Path,
    run_dir: &Path,
) -> Result<PathBuf, SandboxError> {
    let overlay = run_dir.join(BLOCK_OVERLAY);
    let _ = std::fs::remove_file(&overlay);
    let qemu_img = settings.binary("qemu-img")?;
    let base_arg = super::path_arg(base)?;
    let out = std::process::Command::new(&qemu_img)
        .env_clear()
        .envs(crate::monitor::child_env())
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base_arg)
        .arg(&overlay)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SandboxError::io(&qemu_img, e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&overlay);
        return Err(invalid(format!(
            "cannot create the block overlay over {}: {}",
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(overlay)
}

/// The container's root image when its guest boots from a block root (see [`blockroot`]).
pub fn block_root(req: &VmRequest) -> Option<PathBuf> {
    req.shared_root
        .as_ref()
        .filter(|root| root.transport == Transport::Block)
        .map(|_| req.run_dir.join(blockroot::IMAGE))
}

/// Whether a shared root is served by virtiofsd (QEMU serves a 9p one itself).
fn uses_virtiofsd(root: &SharedRoot) -> bool {
    root.transport == Transport::Virtiofs
}

/// Undoes [`prepare`]: kills a virtiofsd still running, removes the tap and redirects, the
/// VMM's cgroup (once its processes are gone), the control socket, and the run directory's
/// plan files, block overlay or copy and root image. Fine to call more than once.
pub fn release(req: &VmRequest) -> Result<(), SandboxError> {
    let mut result = Ok(());
    if let Some(root) = req.shared_root.as_ref().filter(|root| uses_virtiofsd(root)) {
        virtiofs::kill(&req.run_dir, &root.socket);
    }
    if let Some(ns) = &req.netns {
        if ns.exists() {
            result = net::teardown_guest_net(ns, &req.iface, &net::tap_name(&req.container_id));
        }
    }
    if let Some(rel) = &req.cgroup {
        let cg = VmCgroup::new(rel.clone());
        // Normally the VMM was reaped before the exit was collected. Whatever is still in the
        // container's cgroup (a VMM whose kill has not landed yet) is killed; bounded.
        let mut gone = false;
        for attempt in 0..100 {
            gone = cg.remove();
            if gone {
                break;
            }
            if attempt % 10 == 0 {
                for pid in cg.pids() {
                    tracing::warn!(pid, cgroup = %rel.display(), "killing a process left in the VMM's cgroup");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !gone {
            tracing::warn!(container_id = %req.container_id, cgroup = %rel.display(), "cannot remove the VMM's cgroup");
        }
    }
    if let Some(sock) = &req.control_socket {
        let _ = std::fs::remove_file(sock);
    }
    for name in [
        super::firecracker::CONFIG_FILE,
        BLOCK_COPY,
        BLOCK_OVERLAY,
        INITRD_COPY,
        blockroot::IMAGE,
    ] {
        let _ = std::fs::remove_file(req.run_dir.join(name));
    }
    super::ninep::unmount_proc(&req.run_dir.join(CHROOT_DIR));
    let _ = std::fs::remove_dir(req.run_dir.join(CHROOT_DIR));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore::{HypervisorKind, UnikernelSource, UnikernelType};
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Settings that find the fake binaries `names`, made in `root/bin`.
    fn with_fake_bins(root: &Path, names: &[&str]) -> VmSettings {
        let bins = root.join("bin");
        std::fs::create_dir_all(&bins).unwrap();
        for name in names {
            fake_bin(&bins, name);
        }
        VmSettings {
            binary_dirs: vec![bins],
            ..VmSettings::default()
        }
    }

    /// The VMM's cgroup gets the guest's RAM plus the VMM's overhead, and no limit where the
    /// container has none; a huge configured overhead saturates instead of overflowing.
    #[test]
    fn cgroup_memory_is_the_guest_plus_the_overhead() {
        let s = VmSettings {
            vmm_memory_overhead_mib: 64,
            ..VmSettings::default()
        };
        assert_eq!(s.cgroup_memory_bytes(256 << 20, 256), Some(320 << 20));
        assert_eq!(s.cgroup_memory_bytes(0, 256), None);
        let huge = VmSettings {
            vmm_memory_overhead_mib: u64::MAX,
            ..VmSettings::default()
        };
        assert_eq!(huge.cgroup_memory_bytes(1, 1), Some(u64::MAX));
    }

    /// qemu-img, like every child of crid, starts with `PATH` as its only variable.
    #[test]
    fn qemu_img_gets_only_path() {
        let d = tempfile::tempdir().unwrap();
        let settings = with_fake_bins(d.path(), &[]);
        let bins = &settings.binary_dirs[0];
        let env = d.path().join("env");
        let script = format!(
            "#!/bin/sh\ncat /proc/$$/environ > {}\n: > \"$9\"\n",
            env.display()
        );
        std::fs::write(bins.join("qemu-img"), script).unwrap();
        std::fs::set_permissions(
            bins.join("qemu-img"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let base = d.path().join("base.img");
        std::fs::write(&base, b"disk").unwrap();
        create_overlay(&settings, &base, d.path()).unwrap();
        let vars = std::fs::read(&env).unwrap();
        let names: Vec<_> = vars
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v.split(|b| *b == b'=').next().unwrap()).into_owned())
            .collect();
        assert_eq!(names, ["PATH"]);
    }

    fn request(root: &Path, t: UnikernelType, h: HypervisorKind) -> VmRequest {
        let layer = root.join("layer0");
        std::fs::create_dir_all(layer.join("unikernel")).unwrap();
        std::fs::write(layer.join("unikernel/kernel"), b"kernel").unwrap();
        std::fs::write(layer.join("unikernel/disk.img"), b"disk").unwrap();
        VmRequest {
            container_id: "c0ffee".into(),
            info: UnikernelInfo {
                cmdline: "hello".into(),
                block: Some("/unikernel/disk.img".into()),
                ..UnikernelInfo::new(t, h, "/unikernel/kernel", UnikernelSource::UruncJson)
            },
            layer_dirs: vec![layer],
            netns: None,
            iface: "eth0".into(),
            memory_limit_bytes: 64 * 1024 * 1024 + 1,
            cpu_quota: 150_000,
            cpu_period: 100_000,
            args: vec![],
            env: vec![],
            run_dir: root.join("run"),
            cgroup: None,
            cpu_shares: 0,
            control_socket: None,
            mounts: vec![],
            ports: vec![],
            dns: vec![],
            shared_root: None,
        }
    }

    /// A root-owned shared root `root/rootfs` reached by `transport` (through `root/<socket>`).
    fn shared_root(root: &Path, socket: &str, transport: Transport) -> SharedRoot {
        SharedRoot {
            rootfs: root.join("rootfs"),
            workdir: "/".into(),
            uid: 0,
            gid: 0,
            socket: root.join(socket),
            transport,
        }
    }

    fn host() -> KvmProbe {
        KvmProbe {
            usable: true,
            pvm: false,
            detail: "test".into(),
        }
    }

    #[test]
    fn exit_codes_from_the_monitor() {
        use crate::vm::ExitMapping::*;
        assert_eq!(container_exit_code(QemuDebugExit, 7), 3);
        assert_eq!(container_exit_code(QemuDebugExit, 1), 0);
        assert_eq!(container_exit_code(QemuDebugExit, 0), 0);
        assert_eq!(container_exit_code(QemuDebugExit, 137), 137);
        assert_eq!(container_exit_code(QemuDebugExit, 143), 143);
        assert_eq!(container_exit_code(QemuDebugExit, 2), 2);
        assert_eq!(container_exit_code(Direct, 7), 7);
    }

    #[test]
    fn binary_overrides() {
        let dir = tempfile::tempdir().unwrap();
        fake_bin(dir.path(), "my-qemu");
        let s = VmSettings {
            binary_dirs: vec![dir.path().to_path_buf()],
            binaries: vec![
                ("qemu-system-x86_64".into(), dir.path().join("my-qemu")),
                ("firecracker".into(), "my-qemu".into()),
                ("cloud-hypervisor".into(), "/nonexistent/ch".into()),
            ],
            ..VmSettings::default()
        };
        assert_eq!(
            s.binary("qemu-system-x86_64").unwrap(),
            dir.path().join("my-qemu")
        );
        assert_eq!(s.binary("firecracker").unwrap(), dir.path().join("my-qemu"));
        let err = s.binary("cloud-hypervisor").unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("\"ch\""), "{err}");
        assert!(s.binary("solo5-hvt").is_err());
    }

    /// The microvm build: a name searched in the binary directories, an absolute path, or
    /// none (not configured, or not installed).
    #[test]
    fn qemu_microvm_build_is_found_or_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = with_fake_bins(dir.path(), &["qemu-system-x86_64-microvm", "my-microvm"]);
        let bins = dir.path().join("bin");
        assert_eq!(
            s.qemu_microvm(),
            Some(bins.join("qemu-system-x86_64-microvm"))
        );
        s.qemu_microvm = Some(bins.join("my-microvm"));
        assert_eq!(s.qemu_microvm(), Some(bins.join("my-microvm")));
        s.qemu_microvm = Some("missing".into());
        assert_eq!(s.qemu_microvm(), None);
        s.qemu_microvm = None;
        assert_eq!(s.qemu_microvm(), None);
    }

    #[test]
    fn resources() {
        assert_eq!(memory_mib(0, 256), 256);
        assert_eq!(memory_mib(-1, 256), 256);
        assert_eq!(memory_mib(1, 256), 1);
        assert_eq!(memory_mib(128 << 20, 256), 128);
        assert_eq!(vcpus(0, 0, 8), 1);
        assert_eq!(vcpus(250_000, 100_000, 8), 3);
        assert_eq!(vcpus(9_000_000, 100_000, 4), 4);
    }

    #[test]
    fn prepares_plan_with_private_block_copy() {
        let dir = tempfile::tempdir().unwrap();
        let settings = VmSettings {
            max_vcpus: 4,
            ..with_fake_bins(dir.path(), &["firecracker"])
        };
        let req = request(
            dir.path(),
            UnikernelType::Linux,
            HypervisorKind::Firecracker,
        );
        let p = prepare(&req, &settings, &host()).unwrap();
        assert_eq!(
            p.argv[0],
            dir.path().join("bin/firecracker").display().to_string()
        );
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(req.run_dir.join("firecracker.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["machine-config"]["mem_size_mib"], 65);
        assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
        let copy = req.run_dir.join("block.img");
        assert_eq!(cfg["drives"][0]["path_on_host"], copy.display().to_string());
        assert_eq!(std::fs::read(&copy).unwrap(), b"disk");
        assert_eq!(
            cfg["boot-source"]["kernel_image_path"],
            req.layer_dirs[0]
                .join("unikernel/kernel")
                .display()
                .to_string()
        );
        release(&req).unwrap();
        assert!(!copy.exists());
        assert!(!req.run_dir.join("firecracker.json").exists());
    }

    /// crid-vmm gets a private copy of the block file as its raw disk, as Firecracker does; the
    /// image's layer file stays as it is.
    #[test]
    fn crid_vmm_gets_a_private_disk_copy() {
        let dir = tempfile::tempdir().unwrap();
        let settings = with_fake_bins(dir.path(), &["crid-vmm"]);
        let req = request(dir.path(), UnikernelType::Unikraft, HypervisorKind::Crid);
        let p = prepare(&req, &settings, &host()).unwrap();
        let copy = req.run_dir.join(BLOCK_COPY);
        let argv = p.argv.join(" ");
        assert!(
            argv.contains(&format!("--disk {}", copy.display())),
            "{argv}"
        );
        std::fs::write(&copy, b"guest wrote this").unwrap();
        let layer_file = req.layer_dirs[0].join("unikernel/disk.img");
        assert_eq!(std::fs::read(&layer_file).unwrap(), b"disk");
        release(&req).unwrap();
        assert!(!copy.exists());
    }

    /// urunc's `mountRootfs=false` leaves the image's own files out of a `linux` guest's
    /// initrd; without the key they are copied in.
    #[test]
    fn mount_rootfs_false_leaves_the_image_files_out() {
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for (mount_rootfs, want) in [(None, true), (Some(true), true), (Some(false), false)] {
            let dir = tempfile::tempdir().unwrap();
            let settings = with_fake_bins(dir.path(), &["firecracker"]);
            let mut req = request(
                dir.path(),
                UnikernelType::Linux,
                HypervisorKind::Firecracker,
            );
            let layer = &req.layer_dirs[0];
            std::fs::write(layer.join("unikernel/initrd"), b"").unwrap();
            std::fs::write(layer.join("image-own-file"), b"x").unwrap();
            req.info.initrd = Some("/unikernel/initrd".into());
            req.info.block = None;
            req.info.mount_rootfs = mount_rootfs;
            prepare(&req, &settings, &host()).unwrap();
            let initrd = std::fs::read(req.run_dir.join(INITRD_COPY)).unwrap();
            assert!(contains(&initrd, b"etc/crid/env"), "{mount_rootfs:?}");
            assert_eq!(
                contains(&initrd, b"image-own-file"),
                want,
                "{mount_rootfs:?}"
            );
            release(&req).unwrap();
        }
    }

    /// A `unikraft` guest's 9p root: QEMU's chroot gets the restricted proc QEMU's 9p server
    /// needs to create files (`ninep::mount_proc`), and release detaches and removes it.
    #[test]
    fn a_9p_root_gets_proc_in_the_chroot_until_release() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting proc needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let settings = VmSettings {
            vmm_uid_base: 2_000_000_000,
            vmm_uid_count: 1000,
            ..with_fake_bins(dir.path(), &["qemu-system-x86_64"])
        };
        let mut req = request(dir.path(), UnikernelType::Unikraft, HypervisorKind::Qemu);
        req.info.block = None;
        req.shared_root = Some(shared_root(dir.path(), "unused.sock", Transport::NineP));
        let proc_dir = req.run_dir.join(CHROOT_DIR).join("proc");
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| {
                    l.split(' ').nth(4) == Some(&proc_dir.display().to_string())
                        && l.contains(" - proc ")
                        && l.contains("subset=pid")
                })
                .count()
        };
        let p = prepare(&req, &settings, &host()).unwrap();
        assert!(p.argv.iter().any(|a| a == "-chroot"), "{:?}", p.argv);
        assert_eq!(mounted(), 1);
        // A second start without a release in between does not stack a second proc.
        prepare(&req, &settings, &host()).unwrap();
        assert_eq!(mounted(), 1);
        release(&req).unwrap();
        assert_eq!(mounted(), 0);
        assert!(!req.run_dir.join(CHROOT_DIR).exists());
        // Without a 9p root there is no proc in the chroot.
        req.shared_root = None;
        prepare(&req, &settings, &host()).unwrap();
        assert!(!proc_dir.exists());
        release(&req).unwrap();
    }

    /// A block root (see [`blockroot`]): the container's root image, built by the container
    /// backend, is the guest's first disk, raw and writable, on every hypervisor (Firecracker's
    /// drive JSON, Cloud Hypervisor's and crid-vmm's arguments, QEMU's drive); the image's
    /// initrd is used as it is (nothing appended), the environment and argv stay off the
    /// kernel command line, which names the root; `mkfs.ext4` is checked at create; the image
    /// goes at release.
    #[test]
    fn a_block_root_is_the_guests_first_disk_on_every_hypervisor() {
        for h in [
            HypervisorKind::Firecracker,
            HypervisorKind::CloudHypervisor,
            HypervisorKind::Crid,
            HypervisorKind::Qemu,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let vmm = hypervisor_for(h).binary_name();
            let mut settings = with_fake_bins(dir.path(), &[vmm, blockroot::MKFS]);
            let mut req = request(dir.path(), UnikernelType::Linux, h);
            std::fs::write(req.layer_dirs[0].join("unikernel/initrd"), b"initrd").unwrap();
            req.info.initrd = Some("/unikernel/initrd".into());
            req.info.block = None;
            req.info.mount_rootfs = Some(true);
            req.args = vec!["/app/run".into()];
            req.env = vec![("FROM_CRI".into(), "1".into())];
            req.shared_root = Some(shared_root(dir.path(), "unused.sock", Transport::Block));
            check(&req, &settings, &host()).unwrap();
            let err = prepare(&req, &settings, &host()).unwrap_err();
            assert_eq!(
                err.kind(),
                imagestore::ErrorKind::FailedPrecondition,
                "{h:?}"
            );
            let image = req.run_dir.join(blockroot::IMAGE);
            std::fs::create_dir_all(&req.run_dir).unwrap();
            std::fs::write(&image, b"ext4").unwrap();
            let p = prepare(&req, &settings, &host()).unwrap();
            let line = &p.plan.guest_cmdline;
            assert!(line.contains("crid.root=block:vda"), "{h:?}: {line}");
            assert!(
                !line.contains("FROM_CRI")
                    && !line.contains("/app/run")
                    && !line.contains("root=/dev/vda"),
                "{h:?}: {line}"
            );
            assert!(!req.run_dir.join(INITRD_COPY).exists(), "{h:?}");
            let image_arg = image.display().to_string();
            let initrd = req.layer_dirs[0]
                .join("unikernel/initrd")
                .display()
                .to_string();
            let argv = p.argv.join(" ");
            match h {
                HypervisorKind::Firecracker => {
                    let cfg: serde_json::Value =
                        serde_json::from_str(&p.plan.files[0].contents).unwrap();
                    assert_eq!(cfg["drives"].as_array().unwrap().len(), 1);
                    assert_eq!(cfg["drives"][0]["path_on_host"], image_arg.as_str());
                    assert_eq!(cfg["drives"][0]["is_root_device"], false);
                    assert_eq!(cfg["drives"][0]["is_read_only"], false);
                    assert_eq!(cfg["boot-source"]["initrd_path"], initrd.as_str());
                }
                HypervisorKind::CloudHypervisor => {
                    assert!(argv.contains(&format!("--initramfs {initrd}")), "{argv}");
                    assert!(argv.contains(&format!("--disk path={image_arg}")), "{argv}");
                }
                HypervisorKind::Crid => {
                    assert!(argv.contains(&format!("--disk {image_arg}")), "{argv}");
                }
                _ => {
                    assert!(
                        argv.contains(&format!("-drive file={image_arg},format=raw,")),
                        "{argv}"
                    );
                }
            }
            release(&req).unwrap();
            assert!(!image.exists(), "{h:?}");
            // Without mkfs.ext4, CreateContainer is FailedPrecondition naming it.
            settings.binary_dirs = vec![dir.path().join("nothing")];
            settings.binaries = vec![(vmm.into(), dir.path().join("bin").join(vmm))];
            let err = check(&req, &settings, &host()).unwrap_err();
            assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
            assert!(err.to_string().contains("mkfs.ext4"), "{err}");
        }
    }

    /// A shared root needs virtiofsd: without it `CreateContainer` is `FailedPrecondition`
    /// naming it.
    #[test]
    fn a_shared_root_needs_virtiofsd() {
        let dir = tempfile::tempdir().unwrap();
        let bins = dir.path().join("bin");
        let mut req = request(dir.path(), UnikernelType::Linux, HypervisorKind::Qemu);
        req.shared_root = Some(shared_root(dir.path(), "vfs.sock", Transport::Virtiofs));
        let mut settings = VmSettings {
            binaries: vec![(
                virtiofs::BINARY.into(),
                dir.path().join("nothing/virtiofsd"),
            )],
            ..with_fake_bins(dir.path(), &["qemu-system-x86_64", "my-virtiofsd"])
        };
        let err = check(&req, &settings, &host()).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("virtiofsd"), "{err}");
        settings.binaries = vec![(virtiofs::BINARY.into(), bins.join("my-virtiofsd"))];
        check(&req, &settings, &host()).unwrap();
        // Neither over 9p nor without a shared root is it looked for.
        settings.binaries = vec![(
            virtiofs::BINARY.into(),
            dir.path().join("nothing/virtiofsd"),
        )];
        req.shared_root.as_mut().unwrap().transport = Transport::NineP;
        check(&req, &settings, &host()).unwrap();
        req.shared_root = None;
        settings.binaries.clear();
        settings.binary_dirs = vec![bins];
        check(&req, &settings, &host()).unwrap();
    }

    #[test]
    fn missing_vmm_and_missing_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let settings = VmSettings {
            binary_dirs: vec![dir.path().join("nothing")],
            ..VmSettings::default()
        };
        let req = request(
            dir.path(),
            UnikernelType::Linux,
            HypervisorKind::CloudHypervisor,
        );
        let err = prepare(&req, &settings, &host()).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("cloud-hypervisor"), "{err}");

        let mut req = request(dir.path(), UnikernelType::Linux, HypervisorKind::Qemu);
        req.info.binary = "/unikernel/../../etc/passwd".into();
        let err = prepare(&req, &settings, &host()).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
    }
}
