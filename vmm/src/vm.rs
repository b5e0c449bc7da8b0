//! Building the VM and running it: KVM, guest memory, the boot image, the devices, the boot
//! vCPU on the thread that set it all up and one thread per further vCPU. Set-up happens with
//! the privileges the VMM started with; then the process confines itself (chroot, uid/gid,
//! no_new_privs) and every thread installs the seccomp filter before its first instruction of
//! guest code runs. Whichever thread sees the guest end (or its device fail) ends the process
//! ([`crate::end`]).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use seccompiler::BpfProgram;
use vmm_sys_util::eventfd::EventFd;

use linux_loader::loader::Cmdline;
use vm_memory::GuestAddress;

use crate::boot::{self, BootFiles};
use crate::devices::serial::{LineOut, PartialLineAlarm};
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::net::{self, Net, SharedNet};
use crate::devices::virtio::{MmioTransport, MmioWindow};
use crate::devices::{GuestExit, IrqLine, PioBus, QueuedWrites, Serial, i8042, serial};
use crate::{Config, Disk, DiskConfig, NetConfig, Tap, VmmError, cpu, memory, seccomp, sys};

/// The interrupt line of the first virtio-mmio device (Firecracker's choice too); each further
/// device takes the next line.
const FIRST_MMIO_IRQ: u32 = 5;

/// The virtio-mmio devices, by window: device `i` answers at
/// `MMIO_DEVICES_START + i * MMIO_DEVICE_SIZE`.
type MmioDevices = Vec<Arc<Mutex<dyn MmioWindow>>>;

/// How long a partial line of the guest's output (a prompt) waits for its newline, and how
/// often the boot vCPU is interrupted to send it out while one waits (see [`LineOut`]).
const PARTIAL_LINE_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// The guest's serial output: stdout, a line at a time.
type Console = LineOut<File, sys::ThreadTimer>;

/// The timer interrupts the boot vCPU's `KVM_RUN` ([`run_vcpu`] then sends the partial line).
impl PartialLineAlarm for sys::ThreadTimer {
    fn set(&mut self, armed: bool) {
        // A timer that cannot be set leaves the line for its newline or the guest's end.
        let _ = self.set_period(armed.then_some(PARTIAL_LINE_DELAY));
    }
}

/// Where KVM puts the three pages of its real-mode TSS on Intel (below the 4 GiB BIOS area,
/// inside the MMIO hole, so never guest RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM built ahead of its guest: KVM's VM with the guest's memory registered, the in-kernel
/// irqchip and PIT, the serial output's coalesced I/O, the boot vCPU with its CPUID and the
/// seccomp filter of a guest without a disk. Nothing of a guest is in it yet, so it
/// can wait for one (`crid-vmm --prepared`, see [`crate::handover`]).
pub struct Prepared {
    kvm: Kvm,
    vm: VmFd,
    mem: &'static memory::GuestMemoryMmap,
    irqchip: bool,
    boot_vcpu: VcpuFd,
    /// The ring of the serial data port's queued writes, when KVM queues them.
    serial_ring: Option<sys::CoalescedRing>,
    memory_mib: u64,
    /// The seccomp filter of a guest without a disk, compiled ahead too.
    diskless_filter: BpfProgram,
}

