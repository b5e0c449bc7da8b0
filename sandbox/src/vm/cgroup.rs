//! The VMM's cgroup: a unikernel container's VMM runs in the container's own cgroup (the path
//! runc would use, `cgroups_path`), so the CRI memory and CPU limits, the pod's cgroup parent
//! and the container's stats apply to the whole VM.
//!
//! - Memory: the guest gets the CRI limit as its RAM ([`super::launch::memory_mib`]); the cgroup
//!   gets that plus `vmm_memory_overhead_mib` for QEMU itself (device emulation, and under TCG
//!   its translation cache), so a guest that uses all its RAM is not OOM-killed from outside.
//!   No CRI limit: no cgroup limit.
//! - CPU: `cpu.cfs_quota_us`/`cpu.cfs_period_us` and `cpu.shares` as CRI gives them (the quota
//!   also becomes the vCPU count).
//! - Devices (cgroup v1 `devices` controller, checked when a device is opened): everything
//!   denied except what the VMM opens once it is in the cgroup ([`Devices`]): for crid-vmm
//!   `/dev/kvm` (10:232; a VMM started for the container opens it after joining) and
//!   `/dev/net/tun` (10:200, its tap, opened by name) only; for the other VMMs, which are placed
//!   in the cgroup before their exec, those two and the pseudo-devices null, zero, full, random
//!   and urandom. On a cgroup v2 host device filtering needs an eBPF program, which crid does
//!   not load: there the VMM's own seccomp filter, its unprivileged user and chroot (see
//!   [`super::qemu`]) are what confine it.
//! - cpuset is not joined (CRI `cpuset_cpus` is not applied to VMs).
//!
//! The VMM is placed in the cgroup before it runs: the monitor's child writes itself into every
//! hierarchy between fork and exec (`Launch::Command::cgroup_procs`, through a v1 hierarchy's
//! `tasks` file: see `monitor::open_cgroup_join`), so guest memory is
//! charged to the container from the first page and no shell runs in between. crid-vmm gets
//! the files on its command line (`--cgroup-procs`) and joins them itself, first thing, while
//! it has one thread: a v1 hierarchy through the `tasks` file next to `cgroup.procs` (moving
//! only the calling thread takes no threadgroup lock, so it does not wait for the RCU grace
//! period a thread-group migration can wait for), a cgroup2 one through `cgroup.procs` on a
//! thread while KVM builds the VM (KVM's own structures may then be charged to the monitor's
//! cgroup); either way before it writes a guest page or opens the tap or disk.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::SandboxError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 controllers a VMM joins.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "devices", "blkio"];

/// Device rules of the v1 `devices` controller after `a` is denied, for any VMM.
const VMM_DEVICES: &[&str] = &[
    "c 10:232 rw", // /dev/kvm
    "c 10:200 rw", // /dev/net/tun
    "c 1:3 rw",    // /dev/null
    "c 1:5 rw",    // /dev/zero
    "c 1:7 rw",    // /dev/full
    "c 1:8 rw",    // /dev/random
    "c 1:9 rw",    // /dev/urandom
];

/// The devices a VMM may open once it is in its cgroup (cgroup v1; see the module
/// documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Devices {
    /// A VMM placed in the cgroup before its exec (QEMU and the others): `/dev/kvm`,
    /// `/dev/net/tun` and the pseudo-devices, whatever its start-up opens.
    #[default]
    Vmm,
    /// crid-vmm, which joins the cgroup itself, first thing: after that it opens `/dev/kvm`
    /// (not when it was prepared: its VM is built) and `/dev/net/tun` for its tap, and no other
    /// device (its standard streams are open already; it takes randomness from `getrandom`).
    CridVmm,
}

impl Devices {
    /// The rules allowed after `a` is denied.
    pub fn rules(self) -> &'static [&'static str] {
        match self {
            Devices::Vmm => VMM_DEVICES,
            Devices::CridVmm => &VMM_DEVICES[..2],
        }
    }
}

/// What the container's cgroup limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.limit_in_bytes` (v1) / `memory.max` (v2); `None`: unlimited.
    pub memory_bytes: Option<u64>,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub cpu_shares: i64,
    /// The devices the VMM may open (cgroup v1; set at creation only).
    pub devices: Devices,
}

impl Limits {
    /// The CFS period: CRI's, or the kernel's default of 100 ms where CRI gives none.
    fn cfs_period(&self) -> i64 {
        if self.cpu_period > 0 {
            self.cpu_period
        } else {
            100_000
        }
    }
}

