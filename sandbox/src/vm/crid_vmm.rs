//! crid's own VMM, `crid-vmm` (the `vmm/` crate): `crid-vmm --kernel K [--initrd I] --cmdline C
//! --memory M --vcpus N [--tap TAP --mac MAC] [--disk FILE] [--user UID:GID --chroot DIR]`. KVM
//! only. In a pod network the guest gets a virtio-net device over virtio-mmio on the pod's tap,
//! and an image's block file becomes a virtio-blk device on the container's private copy of it
//! (see [`super::launch`]), both announced on its command line (`virtio_mmio.device=`,
//! Firecracker's convention; the NIC first). The serial console is on
//! its stdout; it exits with the byte the guest writes to the debug-exit port (0xf4), 0 when the
//! guest resets through the i8042 (`reboot=k`), 1 when the VMM itself fails. Like QEMU it drops
//! to the container's unprivileged uid in an empty chroot once its files are open, and every
//! thread runs under its seccomp filter.
//!
//! [`substitute`] is the operator's rule `vm.crid_vmm_for`: images annotated for the listed
//! hypervisors (`qemu`, `firecracker`) run on crid-vmm instead when their guest is one it boots
//! the same way (see [`compatible`]).

use std::path::{Path, PathBuf};

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelType, VirtioTransport};

use super::accel::KvmProbe;
use super::launch::VmSettings;
use super::{
    Hypervisor, LaunchPlan, VmSpec, cmdline::guest_cmdline, path_arg, qemu::check_ifname,
    require_kvm, resolve_in_layers,
};
use crate::error::{SandboxError, invalid};

pub const BINARY: &str = "crid-vmm";

/// The crid-vmm backend.
pub struct CridVmm;

impl Hypervisor for CridVmm {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Crid
    }

    fn binary_name(&self) -> &'static str {
        BINARY
    }

    fn plan(&self, spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError> {
        require_kvm(spec)?;
        if spec.block_overlay {
            return Err(SandboxError::UnsupportedGuest {
                reason: "crid-vmm takes a raw disk file, not a qcow2 overlay".into(),
            });
        }
        let cmdline = guest_cmdline(spec, &["reboot=k", "pci=off", "console=ttyS0"])?;
        let mut args = vec![
            "--kernel".to_string(),
            path_arg(&spec.kernel)?,
            "--cmdline".into(),
            cmdline.clone(),
            "--memory".into(),
            spec.memory_mib.to_string(),
            "--vcpus".into(),
            spec.vcpus.min(u32::from(u8::MAX)).to_string(),
        ];
        if let Some(initrd) = &spec.initrd {
            args.extend(["--initrd".into(), path_arg(initrd)?]);
        }
        if let Some(net) = &spec.net {
            check_ifname(&net.tap)?;
            args.extend([
                "--tap".into(),
                net.tap.clone(),
                "--mac".into(),
                net.mac.to_string(),
            ]);
        }
        if let Some(block) = &spec.block {
            args.extend(["--disk".into(), path_arg(block)?]);
        }
        if let Some((uid, gid)) = spec.vmm_user {
            if uid == 0 || gid == 0 {
                return Err(invalid("the VMM user must not be root"));
            }
            args.extend(["--user".into(), format!("{uid}:{gid}")]);
        }
        if let Some(dir) = &spec.chroot {
            args.extend(["--chroot".into(), path_arg(dir)?]);
        }
        Ok(LaunchPlan::direct(
            HypervisorKind::Crid,
            binary,
            args,
            spec.accelerator,
            cmdline,
        ))
    }
}

/// Applies `vm.crid_vmm_for` to an image's description: when its hypervisor is listed and
/// [`compatible`] says crid-vmm boots the guest the same way, the guest runs on crid-vmm.
/// `layer_dirs` are the image's layers; `networked` tells whether the pod has a network.
pub fn substitute(
    info: &mut UnikernelInfo,
    layer_dirs: &[PathBuf],
    networked: bool,
    settings: &VmSettings,
    host: &KvmProbe,
) {
    if !settings.crid_vmm_for.contains(&info.hypervisor) {
        return;
    }
    let head = resolve_in_layers(layer_dirs, &info.binary)
        .ok()
        .and_then(|k| super::elf::kernel_head(&k));
    match compatible(info, head.as_deref(), networked, host) {
        Ok(()) => {
            tracing::info!(
                from = info.hypervisor.as_str(),
                "vm.crid_vmm_for: the guest runs on crid-vmm"
            );
            info.hypervisor = HypervisorKind::Crid;
        }
        Err(why) => tracing::info!(
            hypervisor = info.hypervisor.as_str(),
            reason = why,
            "vm.crid_vmm_for: the guest stays on its own hypervisor"
        ),
    }
}