/// Builds the VM for a guest of `memory_mib` MiB (see [`build_vm`] for the order), with the
/// stop signals at their default action (see `sys::default_stop_signals`).
pub fn prepare(memory_mib: u64) -> Result<Prepared, VmmError> {
    sys::default_stop_signals().map_err(|e| VmmError::io("resetting signal dispositions", e))?;
    let kvm = Kvm::new().map_err(|e| VmmError::kvm("opening /dev/kvm", e))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| VmmError::kvm("KVM_CREATE_VM", e))?;
    // Leaked on purpose: the vCPU and device threads are never joined (the first result ends
    // the guest: the thread that has it exits the process, the others possibly still in KVM_RUN), so
    // guest memory must never be unmapped while the process lives, on any return path; a
    // later mapping of the process could otherwise land in a range a running vCPU still uses.
    // The VMM runs one guest and exits; the exit releases it.
    let mem: &'static memory::GuestMemoryMmap = Box::leak(Box::new(memory::create(memory_mib)?));
    let irqchip = build_vm(&vm, mem)?;
    let boot_vcpu = create_vcpu(&kvm, &vm, 0)?;
    let serial_ring = coalesce_serial_output(&kvm, &vm, &boot_vcpu);
    let diskless_filter = seccomp::filter(None, serial_ring.as_ref().map(|_| vm.as_raw_fd()))?;
    Ok(Prepared {
        kvm,
        vm,
        mem,
        irqchip,
        boot_vcpu,
        serial_ring,
        memory_mib,
        diskless_filter,
    })
}

/// Has KVM queue the guest's writes to the serial data port in a ring instead of leaving
/// `KVM_RUN` for each (`KVM_CAP_COALESCED_PIO`): a guest writes its output a byte at a time,
/// reading the line status before each, and under PVM every exit costs some 15 µs, half the
/// test guest's first line (24 bytes, 48 exits). The bus reads the ring before it handles any
/// exit (see [`PioBus`]), so the UART sees the guest's accesses in order; a byte the guest
/// writes last before it halts or computes reaches the UART at the next exit, or when the
/// partial line's timer fires: after each access to the serial port, the guest reading the
/// line status before its next byte, that timer stays armed until the ring was read (see
/// [`watch_queue`]). A guest that writes without ever reading the line status has its bytes
/// at its next exit. `None` (every write exits, as before) when KVM cannot.
fn coalesce_serial_output(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd) -> Option<sys::CoalescedRing> {
    let port = IoEventAddress::Pio(u64::from(serial::DATA_PORT));
    if !kvm.check_extension(Cap::CoalescedPio) || vm.register_coalesced_mmio(port, 1).is_err() {
        return None;
    }
    match sys::CoalescedRing::map(vcpu) {
        Ok(ring) => Some(ring),
        Err(_) => {
            let _ = vm.unregister_coalesced_mmio(port, 1);
            None
        }
    }
}

/// The serial data port's queued writes, read from KVM's ring; stopping unregisters the port.
struct CoalescedSerial {
    ring: sys::CoalescedRing,
    vm: Arc<VmFd>,
}

impl QueuedWrites for CoalescedSerial {
    fn pop(&mut self) -> Option<u8> {
        loop {
            let entry = self.ring.pop()?;
            // Only the data port is registered; anything else would be no byte of its.
            if entry.phys_addr == u64::from(serial::DATA_PORT) && entry.len >= 1 {
                return Some(entry.data[0]);
            }
        }
    }

    fn stop(&mut self) -> std::io::Result<()> {
        let port = IoEventAddress::Pio(u64::from(serial::DATA_PORT));
        self.vm
            .unregister_coalesced_mmio(port, 1)
            .map_err(std::io::Error::from)
    }
}

/// Boots the guest described by `config` and returns how it ended.
///
/// The set-up avoids the kernel's grace-period waits, which on a loaded host take milliseconds
/// each (see [`join_cgroups`] and [`build_vm`]): the process joins its cgroup first, while it
/// is still single-threaded, so KVM's structures, the guest's pages and every thread are the
/// container's, before anything else is done; then KVM builds the VM with the memory slot
/// registered before the in-kernel irqchip.
pub fn run(config: &Config) -> Result<GuestExit, VmmError> {
    join_netns(config)?;
    let joining = join_cgroups(&config.cgroup_procs)?;
    let prepared = prepare(config.memory_mib)?;
    if let Some(joining) = joining {
        finish_join(joining)?;
    }
    boot(prepared, config, None)
}

