//! QEMU (`qemu-system-x86_64`): the backend tested end to end.
//!
//! Always `-nodefaults -no-user-config -no-reboot -display none`, the serial port on stdio (the
//! monitor's pipe), seccomp via `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
//! resourcecontrol=deny`, and an `isa-debug-exit` device so a guest can choose QEMU's exit
//! status (on the microvm build, below, the monitor's filter and an exit port instead).
//!
//! Privileges: QEMU starts as root (in the container's cgroup, whose device list allows only
//! `/dev/kvm`, `/dev/net/tun` and the null/zero/random pseudo-devices), opens `/dev/kvm`, the
//! tap, the kernel, initrd and block files and the QMP socket, installs its seccomp filter and
//! then, "just before starting the VM", chroots into an empty directory (`-chroot`) and switches
//! to the container's unprivileged uid/gid (`-runas UID:GID`; no capabilities, no_new_privs).
//! With `-runas` the filter uses `elevateprivileges=allow` (QEMU's own setuid call needs it; once
//! it has run, no uid can be regained). QEMU 7.2 (Debian 12) spells these `-runas`/`-chroot`;
//! later versions also accept `-run-with user=,chroot=`.
//!
//! Graceful stop: `-qmp unix:SOCKET,server=on,wait=off`; crid sends `system_powerdown` (the
//! ACPI power button) and kills QEMU when the guest has not powered off within the timeout.
//!
//! Block devices: a crid overlay (`block_overlay`) is a qcow2 file whose backing file is the
//! image's raw block file, opened read-only; the guest's writes land in the overlay only. KVM runs with `-cpu host,-arch-capabilities` (software KVM such as PVM refuses the
//! ARCH_CAPABILITIES MSR that plain `-cpu host` sets); TCG with `-cpu max`.
//!
//! Shared root: a `linux` guest whose container's root file system is shared with it (see
//! [`super::virtiofs`]) gets its RAM as a shared memfd and a `vhost-user-fs` device on
//! virtiofsd's socket (`shared_dir_args`). A `unikraft` guest's shared root is exported by
//! QEMU itself over virtio-9p ([`super::ninep`]).
//!
//! Firmware: `pc` boots with `-bios <firmware>` when one is configured — qboot (Debian's
//! `/usr/share/qemu/qboot.rom`, the firmware microvm uses too), which loads Linux, multiboot and
//! PVH kernels from fw_cfg without SeaBIOS's device scan — and the NIC gets no option ROM
//! (`romfile=`): iPXE's "Press Ctrl-B" prompt alone cost over a second per start. Measured
//! here (KVM, the freestanding guest with a NIC): 1.46 s with SeaBIOS + iPXE, 73 ms with qboot.
//! `pc` still costs more than `microvm` (README, Performance): qboot's seven PAM register writes
//! make QEMU update KVM's memory slots 28 times instead of 6, and each update waits for an SRCU
//! grace period (milliseconds on the loaded test host). Machine properties (`hpet`, `sata`,
//! `usb`, `vmport`, `smbus`, `smm` off) were measured and did not pay; `microvm,pcie=on` has no
//! 0xCF8 configuration ports, which x86 Unikraft's PCI bus uses. qboot skips SeaBIOS's device
//! scan but also its PCI set-up: QEMU's `info pci` shows every BAR unassigned, I/O decoding and
//! bus mastering off. Linux assigns them itself; Unikraft's x86 PCI bus takes BAR 0 as the
//! firmware left it (the test guest's 9p client does the same, `tests/guests/freestanding/pci.h`,
//! and finds no usable device under qboot). So every guest type but `linux` with a PCI device
//! (NIC, disk, 9p root) boots crid's own PCI firmware ([`super::pcishim`]) as its `-bios`,
//! its PVH kernel as QEMU's `-kernel` (QEMU's ELF loader places it and puts its entry,
//! command line and initrd in fw_cfg). The firmware sets up the chipset as qboot does, assigns
//! BARs and interrupt lines as SeaBIOS does (`info pci` reads the same), runs QEMU's ACPI
//! table loader and enters the kernel, with no BIOS shadow (none of qboot's PAM writes and
//! memory-slot updates) and a few thousand emulated instructions (qboot with the earlier
//! shim, which qboot booted as its kernel: about 57000). QEMU's DSDT loses its ACPI PCI
//! hotplug methods (`PIIX4_PM.acpi-root-pci-hotplug=off`, `...-with-bridge-support=off`:
//! crid hotplugs nothing), which halves the bytes the firmware checksums. Measured by hand
//! (README, Performance). Such a guest gets SeaBIOS instead (1.5–5 s more per start here: PVM
//! emulates the firmware's paging-off and 16-bit code instruction by instruction) when the PCI
//! firmware is off (`vm.pci_shim`) or its kernel is not a PVH ELF (no entry below 4 GiB in its
//! first 64 KiB). SeaBIOS prints nothing on the serial port, since QEMU runs with `-display
//! none` rather than `-nographic`.
//! A guest whose image declares virtio-mmio drivers avoids pc altogether (below). The plan
//! records which firmware boots the guest ([`Firmware`]; `firmware` in the container's
//! verbose status).
//!
//! Machine type — `-M microvm` where the guest allows it, `-M pc` otherwise:
//! - `linux`: microvm under KVM (virtio-mmio devices, described to the kernel by ACPI); pc
//!   under TCG, where microvm boots were seen to hang early in 15–20% of runs.
//! - `mewz`: pc — its drivers are virtio-pci (modern only) and it exits through port 0x501.
//! - `unikraft`, `mirage`, `rumprun`: microvm when the kernel is a PVH ELF (it carries
//!   XEN_ELFNOTE_PHYS32_ENTRY) and either needs no network or block device or its image
//!   declares virtio-mmio drivers (crid's `io.crid.unikernel.virtio=mmio`, see
//!   [`imagestore::unikernel::VIRTIO_KEY`]); pc otherwise, since their x86 virtio drivers are
//!   PCI ones unless the image says so (a kernel file does not show its drivers) and non-PVH
//!   kernels boot through SeaBIOS/multiboot. A `unikraft` guest with its root over 9p (see
//!   [`super::ninep`]) is on pc for the same reason.
//! - A declared virtio-mmio guest on microvm gets modern virtio-mmio devices
//!   (`virtio-mmio.force-legacy=false`) and `acpi=off`, so that QEMU appends
//!   `virtio_mmio.device=512@ADDR:IRQ` for each device to its command line, as Firecracker
//!   announces devices (with ACPI, microvm describes them in its DSDT only). Measured here
//!   (KVM = PVM, the freestanding guest with a NIC, QEMU alone, exec to first serial byte,
//!   interleaved, load about 3): 54 ms median on microvm with a virtio-mmio NIC against 160 ms
//!   on pc + qboot with virtio-net-pci (left unconfigured: no PCI shim then) and 1.5–3 s on pc +
//!   SeaBIOS; through crid, see README's Performance.
//!
//! Binary — QEMU's microvm build (Debian's `qemu-system-x86_64-microvm`, [`MICROVM_BINARY`]) for
//! a unikernel on the microvm machine when the host has it (`VmSpec::qemu_microvm`) and QEMU
//! drops to its own uid in its chroot (see the private `microvm_build`); the full binary
//! otherwise. The build links 10 shared libraries against the full binary's 51: measured here
//! (QEMU alone on crid's command line, the freestanding guest with a virtio-mmio NIC, exec to
//! first serial byte, load about 3) 34.5 ms against 55.9 ms (README, Performance). It lacks two
//! things the plan relies on:
//! - seccomp (`-sandbox`): the monitor installs the same filter before exec
//!   ([`crate::monitor::seccomp`]);
//! - isa-debug-exit: the exit port is a second UART at 0xf4 whose output is a pipe to the
//!   monitor (the private `exit_port_args`); the monitor ends QEMU on the guest's byte N and
//!   records `(N << 1) | 1`, the status isa-debug-exit gives, so the exit mapping and a
//!   container's exit code do not depend on the binary.

