//! Unikernel containers as virtual machines: planning how a hypervisor boots a guest.
//!
//! Planning is pure: [`plan`] turns a [`VmSpec`] (the image's [`UnikernelInfo`], host paths
//! already resolved with [`resolve_in_layers`], resources, network, CRI args/env and the
//! accelerator chosen by [`accel::decide`]) into a [`LaunchPlan`] — an argv plus the files to
//! write before exec'ing it. The container monitor runs the plan inside the pod's network
//! namespace with the guest's serial console on its stdout pipe and maps the VMM's exit status
//! back to the guest's exit code with [`LaunchPlan::guest_exit_code`].
//!
//! One module per hypervisor behind the [`Hypervisor`] trait: [`qemu`], [`firecracker`],
//! [`cloud_hypervisor`], [`solo5`] (hvt and spt) and [`crid_vmm`] (crid's own VMM); guest kernel command lines per unikernel
//! type live in [`cmdline`]. [`net`] wires a tap device to the pod's CNI interface. [`pool`] keeps
//! crid-vmm guests prepared ahead of need, and [`qemu_pool`] paused QEMUs over it. [`elf`] is
//! the one reader of what crid itself takes from a guest's ELF kernel (program headers, the
//! PVH note).

pub mod accel;
pub mod blockroot;
pub mod bootblock;
pub mod cgroup;
pub mod cloud_hypervisor;
pub mod cmdline;
pub mod crid_vmm;
pub mod elf;
pub mod firecracker;
pub mod guestfiles;
pub mod launch;
mod layers;
pub mod net;
mod netops;
mod nft;
pub mod ninep;
pub mod pcishim;
pub mod pool;
pub mod qemu;
pub mod qemu_pool;
pub mod qmp;
mod rtnl;
pub mod solo5;
mod sys;
pub mod virtiofs;

pub(crate) use sys::ShortSlices;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelType};
use serde::{Deserialize, Serialize};

use crate::error::{SandboxError, invalid};

pub use accel::{AccelDecision, Accelerator, AcceleratorMode};
pub use layers::resolve_in_layers;

/// Guest memory when the container has no memory limit.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// Directories searched for hypervisor binaries when none are configured.
pub const DEFAULT_BINARY_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin"];

/// Everything needed to boot one guest. Host paths are already resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub info: UnikernelInfo,
    /// Host path of the guest kernel.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Host path of the block device image (read-write for this container).
    pub block: Option<PathBuf>,
    /// `block` is crid's qcow2 overlay whose read-only backing file is the image's raw block
    /// file (QEMU); otherwise `block` is a raw image.
    pub block_overlay: bool,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub net: Option<GuestNet>,
    /// CRI `command` followed by `args`; when empty the image's `cmdline` is used.
    pub args: Vec<String>,
    /// CRI `envs`, in order.
    pub env: Vec<(String, String)>,
    /// The accelerator decided by [`accel::decide`].
    /// Whether the guest's initrd copy holds its argv (`/etc/crid/args`): a `linux` kernel
    /// command line that would be too long then goes without it.
    pub argv_in_initrd: bool,
    pub accelerator: Accelerator,
    /// A per-container directory where the plan's files (e.g. Firecracker's config) go.
    pub run_dir: PathBuf,
    /// The unprivileged user and group the VMM switches to once it has opened its devices and
    /// files (QEMU's `-runas`); `None` keeps it root (hypervisors that cannot drop privileges).
    pub vmm_user: Option<(u32, u32)>,
    /// An empty directory the VMM chroots into once set up (QEMU's `-chroot`).
    pub chroot: Option<PathBuf>,
    /// A control socket for shutdown requests (QEMU: QMP, for `system_powerdown`).
    pub control_socket: Option<PathBuf>,
    /// The x86 firmware for QEMU's `pc` machine (`-bios`, e.g. qboot); `None` keeps QEMU's
    /// default (SeaBIOS, which scans for option ROMs and waits at the iPXE prompt).
    pub firmware: Option<PathBuf>,
    /// crid's PCI firmware ([`pcishim`]), the `-bios` of guests with PCI devices on `pc`;
    /// `None` boots them with SeaBIOS.
    pub pci_shim: Option<PathBuf>,
    /// The pod's DNS servers (IPv4, at most two), for guests that take them on their command
    /// line (Unikraft; it falls back to a public resolver otherwise).
    pub dns: Vec<Ipv4Addr>,
    /// A host directory shared with the guest as its workload's root (QEMU, `linux`; see
    /// [`virtiofs`]).
    pub shared_dir: Option<virtiofs::SharedDir>,
    /// A host directory exported to the guest as its root over QEMU's 9p (QEMU, `unikraft`;
    /// see [`ninep`]).
    pub ninep_root: Option<PathBuf>,
    /// `block` is the container's root file system as a raw ext4 image built by crid (see
    /// [`blockroot`]), the guest's first disk; its init mounts it (`crid.root=block:vda`).
    pub block_root: bool,
    /// QEMU's microvm build found on the host (see [`qemu`]), for guests it can run.
    pub qemu_microvm: Option<PathBuf>,
    /// QEMU starts paused with its RAM in this file (shared), and crid writes the kernel and
    /// its command line there before it lets the guest run ([`bootblock`]), instead of QEMU's
    /// `-kernel`: a QEMU started before its guest was known. `pc` with crid's PCI firmware only.
    pub guest_ram: Option<PathBuf>,
}