/// Boots the guest described by `config` on a VM built ahead by [`prepare`]: the process (one
/// thread until now) enters the guest's network namespace and cgroups, then goes on as [`run`]
/// does. KVM's structures were charged to the cgroup the VMM was prepared in; every guest page
/// is written after the join. With a `start_gate` (see [`crate::handover`]) everything is set
/// up and confined as for a start, and the boot vCPU waits on the gate before the guest's
/// first instruction; at its end of file the process exits with status 0.
pub fn run_prepared(
    prepared: Prepared,
    config: &Config,
    start_gate: Option<File>,
) -> Result<GuestExit, VmmError> {
    if config.memory_mib != prepared.memory_mib {
        return Err(VmmError::Config(format!(
            "this VMM was prepared for {} MiB of guest memory, not {}",
            prepared.memory_mib, config.memory_mib
        )));
    }
    join_netns(config)?;
    if let Some(joining) = join_cgroups(&config.cgroup_procs)? {
        finish_join(joining)?;
    }
    boot(prepared, config, start_gate)
}

/// Enters `config.netns`, on the only thread (every thread started later is there too), before
/// the tap is opened by name.
fn join_netns(config: &Config) -> Result<(), VmmError> {
    match &config.netns {
        Some(ns) => {
            sys::join_netns(ns).map_err(|e| VmmError::io("joining the network namespace", e))
        }
        None => Ok(()),
    }
}

fn finish_join(joining: std::thread::JoinHandle<std::io::Result<()>>) -> Result<(), VmmError> {
    joining
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked")))
        .map_err(|e| VmmError::io("joining the cgroup", e))
}

/// vCPU `index` with its CPUID.
fn create_vcpu(kvm: &Kvm, vm: &VmFd, index: u8) -> Result<VcpuFd, VmmError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| VmmError::kvm("KVM_CREATE_VCPU", e))?;
    vcpu.set_cpuid2(&cpu::cpuid(kvm, u32::from(index))?)
        .map_err(|e| VmmError::kvm("KVM_SET_CPUID2", e))?;
    Ok(vcpu)
}

