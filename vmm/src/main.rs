//! `crid-vmm`: boots one guest; see the library documentation for what it does. With
//! `--prepared POOL` it builds the VM first and takes the guest's command line over standard
//! input (see `crid_vmm::handover`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use crid_vmm::{Config, Disk, DiskConfig, NetConfig, Tap, VmmError, handover, vm};

#[derive(Parser, Debug)]
#[command(name = "crid-vmm", version, about = "crid's microVM monitor")]
#[command(group = clap::ArgGroup::new("disk_source").args(["disk", "disk_fd"]))]
struct Args {
    /// Guest kernel: an ELF with a PVH note, an ELF vmlinux or a bzImage.
    #[arg(long, required_unless_present = "prepared")]
    kernel: Option<PathBuf>,
    /// Build the VM (`--memory` MiB) now and wait for the rest of the command line on standard
    /// input, a unix socket (crid's pool of prepared VMMs, whose directory POOL names: it tells
    /// which crid prepared the process).
    #[arg(long, value_name = "POOL", conflicts_with = "kernel")]
    prepared: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    vcpus: u8,
    /// Run as UID:GID once /dev/kvm and the guest's files are open.
    #[arg(long, value_parser = parse_user)]
    user: Option<(u32, u32)>,
    /// Chroot into this (empty) directory before dropping privileges.
    #[arg(long)]
    chroot: Option<PathBuf>,
    /// A virtio-net device on this existing tap (opened in the VMM's network namespace).
    #[arg(long, conflicts_with = "tap_fd")]
    tap: Option<String>,
    /// A virtio-net device on this inherited tap descriptor (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
    #[arg(long)]
    tap_fd: Option<i32>,
    /// The guest's MAC address on the network device.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:00:01")]
    mac: [u8; 6],
    /// A virtio-blk device on this raw disk file (opened before the VMM drops privileges).
    #[arg(long, conflicts_with = "disk_fd")]
    disk: Option<PathBuf>,
    /// A virtio-blk device on this inherited descriptor of an open disk file.
    #[arg(long)]
    disk_fd: Option<i32>,
    /// Offer the disk to the guest as read-only (a --disk path is opened read-only).
    #[arg(long, requires = "disk_source")]
    disk_read_only: bool,
    /// Skip the seccomp filter (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Join this cgroup: a `cgroup.procs` file (repeatable, one per hierarchy); the VMM moves
    /// itself there before it writes a guest page (on cgroup v1 through `tasks`, before it
    /// opens /dev/kvm).
    #[arg(long)]
    cgroup_procs: Vec<PathBuf>,
    /// Enter this network namespace (a pinned namespace file) first, before the tap is opened.
    #[arg(long)]
    netns: Option<PathBuf>,
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected UID:GID")?;
    let uid: u32 = u.parse().map_err(|_| format!("bad uid {u:?}"))?;
    let gid: u32 = g.parse().map_err(|_| format!("bad gid {g:?}"))?;
    if uid == 0 || gid == 0 {
        return Err("the VMM user must not be root".into());
    }
    Ok((uid, gid))
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    crid_vmm::devices::virtio::net::parse_mac(s).ok_or_else(|| format!("bad MAC address {s:?}"))
}

impl Args {
    /// The configuration of a guest's command line (`kernel` is there: clap requires it
    /// without `--prepared`).
    fn into_config(self) -> Result<Config, VmmError> {
        let kernel = self
            .kernel
            .ok_or_else(|| VmmError::Config("no --kernel".into()))?;
        Ok(Config {
            kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory_mib: self.memory,
            vcpus: self.vcpus,
            user: self.user,
            chroot: self.chroot,
            seccomp: !self.no_seccomp,
            net: match (self.tap, self.tap_fd) {
                (Some(name), _) => Some(NetConfig {
                    tap: Tap::Name(name),
                    mac: self.mac,
                }),
                (None, Some(fd)) => Some(NetConfig {
                    tap: Tap::Fd(fd),
                    mac: self.mac,
                }),
                (None, None) => None,
            },
            disk: match (self.disk, self.disk_fd) {
                (Some(path), _) => Some(Disk::Path(path)),
                (None, Some(fd)) => Some(Disk::Fd(fd)),
                (None, None) => None,
            }
            .map(|disk| DiskConfig {
                disk,
                read_only: self.disk_read_only,
            }),
            cgroup_procs: self.cgroup_procs,
            netns: self.netns,
        })
    }
}

/// `--prepared`: builds the VM, waits for the guest's command line, boots it. `None` when the
/// monitor discarded this VMM before handing it a guest.
fn run_prepared(memory_mib: u64) -> Result<Option<crid_vmm::GuestExit>, VmmError> {
    let prepared = vm::prepare(memory_mib)?;
    let received = handover::receive_on_stdin().map_err(|source| VmmError::Io {
        what: "the hand-over",
        source,
    })?;
    let Some(handover::Handed { args, start_gate }) = received else {
        return Ok(None);
    };
    let args = Args::try_parse_from(std::iter::once(OsString::from("crid-vmm")).chain(args))
        .map_err(|e| VmmError::Config(format!("the handed-over command line: {e}")))?;
    if args.prepared.is_some() {
        return Err(VmmError::Config(
            "the handed-over command line cannot be --prepared again".into(),
        ));
    }
    vm::run_prepared(prepared, &args.into_config()?, start_gate).map(Some)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.prepared {
        Some(_) => run_prepared(args.memory),
        None => args.into_config().and_then(|c| vm::run(&c)).map(Some),
    };
    match result {
        Ok(Some(exit)) => crid_vmm::end(Ok(exit)),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => crid_vmm::end(Err(e)),
    }
}