/// The guest's view of the pod network: it takes over the CNI interface's address and MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    /// Tap device in the pod's network namespace.
    pub tap: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: MacAddr,
    pub mtu: u32,
}

impl GuestNet {
    /// The dotted netmask for `prefix`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Ipv4Addr::from(mask)
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || invalid(format!("invalid MAC address {s:?}"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = SandboxError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// A file the plan needs on disk before the VMM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFile {
    pub path: PathBuf,
    pub contents: String,
}

/// How the VMM's exit status maps to the guest's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitMapping {
    /// The VMM exits with the guest's code (Solo5, Firecracker, Cloud Hypervisor).
    Direct,
    /// QEMU's isa-debug-exit: the guest writes N, QEMU exits with `(N << 1) | 1`; exit 0 is a
    /// guest shutdown or reset (`-no-reboot`). Exit status 1 is ambiguous: the guest wrote 0,
    /// or QEMU failed before the guest ran (its stderr says which).
    QemuDebugExit,
}

/// How to start one guest: run `program` with `args` after writing `files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub hypervisor: HypervisorKind,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub files: Vec<PlanFile>,
    pub accelerator: Accelerator,
    /// The guest kernel command line (also inside `args` or `files`).
    pub guest_cmdline: String,
    pub exit_mapping: ExitMapping,
    /// How QEMU's `pc` machine boots the guest; `None` for the other machines and hypervisors,
    /// which boot the kernel themselves.
    pub firmware: Option<qemu::Firmware>,
    /// The descriptor at which the VMM gets the monitor's exit port (QEMU's microvm build,
    /// which has no isa-debug-exit; see `monitor::Launch::Command`).
    pub exit_port: Option<i32>,
    /// QEMU's `-sandbox` filter for the monitor to install before exec (the microvm build has
    /// no seccomp of its own).
    pub seccomp: Option<crate::monitor::seccomp::QemuSandbox>,
}

impl LaunchPlan {
    /// A plan whose VMM boots the kernel itself and exits with the guest's code
    /// ([`ExitMapping::Direct`]), with no files to write.
    fn direct(
        hypervisor: HypervisorKind,
        program: &Path,
        args: Vec<String>,
        accelerator: Accelerator,
        guest_cmdline: String,
    ) -> Self {
        LaunchPlan {
            hypervisor,
            program: program.to_path_buf(),
            args,
            files: vec![],
            accelerator,
            guest_cmdline,
            exit_mapping: ExitMapping::Direct,
            firmware: None,
            exit_port: None,
            seccomp: None,
        }
    }

    /// Writes the plan's files (mode 0600), creating their directories.
    pub fn write_files(&self) -> Result<(), SandboxError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        for file in &self.files {
            if let Some(dir) = file.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file.path)
                .map_err(|e| SandboxError::io(&file.path, e))?;
            f.write_all(file.contents.as_bytes())
                .map_err(|e| SandboxError::io(&file.path, e))?;
        }
        Ok(())
    }

    /// The container exit code for the VMM's exit status (or `128 + signal` when killed).
    pub fn guest_exit_code(&self, status: std::process::ExitStatus) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => match self.exit_mapping {
                ExitMapping::Direct => code,
                ExitMapping::QemuDebugExit if code & 1 == 1 => code >> 1,
                ExitMapping::QemuDebugExit => code,
            },
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }

    /// A `Command` for the plan, without stdio set up.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

