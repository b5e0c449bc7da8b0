//! `crid-vmm`: boots one guest; see the library documentation for what it does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use crid_vmm::{Config, Disk, DiskConfig, NetConfig, Tap, exit_status, vm};

/// Exit status when the VMM itself fails (the message is on stderr).
const VMM_FAILURE: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "crid-vmm", version, about = "crid's microVM monitor")]
#[command(group = clap::ArgGroup::new("disk_source").args(["disk", "disk_fd"]))]
struct Args {
    /// Guest kernel: an ELF with a PVH note, an ELF vmlinux or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
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

fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        user: args.user,
        chroot: args.chroot,
        seccomp: !args.no_seccomp,
        net: match (args.tap, args.tap_fd) {
            (Some(name), _) => Some(NetConfig {
                tap: Tap::Name(name),
                mac: args.mac,
            }),
            (None, Some(fd)) => Some(NetConfig {
                tap: Tap::Fd(fd),
                mac: args.mac,
            }),
            (None, None) => None,
        },
        disk: match (args.disk, args.disk_fd) {
            (Some(path), _) => Some(Disk::Path(path)),
            (None, Some(fd)) => Some(Disk::Fd(fd)),
            (None, None) => None,
        }
        .map(|disk| DiskConfig {
            disk,
            read_only: args.disk_read_only,
        }),
        cgroup_procs: args.cgroup_procs,
    };
    match vm::run(&config) {
        Ok(exit) => {
            // Other vCPU threads may still be in KVM_RUN; the process exit ends them.
            std::process::exit(exit_status(exit));
        }
        Err(e) => {
            eprintln!("crid-vmm: {e}");
            ExitCode::from(VMM_FAILURE)
        }
    }
}