use std::path::{Path, PathBuf};

use imagestore::{HypervisorKind, UnikernelType, VirtioTransport};
use serde::{Deserialize, Serialize};

use super::{
    Accelerator, ExitMapping, Hypervisor, LaunchPlan, VmSpec, cmdline::guest_cmdline, path_arg,
};
use crate::error::{SandboxError, invalid};
use crate::monitor::seccomp::QemuSandbox;

pub const BINARY: &str = "qemu-system-x86_64";
/// Debian's reduced QEMU build: machines `microvm` and `q35` only, 10 shared libraries against
/// the full binary's 51, no seccomp, no isa-debug-exit, no PCI or vhost-user-fs devices.
pub const MICROVM_BINARY: &str = "qemu-system-x86_64-microvm";

/// The exit port of the microvm build (see the module documentation): the descriptor the
/// monitor's pipe arrives on, the fd set QEMU finds it in, the UART's interrupt line (COM2's:
/// COM1 has 4, microvm's virtio-mmio transports 5–12 without ACPI).
const EXIT_PORT_FD: i32 = 3;
const EXIT_PORT_FDSET: u32 = 1;
const EXIT_PORT_IRQ: u32 = 3;

/// The QEMU machine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Microvm,
    Pc,
}

/// Chooses the machine model for a guest (see the module documentation).
pub fn machine(spec: &VmSpec) -> Machine {
    match spec.info.unikernel_type {
        UnikernelType::Linux if spec.accelerator == Accelerator::Kvm => Machine::Microvm,
        UnikernelType::Linux | UnikernelType::Mewz => Machine::Pc,
        UnikernelType::Unikraft | UnikernelType::Mirage | UnikernelType::Rumprun => {
            let devices_fit = spec.info.virtio == VirtioTransport::Mmio
                || (spec.net.is_none() && spec.block.is_none());
            if devices_fit && spec.ninep_root.is_none() && is_pvh_elf(&spec.kernel) {
                Machine::Microvm
            } else {
                Machine::Pc
            }
        }
    }
}

/// Whether a `pc` guest needs its PCI devices configured before it runs (BARs assigned,
/// decoding on), which qboot does not do: every guest type but `linux` with a NIC, disk or 9p
/// root. Unikraft's x86 PCI bus, like the test guest's, takes BAR 0 as the firmware left it.
fn needs_pci_firmware(spec: &VmSpec) -> bool {
    spec.info.unikernel_type != UnikernelType::Linux
        && (spec.net.is_some() || spec.block.is_some() || spec.ninep_root.is_some())
}

/// How QEMU's `pc` machine boots a guest (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Firmware {
    /// QEMU's own SeaBIOS.
    SeaBios,
    /// The configured firmware (`-bios`, qboot by default) loads the guest's kernel.
    Bios { path: PathBuf },
    /// crid's PCI firmware (`-bios`) configures the PCI devices and enters the guest's kernel,
    /// which QEMU's ELF loader placed, at its PVH entry.
    PciShim { shim: PathBuf },
}

/// The firmware of a `pc` guest: crid's PCI firmware for a guest that needs its PCI devices
/// configured and has a PVH kernel (SeaBIOS for one without, or with the PCI firmware off), the
/// configured one (SeaBIOS without) for the others.
pub fn pc_firmware(spec: &VmSpec) -> Firmware {
    if needs_pci_firmware(spec) {
        return match &spec.pci_shim {
            // crid checks a kernel it loads itself when it loads it.
            Some(shim) if spec.guest_ram.is_some() || is_pvh_elf(&spec.kernel) => {
                Firmware::PciShim { shim: shim.clone() }
            }
            _ => Firmware::SeaBios,
        };
    }
    match &spec.firmware {
        Some(bios) => Firmware::Bios { path: bios.clone() },
        None => Firmware::SeaBios,
    }
}