/// Loads the guest into a built VM, confines the process and runs the vCPUs, the boot vCPU on
/// this thread (returning how the guest ended when it sees that); with a `start_gate`, this
/// thread waits on it (under its seccomp filter) before it runs the guest. The other vCPUs may
/// enter `KVM_RUN` at once on threads of their own: they wait there for the boot vCPU's
/// start-up IPI, and end the process themselves.
fn boot(
    prepared: Prepared,
    config: &Config,
    start_gate: Option<File>,
) -> Result<GuestExit, VmmError> {
    let Prepared {
        kvm,
        vm,
        mem,
        irqchip,
        boot_vcpu,
        serial_ring,
        diskless_filter,
        ..
    } = prepared;
    let vm = Arc::new(vm);
    let mut kernel =
        File::open(&config.kernel).map_err(|e| VmmError::io("opening the kernel", e))?;
    let mut initrd = match &config.initrd {
        Some(p) => Some(File::open(p).map_err(|e| VmmError::io("opening the initrd", e))?),
        None => None,
    };
    if let (
        Some(NetConfig {
            tap: Tap::Fd(a), ..
        }),
        Some(DiskConfig {
            disk: Disk::Fd(b), ..
        }),
    ) = (&config.net, &config.disk)
    {
        if a == b {
            return Err(VmmError::Config(format!(
                "descriptor {a} cannot be both the tap and the disk"
            )));
        }
    }
    let mut cmdline = boot::cmdline(&config.cmdline)?;
    let mut mmio: MmioDevices = Vec::new();
    let net = match &config.net {
        Some(n) => {
            let irq = add_mmio_slot(&vm, irqchip, &mut cmdline, mmio.len())?;
            let net = create_net(mem, n, irq)?;
            mmio.push(net.clone());
            Some(net)
        }
        None => None,
    };
    // The disk's descriptor, which the seccomp filter lets pread/pwrite/fdatasync reach.
    let mut disk_fd = None;
    if let Some(d) = &config.disk {
        let irq = add_mmio_slot(&vm, irqchip, &mut cmdline, mmio.len())?;
        let blk = create_block(mem, d, irq)?;
        disk_fd = Some(blk.device.disk().as_raw_fd());
        mmio.push(Arc::new(Mutex::new(blk)));
    }
    let entry = boot::load(
        mem,
        BootFiles {
            kernel: &mut kernel,
            initrd: initrd.as_mut(),
            cmdline: &cmdline,
        },
    )?;
    drop(kernel);
    drop(initrd);

    let serial_irq = if irqchip {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::io("eventfd", e))?;
        vm.register_irqfd(&fd, serial::IRQ)
            .map_err(|e| VmmError::kvm("KVM_IRQFD", e))?;
        IrqLine(Some(fd))
    } else {
        IrqLine(None)
    };
    let stdout = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| VmmError::io("duplicating stdout", e))?,
    );
    // Made on this thread, which runs the boot vCPU.
    let timer = sys::ThreadTimer::for_this_thread()
        .map_err(|e| VmmError::io("the serial line timer", e))?;
    let coalesced_vm = serial_ring.as_ref().map(|_| vm.as_raw_fd());
    let bus = Arc::new(Mutex::new(PioBus {
        serial: Serial::new(LineOut::new(stdout, timer), serial_irq),
        i8042: i8042::I8042::new(),
        queued: serial_ring.map(|ring| {
            Box::new(CoalescedSerial {
                ring,
                vm: Arc::clone(&vm),
            }) as Box<dyn QueuedWrites>
        }),
    }));

    cpu::setup_boot_vcpu(&boot_vcpu, mem, entry)?;
    let mut vcpus = vec![boot_vcpu];
    for index in 1..config.vcpus {
        vcpus.push(create_vcpu(&kvm, &vm, index)?);
    }
    drop(kvm);
    // Without an irqchip nothing could ever wake a secondary vCPU: run the boot vCPU alone.
    if !irqchip {
        vcpus.truncate(1);
    }

    sys::confine(config.chroot.as_deref(), config.user)
        .map_err(|e| VmmError::io("dropping privileges", e))?;
    let program = match (config.seccomp, disk_fd) {
        (false, _) => None,
        (true, None) => Some(diskless_filter),
        (true, Some(fd)) => Some(seccomp::filter(Some(fd), coalesced_vm)?),
    };

    // The other threads end the process themselves ([`crate::end`]): this one is in KVM_RUN.
    if let Some(net) = &net {
        let net = Arc::clone(net);
        let program = program.clone();
        let epoll = net::rx_epoll(&net).map_err(|e| VmmError::io("virtio-net epoll", e))?;
        std::thread::Builder::new()
            .name("net-rx".into())
            .spawn(move || {
                let result = match &program {
                    Some(p) => seccomp::apply(p),
                    None => Ok(()),
                }
                .and_then(|()| {
                    net::rx_loop(&net, &epoll).map_err(|e| VmmError::io("virtio-net receive", e))
                });
                if let Err(e) = result {
                    crate::end(Err(e));
                }
            })
            .map_err(|e| VmmError::io("spawning the network thread", e))?;
    }
    let mut vcpus = vcpus.into_iter();
    let boot_vcpu = vcpus
        .next()
        .ok_or_else(|| VmmError::Config("no vCPU".into()))?;
    for (index, vcpu) in vcpus.enumerate() {
        let bus = Arc::clone(&bus);
        let mmio = mmio.clone();
        let program = program.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{}", index + 1))
            .spawn(move || {
                let result = match &program {
                    Some(p) => seccomp::apply(p),
                    None => Ok(()),
                }
                .and_then(|()| run_vcpu(vcpu, &bus, &mmio, irqchip));
                crate::end(result);
            })
            .map_err(|e| VmmError::io("spawning a vCPU thread", e))?;
    }
    // The boot vCPU runs on this thread, which is already running when the start comes: a
    // thread started here would first wait to be scheduled at all (a new thread queues behind
    // the running ones; 4 ms on this project's busy 2-CPU host) and install a filter of its own.
    if let Some(p) = &program {
        seccomp::apply(p)?;
    }
    if let Some(gate) = start_gate {
        if !crate::handover::wait_for_start(gate) {
            // crid let go of the container before starting it.
            crate::end_unstarted();
        }
    }
    run_vcpu(boot_vcpu, &bus, &mmio, irqchip)
}

