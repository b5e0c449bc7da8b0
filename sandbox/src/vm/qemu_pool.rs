//! Prepared QEMUs for PCI guests in a pod network (`vm.qemu_pool`): QEMU processes started
//! before their guest is known, paused (`-S`), so that a guest that fits one is handed it (at
//! `CreateContainer`, see `container::vm_armed`) and started with QMP `cont` instead of
//! paying QEMU's own start (its 51 shared libraries, KVM's set-up, the machine) in its
//! `StartContainer`.
//!
//! QEMU fixes at its start what crid would give it on its command line, so an entry is
//! started with what it can know ahead, and the rest is handed over afterwards:
//! - the kernel and its command line: the guest's RAM is a shared file (its path unlinked
//!   once crid has it open) into which crid writes them ([`super::bootblock`]);
//! - the network: a tap QEMU makes in a network namespace of crid's own (held by descriptor,
//!   no pin), with a MAC of the entry's; crid moves it into the pod's namespace under the
//!   container's tap name and wires it as a new tap ([`super::net::adopt_guest_net`]);
//! - the cgroup: crid writes QEMU's pid to the container cgroup's `cgroup.procs` files, which
//!   move all its threads;
//! - its uid (from the VMM uid range, hashed from the entry's own name) and its QMP socket
//!   (renamed to the container's); its chroot is the pool's one empty directory.
//!
//! A container fits an entry when its kernel is a PVH ELF and the QEMU command line its own
//! start would run, with the entry's tap, MAC, uid, chroot, QMP socket and RAM file, is the
//! entry's ([`Seat::fits`]): crid's PCI firmware on `pc`, a NIC, no disk, initrd or shared
//! directory, one vCPU and the entry's memory size. Other guests start the usual way.
//!
//! Entries live as crid's `vm/pool.rs` ones do: bounded, prepared for the guest sizes started
//! lately (QEMU's `-m`, from the pod's memory limit), filled only after a guest started,
//! refilled after a delay; each is a prepared monitor
//! ([`crate::monitor::prepared`], `--prepare-launch`) supervising the paused QEMU, ended when
//! crid closes its socket (crid removing it, stopping or dying), which kills the QEMU, and its
//! tap with it (an entry crid discards also asks its QEMU to quit over QMP, for a monitor that
//! died first: [`Control`]; and a crid that starts asks those an earlier crid left, their
//! monitors dead too, to quit: `end_leftovers`). Until the start, the monitor of a
//! handed-over entry waits on crid's socket the same way.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType};

use super::accel::KvmProbe;
use super::launch::{Seat, VmSettings, placeholder_net};
use super::pool::{Entry, Pool, Prepare};
use super::{Accelerator, MacAddr, VmSpec, qmp};
use crate::monitor::Launch;
use crate::monitor::prepared::{self, PreparedMonitor};

/// How long a refill waits after an entry was taken: QEMU's own start (its loader, KVM's
/// set-up; about 100 ms of CPU here) would compete with the guest that took the entry, whose
/// hand-over, resume and firmware follow the take within about 150 ms on this loaded 2-core
/// host. Measured with crid-bench (README, Performance): 20 ms, crid-vmm's delay, put the
/// refill in the middle of that start.
const REFILL_DELAY: Duration = Duration::from_millis(300);

/// How long a prepared QEMU may take to answer on its QMP socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Taps of the pool's entries, in its namespace.
const TAP_PREFIX: &str = "crqp";

/// A paused QEMU waiting for a guest.
#[derive(Debug)]
pub struct QemuEntry {
    pub monitor: PreparedMonitor,
    pub seat: Seat,
    /// Its command line (see [`Seat::argv`]).
    pub argv: Vec<String>,
    /// The guest's RAM (its path unlinked).
    pub ram: File,
    /// A negotiated connection to its QMP socket, for the `cont` that starts the guest.
    pub qmp: Control,
    /// Removes the QMP socket of an entry never handed over (one handed over was renamed).
    pub socket_file: SocketFile,
}