/// What crid's PCI firmware adds to QEMU's command line: the firmware, and no ACPI PCI
/// hotplug (crid never hotplugs a device), which takes the hotplug slots' methods out of
/// QEMU's DSDT: half the bytes the firmware checksums, an instruction at a time under PVM.
fn pci_shim_args(shim: &Path) -> Result<Vec<String>, SandboxError> {
    Ok(vec![
        "-bios".into(),
        path_arg(shim)?,
        "-global".into(),
        "PIIX4_PM.acpi-root-pci-hotplug=off".into(),
        "-global".into(),
        "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off".into(),
    ])
}

/// Whether QEMU announces the guest's virtio-mmio devices on its command line
/// (`virtio_mmio.device=512@ADDR:IRQ`, as Firecracker does) instead of in ACPI tables: a
/// unikernel on microvm whose image declares virtio-mmio drivers. microvm adds them to the
/// command line only without ACPI (`acpi=off`, its `auto-kernel-cmdline` default).
fn mmio_on_cmdline(spec: &VmSpec, machine: Machine) -> bool {
    machine == Machine::Microvm
        && spec.info.unikernel_type != UnikernelType::Linux
        && spec.info.virtio == VirtioTransport::Mmio
}

/// The microvm build to run the guest with, if it can (see the module documentation): a
/// unikernel on the microvm machine (every device it can have there is in the build), and only
/// for a QEMU that drops to its own uid in an empty chroot — the build has no seccomp, and the
/// filter the monitor installs in its place must let one `execve` through
/// ([`crate::monitor::seccomp`]). `linux` stays on the full binary: a shared root needs
/// `vhost-user-fs`, which the build lacks, and with ACPI its tables would show the guest the
/// exit port as a second serial port (Linux on microvm needs KVM, which this project's test
/// host cannot give it, so that path is untested).
fn microvm_build(spec: &VmSpec, machine: Machine) -> Option<&Path> {
    let fits = machine == Machine::Microvm
        && spec.info.unikernel_type != UnikernelType::Linux
        && spec.vmm_user.is_some()
        && spec.chroot.is_some();
    spec.qemu_microvm.as_deref().filter(|_| fits)
}

/// Whether `path` is an ELF file with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) whose entry
/// a 32-bit jump reaches. Reads at most the first 64 KiB; anything unreadable or malformed is
/// "no".
pub fn is_pvh_elf(path: &Path) -> bool {
    super::elf::kernel_head(path)
        .and_then(|head| super::elf::pvh_entry(&head))
        .is_some_and(|e| u32::try_from(e).is_ok())
}

/// The QEMU backend.
pub struct Qemu;