/// The cgroup of one VM, by its directory relative to each hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    pub relative: PathBuf,
    /// Where the hierarchies are mounted: `/sys/fs/cgroup` (the unified one on a v2 host).
    root: PathBuf,
    v2: bool,
}

/// A mounted v1 controller a VMM joins.
#[derive(Debug, Clone, PartialEq, Eq)]
struct V1Controller {
    /// The controller's name, also its directory under the cgroup root.
    name: &'static str,
    /// Whether an earlier controller in [`V1_CONTROLLERS`] is mounted on the same hierarchy:
    /// `cpu` and `cpuacct` often are one (`cpu,cpuacct`, the names symlinks to it). Limits are
    /// written per controller name; a process joins each hierarchy once.
    shares_hierarchy: bool,
}

/// The controllers of [`V1_CONTROLLERS`] mounted under `root`. Hierarchies are told apart by
/// their real path (not by inode: the roots of different hierarchies can share device and
/// inode numbers).
fn v1_controllers(root: &Path) -> Vec<V1Controller> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for &name in V1_CONTROLLERS {
        let hierarchy = root.join(name);
        if !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let real = std::fs::canonicalize(&hierarchy).unwrap_or(hierarchy);
        let shares_hierarchy = seen.contains(&real);
        if !shares_hierarchy {
            seen.push(real);
        }
        out.push(V1Controller {
            name,
            shares_hierarchy,
        });
    }
    out
}

/// [`v1_controllers`] of the host, looked up once: every start needs them, and resolving the
/// links took some fifty `readlink` calls per start. Hierarchies are mounted at boot.
fn host_v1_controllers() -> &'static [V1Controller] {
    static HOST: std::sync::OnceLock<Vec<V1Controller>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| v1_controllers(Path::new(CGROUP_ROOT)))
}

/// cgroup2's `cpu.weight` for CRI's `cpu_shares`, by the conversion runc uses: shares
/// 2..262144 → weight 1..10000.
fn cpu_weight(shares: i64) -> i64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn cg_err(path: &Path, e: std::io::Error) -> SandboxError {
    SandboxError::io(path, e)
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(|e| cg_err(path, e))
}

/// Writes each of `values` to `path`, one `write` each on one open file: a cgroup file takes
/// one value per `write` (a device rule, here), and opening it once per value was most of the
/// cost of the device rules.
fn write_each(path: &Path, values: &[&str]) -> Result<(), SandboxError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| cg_err(path, e))?;
    for value in values {
        file.write_all(value.as_bytes())
            .map_err(|e| cg_err(path, e))?;
    }
    Ok(())
}

impl VmCgroup {
    /// The cgroup for a container's `cgroups_path` (see `container::cgroups`).
    pub fn new(relative: PathBuf) -> VmCgroup {
        VmCgroup {
            relative,
            root: PathBuf::from(CGROUP_ROOT),
            v2: crate::container::cgroups::is_v2(),
        }
    }

    /// The cgroup under hierarchies mounted at `root` (a v2 one when `v2`), for tests.
    #[cfg(test)]
    fn at(root: &Path, relative: &str, v2: bool) -> VmCgroup {
        VmCgroup {
            relative: PathBuf::from(relative),
            root: root.to_owned(),
            v2,
        }
    }