/// A waiting QEMU's QMP connection, which asks QEMU to quit when it is dropped unless the
/// hand-over kept it ([`Control::keep`]). The entry's monitor kills QEMU when crid discards the
/// entry, but a monitor that died first (the OOM killer's choice, a stray kill) would leave
/// its paused QEMU to run for ever: its standard input is `/dev/null` and nothing else ties
/// it to crid, and `-runas` clears a parent-death signal.
#[derive(Debug)]
pub struct Control(Option<qmp::Session>);

impl Control {
    /// The connection, for the hand-over: the QEMU is the container's from now on.
    pub fn keep(mut self) -> qmp::Session {
        self.0.take().expect("taken only here, which consumes it")
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(mut session) = self.0.take() {
            // No answer awaited: a QEMU already gone (its monitor killed it) has none.
            let _ = session.send("quit");
        }
    }
}

/// A socket file removed when this is dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Entry for QemuEntry {
    fn alive(&self) -> bool {
        self.monitor.alive()
    }
}

/// The pool and what its entries share.
pub struct QemuPool {
    pub pool: Arc<Pool<QemuEntry>>,
    /// The pool's network namespace, as a path any process of crid's can open.
    pub netns: PathBuf,
    /// The pool's own copy of the namespace's descriptor, which keeps it alive.
    _netns_fd: Arc<OwnedFd>,
    /// The QEMU binary the entries run.
    pub qemu: PathBuf,
}

impl QemuPool {
    /// An entry for a guest of `memory_mib` MiB, refilling the pool (see
    /// [`Pool::take_and_refill`]).
    pub fn take(&self, memory_mib: u64) -> Option<QemuEntry> {
        self.pool.take_and_refill(memory_mib)
    }

    /// How many entries wait.
    pub fn waiting(&self) -> usize {
        self.pool.waiting()
    }

    /// The guest size (MiB) of each waiting entry.
    pub fn waiting_sizes(&self) -> Vec<u64> {
        self.pool.waiting_sizes()
    }

    /// The guest sizes (MiB) no QEMU could be prepared for when last tried, with why.
    pub fn failures(&self) -> Vec<(u64, String)> {
        self.pool.failures()
    }
}

/// The vCPUs an entry runs: what a guest without a CPU limit gets (see [`super::launch::vcpus`]).
const VCPUS: u32 = 1;

/// Whether a guest of `vcpus` with the kernel at `kernel` may fit a pool entry at all (the
/// command line decides at the hand-over): a one-vCPU QEMU guest with a PVH kernel (the boot
/// block's entry), a virtio-PCI NIC, no disk, initrd or shared root. Checked before an entry
/// is taken, so a guest that cannot fit does not use one up: a discarded entry is a killed
/// QEMU and another started.
pub fn may_fit(
    info: &UnikernelInfo,
    kernel: &Path,
    vcpus: u32,
    has_net: bool,
    shared_root: bool,
) -> bool {
    vcpus == VCPUS
        && info.hypervisor == HypervisorKind::Qemu
        && matches!(
            info.unikernel_type,
            UnikernelType::Unikraft | UnikernelType::Mirage | UnikernelType::Rumprun
        )
        && info.virtio == imagestore::VirtioTransport::Pci
        && has_net
        && info.initrd.is_none()
        && info.block.is_none()
        && !shared_root
        // Last: it reads the kernel's head.
        && super::qemu::is_pvh_elf(kernel)
}