impl Hypervisor for Qemu {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Qemu
    }

    fn binary_name(&self) -> &'static str {
        BINARY
    }

    fn plan(&self, spec: &VmSpec, binary: &Path) -> Result<LaunchPlan, SandboxError> {
        let cmdline = guest_cmdline(spec, &[])?;
        let machine = machine(spec);
        let build = microvm_build(spec, machine);
        let mewz = spec.info.unikernel_type == UnikernelType::Mewz;
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        // `-display none`, not `-nographic`: the latter also tells SeaBIOS (fw_cfg's nographic
        // flag) to mirror its console on the serial port, i.e. its banner and terminal escapes
        // in the guest's log before the guest's own first byte.
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ]);
        match machine {
            Machine::Microvm if mmio_on_cmdline(spec, machine) => {
                // Modern (version 2) virtio-mmio, the transport Firecracker presents.
                push(&["-M", "microvm,x-option-roms=off,acpi=off"]);
                push(&["-global", "virtio-mmio.force-legacy=false"]);
            }
            Machine::Microvm => push(&["-M", "microvm,x-option-roms=off"]),
            Machine::Pc => push(&["-M", "pc"]),
        }
        let firmware = (machine == Machine::Pc).then(|| pc_firmware(spec));
        match &firmware {
            Some(Firmware::Bios { path: bios }) => {
                let bios = path_arg(bios)?;
                push(&["-bios", &bios]);
            }
            Some(Firmware::PciShim { shim }) => {
                let args = pci_shim_args(shim)?;
                push(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
            Some(Firmware::SeaBios) | None => {}
        }
        if spec.guest_ram.is_some() && !matches!(firmware, Some(Firmware::PciShim { .. })) {
            return Err(SandboxError::UnsupportedGuest {
                reason: "crid loads a guest's kernel only for its PCI firmware on pc".into(),
            });
        }
        match spec.accelerator {
            Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
            Accelerator::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
            Accelerator::None => {
                return Err(SandboxError::UnsupportedGuest {
                    reason: "qemu needs the kvm or tcg accelerator".into(),
                });
            }
        }
        let mem = spec.memory_mib.to_string();
        let smp = spec.vcpus.to_string();
        push(&["-m", &mem, "-smp", &smp]);
        let privileges = if spec.vmm_user.is_some() {
            "allow"
        } else {
            "deny"
        };
        // The microvm build has no `-sandbox`: the monitor installs the same filter.
        let seccomp = build.map(|_| QemuSandbox {
            elevate_privileges: spec.vmm_user.is_some(),
        });
        if seccomp.is_none() {
            let sandbox = format!(
                "on,obsolete=deny,elevateprivileges={privileges},spawn=deny,resourcecontrol=deny"
            );
            push(&["-sandbox", &sandbox]);
        }
        if let Some((uid, gid)) = spec.vmm_user {
            if uid == 0 || gid == 0 {
                return Err(invalid("the VMM user must not be root"));
            }
            let user = format!("{uid}:{gid}");
            push(&["-runas", &user]);
        }
        if let Some(dir) = &spec.chroot {
            let dir = path_arg(dir)?;
            push(&["-chroot", &dir]);
        }
        if let Some(sock) = &spec.control_socket {
            let qmp = format!("unix:{},server=on,wait=off", path_arg(sock)?);
            push(&["-qmp", &qmp]);
        }
        push(&["-serial", "stdio"]);
        if mewz {
            push(&["-device", "isa-debug-exit,iobase=0x501,iosize=2"]);
        } else if build.is_some() {
            let port = exit_port_args();
            push(&port.iter().map(String::as_str).collect::<Vec<_>>());
        } else {
            push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        }
        match &spec.guest_ram {
            Some(ram) => {
                if spec.initrd.is_some() || spec.shared_dir.is_some() {
                    return Err(SandboxError::UnsupportedGuest {
                        reason: "crid loads no initrd and shares no RAM file with virtiofsd".into(),
                    });
                }
                let args = crid_boot_args(ram, spec.memory_mib)?;
                push(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
            None => {
                let kernel = path_arg(&spec.kernel)?;
                push(&["-kernel", &kernel]);
                if let Some(initrd) = &spec.initrd {
                    let initrd = path_arg(initrd)?;
                    push(&["-initrd", &initrd]);
                }
            }
        }
        let (net_dev, blk_dev) = match machine {
            Machine::Microvm => ("virtio-net-device", "virtio-blk-device"),
            Machine::Pc => ("virtio-net-pci", "virtio-blk-pci"),
        };
        if let Some(net) = &spec.net {
            check_ifname(&net.tap)?;
            let netdev = format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap);
            let mut device = format!("{net_dev},netdev=net0,mac={}", net.mac);
            if machine == Machine::Pc {
                // No iPXE option ROM: nothing boots from the network.
                device.push_str(",romfile=");
            }
            if mewz {
                device.push_str(",disable-legacy=on,disable-modern=off");
            }
            push(&["-netdev", &netdev, "-device", &device]);
        }
        if let Some(block) = &spec.block {
            let format = if spec.block_overlay { "qcow2" } else { "raw" };
            let drive = format!("file={},format={format},if=none,id=blk0", path_arg(block)?);
            let device = format!("{blk_dev},drive=blk0");
            push(&["-drive", &drive, "-device", &device]);
        }
        if let Some(shared) = &spec.shared_dir {
            a.extend(shared_dir_args(shared, machine, spec.memory_mib)?);
        }
        if let Some(root) = &spec.ninep_root {
            a.extend(super::ninep::qemu_args(root)?);
        }
        if spec.guest_ram.is_none() {
            a.extend(["-append".to_owned(), cmdline.clone()]);
        }
        Ok(LaunchPlan {
            hypervisor: HypervisorKind::Qemu,
            program: build.unwrap_or(binary).to_path_buf(),
            args: a,
            files: vec![],
            accelerator: spec.accelerator,
            guest_cmdline: cmdline,
            // The exit port records what isa-debug-exit would have made QEMU exit with.
            exit_mapping: ExitMapping::QemuDebugExit,
            firmware,
            exit_port: build.map(|_| EXIT_PORT_FD),
            seccomp,
        })
    }
}

/// The exit port for a build without isa-debug-exit: a second UART at isa-debug-exit's port
/// 0xf4 whose output goes to the monitor's pipe (descriptor [`EXIT_PORT_FD`], which QEMU takes
/// as fd set [`EXIT_PORT_FDSET`]; `append=on` because QEMU would truncate the file otherwise,
/// which a pipe refuses). A guest's `outb(0xf4, N)` is that UART's transmit register: the byte
/// N reaches the monitor, which ends QEMU and records `(N << 1) | 1` as isa-debug-exit would.
fn exit_port_args() -> Vec<String> {
    vec![
        "-add-fd".into(),
        format!("fd={EXIT_PORT_FD},set={EXIT_PORT_FDSET}"),
        "-chardev".into(),
        format!("file,id=crid-exit,path=/dev/fdset/{EXIT_PORT_FDSET},append=on"),
        "-device".into(),
        format!("isa-serial,iobase=0xf4,irq={EXIT_PORT_IRQ},chardev=crid-exit"),
    ]
}

/// A QEMU whose kernel crid loads ([`super::bootblock`]): paused until crid has written it
/// (`-S`, then QMP `cont`), its RAM the shared file `ram`, which QEMU creates and sizes (a
/// file on tmpfs: crid's state directory).
fn crid_boot_args(ram: &Path, memory_mib: u64) -> Result<Vec<String>, SandboxError> {
    Ok(vec![
        "-S".into(),
        "-object".into(),
        format!(
            "memory-backend-file,id=crid-mem,size={memory_mib}M,mem-path={},share=on",
            path_arg(ram)?
        ),
        "-machine".into(),
        "memory-backend=crid-mem".into(),
    ])
}

/// A host directory shared with the guest over virtiofs (see [`super::virtiofs`]): the guest's
/// RAM becomes a shared memfd (vhost-user devices map it into virtiofsd), the machine takes it
/// as its memory (`-machine memory-backend=`, merged with `-M`), and a vhost-user-fs device
/// (PCI on `pc`, virtio-mmio on microvm) talks to virtiofsd on its socket. QEMU connects to the
/// socket while still root, before it drops privileges and chroots.
fn shared_dir_args(
    shared: &super::virtiofs::SharedDir,
    machine: Machine,
    memory_mib: u64,
) -> Result<Vec<String>, SandboxError> {
    let device = match machine {
        Machine::Microvm => "vhost-user-fs-device",
        Machine::Pc => "vhost-user-fs-pci",
    };
    if shared.tag.is_empty() || !shared.tag.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid(format!("invalid virtiofs tag {:?}", shared.tag)));
    }
    let socket = path_arg(&shared.socket)?;
    Ok(vec![
        "-object".into(),
        format!("memory-backend-memfd,id=crid-mem,size={memory_mib}M,share=on"),
        "-machine".into(),
        "memory-backend=crid-mem".into(),
        "-chardev".into(),
        format!("socket,id=crid-fs,path={socket}"),
        "-device".into(),
        format!("{device},chardev=crid-fs,tag={}", shared.tag),
    ])
}

