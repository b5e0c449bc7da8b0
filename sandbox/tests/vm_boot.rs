//! Boots the freestanding test unikernel (tests/guests/freestanding) with the QEMU plan under
//! KVM and checks what the guest printed and the exit code it chose.
//!
//! Needs gcc, qemu-system-x86_64 and a usable /dev/kvm; in CI (CI=true) their absence fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType};
use sandbox::vm::{self, Accelerator, AcceleratorMode, VmSpec, accel};

fn skip_or_fail(reason: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
    true
}

fn build_guest(out: &Path) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/freestanding/build.sh");
    let status = Command::new("sh").arg(&script).arg(out).status();
    match status {
        Ok(s) if s.success() => true,
        other => {
            skip_or_fail(&format!("cannot build the test guest: {other:?}"));
            false
        }
    }
}

fn spec(kernel: PathBuf, run_dir: PathBuf, args: &[&str], accelerator: Accelerator) -> VmSpec {
    VmSpec {
        info: UnikernelInfo::new(
            UnikernelType::Unikraft,
            HypervisorKind::Qemu,
            "unikernel/guest.elf",
            UnikernelSource::ManifestAnnotations,
        ),
        kernel,
        initrd: None,
        block: None,
        block_overlay: false,
        memory_mib: 32,
        vcpus: 1,
        net: None,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("GREETING".into(), "hi".into())],
        argv_in_initrd: false,
        accelerator,
        run_dir,
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

/// Runs the plan with a bounded wait; kills the VMM at the deadline.
/// Whether `plan` passes `flag` followed by a value `value` accepts.
fn has_option(plan: &vm::LaunchPlan, flag: &str, value: impl Fn(&str) -> bool) -> bool {
    plan.args.windows(2).any(|w| w[0] == flag && value(&w[1]))
}

fn run(plan: &vm::LaunchPlan, deadline: Duration) -> (String, std::process::ExitStatus, bool) {
    let (out, status, killed, _) = run_with_stderr(plan, deadline);
    (out, status, killed)
}

/// [`run`], also returning what QEMU wrote on stderr (which crid puts in the CRI log too).
fn run_with_stderr(
    plan: &vm::LaunchPlan,
    deadline: Duration,
) -> (String, std::process::ExitStatus, bool, String) {
    finish(spawn(plan), deadline)
}

fn spawn(plan: &vm::LaunchPlan) -> std::process::Child {
    plan.command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu")
}

/// Waits (bounded) for QEMU to exit, killing it at the deadline; its output, status, whether
/// it was killed and its stderr.
fn finish(
    mut child: std::process::Child,
    deadline: Duration,
) -> (String, std::process::ExitStatus, bool, String) {
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > deadline {
            killed = true;
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !err.is_empty() {
        eprintln!("qemu stderr: {err}");
    }
    (out, status, killed, err)
}

fn kvm_ready() -> Option<Accelerator> {
    let host = accel::probe_host();
    if !host.usable {
        skip_or_fail(&format!("no usable KVM: {}", host.detail));
        return None;
    }
    let d = accel::decide(
        AcceleratorMode::Auto,
        UnikernelType::Unikraft,
        HypervisorKind::Qemu,
        &host,
    )
    .unwrap();
    assert_eq!(d.accelerator, Accelerator::Kvm, "{}", d.reason);
    Some(d.accelerator)
}

/// The test guest built into a temporary directory (`guest.elf`) and the accelerator to run it
/// with; `None` (skipped, or failed in CI) without KVM or the guest's compiler.
fn built_guest() -> Option<(Accelerator, tempfile::TempDir, PathBuf)> {
    let accelerator = kvm_ready()?;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    build_guest(&kernel).then_some((accelerator, dir, kernel))
}

/// The launch plan for `s`; `None` (skipped, or failed in CI) without QEMU.
fn plan_or_skip(s: &VmSpec) -> Option<vm::LaunchPlan> {
    match vm::plan(s, &vm::default_binary_dirs()) {
        Ok(p) => Some(p),
        Err(e) => {
            skip_or_fail(&format!("no qemu: {e}"));
            None
        }
    }
}

#[test]
fn freestanding_guest_boots_under_kvm_and_chooses_its_exit_code() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let s = spec(
        kernel,
        dir.path().join("run"),
        &["exit=3", "hello"],
        accelerator,
    );
    let Some(plan) = plan_or_skip(&s) else {
        return;
    };
    assert!(has_option(&plan, "-M", |v| v.starts_with("microvm")));
    assert!(has_option(&plan, "-accel", |v| v == "kvm"));
    plan.write_files().unwrap();
    let (out, status, killed) = run(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    assert!(out.contains("crid-test-guest: booted"), "output: {out}");
    // The CRI args and env reached the guest's command line.
    assert!(
        out.contains("cmdline: guest.elf env.vars=[ \"GREETING=hi\" ] -- exit=3 hello"),
        "output: {out}"
    );
    assert_eq!(
        status.code(),
        Some(7),
        "isa-debug-exit status is (3 << 1) | 1"
    );
    assert_eq!(plan.guest_exit_code(status), 3);
}

#[test]
fn halted_guest_is_killed_at_the_deadline() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let s = spec(kernel, dir.path().join("run"), &["stay"], accelerator);
    let Some(plan) = plan_or_skip(&s) else {
        return;
    };
    let (out, status, killed) = run(&plan, Duration::from_secs(3));
    assert!(killed);
    assert!(out.contains("crid-test-guest: halting"), "output: {out}");
    assert_eq!(plan.guest_exit_code(status), 137);
}

/// A unikraft-type guest with a PCI device on `pc` boots with SeaBIOS, which configures the
/// device (qboot does not, and such guests take BAR 0 as the firmware left it), and prints
/// nothing itself (`-display none`, not `-nographic`): the guest's greeting is the first output.
#[test]
fn pci_guest_on_pc_boots_through_seabios_quietly() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    // A disk makes it a pc machine (PCI virtio), as a NIC would.
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut s = spec(kernel, dir.path().join("run"), &["exit=4"], accelerator);
    s.block = Some(disk);
    s.firmware = Some(PathBuf::from(vm::launch::DEFAULT_QEMU_FIRMWARE));
    let Some(plan) = plan_or_skip(&s) else {
        return;
    };
    assert!(has_option(&plan, "-M", |v| v == "pc"));
    assert!(!plan.args.iter().any(|a| a == "-bios"), "{:?}", plan.args);
    plan.write_files().unwrap();
    let (out, status, killed, err) = run_with_stderr(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    // Neither SeaBIOS's banner on the serial port nor a QEMU warning (both reach the CRI log).
    assert!(
        out.starts_with("crid-test-guest: booted"),
        "output: {out:?}"
    );
    assert!(err.is_empty(), "qemu stderr: {err}");
    assert_eq!(plan.guest_exit_code(status), 4);
}

/// The same guest with a disk and a 9p root, both PCI devices on `pc`, boots crid's PCI
/// firmware instead: the firmware prints nothing, the guest's own PCI code finds the 9p device
/// configured (an I/O BAR, decoding on) and reads a file over it, and the guest's own initrd is
/// its PVH module. A kernel whose entry the firmware refuses (outside RAM) stops QEMU with one
/// line on the serial port and exit status 255.
#[test]
fn pci_guest_on_pc_boots_through_the_pci_firmware() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let shim = dir.path().join("vm").join(vm::pcishim::FILE_NAME);
    vm::pcishim::install(&shim).unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello"), "hi through the firmware\n").unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let args = ["9p.read=/hello", "exit=6"];
    let mut s = spec(kernel.clone(), dir.path().join("run"), &args, accelerator);
    s.block = Some(disk);
    s.ninep_root = Some(root);
    s.pci_shim = Some(shim.clone());
    let Some(plan) = plan_or_skip(&s) else {
        return;
    };
    assert!(has_option(&plan, "-bios", |v| Path::new(v) == shim));
    assert!(has_option(&plan, "-kernel", |v| Path::new(v) == kernel));
    plan.write_files().unwrap();
    let (out, status, killed, err) = run_with_stderr(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    assert!(
        out.starts_with("crid-test-guest: booted"),
        "output: {out:?}"
    );
    assert!(
        out.contains("9p: device tagged fs0 at I/O port 0xc")
            && out.contains("9p: read /hello: hi through the firmware"),
        "output: {out}"
    );
    assert!(err.is_empty(), "qemu stderr: {err}");
    assert_eq!(plan.guest_exit_code(status), 6);

    // With an initrd of its own (its root then, so no 9p): the firmware reads it into place
    // and hands it on as the module.
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, "the guest's own initrd\nmore\n").unwrap();
    s.ninep_root = None;
    s.initrd = Some(initrd.clone());
    let plan = plan_or_skip(&s).unwrap();
    assert!(has_option(&plan, "-bios", |v| Path::new(v) == shim));
    assert!(has_option(&plan, "-initrd", |v| Path::new(v) == initrd));
    let (out, status, killed) = run(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    assert!(
        out.contains("\ninitrd: 28 bytes: the guest's own initrd\n"),
        "output: {out}"
    );
    assert_eq!(plan.guest_exit_code(status), 6);

    // The firmware refuses an entry outside RAM: the same kernel, its PVH note's entry moved.
    let mut bytes = std::fs::read(&kernel).unwrap();
    let note = bytes
        .windows(8)
        .position(|w| w == b"Xen\0\0\0\x10\0")
        .expect("the PVH note, entry 1 MiB");
    bytes[note + 4..note + 8].copy_from_slice(&0xf000_0000u32.to_le_bytes());
    let bad = dir.path().join("bad.elf");
    std::fs::write(&bad, &bytes).unwrap();
    s.kernel = bad;
    let plan = plan_or_skip(&s).unwrap();
    let (out, status, killed) = run(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    assert_eq!(
        out,
        "crid-pci-shim: the PVH entry is not in the kernel's RAM\n"
    );
    assert_eq!(status.code(), Some(255));
}

/// A QEMU started before its guest was known: paused, its RAM a shared file, without
/// `-kernel`. crid writes the kernel and its command line into that RAM (the boot block), then
/// QMP `cont` runs the PCI firmware, which enters the kernel from the block. Without the block
/// the firmware finds no kernel in fw_cfg and says so.
#[test]
fn pci_firmware_boots_a_kernel_crid_loaded_into_a_paused_qemu() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let shim = dir.path().join("vm").join(vm::pcishim::FILE_NAME);
    vm::pcishim::install(&shim).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut s = spec(
        PathBuf::from("/not/read"),
        dir.path().join("run"),
        &["from", "the", "block", "exit=9"],
        accelerator,
    );
    s.block = Some(disk);
    s.pci_shim = Some(shim);
    let boot = |s: &mut VmSpec, name: &str, load: Option<&Path>| {
        let ram = dir.path().join(format!("{name}.ram"));
        let qmp = dir.path().join(format!("{name}.qmp"));
        s.guest_ram = Some(ram.clone());
        s.control_socket = Some(qmp.clone());
        let plan = plan_or_skip(s)?;
        assert!(!has_option(&plan, "-kernel", |_| true));
        let child = spawn(&plan);
        let deadline = Instant::now() + Duration::from_secs(30);
        while vm::qmp::execute(&qmp, "query-status", Duration::from_secs(5)).is_err() {
            assert!(Instant::now() < deadline, "QEMU never answered on {qmp:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(kernel) = load {
            let ram_end = vm::bootblock::ram_below_4g(s.memory_mib << 20);
            let k = vm::bootblock::PvhKernel::read(kernel, ram_end).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
            k.load(&file, &ram, &plan.guest_cmdline).unwrap();
        }
        vm::qmp::execute(&qmp, "cont", Duration::from_secs(5)).unwrap();
        Some((finish(child, Duration::from_secs(60)), plan))
    };
    let Some(((out, status, killed, err), plan)) = boot(&mut s, "loaded", Some(&kernel)) else {
        return;
    };
    assert!(!killed, "guest did not exit; output: {out}");
    assert!(
        out.starts_with("crid-test-guest: booted"),
        "output: {out:?}"
    );
    assert!(
        out.contains("cmdline: ") && out.contains("from the block exit=9"),
        "output: {out}"
    );
    assert!(err.is_empty(), "qemu stderr: {err}");
    assert_eq!(plan.guest_exit_code(status), 9);

    let ((out, status, killed, _), _) = boot(&mut s, "empty", None).unwrap();
    assert!(!killed, "firmware did not exit; output: {out}");
    assert_eq!(
        out,
        "crid-pci-shim: the PVH entry is not in the kernel's RAM\n"
    );
    assert_eq!(status.code(), Some(255));
}

/// A running QEMU whose guest has printed `ready` (its firmware is done by then), with a QMP
/// session to ask its human monitor; QEMU is killed when this is dropped.
struct Monitored {
    child: std::process::Child,
    out: String,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Monitored {
    fn start(plan: &vm::LaunchPlan, qmp: &Path, ready: &str) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = plan
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut out = String::new();
        let start = Instant::now();
        while !out.contains(ready) && start.elapsed() < Duration::from_secs(60) {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            out.push_str(&line);
        }
        let writer = std::os::unix::net::UnixStream::connect(qmp).expect("qmp socket");
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(writer.try_clone().unwrap());
        let mut greeting = String::new();
        reader.read_line(&mut greeting).unwrap();
        let mut m = Monitored {
            child,
            out,
            reader,
            writer,
        };
        m.execute(r#"{"execute":"qmp_capabilities"}"#);
        m
    }

    fn execute(&mut self, command: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        self.writer.write_all(command.as_bytes()).unwrap();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("return").is_some() {
                return v["return"].clone();
            }
        }
    }

    /// A human monitor command's output (`info pci`, `xp ...`).
    fn hmp(&mut self, command: &str) -> String {
        let c = serde_json::json!({"execute": "human-monitor-command",
            "arguments": {"command-line": command}});
        let v = self.execute(&c.to_string());
        v.as_str().unwrap_or_default().to_owned()
    }

    /// `len` bytes of guest memory at `addr`.
    fn read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let text = self.hmp(&format!("xp /{len}bx {addr:#x}"));
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .flat_map(|(_, bytes)| {
                bytes
                    .split_whitespace()
                    .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `len` bytes at `addr` (at most 64 KiB) that sum to zero, as ACPI tables and the MP
    /// table's structures do, with their first bytes.
    fn checksummed(&mut self, addr: u64, len: usize) -> Vec<u8> {
        assert!(len <= 65536, "{len} bytes at {addr:#x}");
        let bytes = self.read(addr, len);
        assert_eq!(bytes.len(), len);
        let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        assert_eq!(sum, 0, "checksum of {len} bytes at {addr:#x}: {bytes:02x?}");
        bytes
    }
}

impl Drop for Monitored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

/// crid's PCI firmware leaves the guest's PCI devices as SeaBIOS does: QEMU's `info pci`
/// (every function's BARs, interrupt lines, and so decoding) reads the same after either, with
/// a disk and a 9p root on the bus. Its ACPI tables (QEMU's, through its table loader) and MP
/// table are where the legacy searches find them, each with a valid checksum.
#[test]
fn the_pci_firmware_configures_pci_as_seabios_does() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let shim = dir.path().join(vm::pcishim::FILE_NAME);
    vm::pcishim::install(&shim).unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut pci = Vec::new();
    for firmware in [Some(shim.clone()), None] {
        let qmp = dir.path().join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let mut s = spec(
            kernel.clone(),
            dir.path().join("run"),
            &["stay"],
            accelerator,
        );
        s.block = Some(disk.clone());
        s.ninep_root = Some(root.clone());
        s.control_socket = Some(qmp.clone());
        s.pci_shim = firmware.clone();
        let Some(plan) = plan_or_skip(&s) else {
            return;
        };
        assert_eq!(
            has_option(&plan, "-bios", |v| Path::new(v) == shim),
            firmware.is_some()
        );
        let mut vm = Monitored::start(&plan, &qmp, "crid-test-guest: halting");
        assert!(vm.out.contains("crid-test-guest: halting"), "{}", vm.out);
        let info = vm.hmp("info pci");
        assert!(info.contains("BAR0: I/O at 0xc"), "{info}");
        pci.push(info);
        if firmware.is_none() {
            continue;
        }
        // The EBDA, as the BIOS data area points at it, holds the RSDP, then the MP table's
        // floating pointer.
        let ebda = u64::from(u16::from_le_bytes(vm.read(0x40e, 2).try_into().unwrap())) << 4;
        let rsdp = vm.checksummed(ebda, 20);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        let rsdt = le32(&rsdp, 16);
        let len = le32(&vm.read(rsdt, 8), 4) as usize;
        let rsdt_bytes = vm.checksummed(rsdt, len);
        let mut names = Vec::new();
        for entry in (36..len).step_by(4) {
            let table = le32(&rsdt_bytes, entry);
            let len = le32(&vm.read(table, 8), 4) as usize;
            let bytes = vm.checksummed(table, len);
            names.push(String::from_utf8_lossy(&bytes[..4]).into_owned());
            if &bytes[..4] == b"FACP" {
                let dsdt = le32(&bytes, 40);
                let len = le32(&vm.read(dsdt, 8), 4) as usize;
                assert_eq!(&vm.checksummed(dsdt, len)[..4], b"DSDT");
            }
        }
        assert!(names.iter().any(|n| n == "FACP") && names.iter().any(|n| n == "APIC"));
        let mp = vm.checksummed(ebda + 64, 16);
        assert_eq!(&mp[..4], b"_MP_");
        let table = le32(&mp, 4);
        let len = usize::from(u16::from_le_bytes(
            vm.read(table + 4, 2).try_into().unwrap(),
        ));
        assert_eq!(&vm.checksummed(table, len)[..4], b"PCMP");
    }
    assert_eq!(
        pci[0], pci[1],
        "the PCI firmware's info pci, then SeaBIOS's"
    );
}

/// A guest whose image declares virtio-mmio drivers (`io.crid.unikernel.virtio=mmio`) gets its
/// devices on microvm, announced on its command line as Firecracker does: the test guest finds
/// the disk there, reads its marker and writes a sector back (its drivers are virtio-mmio only).
#[test]
fn mmio_guest_finds_its_disk_on_microvm() {
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let disk = dir.path().join("disk.img");
    let mut bytes = vec![0u8; 16 * 512];
    let marker = b"crid-disk-marker on microvm";
    bytes[..marker.len()].copy_from_slice(marker);
    std::fs::write(&disk, &bytes).unwrap();
    let mut s = spec(kernel, dir.path().join("run"), &["exit=5"], accelerator);
    s.block = Some(disk);
    s.info.virtio = imagestore::VirtioTransport::Mmio;
    let Some(plan) = plan_or_skip(&s) else {
        return;
    };
    assert!(has_option(&plan, "-M", |v| v.starts_with("microvm")
        && v.contains("acpi=off")));
    assert!(has_option(&plan, "-device", |v| v.starts_with("virtio-blk-device,")));
    let (out, status, killed) = run(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    assert!(out.contains("virtio_mmio.device="), "output: {out}");
    assert!(
        out.contains("crid-test-guest: disk marker: crid-disk-marker on microvm"),
        "output: {out}"
    );
    assert!(
        out.contains("crid-test-guest: disk: write read back"),
        "output: {out}"
    );
    assert_eq!(plan.guest_exit_code(status), 5);
}

/// A `unikraft` guest's root over QEMU's 9p (urunc's `mountRootfs=true`), with QEMU dropped to
/// an unprivileged uid (`-runas`) and chrooted into an empty directory with crid's restricted
/// proc in it (`vm::ninep::mount_proc`), and SeaBIOS although qboot is configured (qboot leaves
/// the PCI device unconfigured), as crid starts it: the test guest's 9P2000.u client
/// (Unikraft's protocol, over the legacy virtio-9p PCI device tagged `fs0`) reads a root-owned
/// file, sees the host's owners and modes, creates a file and a directory in a world-writable
/// directory (owned by QEMU's uid on the host), truncates and writes a world-writable file (as kubelet's
/// termination log), and is refused (EACCES) where only root may write.
#[test]
fn unikraft_9p_root_under_chroot_and_runas() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        skip_or_fail("-runas needs root");
        return;
    }
    let Some((accelerator, dir, kernel)) = built_guest() else {
        return;
    };
    let (root, empty) = (dir.path().join("rootfs"), dir.path().join("empty"));
    for sub in ["etc", "data", "dev"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join("data"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(root.join("etc/hello"), "hi from the image\n").unwrap();
    let log = root.join("dev/termination-log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    vm::ninep::mount_proc(&empty).unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            vm::ninep::unmount_proc(&self.0);
        }
    }
    let _proc = Unmount(empty.clone());
    let args = [
        "9p.read=/etc/hello",
        "9p.stat=/",
        "9p.write=/data/new",
        "9p.mkdir=/data/dir",
        "9p.write=/data/dir/file",
        "9p.write=/dev/termination-log",
        "9p.write=/etc/hello",
        "9p.write=/new",
        "exit=5",
    ];
    let mut s = spec(kernel, dir.path().join("run"), &args, accelerator);
    s.ninep_root = Some(root.clone());
    s.vmm_user = Some((65534, 65534));
    s.chroot = Some(empty);
    let firmware = Path::new(vm::launch::DEFAULT_QEMU_FIRMWARE);
    s.firmware = firmware.is_file().then(|| firmware.to_path_buf());
    let Some(plan) = plan_or_skip(&s) else {
        return;
    };
    let fsdev = format!(
        "local,id=crid-9p,path={},security_model=none",
        root.display()
    );
    assert!(has_option(&plan, "-fsdev", |v| v == fsdev));
    assert!(has_option(&plan, "-runas", |v| v == "65534:65534"));
    assert!(!plan.args.iter().any(|a| a == "-bios"), "{:?}", plan.args);
    plan.write_files().unwrap();
    let (out, status, killed) = run(&plan, Duration::from_secs(60));
    assert!(!killed, "guest did not exit; output: {out}");
    assert!(
        out.contains("vfs.fstab=[ \"fs0:/:9pfs:::\" ] -- 9p.read="),
        "output: {out}"
    );
    for line in [
        "9p: device tagged fs0 at I/O port",
        "9p: attached with 9P2000.u",
        "9p: read /etc/hello: hi from the image",
        "9p: stat /: uid 0 gid 0 mode 755 dir",
        "9p: write (created) /data/new: 35 bytes",
        "9p: mkdir /data/dir: created",
        "9p: write (created) /data/dir/file: 35 bytes",
        "9p: write (truncated) /dev/termination-log: 35 bytes",
        "9p: write: error Permission denied (errno 13)",
        "9p: done",
    ] {
        assert!(out.contains(line), "no {line:?} in: {out}");
    }
    // Both refusals: the root-owned file and the root-owned directory.
    assert_eq!(out.matches("(errno 13)").count(), 2, "output: {out}");
    let written = "written by crid-test-guest over 9p\n";
    assert_eq!(
        std::fs::read_to_string(root.join("data/new")).unwrap(),
        written
    );
    assert_eq!(
        std::fs::metadata(root.join("data/new")).unwrap().uid(),
        65534
    );
    let made = std::fs::metadata(root.join("data/dir")).unwrap();
    assert!(made.is_dir());
    assert_eq!((made.uid(), made.mode() & 0o777), (65534, 0o755));
    assert_eq!(
        std::fs::read_to_string(root.join("data/dir/file")).unwrap(),
        written
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), written);
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), 0);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hello")).unwrap(),
        "hi from the image\n"
    );
    assert!(!root.join("new").exists());
    assert_eq!(plan.guest_exit_code(status), 5);
}