/// One hypervisor backend: builds the launch plan for a guest.
pub trait Hypervisor {
    fn kind(&self) -> HypervisorKind;
    /// The monitor binary's file name, searched in the configured directories.
    fn binary_name(&self) -> &'static str;
    /// Builds the plan; `binary` is the monitor found on the host.
    fn plan(&self, spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError>;
}

/// The backend for a hypervisor kind.
pub fn hypervisor_for(kind: HypervisorKind) -> Box<dyn Hypervisor + Send + Sync> {
    match kind {
        HypervisorKind::Qemu => Box::new(qemu::Qemu),
        HypervisorKind::Firecracker => Box::new(firecracker::Firecracker),
        HypervisorKind::CloudHypervisor => Box::new(cloud_hypervisor::CloudHypervisor),
        HypervisorKind::Hvt => Box::new(solo5::Solo5 {
            tender: solo5::Tender::Hvt,
        }),
        HypervisorKind::Spt => Box::new(solo5::Solo5 {
            tender: solo5::Tender::Spt,
        }),
        HypervisorKind::Crid => Box::new(crid_vmm::CridVmm),
    }
}

/// Whether urunc (and so crid) supports this guest on this hypervisor.
pub fn supported_pair(guest: UnikernelType, hypervisor: HypervisorKind) -> bool {
    use HypervisorKind as H;
    use UnikernelType as T;
    matches!(
        (guest, hypervisor),
        (T::Rumprun | T::Mirage, H::Hvt | H::Spt)
            | (T::Mewz | T::Mirage | T::Unikraft | T::Linux, H::Qemu)
            | (T::Linux | T::Unikraft, H::Firecracker)
            | (T::Linux, H::CloudHypervisor)
            | (T::Linux | T::Unikraft, H::Crid)
    )
}

/// Finds `name` in `dirs` (an executable regular file); `FailedPrecondition` naming it if absent.
pub fn find_binary(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(SandboxError::MissingBinary {
        binary: name.to_string(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    })
}

/// The default binary search directories as paths.
pub fn default_binary_dirs() -> Vec<PathBuf> {
    DEFAULT_BINARY_DIRS.iter().map(PathBuf::from).collect()
}

/// Plans a guest: checks the guest/hypervisor pair, finds the monitor binary in `binary_dirs`
/// and asks its backend for the launch plan.
pub fn plan(spec: &VmSpec, binary_dirs: &[PathBuf]) -> Result<LaunchPlan, SandboxError> {
    check_plannable(spec)?;
    let hypervisor = hypervisor_for(spec.info.hypervisor);
    let binary = find_binary(hypervisor.binary_name(), binary_dirs)?;
    hypervisor.plan(spec, &binary)
}

/// [`plan`] with the monitor binary already found.
pub fn plan_with(spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError> {
    check_plannable(spec)?;
    hypervisor_for(spec.info.hypervisor).plan(spec, binary)
}

/// Refuses what no backend plans: a pair urunc does not support, no memory or no vCPUs.
fn check_plannable(spec: &VmSpec) -> Result<(), SandboxError> {
    check_pair(&spec.info)?;
    if spec.memory_mib == 0 || spec.vcpus == 0 {
        return Err(invalid("guest memory and vCPUs must be positive"));
    }
    Ok(())
}

/// Refuses a guest/hypervisor pair that [`supported_pair`] rules out.
fn check_pair(info: &UnikernelInfo) -> Result<(), SandboxError> {
    if supported_pair(info.unikernel_type, info.hypervisor) {
        return Ok(());
    }
    Err(SandboxError::UnsupportedGuest {
        reason: format!(
            "{} guests cannot run on {}",
            info.unikernel_type.as_str(),
            info.hypervisor.as_str()
        ),
    })
}

fn path_arg(p: &Path) -> Result<String, SandboxError> {
    let s = p
        .to_str()
        .ok_or_else(|| invalid(format!("path {p:?} is not UTF-8")))?;
    // QEMU splits option values on ','; a path with one would inject options.
    if s.contains(',') || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "path {s:?} contains ',' or a control character"
        )));
    }
    Ok(s.to_string())
}