/// A Linux interface name: 1–15 characters, no '/', ',', whitespace or ':'.
pub(crate) fn check_ifname(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid interface name {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{net, spec};
    use super::*;
    use crate::vm::elf::tests::pvh_elf32;
    use imagestore::UnikernelType as T;
    use std::path::PathBuf;

    fn argv(s: &VmSpec) -> Vec<String> {
        Qemu.plan(s, Path::new("/usr/bin/qemu-system-x86_64"))
            .unwrap()
            .args
    }

    fn has_pair(a: &[String], k: &str, v: &str) -> bool {
        a.windows(2).any(|w| w[0] == k && w[1] == v)
    }

    #[test]
    fn linux_kvm_microvm_with_net_and_initrd() {
        let mut s = spec(T::Linux, HypervisorKind::Qemu);
        s.net = Some(net());
        s.initrd = Some(PathBuf::from("/l/initrd.img"));
        let a = argv(&s);
        assert_eq!(
            &a[..5],
            [
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
                "-display",
                "none"
            ]
        );
        assert!(has_pair(&a, "-M", "microvm,x-option-roms=off"));
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host,-arch-capabilities"));
        assert!(has_pair(&a, "-m", "128"));
        assert!(has_pair(&a, "-smp", "2"));
        assert!(has_pair(
            &a,
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(has_pair(&a, "-serial", "stdio"));
        assert!(has_pair(
            &a,
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04"
        ));
        assert!(has_pair(&a, "-kernel", "/layers/top/unikernel/kernel"));
        assert!(has_pair(&a, "-initrd", "/l/initrd.img"));
        assert!(has_pair(
            &a,
            "-netdev",
            "tap,id=net0,ifname=crtap0,script=no,downscript=no"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-net-device,netdev=net0,mac=0a:58:0a:58:00:05"
        ));
        assert_eq!(a[a.len() - 2], "-append");
        assert!(a[a.len() - 1].contains("ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off"));
    }

    #[test]
    fn linux_tcg_uses_pc() {
        let mut s = spec(T::Linux, HypervisorKind::Qemu);
        s.accelerator = Accelerator::Tcg;
        s.block = Some(PathBuf::from("/b/root.img"));
        let a = argv(&s);
        assert!(has_pair(&a, "-M", "pc"));
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(
            &a,
            "-drive",
            "file=/b/root.img,format=raw,if=none,id=blk0"
        ));
        assert!(has_pair(&a, "-device", "virtio-blk-pci,drive=blk0"));
    }

    #[test]
    fn unprivileged_chrooted_with_qmp_and_overlay() {
        let mut s = spec(T::Linux, HypervisorKind::Qemu);
        s.vmm_user = Some((2_000_000_007, 2_000_000_007));
        s.chroot = Some(PathBuf::from("/run/c1/chroot"));
        s.control_socket = Some(PathBuf::from("/run/crid/qmp-c1.sock"));
        s.block = Some(PathBuf::from("/run/c1/block.qcow2"));
        s.block_overlay = true;
        let a = argv(&s);
        assert!(has_pair(
            &a,
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
        ));
        assert!(has_pair(&a, "-runas", "2000000007:2000000007"));
        assert!(has_pair(&a, "-chroot", "/run/c1/chroot"));
        assert!(has_pair(
            &a,
            "-qmp",
            "unix:/run/crid/qmp-c1.sock,server=on,wait=off"
        ));
        assert!(has_pair(
            &a,
            "-drive",
            "file=/run/c1/block.qcow2,format=qcow2,if=none,id=blk0"
        ));
        s.vmm_user = Some((0, 5));
        assert!(Qemu.plan(&s, Path::new("/q")).is_err());
    }

    #[test]
    fn linux_shared_root_over_virtiofs() {
        let mut s = spec(T::Linux, HypervisorKind::Qemu);
        s.accelerator = Accelerator::Tcg;
        s.initrd = Some(PathBuf::from("/l/initrd.gz"));
        s.shared_dir = Some(crate::vm::virtiofs::SharedDir {
            socket: "/run/c1/virtiofs.sock".into(),
            tag: "rootfs".into(),
        });
        let a = argv(&s);
        assert!(has_pair(
            &a,
            "-object",
            "memory-backend-memfd,id=crid-mem,size=128M,share=on"
        ));
        assert!(has_pair(&a, "-machine", "memory-backend=crid-mem"));
        assert!(has_pair(
            &a,
            "-chardev",
            "socket,id=crid-fs,path=/run/c1/virtiofs.sock"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "vhost-user-fs-pci,chardev=crid-fs,tag=rootfs"
        ));
        assert!(
            a[a.len() - 1].contains(" crid.root=virtiofs:rootfs"),
            "{a:?}"
        );
        s.accelerator = Accelerator::Kvm;
        assert!(has_pair(
            &argv(&s),
            "-device",
            "vhost-user-fs-device,chardev=crid-fs,tag=rootfs"
        ));
        // Without a share: none of it.
        s.shared_dir = None;
        let a = argv(&s);
        assert!(
            !a.iter()
                .any(|x| x.contains("crid-fs") || x.contains("crid.root"))
        );
        s.shared_dir = Some(crate::vm::virtiofs::SharedDir {
            socket: "/a,b".into(),
            tag: "rootfs".into(),
        });
        assert!(Qemu.plan(&s, Path::new("/q")).is_err());
    }

    #[test]
    fn unikraft_root_over_9p_on_pc() {
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.ninep_root = Some(PathBuf::from("/c/1/rootfs"));
        s.firmware = Some(PathBuf::from("/usr/share/qemu/qboot.rom"));
        let a = argv(&s);
        // virtio-9p is a PCI device: the pc machine; without crid's PCI firmware, SeaBIOS
        // (qboot configures no PCI).
        assert!(has_pair(&a, "-M", "pc"), "{a:?}");
        assert!(!a.iter().any(|x| x == "-bios"), "{a:?}");
        assert!(has_pair(
            &a,
            "-fsdev",
            "local,id=crid-9p,path=/c/1/rootfs,security_model=none"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-9p-pci,fsdev=crid-9p,mount_tag=fs0,disable-modern=on,disable-legacy=off"
        ));
        assert!(
            a[a.len() - 1].contains(" vfs.fstab=[ \"fs0:/:9pfs:::\" ]"),
            "{a:?}"
        );
        // No virtiofs machinery (no shared memory, no vhost-user device).
        assert!(
            !a.iter()
                .any(|x| x.contains("crid-mem") || x.contains("vhost"))
        );
        s.ninep_root = None;
        let a = argv(&s);
        assert!(!a.iter().any(|x| x.contains("9p") || x.contains("fs0")));
        assert!(has_pair(&a, "-bios", "/usr/share/qemu/qboot.rom"), "{a:?}");
        s.ninep_root = Some(PathBuf::from("/c/1,x/rootfs"));
        assert!(Qemu.plan(&s, Path::new("/q")).is_err());
    }

    #[test]
    fn mewz_pc_modern_virtio_and_exit_port() {
        let mut s = spec(T::Mewz, HypervisorKind::Qemu);
        s.net = Some(net());
        let a = argv(&s);
        assert!(has_pair(&a, "-M", "pc"));
        assert!(!a.iter().any(|x| x == "-bios"));
        assert!(has_pair(
            &a,
            "-device",
            "isa-debug-exit,iobase=0x501,iosize=2"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,romfile=,disable-legacy=on,disable-modern=off"
        ));
        assert!(has_pair(
            &a,
            "-append",
            "ip=10.88.0.5/16 gateway=10.88.0.1 app --flag"
        ));
    }

    #[test]
    fn pc_boots_the_configured_firmware_microvm_its_own() {
        let qboot = PathBuf::from("/usr/share/qemu/qboot.rom");
        // linux configures its PCI devices itself: qboot.
        let mut l = spec(T::Linux, HypervisorKind::Qemu);
        l.accelerator = Accelerator::Tcg;
        l.net = Some(net());
        l.firmware = Some(qboot.clone());
        let p = Qemu.plan(&l, Path::new("/q")).unwrap();
        assert!(has_pair(&p.args, "-M", "pc"));
        assert!(has_pair(&p.args, "-bios", "/usr/share/qemu/qboot.rom"));
        assert!(p.files.is_empty());
        // A unikraft guest with a PCI NIC takes BAR 0 as the firmware left it: without crid's
        // PCI firmware, SeaBIOS.
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.net = Some(net());
        s.firmware = Some(qboot.clone());
        let a = argv(&s);
        assert!(has_pair(&a, "-M", "pc"));
        assert!(
            !a.iter().any(|x| x == "-bios" || x == "-nographic"),
            "{a:?}"
        );
        assert!(has_pair(&a, "-display", "none"));
        // Without a PCI device it keeps qboot.
        s.net = None;
        s.accelerator = Accelerator::Tcg;
        assert!(has_pair(&argv(&s), "-bios", "/usr/share/qemu/qboot.rom"));
        // microvm has its own firmware.
        let mut m = spec(T::Linux, HypervisorKind::Qemu);
        m.firmware = Some(qboot);
        let a = argv(&m);
        assert!(has_pair(&a, "-M", "microvm,x-option-roms=off"));
        assert!(!a.iter().any(|x| x == "-bios"));
        l.firmware = Some(PathBuf::from("/a,b"));
        assert!(Qemu.plan(&l, Path::new("/q")).is_err());
    }

    #[test]
    fn pci_guests_boot_the_pci_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel");
        std::fs::write(&k, pvh_elf32()).unwrap();
        let qboot = PathBuf::from("/usr/share/qemu/qboot.rom");
        let shim = PathBuf::from("/var/lib/crid/vm/pci-shim.rom");
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.kernel = k.clone();
        s.net = Some(net());
        s.firmware = Some(qboot.clone());
        s.pci_shim = Some(shim.clone());
        let p = Qemu.plan(&s, Path::new("/q")).unwrap();
        let a = &p.args;
        assert!(has_pair(a, "-M", "pc"), "{a:?}");
        // The firmware is the -bios (not qboot), the guest's kernel QEMU's -kernel, and the
        // DSDT has no PCI hotplug methods for the firmware to checksum.
        assert!(
            has_pair(a, "-bios", "/var/lib/crid/vm/pci-shim.rom"),
            "{a:?}"
        );
        assert_eq!(a.iter().filter(|x| *x == "-bios").count(), 1);
        assert!(has_pair(a, "-kernel", k.to_str().unwrap()), "{a:?}");
        assert!(has_pair(a, "-global", "PIIX4_PM.acpi-root-pci-hotplug=off"));
        assert!(has_pair(
            a,
            "-global",
            "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off"
        ));
        assert!(
            !a.iter()
                .any(|x| x == "-fw_cfg" || x.starts_with("loader") || x == "-initrd"),
            "{a:?}"
        );
        assert_eq!(p.firmware, Some(Firmware::PciShim { shim: shim.clone() }));
        // The same for a 9p root, and without qboot configured.
        s.net = None;
        s.ninep_root = Some(PathBuf::from("/c/1/rootfs"));
        s.firmware = None;
        let a = argv(&s);
        assert!(
            has_pair(&a, "-bios", "/var/lib/crid/vm/pci-shim.rom"),
            "{a:?}"
        );
        // The guest's own initrd stays QEMU's -initrd (in fw_cfg, read into place by the
        // firmware).
        let mut own_initrd = s.clone();
        own_initrd.initrd = Some(PathBuf::from("/l/initrd"));
        assert!(has_pair(&argv(&own_initrd), "-initrd", "/l/initrd"));
        let mut comma = s.clone();
        comma.pci_shim = Some(dir.path().join("a,b"));
        assert!(Qemu.plan(&comma, Path::new("/q")).is_err());
        // SeaBIOS when the kernel is no PVH ELF or the PCI firmware is off.
        let seabios = |s: &VmSpec| {
            let p = Qemu.plan(s, Path::new("/q")).unwrap();
            let plain = has_pair(&p.args, "-kernel", s.kernel.to_str().unwrap())
                && !p.args.iter().any(|x| x == "-bios" || x == "-global");
            plain && p.firmware == Some(Firmware::SeaBios)
        };
        let mut not_pvh = s.clone();
        not_pvh.kernel = PathBuf::from("/missing");
        assert!(seabios(&not_pvh));
        let mut off = s.clone();
        off.pci_shim = None;
        off.firmware = Some(qboot.clone());
        assert!(seabios(&off));
        // A PVH entry above 4 GiB cannot be entered in 32-bit mode.
        let mut high = s.clone();
        high.kernel = dir.path().join("high");
        let mut elf = pvh_elf32();
        elf[0x64..0x68].copy_from_slice(&8u32.to_le_bytes());
        elf[68..72].copy_from_slice(&24u32.to_le_bytes());
        elf[0x70..0x78].copy_from_slice(&0x1_0000_0000u64.to_le_bytes());
        std::fs::write(&high.kernel, &elf).unwrap();
        assert!(seabios(&high));
        // Without a PCI device, or for linux, the configured firmware loads the kernel.
        s.ninep_root = None;
        s.firmware = Some(qboot.clone());
        assert_eq!(
            pc_firmware(&s),
            Firmware::Bios {
                path: qboot.clone()
            }
        );
        s.firmware = None;
        assert_eq!(pc_firmware(&s), Firmware::SeaBios);
        let mut l = spec(T::Linux, HypervisorKind::Qemu);
        l.accelerator = Accelerator::Tcg;
        l.net = Some(net());
        l.firmware = Some(qboot.clone());
        l.pci_shim = Some(shim);
        let p = Qemu.plan(&l, Path::new("/q")).unwrap();
        assert_eq!(p.firmware, Some(Firmware::Bios { path: qboot }));
        assert!(has_pair(&p.args, "-kernel", "/layers/top/unikernel/kernel"));
        // microvm boots the kernel with its own firmware.
        l.accelerator = Accelerator::Kvm;
        assert_eq!(Qemu.plan(&l, Path::new("/q")).unwrap().firmware, None);
        // The record says which, by kind; one written by an earlier crid (qboot booting the
        // shim as its kernel) still reads.
        let json = serde_json::to_value(Firmware::PciShim { shim: "/s".into() }).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "pci-shim", "shim": "/s"}));
        let old =
            serde_json::json!({"kind": "pci-shim", "bios": "/b", "shim": "/s", "entry": 1048576});
        assert_eq!(
            serde_json::from_value::<Firmware>(old).unwrap(),
            Firmware::PciShim { shim: "/s".into() }
        );
    }

    #[test]
    fn a_kernel_crid_loads_starts_paused_in_a_shared_ram_file() {
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        // No kernel file: crid reads it when it loads it.
        s.kernel = PathBuf::from("/missing");
        s.net = Some(net());
        s.pci_shim = Some(PathBuf::from("/var/lib/crid/vm/pci-shim.rom"));
        s.guest_ram = Some(PathBuf::from("/run/crid/qemu-pool/1/ram"));
        let p = Qemu.plan(&s, Path::new("/q")).unwrap();
        let a = &p.args;
        assert!(has_pair(a, "-M", "pc"), "{a:?}");
        assert!(has_pair(a, "-bios", "/var/lib/crid/vm/pci-shim.rom"));
        assert!(a.iter().any(|x| x == "-S"), "{a:?}");
        assert!(has_pair(
            a,
            "-object",
            "memory-backend-file,id=crid-mem,size=128M,mem-path=/run/crid/qemu-pool/1/ram,share=on"
        ));
        assert!(has_pair(a, "-machine", "memory-backend=crid-mem"));
        assert!(!a.iter().any(|x| x == "-kernel" || x == "-append"), "{a:?}");
        // The command line goes in the boot block.
        assert!(
            p.guest_cmdline.ends_with("-- app --flag"),
            "{}",
            p.guest_cmdline
        );
        assert!(!a.iter().any(|x| x.contains("app --flag")), "{a:?}");
        // Only for crid's PCI firmware, and without an initrd or a virtiofs share.
        let mut other = s.clone();
        other.pci_shim = None;
        assert!(Qemu.plan(&other, Path::new("/q")).is_err());
        let mut other = s.clone();
        other.net = None;
        assert!(Qemu.plan(&other, Path::new("/q")).is_err(), "no PCI device");
        let mut other = s.clone();
        other.initrd = Some(PathBuf::from("/l/initrd"));
        assert!(Qemu.plan(&other, Path::new("/q")).is_err());
        let mut other = s;
        other.guest_ram = Some(PathBuf::from("/a,b"));
        assert!(Qemu.plan(&other, Path::new("/q")).is_err());
    }

    #[test]
    fn unikraft_and_mirage_on_pc_unless_pvh_without_devices() {
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.net = Some(net());
        assert!(has_pair(&argv(&s), "-M", "pc"));
        let m = spec(T::Mirage, HypervisorKind::Qemu);
        // Not a readable PVH ELF: pc.
        assert_eq!(machine(&m), Machine::Pc);
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, pvh_elf32()).unwrap();
        let mut p = spec(T::Unikraft, HypervisorKind::Qemu);
        p.kernel = k;
        assert_eq!(machine(&p), Machine::Microvm);
        p.net = Some(net());
        assert_eq!(machine(&p), Machine::Pc);
    }

    #[test]
    fn mmio_guest_on_microvm_with_its_devices_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, pvh_elf32()).unwrap();
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.kernel = k.clone();
        s.info.virtio = VirtioTransport::Mmio;
        s.net = Some(net());
        s.block = Some(PathBuf::from("/b/disk.qcow2"));
        assert_eq!(machine(&s), Machine::Microvm);
        let a = argv(&s);
        assert!(
            has_pair(&a, "-M", "microvm,x-option-roms=off,acpi=off"),
            "{a:?}"
        );
        assert!(has_pair(&a, "-global", "virtio-mmio.force-legacy=false"));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-net-device,netdev=net0,mac=0a:58:0a:58:00:05"
        ));
        assert!(has_pair(&a, "-device", "virtio-blk-device,drive=blk0"));
        assert!(!a.iter().any(|x| x.contains("-pci") || x == "-bios"));
        // Declared PCI (the default), the same guest with a NIC is on pc.
        s.info.virtio = VirtioTransport::Pci;
        assert_eq!(machine(&s), Machine::Pc);
        // No PVH entry (microvm's firmware boots PVH kernels): pc.
        s.info.virtio = VirtioTransport::Mmio;
        s.kernel = PathBuf::from("/missing");
        assert_eq!(machine(&s), Machine::Pc);
        // A 9p root stays on pc: crid exports it over virtio-9p-pci.
        s.kernel = k;
        s.ninep_root = Some(PathBuf::from("/c/1/rootfs"));
        assert_eq!(machine(&s), Machine::Pc);
        // linux on KVM keeps ACPI (its kernel finds virtio-mmio devices there).
        let mut l = spec(T::Linux, HypervisorKind::Qemu);
        l.info.virtio = VirtioTransport::Mmio;
        l.net = Some(net());
        assert!(has_pair(&argv(&l), "-M", "microvm,x-option-roms=off"));
        // Mewz stays on pc (virtio-pci, exit port 0x501).
        let mut m = spec(T::Mewz, HypervisorKind::Qemu);
        m.info.virtio = VirtioTransport::Mmio;
        assert_eq!(machine(&m), Machine::Pc);
    }

    /// A virtio-mmio guest whose QEMU drops to its own uid in a chroot runs on the microvm
    /// build: no `-sandbox` (the build has none; the monitor installs the filter), a UART at
    /// 0xf4 on the monitor's pipe instead of isa-debug-exit, the same exit mapping.
    #[test]
    fn microvm_build_with_an_exit_port_and_the_monitors_filter() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, pvh_elf32()).unwrap();
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.kernel = k;
        s.info.virtio = VirtioTransport::Mmio;
        s.net = Some(net());
        s.block = Some(PathBuf::from("/b/disk.qcow2"));
        s.block_overlay = true;
        s.vmm_user = Some((2_000_000_007, 2_000_000_007));
        s.chroot = Some(PathBuf::from("/run/c1/chroot"));
        s.control_socket = Some(PathBuf::from("/run/crid/qmp-c1.sock"));
        s.qemu_microvm = Some(PathBuf::from("/usr/bin/qemu-system-x86_64-microvm"));
        let full = Path::new("/usr/bin/qemu-system-x86_64");
        let p = Qemu.plan(&s, full).unwrap();
        assert_eq!(
            p.program,
            PathBuf::from("/usr/bin/qemu-system-x86_64-microvm")
        );
        let a = &p.args;
        assert!(!a.iter().any(|x| x == "-sandbox"), "{a:?}");
        assert_eq!(
            p.seccomp,
            Some(QemuSandbox {
                elevate_privileges: true
            })
        );
        assert!(!a.iter().any(|x| x.contains("isa-debug-exit")), "{a:?}");
        assert!(has_pair(a, "-add-fd", "fd=3,set=1"));
        assert!(has_pair(
            a,
            "-chardev",
            "file,id=crid-exit,path=/dev/fdset/1,append=on"
        ));
        assert!(has_pair(
            a,
            "-device",
            "isa-serial,iobase=0xf4,irq=3,chardev=crid-exit"
        ));
        assert_eq!(p.exit_port, Some(3));
        assert_eq!(p.exit_mapping, ExitMapping::QemuDebugExit);
        // Everything else as on the full binary.
        assert!(has_pair(a, "-runas", "2000000007:2000000007"));
        assert!(has_pair(a, "-chroot", "/run/c1/chroot"));
        assert!(has_pair(a, "-serial", "stdio"));
        assert!(has_pair(a, "-device", "virtio-blk-device,drive=blk0"));
        let full_args = |s: &VmSpec| {
            let p = Qemu.plan(s, full).unwrap();
            assert_eq!(p.program, full);
            assert_eq!((p.exit_port, p.seccomp), (None, None));
            assert!(
                has_pair(&p.args, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"),
                "{:?}",
                p.args
            );
            assert!(p.args.iter().any(|x| x == "-sandbox"));
        };
        // A QEMU that stays root, or has no chroot, keeps the full binary and its filter.
        let mut root = s.clone();
        root.vmm_user = None;
        full_args(&root);
        let mut unchrooted = s.clone();
        unchrooted.chroot = None;
        full_args(&unchrooted);
        // pc guests (PCI devices) and hosts without the build use the full binary.
        let mut pci = s.clone();
        pci.info.virtio = VirtioTransport::Pci;
        full_args(&pci);
        let mut absent = s.clone();
        absent.qemu_microvm = None;
        full_args(&absent);
        // linux on microvm stays on the full binary.
        let mut l = spec(T::Linux, HypervisorKind::Qemu);
        l.vmm_user = s.vmm_user;
        l.chroot = s.chroot.clone();
        l.qemu_microvm = s.qemu_microvm.clone();
        assert_eq!(machine(&l), Machine::Microvm);
        full_args(&l);
    }

    #[test]
    fn rejects_commas_in_paths_and_bad_tap_names() {
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        s.kernel = PathBuf::from("/a,b/kernel");
        assert!(Qemu.plan(&s, Path::new("/q")).is_err());
        let mut s = spec(T::Unikraft, HypervisorKind::Qemu);
        let mut n = net();
        n.tap = "tap,ifname=x".into();
        s.net = Some(n);
        assert!(Qemu.plan(&s, Path::new("/q")).is_err());
    }
}