/// Whether crid-vmm boots this guest as its own hypervisor would: a `unikraft` guest whose
/// kernel is an ELF64 with a PVH note (QEMU microvm and Firecracker both enter it there), or a
/// `linux` guest (bzImage or ELF vmlinux, Firecracker's boot protocol) on a KVM that runs Linux
/// (not PVM); with a virtio device (a pod network or a block device) only images for
/// Firecracker or images that declare virtio-mmio drivers (crid's `io.crid.unikernel.virtio=
/// mmio`), whose guests find their virtio-mmio NIC and disk on the command line as crid-vmm
/// announces them (QEMU runs other guests with a NIC or disk on the pc machine, virtio-pci,
/// except `linux` on KVM, and its Unikraft images carry PCI drivers); and a usable KVM. `head`
/// is the start of the kernel file.
pub fn compatible(
    info: &UnikernelInfo,
    head: Option<&[u8]>,
    networked: bool,
    host: &KvmProbe,
) -> Result<(), &'static str> {
    if !host.usable {
        return Err("no usable KVM");
    }
    if info.hypervisor != HypervisorKind::Firecracker && info.virtio != VirtioTransport::Mmio {
        if networked {
            return Err("a pod network, where QEMU guests expect virtio-pci");
        }
        if info.block.is_some() {
            return Err("a block device, which QEMU guests expect on virtio-pci");
        }
    }
    let head = head.ok_or("the kernel cannot be read")?;
    let elf64 = head.get(0..5) == Some(b"\x7fELF\x02");
    match info.unikernel_type {
        UnikernelType::Unikraft if elf64 && super::elf::pvh_entry(head).is_some() => Ok(()),
        UnikernelType::Unikraft => Err("not an ELF64 kernel with a PVH entry note"),
        UnikernelType::Linux if host.pvm => Err("PVM does not boot Linux guests"),
        UnikernelType::Linux if elf64 || head.get(0x202..0x206) == Some(b"HdrS") => Ok(()),
        UnikernelType::Linux => Err("neither a bzImage nor an ELF64 vmlinux"),
        _ => Err("crid-vmm boots unikraft and linux guests only"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExitMapping;
    use super::super::testutil::*;
    use super::*;

    fn host(pvm: bool) -> KvmProbe {
        KvmProbe {
            usable: true,
            pvm,
            detail: "test".into(),
        }
    }

    /// The test ELF of the QEMU module, as ELF64: class byte 2 and 64-bit program headers.
    fn pvh_elf64() -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
        b[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        b[64 + 8..64 + 16].copy_from_slice(&0x100u64.to_le_bytes()); // offset
        b[64 + 32..64 + 40].copy_from_slice(&20u64.to_le_bytes()); // filesz
        b[0x100..0x104].copy_from_slice(&4u32.to_le_bytes());
        b[0x104..0x108].copy_from_slice(&4u32.to_le_bytes());
        b[0x108..0x10c].copy_from_slice(&18u32.to_le_bytes());
        b[0x10c..0x110].copy_from_slice(b"Xen\0");
        b
    }

    #[test]
    fn plan_passes_the_tap_and_mac() {
        let mut s = spec(UnikernelType::Unikraft, HypervisorKind::Crid);
        s.net = Some(net());
        let p = CridVmm.plan(&s, Path::new("/x")).unwrap();
        let argv = p.args.join(" ");
        assert!(
            argv.contains("--tap crtap0 --mac 0a:58:0a:58:00:05"),
            "{argv}"
        );
        assert!(
            p.guest_cmdline.contains("netdev.ip=10.88.0.5/16:10.88.0.1"),
            "{}",
            p.guest_cmdline
        );
        s.net.as_mut().unwrap().tap = "bad tap".into();
        assert!(CridVmm.plan(&s, Path::new("/x")).is_err());
    }

    #[test]
    fn plan_passes_the_private_disk_copy() {
        let mut s = spec(UnikernelType::Unikraft, HypervisorKind::Crid);
        s.block = Some("/run/crid/c1/block.img".into());
        let p = CridVmm.plan(&s, Path::new("/x")).unwrap();
        assert!(
            p.args.join(" ").contains("--disk /run/crid/c1/block.img"),
            "{:?}",
            p.args
        );
        s.block_overlay = true;
        assert!(CridVmm.plan(&s, Path::new("/x")).is_err());
    }

    #[test]
    fn plan_argv_confinement_and_exit_mapping() {
        let mut s = spec(UnikernelType::Unikraft, HypervisorKind::Crid);
        s.vmm_user = Some((2_000_000_001, 2_000_000_001));
        s.chroot = Some("/run/crid/c1/chroot".into());
        s.initrd = Some("/layers/top/initrd".into());
        let p = CridVmm
            .plan(&s, Path::new("/usr/local/bin/crid-vmm"))
            .unwrap();
        let argv = p.args.join(" ");
        assert!(
            argv.starts_with("--kernel /layers/top/unikernel/kernel --cmdline "),
            "{argv}"
        );
        assert!(argv.contains("--memory 128 --vcpus 2"), "{argv}");
        assert!(argv.contains("--initrd /layers/top/initrd"), "{argv}");
        assert!(argv.contains("--user 2000000001:2000000001 --chroot /run/crid/c1/chroot"));
        assert_eq!(p.exit_mapping, ExitMapping::Direct);
        assert_eq!(p.args[3], p.guest_cmdline);

        s.vmm_user = Some((0, 0));
        assert!(CridVmm.plan(&s, Path::new("/x")).is_err());
        let mut s = spec(UnikernelType::Unikraft, HypervisorKind::Crid);
        s.accelerator = super::super::Accelerator::Tcg;
        assert!(CridVmm.plan(&s, Path::new("/x")).is_err());
    }

    #[test]
    fn compatibility_rule() {
        let uk = spec(UnikernelType::Unikraft, HypervisorKind::Qemu).info;
        let elf = pvh_elf64();
        assert_eq!(compatible(&uk, Some(&elf), false, &host(true)), Ok(()));
        assert!(compatible(&uk, Some(&elf), true, &host(true)).is_err());
        let mut fc = uk.clone();
        fc.hypervisor = HypervisorKind::Firecracker;
        assert_eq!(compatible(&fc, Some(&elf), true, &host(true)), Ok(()));
        assert!(compatible(&uk, None, false, &host(true)).is_err());
        let mut elf32 = elf.clone();
        elf32[4] = 1;
        assert!(compatible(&uk, Some(&elf32), false, &host(true)).is_err());
        let mut blk = uk.clone();
        blk.block = Some("disk.img".into());
        assert!(compatible(&blk, Some(&elf), false, &host(true)).is_err());
        let mut fc_blk = fc.clone();
        fc_blk.block = Some("disk.img".into());
        assert_eq!(compatible(&fc_blk, Some(&elf), true, &host(true)), Ok(()));
        // A QEMU image that declares virtio-mmio drivers takes crid-vmm's NIC and disk too.
        let mut mmio = blk.clone();
        mmio.virtio = VirtioTransport::Mmio;
        assert_eq!(compatible(&mmio, Some(&elf), true, &host(true)), Ok(()));

        let linux = spec(UnikernelType::Linux, HypervisorKind::Firecracker).info;
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(compatible(&linux, Some(&bz), false, &host(false)), Ok(()));
        assert!(compatible(&linux, Some(&bz), false, &host(true)).is_err());
        assert!(compatible(&linux, Some(b"MZ"), false, &host(false)).is_err());
        let mewz = spec(UnikernelType::Mewz, HypervisorKind::Qemu).info;
        assert!(compatible(&mewz, Some(&elf), false, &host(true)).is_err());
        let unusable = KvmProbe {
            usable: false,
            pvm: false,
            detail: String::new(),
        };
        assert!(compatible(&uk, Some(&elf), false, &unusable).is_err());
    }

    #[test]
    fn substitute_only_listed_hypervisors() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("l0");
        std::fs::create_dir_all(layer.join("unikernel")).unwrap();
        std::fs::write(layer.join("unikernel/kernel"), pvh_elf64()).unwrap();
        let layers = vec![layer];
        let mut info = spec(UnikernelType::Unikraft, HypervisorKind::Qemu).info;
        let mut settings = VmSettings::default();
        substitute(&mut info, &layers, false, &settings, &host(true));
        assert_eq!(
            info.hypervisor,
            HypervisorKind::Qemu,
            "not listed: unchanged"
        );
        settings.crid_vmm_for = vec![HypervisorKind::Qemu, HypervisorKind::Firecracker];
        substitute(&mut info, &layers, true, &settings, &host(true));
        assert_eq!(
            info.hypervisor,
            HypervisorKind::Qemu,
            "networked: unchanged"
        );
        substitute(&mut info, &layers, false, &settings, &host(true));
        assert_eq!(info.hypervisor, HypervisorKind::Crid);
    }
}