/// Sets up virtio-mmio window number `slot` (the next free one): its interrupt line
/// (`FIRST_MMIO_IRQ + slot`, on an irqfd when there is an irqchip) and its announcement on the
/// command line (`virtio_mmio.device=4K@ADDR:IRQ`).
fn add_mmio_slot(
    vm: &VmFd,
    irqchip: bool,
    cmdline: &mut Cmdline,
    slot: usize,
) -> Result<IrqLine, VmmError> {
    let slot = u32::try_from(slot).map_err(|_| VmmError::Config("too many devices".into()))?;
    let gsi = FIRST_MMIO_IRQ + slot;
    let addr = memory::MMIO_DEVICES_START + u64::from(slot) * memory::MMIO_DEVICE_SIZE;
    let irq = if irqchip {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::io("eventfd", e))?;
        vm.register_irqfd(&fd, gsi)
            .map_err(|e| VmmError::kvm("KVM_IRQFD", e))?;
        IrqLine(Some(fd))
    } else {
        IrqLine(None)
    };
    cmdline
        .add_virtio_mmio_device(memory::MMIO_DEVICE_SIZE, GuestAddress(addr), gsi, None)
        .map_err(|e| VmmError::Boot(format!("kernel command line: {e}")))?;
    Ok(irq)
}

/// Moves this process into the cgroups whose `cgroup.procs` files are `procs`, one per
/// hierarchy. Call it while the process has one thread.
///
/// A cgroup v1 hierarchy is joined through its `tasks` file, next to `cgroup.procs`: writing `0`
/// there moves only the calling thread, and the kernel takes no threadgroup lock for that, so it
/// does not wait for the RCU grace period that moving a whole thread group through
/// `cgroup.procs` can wait for (`cgroup_threadgroup_rwsem`, 3–24 ms measured on this project's
/// hosts). The process has this one thread, so the whole VMM moves, and every thread it starts
/// later starts there. A cgroup2 hierarchy has no `tasks` file: its `cgroup.procs` gets `0`
/// (the writer's thread group) on a thread of its own while KVM builds the VM, returned to be
/// joined before the guest's memory is written.
fn join_cgroups(
    procs: &[PathBuf],
) -> Result<Option<std::thread::JoinHandle<std::io::Result<()>>>, VmmError> {
    let write_zero = |path: &std::path::Path| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(b"0")
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let mut whole_group = Vec::new();
    for path in procs {
        match v1_tasks_file(path).map(|tasks| write_zero(&tasks)) {
            Some(Ok(())) => {}
            // No `tasks` file: a cgroup2 hierarchy.
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                whole_group.push(path.clone());
            }
            Some(Err(e)) => return Err(VmmError::io("joining the cgroup", e)),
            None => whole_group.push(path.clone()),
        }
    }
    if whole_group.is_empty() {
        return Ok(None);
    }
    std::thread::Builder::new()
        .name("cgroup".into())
        .spawn(move || whole_group.iter().try_for_each(|p| write_zero(p)))
        .map(Some)
        .map_err(|e| VmmError::io("spawning the cgroup thread", e))
}