fn require_kvm(spec: &VmSpec) -> Result<(), SandboxError> {
    if spec.accelerator == Accelerator::Kvm {
        Ok(())
    } else {
        Err(SandboxError::Accelerator {
            accelerator: spec.accelerator.to_string(),
            reason: format!("{} needs KVM", spec.info.hypervisor.as_str()),
        })
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use imagestore::UnikernelSource;

    pub fn spec(t: UnikernelType, h: HypervisorKind) -> VmSpec {
        VmSpec {
            info: UnikernelInfo {
                cmdline: "app --flag".into(),
                ..UnikernelInfo::new(
                    t,
                    h,
                    "unikernel/kernel",
                    UnikernelSource::ManifestAnnotations,
                )
            },
            kernel: PathBuf::from("/layers/top/unikernel/kernel"),
            initrd: None,
            block: None,
            block_overlay: false,
            memory_mib: 128,
            vcpus: 2,
            net: None,
            args: vec![],
            env: vec![],
            argv_in_initrd: false,
            accelerator: Accelerator::Kvm,
            run_dir: PathBuf::from("/run/crid/vm/c1"),
            vmm_user: None,
            chroot: None,
            control_socket: None,
            firmware: None,
            pci_shim: None,
            dns: vec![],
            shared_dir: None,
            ninep_root: None,
            block_root: false,
            qemu_microvm: None,
            guest_ram: None,
        }
    }

    pub fn net() -> GuestNet {
        GuestNet {
            tap: "crtap0".into(),
            ip: Ipv4Addr::new(10, 88, 0, 5),
            prefix: 16,
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
            mac: "0a:58:0a:58:00:05".parse().unwrap(),
            mtu: 1500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let m: MacAddr = "0A:58:0a:58:00:05".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:58:00:05");
        for bad in [
            "",
            "0a:58",
            "0a:58:0a:58:00:05:01",
            "zz:58:0a:58:00:05",
            "0a5:8:0a:58:00:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn netmask_from_prefix() {
        let mut n = net();
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        n.prefix = 24;
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        n.prefix = 0;
        assert_eq!(n.netmask(), Ipv4Addr::new(0, 0, 0, 0));
        n.prefix = 32;
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn missing_binary_is_failed_precondition_naming_it() {
        let s = spec(UnikernelType::Linux, HypervisorKind::Firecracker);
        let err = plan(&s, &[PathBuf::from("/nonexistent-crid-dir")]).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("firecracker"), "{err}");
    }

    #[test]
    fn unsupported_pair_is_rejected() {
        let s = spec(UnikernelType::Mewz, HypervisorKind::Hvt);
        let err = plan(&s, &default_binary_dirs()).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
        assert!(supported_pair(UnikernelType::Linux, HypervisorKind::Qemu));
        assert!(!supported_pair(UnikernelType::Linux, HypervisorKind::Hvt));
    }

    #[test]
    fn exit_mapping() {
        use std::os::unix::process::ExitStatusExt;
        let mut p = qemu::Qemu
            .plan(
                &spec(UnikernelType::Unikraft, HypervisorKind::Qemu),
                Path::new("/q"),
            )
            .unwrap();
        let st = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert_eq!(p.guest_exit_code(st(7)), 3);
        assert_eq!(p.guest_exit_code(st(0)), 0);
        assert_eq!(p.guest_exit_code(st(2)), 2);
        assert_eq!(
            p.guest_exit_code(std::process::ExitStatus::from_raw(9)),
            137
        );
        p.exit_mapping = ExitMapping::Direct;
        assert_eq!(p.guest_exit_code(st(7)), 7);
    }

    #[test]
    fn write_files_creates_the_directories_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let plan = LaunchPlan {
            files: vec![PlanFile {
                path: dir.path().join("a/b.json"),
                contents: "{}".into(),
            }],
            ..LaunchPlan::direct(
                HypervisorKind::Firecracker,
                Path::new("/fc"),
                vec![],
                Accelerator::Kvm,
                String::new(),
            )
        };
        plan.write_files().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b.json")).unwrap(),
            "{}"
        );
    }
}