    /// The mounted v1 controllers this cgroup joins.
    fn v1_controllers(&self) -> Cow<'static, [V1Controller]> {
        if self.root == Path::new(CGROUP_ROOT) {
            Cow::Borrowed(host_v1_controllers())
        } else {
            Cow::Owned(v1_controllers(&self.root))
        }
    }

    /// This cgroup's directory in one v1 controller's hierarchy.
    fn v1_dir(&self, controller: &V1Controller) -> PathBuf {
        self.root.join(controller.name).join(&self.relative)
    }

    /// The directories of this cgroup, one per joined controller that the host mounts.
    fn dirs(&self) -> Vec<PathBuf> {
        if self.v2 {
            return vec![self.root.join(&self.relative)];
        }
        self.v1_controllers()
            .iter()
            .map(|c| self.v1_dir(c))
            .collect()
    }

    /// The `cgroup.procs` files the VMM's wrapper writes its pid to, one per hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        if self.v2 {
            return vec![self.root.join(&self.relative).join("cgroup.procs")];
        }
        self.v1_controllers()
            .iter()
            .filter(|c| !c.shares_hierarchy)
            .map(|c| self.v1_dir(c).join("cgroup.procs"))
            .collect()
    }

    /// Creates the cgroup and applies `limits`. On error whatever was created is removed.
    pub fn create(&self, limits: &Limits) -> Result<(), SandboxError> {
        let result = if self.v2 {
            self.create_v2(limits)
        } else {
            self.create_v1(limits)
        };
        if result.is_err() {
            self.remove();
        }
        result
    }

    fn create_v1(&self, limits: &Limits) -> Result<(), SandboxError> {
        for controller in self.v1_controllers().iter() {
            let dir = self.v1_dir(controller);
            std::fs::create_dir_all(&dir).map_err(|e| cg_err(&dir, e))?;
            match controller.name {
                "memory" => {
                    if let Some(bytes) = limits.memory_bytes {
                        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    }
                }
                "cpu" => {
                    if limits.cpu_period > 0 {
                        write(
                            &dir.join("cpu.cfs_period_us"),
                            &limits.cpu_period.to_string(),
                        )?;
                    }
                    if limits.cpu_quota > 0 {
                        write(&dir.join("cpu.cfs_quota_us"), &limits.cpu_quota.to_string())?;
                    }
                    if limits.cpu_shares > 0 {
                        write(&dir.join("cpu.shares"), &limits.cpu_shares.to_string())?;
                    }
                }
                "devices" => {
                    write(&dir.join("devices.deny"), "a")?;
                    write_each(&dir.join("devices.allow"), limits.devices.rules())?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn create_v2(&self, limits: &Limits) -> Result<(), SandboxError> {
        let dir = self.root.join(&self.relative);
        // Enable the controllers on the way down (ignoring ones the parent lacks).
        let mut at = self.root.clone();
        for part in self.relative.iter() {
            for c in ["+memory", "+cpu", "+pids"] {
                let _ = std::fs::write(at.join("cgroup.subtree_control"), c);
            }
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).map_err(|e| cg_err(&at, e))?;
            }
        }
        if let Some(bytes) = limits.memory_bytes {
            write(&dir.join("memory.max"), &bytes.to_string())?;
        }
        if limits.cpu_quota > 0 {
            write(
                &dir.join("cpu.max"),
                &format!("{} {}", limits.cpu_quota, limits.cfs_period()),
            )?;
        }
        if limits.cpu_shares > 0 {
            write(
                &dir.join("cpu.weight"),
                &cpu_weight(limits.cpu_shares).to_string(),
            )?;
        }
        Ok(())
    }

    /// Removes the cgroup's directories (they must be empty of processes); missing ones are
    /// fine. Returns whether all are gone.
    pub fn remove(&self) -> bool {
        let mut gone = true;
        for dir in self.dirs() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(cgroup = %dir.display(), error = %e, "cannot remove the VMM's cgroup yet");
                    gone = false;
                }
            }
        }
        gone
    }

    /// Sets new CPU and memory limits on the live cgroup (`UpdateContainerResources`); unset
    /// values lift a limit set before. Devices are left as they are.
    pub fn update(&self, limits: &Limits) -> Result<(), SandboxError> {
        let memory = limits.memory_bytes.map(|b| b.to_string());
        let quota = (limits.cpu_quota > 0).then_some(limits.cpu_quota);
        let period = limits.cfs_period();
        if self.v2 {
            let dir = self.root.join(&self.relative);
            write(&dir.join("memory.max"), memory.as_deref().unwrap_or("max"))?;
            let max = quota.map_or_else(|| "max".to_owned(), |q| q.to_string());
            write(&dir.join("cpu.max"), &format!("{max} {period}"))?;
            if limits.cpu_shares > 0 {
                write(
                    &dir.join("cpu.weight"),
                    &cpu_weight(limits.cpu_shares).to_string(),
                )?;
            }
            return Ok(());
        }
        for controller in self.v1_controllers().iter() {
            let dir = self.v1_dir(controller);
            match controller.name {
                "memory" => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        memory.as_deref().unwrap_or("-1"),
                    )?;
                }
                "cpu" => {
                    // The quota goes after the period: a quota is checked against it.
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &quota.unwrap_or(-1).to_string(),
                    )?;
                    if limits.cpu_shares > 0 {
                        write(&dir.join("cpu.shares"), &limits.cpu_shares.to_string())?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The pids in the cgroup (from the first hierarchy).
    pub fn pids(&self) -> Vec<i32> {
        self.procs_files()
            .first()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_limits_are_the_unified_files() {
        let d = tempfile::tempdir().unwrap();
        let cg = VmCgroup::at(d.path(), "kubepods/pod1/c1", true);
        let dir = d.path().join("kubepods/pod1/c1");
        assert_eq!(cg.dirs(), std::slice::from_ref(&dir));
        assert_eq!(cg.procs_files(), [dir.join("cgroup.procs")]);
        cg.create(&Limits {
            memory_bytes: Some(256 << 20),
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            ..Limits::default()
        })
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("cpu.max"), "50000 100000");
        // runc's conversion: shares 512 → weight 20.
        assert_eq!(read("cpu.weight"), "20");
        // The controllers were enabled on the way down (each write is one controller).
        assert!(
            d.path()
                .join("kubepods/pod1/cgroup.subtree_control")
                .exists()
        );
        cg.update(&Limits::default()).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
    }

    #[test]
    fn v1_procs_files_name_each_hierarchy_once() {
        let d = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu,cpuacct", "pids"] {
            std::fs::create_dir(d.path().join(c)).unwrap();
            std::fs::write(d.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        for c in ["cpu", "cpuacct"] {
            std::os::unix::fs::symlink("cpu,cpuacct", d.path().join(c)).unwrap();
        }
        let cg = VmCgroup::at(d.path(), "crid/c1", false);
        let procs = |c: &str| d.path().join(c).join("crid/c1/cgroup.procs");
        assert_eq!(
            cg.procs_files(),
            [procs("memory"), procs("cpu"), procs("pids")],
            "cpuacct is cpu's hierarchy; devices and blkio are not mounted"
        );
        assert_eq!(cg.dirs().len(), 4, "limits go to every controller's name");
    }

    /// crid-vmm's cgroup allows the two devices it opens after joining, other VMMs' also the
    /// pseudo-devices; the rules are written after everything was denied, on one open file.
    #[test]
    fn v1_device_rules_follow_the_vmm() {
        assert_eq!(Devices::CridVmm.rules(), ["c 10:232 rw", "c 10:200 rw"]);
        assert_eq!(Devices::Vmm.rules()[..2], *Devices::CridVmm.rules());
        assert!(Devices::Vmm.rules().contains(&"c 1:9 rw"));
        for devices in [Devices::CridVmm, Devices::Vmm] {
            let d = tempfile::tempdir().unwrap();
            // The controller's files, as the kernel makes them in a new cgroup.
            let dir = d.path().join("devices/crid/c1");
            std::fs::create_dir(d.path().join("devices")).unwrap();
            std::fs::write(d.path().join("devices/cgroup.procs"), "").unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["devices.deny", "devices.allow"] {
                std::fs::write(dir.join(f), "").unwrap();
            }
            let cg = VmCgroup::at(d.path(), "crid/c1", false);
            cg.create(&Limits {
                devices,
                ..Limits::default()
            })
            .unwrap();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(read("devices.deny"), "a");
            // A regular file keeps the writes one after the other.
            assert_eq!(read("devices.allow"), devices.rules().concat());
        }
    }

    /// On the host's real cgroup2 hierarchy (the unified mount of a v1 hybrid host such as
    /// this machine kind, or `/sys/fs/cgroup` on a unified host): the VMM's wrapper joins the
    /// cgroup, the kernel shows the process there, and the cgroup goes once it is empty. A
    /// memory limit is set where the hierarchy has the memory controller (unified hosts only).
    #[test]
    fn a_vmm_joins_and_leaves_a_real_cgroup2_hierarchy() {
        let root = [
            PathBuf::from(CGROUP_ROOT),
            Path::new(CGROUP_ROOT).join("unified"),
        ]
        .into_iter()
        .find(|r| r.join("cgroup.controllers").exists());
        let (Some(root), true) = (root, nix::unistd::geteuid().is_root()) else {
            eprintln!("skipped: needs root and a cgroup2 hierarchy");
            return;
        };
        let memory = std::fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "memory");
        let relative = format!("crid-test-vmm-{}", std::process::id());
        let cg = VmCgroup::at(&root, &relative, true);
        let limits = Limits {
            memory_bytes: memory.then_some(64 << 20),
            ..Limits::default()
        };
        cg.create(&limits).unwrap();
        let dir = root.join(&relative);
        if memory {
            assert_eq!(
                std::fs::read_to_string(dir.join("memory.max"))
                    .unwrap()
                    .trim(),
                "67108864"
            );
        }
        // As the monitor's child joins it between fork and exec: its pid into `cgroup.procs`.
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        for procs in cg.procs_files() {
            std::fs::write(&procs, pid.to_string()).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cg.pids().contains(&pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let joined = cg.pids().contains(&pid);
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(joined, "pid {pid} not in {}", dir.display());
        assert!(
            membership.lines().any(|l| l == format!("0::/{relative}")),
            "{membership}"
        );
        assert!(cg.pids().is_empty());
        assert!(cg.remove(), "{} not removed", dir.display());
        assert!(!dir.exists());
    }
}