/// The `tasks` file next to `procs`, a `cgroup.procs`: there on cgroup v1, missing on cgroup2
/// (found out by opening it, without a look first: the join is on the start's path).
fn v1_tasks_file(procs: &std::path::Path) -> Option<PathBuf> {
    (procs.file_name()? == "cgroup.procs").then(|| procs.with_file_name("tasks"))
}

/// Sets up KVM's side of the VM: the TSS, guest memory as memory slots, then the in-kernel
/// irqchip and PIT. Returns whether the irqchip is there.
///
/// The order matters on the hosts measured here (kernel 6.18, PVM): registering the memory slot
/// waits for an SRCU grace period of the VM (`kvm_swap_active_memslots`), which on a VM that
/// has not used its SRCU yet returns in about 0.2 ms, while after the irqchip and PIT were
/// created it waited 4–10 ms; the irqchip and PIT then take well under 0.1 ms. Firecracker
/// registers memory first too.
fn build_vm(vm: &VmFd, mem: &memory::GuestMemoryMmap) -> Result<bool, VmmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| VmmError::kvm("KVM_SET_TSS_ADDR", e))?;
    sys::register_memory(vm, mem).map_err(|e| VmmError::io("registering guest memory", e))?;
    Ok(create_irqchip(vm))
}

/// Opens the tap and builds the virtio-net device.
fn create_net(
    mem: &memory::GuestMemoryMmap,
    config: &NetConfig,
    irq: IrqLine,
) -> Result<SharedNet, VmmError> {
    let hdr = net::VNET_HDR_LEN as i32;
    let tap = match &config.tap {
        Tap::Name(name) => sys::open_tap(name, hdr),
        Tap::Fd(fd) => sys::tap_from_fd(*fd, hdr),
    }
    .map_err(|e| VmmError::io("opening the tap", e))?;
    let device = Net::new(tap, config.mac, mem.clone()).map_err(|e| VmmError::io("eventfd", e))?;
    Ok(Arc::new(Mutex::new(MmioTransport::new(device, irq))))
}

/// Opens the disk (a path read-write unless read-only) and builds the virtio-blk device.
fn create_block(
    mem: &memory::GuestMemoryMmap,
    config: &DiskConfig,
    irq: IrqLine,
) -> Result<MmioTransport<Block>, VmmError> {
    let disk = match &config.disk {
        Disk::Path(path) => std::fs::OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path),
        Disk::Fd(fd) => sys::disk_from_fd(*fd),
    }
    .map_err(|e| VmmError::io("opening the disk", e))?;
    let device =
        Block::new(disk, config.read_only, mem.clone()).map_err(|e| VmmError::io("the disk", e))?;
    Ok(MmioTransport::new(device, irq))
}

/// The in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and the PIT, which Linux needs.
/// A freestanding guest runs without them, so a KVM that refuses them is not fatal.
fn create_irqchip(vm: &VmFd) -> bool {
    if vm.create_irq_chip().is_err() {
        return false;
    }
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).is_ok()
}

/// Runs one vCPU until the guest ends or KVM fails, then sends out what is left of the
/// guest's output.
fn run_vcpu(
    vcpu: VcpuFd,
    bus: &Mutex<PioBus<Console>>,
    mmio: &MmioDevices,
    irqchip: bool,
) -> Result<GuestExit, VmmError> {
    let result = run_vcpu_until_end(vcpu, bus, mmio, irqchip);
    send_partial(bus);
    result
}

/// Sends out the guest's output so far: the queued bytes, then a partial line.
fn send_partial(bus: &Mutex<PioBus<Console>>) {
    let mut bus = lock(bus);
    bus.catch_up();
    let _ = bus.serial.writer_mut().send_partial();
}

/// While KVM queues the serial data port's writes, an access to the serial port (a guest
/// reads the line status before each byte) may be the guest's last exit before a byte that
/// only the ring holds, and the next exit may never come (a guest that halts with its
/// interrupts off, the in-kernel irqchip keeping the halt): the partial-line timer stays armed
/// until [`on_alarm`] read the ring.
fn watch_queue(bus: &mut PioBus<Console>, port: u16) {
    if bus.queued.is_some() && serial::offset(port).is_some() {
        bus.serial.writer_mut().watch_queue();
    }
}