/// The pool `settings` ask for on this host (see [`super::pool::on_host`] for when it fills);
/// `None` when its size is 0 or QEMU's PCI guests cannot be prepared here: KVM unusable or
/// not to be used, no QEMU, no PCI firmware, QEMU not dropping to its own uid, or no
/// `crid-monitor`.
pub fn on_host(
    settings: &VmSettings,
    kvm: &KvmProbe,
    monitor_exe: &Path,
    state: &Path,
) -> Option<Arc<QemuPool>> {
    let dir = state.join("qemu-pool");
    // Whether this crid prepares QEMUs or not, those an earlier one left go.
    end_leftovers(&dir);
    if settings.qemu_pool == 0 {
        return None;
    }
    let found = if settings.pci_shim.is_none() {
        Err("crid's PCI firmware is off (vm.pci_shim)".to_owned())
    } else if settings.vmm_uid_count == 0 {
        Err("QEMU does not drop to its own uid".to_owned())
    } else {
        super::pool::binaries(settings, kvm, monitor_exe, super::qemu::BINARY)
    };
    let (monitor, qemu) = match found {
        Ok(found) => found,
        Err(why) => {
            tracing::info!(reason = %why, "vm.qemu_pool: no QEMU is prepared");
            return None;
        }
    };
    let made = (|| -> std::io::Result<(PathBuf, OwnedFd)> {
        std::fs::create_dir_all(dir.join("empty"))?;
        Ok((dir, cni::netns::new_netns()?))
    })();
    let (dir, netns_fd) = match made {
        Ok(made) => made,
        Err(e) => {
            tracing::warn!(error = %e, "vm.qemu_pool: no QEMU is prepared");
            return None;
        }
    };
    let netns = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        netns_fd.as_raw_fd()
    ));
    let maker = Maker {
        settings: settings.clone(),
        monitor,
        qemu: qemu.clone(),
        dir,
        netns: netns.clone(),
        next: AtomicU64::new(0),
    };
    let prepare: Prepare<QemuEntry> = Box::new(move |memory_mib| maker.make(memory_mib));
    Some(Arc::new(QemuPool {
        pool: Arc::new(Pool::new(settings.qemu_pool, prepare).with_refill_delay(REFILL_DELAY)),
        netns,
        _netns_fd: Arc::new(netns_fd),
        qemu,
    }))
}

/// The least and the most a prepared QEMU's RAM file leaves free of its file system.
const FREE_MARGIN: std::ops::RangeInclusive<u64> = (64 << 20)..=(1 << 30);

/// Whether the file system of the pool's directory, `free` bytes free of `size`, has room for
/// a QEMU of `memory_mib` MiB: its RAM file there is sparse while it waits, but a guest handed
/// it may write all of it, and that file system is `/run` on most hosts, a tmpfs of a tenth or
/// a fifth of the host's RAM that every daemon's sockets, pid files and locks share (a full
/// one fails them all, and the guest with a `SIGBUS`). So the whole RAM must leave a tenth of
/// the file system free, within [`FREE_MARGIN`] (a large disk's tenth is more than any daemon
/// needs); the error says what is short.
fn room_for_ram(memory_mib: u64, free: u64, size: u64) -> Result<(), String> {
    let ram = memory_mib.saturating_mul(1 << 20);
    let margin = (size / 10).clamp(*FREE_MARGIN.start(), *FREE_MARGIN.end());
    if free.saturating_sub(ram) >= margin {
        return Ok(());
    }
    Err(format!(
        "a {memory_mib} MiB RAM file would leave {} of the {} MiB free on the state directory's \
         file system, under the {} MiB kept free",
        free.saturating_sub(ram) >> 20,
        free >> 20,
        margin >> 20
    ))
}

/// How long a QEMU left by an earlier crid may take to answer each step of its `quit`.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Ends the paused QEMUs an earlier crid left in the pool's directory `dir`, then removes the
/// directory. An entry's monitor ends its QEMU when crid's socket closes, but one whose monitor
/// died too (both killed, an OOM kill of each) stays paused for ever, with its RAM in this
/// file system: [`Control`] asks it to quit only while crid runs. Such a QEMU still listens on
/// its QMP socket `N.qmp` here (one handed over was renamed to its container's, and is left
/// alone), and only crid's own QEMUs can: the directory is root's, in crid's state directory,
/// which no container sees. So each is asked to quit there; no process is picked by its name.
fn end_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "qmp") {
            continue;
        }
        // Nothing listens on the socket of a QEMU that ended with its monitor, the usual case.
        let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) else {
            continue;
        };
        match qmp::Session::negotiate(&path, stream, LEFTOVER_TIMEOUT)
            .and_then(|mut qmp| qmp.execute("quit"))
        {
            Ok(()) => {
                tracing::warn!(socket = %path.display(), "vm.qemu_pool: ended a prepared QEMU an earlier crid left")
            }
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "vm.qemu_pool: a prepared QEMU an earlier crid left did not quit")
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// What making an entry needs.
struct Maker {
    settings: VmSettings,
    monitor: PathBuf,
    qemu: PathBuf,
    dir: PathBuf,
    netns: PathBuf,
    next: AtomicU64,
}

impl Maker {
    /// Starts one paused QEMU with `memory_mib` MiB of guest RAM under a prepared monitor and
    /// waits until it answers on QMP. Blocking.
    fn make(&self, memory_mib: u64) -> std::io::Result<QemuEntry> {
        if let Some(free) = crate::sys::free_bytes(&self.dir) {
            let (size, _, _) = crate::sys::fs_capacity(&self.dir);
            room_for_ram(memory_mib, free, size).map_err(std::io::Error::other)?;
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let nonce = u64::from_le_bytes(random);
        let name = format!("qemu-pool-{nonce:016x}");
        let uid = self
            .settings
            .vmm_uid(&name)
            .ok_or_else(|| std::io::Error::other("no VMM uid"))?;
        // Locally administered, unicast.
        let mut mac = [0x02, 0, 0, 0, 0, 0];
        mac[1..].copy_from_slice(&random[..5]);
        let seat = Seat {
            tap: format!("{TAP_PREFIX}{n}"),
            mac: MacAddr(mac),
            uid,
            chroot: self.dir.join("empty"),
            qmp: self.dir.join(format!("{n}.qmp")),
            ram: self.dir.join(format!("{n}.ram")),
        };
        let spec = seat.apply(&shape(&self.settings, memory_mib), Some(placeholder_net()));
        let argv = seat
            .argv(&spec, &self.qemu)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let launch_file = self.dir.join(format!("{n}.json"));
        let launch = Launch::Command {
            argv: argv.clone(),
            env: vec![],
            cwd: None,
            netns: Some(self.netns.clone()),
            cgroup_procs: vec![],
            exit_port: None,
            seccomp: None,
        };
        std::fs::write(&launch_file, serde_json::to_vec(&launch)?)?;
        let monitor = prepared::spawn_launch(
            &self.monitor,
            &launch_file,
            &self.dir.join("monitor.log"),
            READY_TIMEOUT,
        );
        let _ = std::fs::remove_file(&launch_file);
        let monitor = monitor?;
        let started = Instant::now();
        let qmp = loop {
            match qmp::Session::connect(&seat.qmp, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if started.elapsed() > READY_TIMEOUT || !monitor.alive() => {
                    let _ = std::fs::remove_file(&seat.qmp);
                    let _ = std::fs::remove_file(&seat.ram);
                    return Err(std::io::Error::other(format!(
                        "the prepared QEMU did not answer: {e}"
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let ram = File::options().read(true).write(true).open(&seat.ram);
        let _ = std::fs::remove_file(&seat.ram);
        Ok(QemuEntry {
            monitor,
            socket_file: SocketFile(seat.qmp.clone()),
            seat,
            argv,
            ram: ram?,
            qmp: Control(Some(qmp)),
        })
    }
}

/// The guest an entry is started for: a PVH unikernel of `memory_mib` MiB with a virtio-PCI NIC
/// on `pc`, under KVM, booted by crid's PCI firmware.
fn shape(settings: &VmSettings, memory_mib: u64) -> VmSpec {
    VmSpec {
        info: UnikernelInfo::new(
            UnikernelType::Unikraft,
            HypervisorKind::Qemu,
            PathBuf::new(),
            UnikernelSource::ManifestAnnotations,
        ),
        // Not read: crid loads the kernel.
        kernel: PathBuf::new(),
        initrd: None,
        block: None,
        block_overlay: false,
        memory_mib,
        vcpus: VCPUS,
        net: None,
        args: vec![],
        env: vec![],
        argv_in_initrd: false,
        accelerator: Accelerator::Kvm,
        run_dir: PathBuf::new(),
        vmm_user: None,
        chroot: None,
        control_socket: None,
        firmware: None,
        pci_shim: settings.pci_shim.clone(),
        dns: vec![],
        shared_dir: None,
        ninep_root: None,
        block_root: false,
        qemu_microvm: None,
        guest_ram: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VmSettings {
        VmSettings {
            pci_shim: Some(PathBuf::from("/var/lib/crid/vm/pci-shim.rom")),
            default_memory_mib: 64,
            max_vcpus: 4,
            qemu_pool: 1,
            ..VmSettings::default()
        }
    }

    fn seat() -> Seat {
        Seat {
            tap: "crqp0".into(),
            mac: MacAddr([2, 1, 2, 3, 4, 5]),
            uid: 2_000_000_123,
            chroot: "/run/crid/qemu-pool/empty".into(),
            qmp: "/run/crid/qemu-pool/0.qmp".into(),
            ram: "/run/crid/qemu-pool/0.ram".into(),
        }
    }

    #[test]
    fn an_entry_runs_a_paused_pc_with_its_seat() {
        let s = seat();
        let argv = s
            .argv(
                &s.apply(&shape(&settings(), 64), Some(placeholder_net())),
                Path::new("/usr/bin/qemu-system-x86_64"),
            )
            .unwrap();
        let has = |k: &str, v: &str| argv.windows(2).any(|w| w[0] == k && w[1] == v);
        assert_eq!(argv[0], "/usr/bin/qemu-system-x86_64");
        assert!(has("-M", "pc"), "{argv:?}");
        assert!(has("-bios", "/var/lib/crid/vm/pci-shim.rom"));
        assert!(has("-runas", "2000000123:2000000123"));
        assert!(has("-chroot", "/run/crid/qemu-pool/empty"));
        assert!(has("-m", "64"));
        assert!(argv.iter().any(|a| a == "-S"));
        assert!(argv.iter().any(|a| a.contains("ifname=crqp0,")));
        assert!(argv.iter().any(|a| a.contains("mac=02:01:02:03:04:05")));
        assert!(
            argv.iter()
                .any(|a| a.contains("mem-path=/run/crid/qemu-pool/0.ram"))
        );
        assert!(!argv.iter().any(|a| a == "-kernel" || a == "-append"));
    }

    #[test]
    fn a_guest_fits_when_its_kernel_is_pvh_and_its_command_line_on_the_seat_is_the_entrys() {
        let s = seat();
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        let entry = s
            .argv(
                &s.apply(&shape(&settings(), 64), Some(placeholder_net())),
                qemu,
            )
            .unwrap();
        // A container's own spec: its kernel, command line and run directory differ.
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("app");
        std::fs::write(&kernel, crate::vm::elf::tests::pvh_elf32()).unwrap();
        let mut guest = shape(&settings(), 64);
        guest.kernel = kernel;
        guest.run_dir = "/run/crid/vm/c1".into();
        guest.args = vec!["/app".into(), "-p".into(), "8080".into()];
        let fits = |g: &VmSpec| s.fits(g, &entry, qemu);
        assert!(fits(&guest));
        // A kernel crid cannot load boots with SeaBIOS the usual way.
        let mut other = guest.clone();
        other.kernel = dir.path().join("missing");
        assert!(!fits(&other));
        let mut other = guest.clone();
        other.memory_mib = 128;
        assert!(!fits(&other));
        // An entry started for that size (a pod's memory limit) fits it.
        let entry_128 = s
            .argv(
                &s.apply(&shape(&settings(), 128), Some(placeholder_net())),
                qemu,
            )
            .unwrap();
        assert!(s.fits(&other, &entry_128, qemu));
        let mut other = guest.clone();
        other.vcpus = 2;
        assert!(!fits(&other));
        let mut other = guest.clone();
        other.block = Some("/run/crid/vm/c1/block.qcow2".into());
        assert!(!fits(&other));
        let mut other = guest.clone();
        other.info.unikernel_type = UnikernelType::Mewz;
        assert!(!fits(&other));
    }

    /// A fake QEMU's QMP socket: greets, answers the capabilities, then returns everything
    /// else it is sent until the connection ends.
    fn fake_qmp(dir: &Path) -> (PathBuf, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, Read, Write};
        let sock = dir.join("q.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {}}\r\n").unwrap();
            let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            s.write_all(b"{\"return\": {}}\r\n").unwrap();
            let mut rest = String::new();
            reader.read_to_string(&mut rest).unwrap();
            rest
        });
        (sock, server)
    }

    #[test]
    fn an_entry_dropped_unused_asks_its_qemu_to_quit_and_a_kept_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, server) = fake_qmp(dir.path());
        let session = qmp::Session::connect(&sock, Duration::from_secs(5)).unwrap();
        drop(Control(Some(session)));
        assert!(server.join().unwrap().contains("\"quit\""));

        std::fs::remove_file(&sock).unwrap();
        let (sock, server) = fake_qmp(dir.path());
        let session = qmp::Session::connect(&sock, Duration::from_secs(5)).unwrap();
        drop(Control(Some(session)).keep());
        assert_eq!(server.join().unwrap(), "", "the container's QEMU");
    }

    #[test]
    fn a_qemu_is_prepared_only_when_its_whole_ram_leaves_a_tenth_of_the_file_system_free() {
        const MIB: u64 = 1 << 20;
        // A 1 GiB /run: 256 MiB of RAM leaves 102.4 MiB free from 358.4 MiB up.
        let size = 1024 * MIB;
        assert_eq!(room_for_ram(256, 1024 * MIB, size), Ok(()));
        assert_eq!(room_for_ram(256, 256 * MIB + size / 10, size), Ok(()));
        let short = room_for_ram(256, 256 * MIB + size / 10 - 1, size).unwrap_err();
        assert!(short.contains("a 256 MiB RAM file"), "{short}");
        assert!(short.contains("the 102 MiB kept free"), "{short}");
        assert!(
            room_for_ram(256, 200 * MIB, size).is_err(),
            "not even the RAM"
        );
        // A small file system keeps at least 64 MiB, a large one at most 1 GiB.
        assert_eq!(room_for_ram(64, 128 * MIB, 200 * MIB), Ok(()));
        assert!(room_for_ram(64, 127 * MIB, 200 * MIB).is_err());
        let disk = 256 * 1024 * MIB;
        assert_eq!(room_for_ram(256, 1280 * MIB, disk), Ok(()));
        assert!(room_for_ram(256, 1280 * MIB - 1, disk).is_err());
        // Sizes past u64 in bytes do not wrap.
        assert!(room_for_ram(u64::MAX, u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn leftover_qemus_are_asked_to_quit_and_their_directory_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("qemu-pool");
        std::fs::create_dir_all(pool.join("empty")).unwrap();
        // A QEMU left waiting on 0.qmp, and 1.qmp whose QEMU has ended.
        let (sock, server) = fake_qmp(&pool);
        std::fs::rename(&sock, pool.join("0.qmp")).unwrap();
        drop(std::os::unix::net::UnixListener::bind(pool.join("1.qmp")).unwrap());
        end_leftovers(&pool);
        assert!(server.join().unwrap().contains("\"quit\""));
        assert!(!pool.exists());
        // No directory: nothing to do.
        end_leftovers(&pool);
    }

    #[test]
    fn only_one_vcpu_pci_guests_with_a_nic_and_nothing_else_may_fit() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, crate::vm::elf::tests::pvh_elf32()).unwrap();
        let info = shape(&settings(), 64).info;
        assert!(may_fit(&info, &kernel, 1, true, false));
        assert!(!may_fit(&info, &kernel, 2, true, false));
        assert!(!may_fit(&info, &kernel, 1, false, false));
        assert!(!may_fit(&info, &kernel, 1, true, true));
        let mut other = info.clone();
        other.virtio = imagestore::VirtioTransport::Mmio;
        assert!(!may_fit(&other, &kernel, 1, true, false));
        let mut other = info.clone();
        other.block = Some("disk.img".into());
        assert!(!may_fit(&other, &kernel, 1, true, false));
        let mut other = info.clone();
        other.hypervisor = HypervisorKind::Crid;
        assert!(!may_fit(&other, &kernel, 1, true, false));
        // A kernel without a PVH entry (a multiboot or Linux one) boots the usual way.
        let plain = dir.path().join("plain");
        let mut bytes = crate::vm::elf::tests::pvh_elf32();
        bytes.truncate(52);
        std::fs::write(&plain, bytes).unwrap();
        assert!(!may_fit(&info, &plain, 1, true, false));
        assert!(!may_fit(&info, &dir.path().join("missing"), 1, true, false));
    }
}