/// The partial-line timer fired (or another signal interrupted `KVM_RUN`): the bytes KVM
/// queued reach the UART, and a partial line that waited its delay goes out; one that began
/// with the queued bytes waits its own, as it would have had it come with an exit.
fn on_alarm(bus: &Mutex<PioBus<Console>>) {
    let mut bus = lock(bus);
    let waited = bus.serial.writer_mut().has_partial();
    bus.catch_up();
    let out = bus.serial.writer_mut();
    if waited {
        let _ = out.send_partial();
    } else {
        out.queue_read();
    }
}

fn run_vcpu_until_end(
    mut vcpu: VcpuFd,
    bus: &Mutex<PioBus<Console>>,
    mmio: &MmioDevices,
    irqchip: bool,
) -> Result<GuestExit, VmmError> {
    let window = |addr: u64| {
        let off = addr.checked_sub(memory::MMIO_DEVICES_START)?;
        let dev = mmio.get(usize::try_from(off / memory::MMIO_DEVICE_SIZE).ok()?)?;
        Some((dev, off % memory::MMIO_DEVICE_SIZE))
    };
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut devices = lock(bus);
                if let Some(exit) = devices.write(port, data) {
                    return Ok(exit);
                }
                watch_queue(&mut devices, port);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let mut devices = lock(bus);
                devices.read(port, data);
                watch_queue(&mut devices, port);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => match window(addr) {
                Some((dev, off)) => {
                    lock(bus).catch_up();
                    lock(dev).read(off, data);
                }
                None => data.fill(0xff),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((dev, off)) = window(addr) {
                    lock(bus).catch_up();
                    lock(dev).write(off, data);
                }
            }
            Ok(VcpuExit::Hlt) if !irqchip => {
                // Without an irqchip no interrupt can ever arrive: the guest has stopped for
                // good and stays so until crid stops the container.
                send_partial(bus);
                loop {
                    std::thread::park();
                }
            }
            Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::Shutdown) => return Ok(GuestExit::Shutdown),
            Ok(VcpuExit::SystemEvent(..)) => return Ok(GuestExit::Reset),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(VmmError::Guest(format!(
                    "vCPU {cpu} failed to enter the guest (reason {reason:#x})"
                )));
            }
            Ok(VcpuExit::InternalError) => {
                return Err(VmmError::Guest("KVM internal error".into()));
            }
            Ok(other) => {
                return Err(VmmError::Guest(format!("unexpected vCPU exit {other:?}")));
            }
            // The partial-line timer (or another signal) interrupted KVM_RUN.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => on_alarm(bus),
            Err(e) => return Err(VmmError::kvm("KVM_RUN", e)),
        }
    }
}

/// The bus lock; a vCPU thread that panicked holding it leaves consistent device state
/// (every device update is a single register write), so poisoning is ignored.
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_output_queue_can_be_ended_under_the_seccomp_filter() {
        if File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            eprintln!("skipped: /dev/kvm is not usable");
            return;
        }
        let Prepared {
            vm,
            serial_ring,
            diskless_filter,
            ..
        } = prepare(32).unwrap();
        let Some(ring) = serial_ring else {
            eprintln!("skipped: this KVM does not coalesce port I/O");
            return;
        };
        let mut queued = CoalescedSerial {
            ring,
            vm: Arc::new(vm),
        };
        // On a thread of its own: the filter stays there (and a wrong one kills the test).
        std::thread::spawn(move || {
            sys::no_new_privs().unwrap();
            seccomp::apply(&diskless_filter).unwrap();
            assert_eq!(queued.pop(), None, "the guest never ran");
            queued.stop().unwrap();
        })
        .join()
        .unwrap();
    }
}
