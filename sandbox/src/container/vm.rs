//! The VM backend ([`VmBackend`], behind [`super::ContainerBackend`]): a container whose image is
//! a unikernel artifact runs as a guest of its hypervisor (see [`crate::vm`], one small module
//! per VMM), supervised by the same monitor as runc containers (`Launch::Command`,
//! `Backend::Process`).
//!
//! - `CreateContainer` checks everything that can fail without side effects (guest/hypervisor
//!   pair, the image's kernel/initrd/block files, the accelerator, the VMM binary) and keeps
//!   the VM's state ([`VmState`]) in the container's one record; no rootfs is mounted (a
//!   shared root is mounted at start) and no runc bundle is written.
//! - `StartContainer` creates the tap in the pod's network namespace (in-process, see
//!   [`crate::vm::net`]), plans the VMM command and hands it to the monitor with the pod's
//!   network namespace and the container's cgroup, which the monitor's child joins before it
//!   execs the VMM: the serial console goes to the CRI log, the VMM's exit status becomes the
//!   container's exit code. A crid-vmm guest is handed a prepared monitor and VMM of its size
//!   instead ([`crate::vm::pool`]), at `CreateContainer` where the pool has one then, and
//!   only let run at `StartContainer` (`container::vm_armed`); a PCI guest that
//!   fits a QEMU started paused ahead ([`crate::vm::qemu_pool`]) is handed it the same way.
//! - The VMM runs in the container's cgroup (`cgroups_path`, as runc would use: CRI limits,
//!   stats and OOM detection apply), as an unprivileged user where the hypervisor allows (QEMU);
//!   see [`crate::vm::cgroup`] and [`crate::vm::qemu`].
//! - Stop asks the guest to shut down where it can be asked (QEMU: QMP `system_powerdown`, the
//!   ACPI power button; the guest decides), else sends the stop signal to the VMM; SIGKILL after
//!   the timeout. When the guest has exited, or on remove, the tap, the cgroup, the control
//!   socket and the block overlay are released.
//! - The guest's argv is the CRI command + args, else the image's Entrypoint + Cmd, else the
//!   image's unikernel command line; its environment is the image's `Env`, then the CRI `envs`.
//! - Only pods whose runtime handler runs VMs (or detects them) may run unikernel images
//!   (`check_handler`).
//! - CRI mounts never fail a create: a `linux` QEMU guest whose image sets `mountRootfs=true`
//!   gets them bound into its container's root file system, which it mounts over virtiofs
//!   (`vm_rootfs`, [`crate::vm::virtiofs`]), and so does a `unikraft` one without an initrd,
//!   over QEMU's 9p ([`crate::vm::ninep`]); a `linux` guest with `mountRootfs=true` on a
//!   hypervisor without a shared file system (or with `useDMBlock=true` on QEMU) gets that root
//!   file system copied into an ext4 image on its first disk ([`crate::vm::blockroot`]);
//!   another guest that can take files gets them copied in at start
//!   ([`crate::vm::guestfiles`]); for the others each mount is skipped with a warning and a
//!   note in the VM state (`mount_notes`, shown in verbose status).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imagestore::UnikernelInfo;
use serde::Deserialize;

use super::backend::{
    ContainerBackend, ContainerDirs, ContainerExit, ExitWatch, NewContainer, StartError, Started,
    Supervisor, start_failure,
};
use super::config::{NsSource, PodContext, Resources};
use super::record::{
    Backend, ContainerRecord, ContainerState, ContainerStats, VmState, exit_code, is_mount_point,
    runtime_err,
};
use super::vm_armed::{Armed, ArmedGuests, Outcome};
use super::{cgroups, spec, user, vm_rootfs};
use crate::error::{SandboxError, invalid};
use crate::monitor::Launch;
use crate::monitor::prepared::{PreparedMonitor, StartGate};
use crate::pod::CgroupDriver;
use crate::runc::ExecOutput;
use crate::vm::accel::KvmProbe;
use crate::vm::blockroot;
use crate::vm::cgroup::{Limits, VmCgroup};
use crate::vm::guestfiles::{self, GuestMount, MountNote};
use crate::vm::launch::{self, VmRequest, VmSettings};
use crate::vm::net::GuestPort;
use crate::vm::pool::Pool;
use crate::vm::qemu_pool::{self, QemuEntry, QemuPool};
use crate::vm::virtiofs::{SharedRoot, Transport};

/// The RuntimeClass rule: a unikernel image runs as a VM only in a pod whose handler asked for
/// VMs (`runtime.unikernel_handlers`) or detects them (`runtime.unikernel_autodetect_handlers`);
/// elsewhere it is `FailedPrecondition` naming the handler to use, so nothing becomes a VM
/// unless its pod (or the operator) chose it.
fn check_handler(
    pod: &PodContext,
    info: &UnikernelInfo,
    settings: &VmSettings,
) -> Result<(), SandboxError> {
    if pod.is_unikernel || settings.autodetect_handlers.contains(&pod.runtime_handler) {
        return Ok(());
    }
    let handlers = settings
        .unikernel_handlers
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(SandboxError::FailedPrecondition {
        reason: format!(
            "the image is a {} unikernel for {}, which runs as a VM only in a pod whose \
             RuntimeClass handler is {}; this pod's handler is {:?} (an operator can list it \
             in runtime.unikernel_autodetect_handlers)",
            info.unikernel_type.as_str(),
            info.hypervisor.as_str(),
            if handlers.is_empty() {
                "configured in runtime.unikernel_handlers".to_owned()
            } else {
                handlers
            },
            pod.runtime_handler
        ),
    })
}

/// The guest's argv as Kubernetes defines it: the CRI `command` (else the image's
/// `Entrypoint`) followed by the CRI `args` (else, when no command was given, the image's
/// `Cmd`).
fn guest_argv(command: &[String], args: &[String], image: &spec::ImageConfig) -> Vec<String> {
    let entrypoint = if command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        command.to_vec()
    };
    let rest = if !args.is_empty() {
        args.to_vec()
    } else if command.is_empty() {
        image.cmd.clone().unwrap_or_default()
    } else {
        vec![]
    };
    entrypoint.into_iter().chain(rest).collect()
}

/// The first two IPv4 `nameserver`s of a `resolv.conf`.
fn nameservers(resolv_conf: &str) -> Vec<std::net::Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse().ok())
        .take(2)
        .collect()
}

/// kubelet's annotation listing the container's declared ports (JSON).
const PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

/// The TCP/UDP ports of kubelet's `io.kubernetes.container.ports` annotation (SCTP and other
/// protocols are left out); a value that is not that JSON is `InvalidArgument` naming the key.
fn declared_ports(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<GuestPort>, SandboxError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Port {
        container_port: u16,
        #[serde(default)]
        protocol: Option<String>,
    }
    let Some(value) = annotations.get(PORTS_ANNOTATION) else {
        return Ok(vec![]);
    };
    let ports: Vec<Port> = serde_json::from_str(value)
        .map_err(|e| invalid(format!("annotation {PORTS_ANNOTATION}: {e}")))?;
    let mut out: Vec<GuestPort> = Vec::new();
    for p in ports {
        let udp = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => false,
            "UDP" => true,
            _ => continue,
        };
        let g = GuestPort {
            port: p.container_port,
            udp,
        };
        if p.container_port != 0 && !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

/// The guest's environment: the image's `Env`, then the CRI `envs` (which win on a name
/// both set), as runc containers get it.
fn merged_env(image: &[String], cri: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let pairs = image
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .chain(cri.iter().cloned());
    for (k, v) in pairs {
        match env.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    env
}

/// Whether and how the guest mounts its container's root file system when its image (or an
/// annotation) asks for it with urunc's `mountRootfs=true`:
/// - a `linux` guest with an initrd on QEMU, shared over virtiofs (see
///   [`crate::vm::virtiofs`]); with `useDMBlock=true` too, as a block root instead (below).
/// - a `linux` guest with an initrd on Firecracker, Cloud Hypervisor or crid-vmm (no shared
///   file system), copied into an ext4 image on its first disk (see
///   [`crate::vm::blockroot`]), unless the image has a block file of its own (crid-vmm takes
///   one disk; such a guest keeps the initrd copy).
/// - a `unikraft` guest without an initrd on QEMU, over QEMU's 9p (see [`crate::vm::ninep`]),
///   as urunc does; with an initrd, the initrd stays its root (urunc's precedence too).
///
/// Without the key a `linux` guest gets the image's files and the mounts copied into its
/// initrd (guests without the fuse/virtiofs drivers boot that way); `false` leaves the image's
/// files out.
fn shares_rootfs(info: &UnikernelInfo) -> Option<Transport> {
    use imagestore::{HypervisorKind as H, UnikernelType as T};
    if info.mount_rootfs != Some(true) {
        return None;
    }
    let block_root = info.block.is_none().then_some(Transport::Block);
    match (info.unikernel_type, info.hypervisor) {
        (T::Linux, _) if info.initrd.is_none() => None,
        (T::Linux, H::Qemu) if info.use_dm_block == Some(true) => block_root,
        (T::Linux, H::Qemu) => Some(Transport::Virtiofs),
        (T::Linux, H::Firecracker | H::CloudHypervisor | H::Crid) => block_root,
        (T::Unikraft, H::Qemu) if info.initrd.is_none() => Some(Transport::NineP),
        _ => None,
    }
}

/// The shared root's place and the workload's working directory, uid and gid, as a runc
/// container of this image and config would get them.
fn shared_root(
    config: &super::config::ContainerConfig,
    image: &spec::ImageConfig,
    layers: &[PathBuf],
    dir: &std::path::Path,
    socket: PathBuf,
    transport: Transport,
) -> Result<SharedRoot, SandboxError> {
    let user = user::resolve_for(&config.security, image.user.as_deref(), layers)?;
    let workdir = spec::working_dir(config, image);
    if !workdir.starts_with('/') || workdir.chars().any(char::is_control) {
        return Err(invalid(format!(
            "working directory {workdir:?} is not absolute"
        )));
    }
    Ok(SharedRoot {
        rootfs: dir.join("rootfs"),
        workdir,
        uid: user.uid,
        gid: user.gid,
        socket,
        transport,
    })
}

/// How a 9p guest may write a read-write mount: its file operations run as QEMU's
/// unprivileged uid (see [`crate::vm::ninep`]), which owns none of kubelet's files, so it
/// writes only what is world-writable (an emptyDir, 0777; the termination log, 0666).
fn ninep_writes(host: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(host) {
        Ok(m) if m.mode() & 0o002 != 0 => " (as the VMM's unprivileged uid)".into(),
        Ok(m) => format!(
            " (as the VMM's unprivileged uid, which may not write this one: owner {}, mode \
             {:o})",
            m.uid(),
            m.mode() & 0o7777
        ),
        Err(_) => " (as the VMM's unprivileged uid)".into(),
    }
}

/// The mounts a guest gets (bound into its shared root, or copied into its initrd), and a note
/// for every CRI mount (see [`guestfiles`]). The pod's `/etc/hosts` and `/etc/resolv.conf`
/// come first (the guest's DNS is the pod's), unless a CRI mount covers the same path.
fn guest_mounts(
    cri: &[super::config::MountSpec],
    pod: &PodContext,
    info: &UnikernelInfo,
    shared: Option<Transport>,
) -> (Vec<GuestMount>, Vec<MountNote>) {
    let takes = shared.is_some() || guestfiles::takes_files(info);
    let mut mounts = Vec::new();
    let mut notes = Vec::new();
    let pod_files = [
        ("/etc/hosts", &pod.hosts_file),
        ("/etc/resolv.conf", &pod.resolv_conf),
    ];
    for (path, file) in pod_files {
        if let Some(file) = file.as_ref().filter(|_| takes) {
            if !cri.iter().any(|m| m.container_path == path) {
                mounts.push(GuestMount {
                    container_path: path.into(),
                    host_path: file.clone(),
                    readonly: true,
                });
            }
        }
    }
    for m in cri {
        if let Some(transport) = shared {
            mounts.push(GuestMount {
                container_path: m.container_path.clone(),
                host_path: PathBuf::from(&m.host_path),
                readonly: m.readonly,
            });
            let note = match transport {
                Transport::Virtiofs | Transport::NineP if m.readonly => format!(
                    "bound read-only into the container's root file system, which the guest \
                     mounts over {}: host changes are shared, guest writes refused",
                    transport.name()
                ),
                Transport::Virtiofs | Transport::NineP => format!(
                    "bound into the container's root file system, which the guest mounts \
                     over {}: host changes and guest writes{} are shared",
                    transport.name(),
                    if transport == Transport::NineP {
                        ninep_writes(Path::new(&m.host_path))
                    } else {
                        String::new()
                    }
                ),
                Transport::Block => "copied at start into the guest's root file system image \
                                     (ext4 on its first disk); later host changes and guest \
                                     writes are not shared, read-only is not enforced"
                    .into(),
            };
            notes.push(MountNote {
                container_path: m.container_path.clone(),
                delivery: transport.name().into(),
                note,
            });
        } else if takes {
            mounts.push(GuestMount {
                container_path: m.container_path.clone(),
                host_path: PathBuf::from(&m.host_path),
                readonly: m.readonly,
            });
            notes.push(MountNote {
                container_path: m.container_path.clone(),
                delivery: "initrd".into(),
                note: "copied into the guest's initrd at start; later host changes and \
                       guest writes are not shared"
                    .into(),
            });
        } else {
            notes.push(MountNote {
                container_path: m.container_path.clone(),
                delivery: "skipped".into(),
                note: format!(
                    "{} guests{} have no shared or copied file system in crid",
                    info.unikernel_type.as_str(),
                    if info.initrd.is_none() {
                        " without an initrd"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    (mounts, notes)
}

/// Unikernel containers: guests of a hypervisor under the container's monitor.
#[derive(Clone)]
pub struct VmBackend {
    pub settings: VmSettings,
    /// What the host's KVM offers, probed once at start-up.
    pub kvm: KvmProbe,
    /// crid-vmm guests prepared ahead of need (`vm.crid_vmm_pool`), when there are any.
    pub pool: Option<Arc<Pool<PreparedMonitor>>>,
    /// QEMUs started and paused ahead of need for PCI guests (`vm.qemu_pool`).
    pub qemu_pool: Option<Arc<QemuPool>>,
    /// Created containers handed a prepared crid-vmm or QEMU, waiting for their start.
    pub armed: ArmedGuests,
    pub supervisor: Supervisor,
    pub cgroup_driver: CgroupDriver,
}

impl VmBackend {
    fn dirs(&self) -> &ContainerDirs {
        &self.supervisor.dirs
    }

    /// The VM state of a container: in its record, or (containers created by an older crid)
    /// in `vm.json` next to it.
    fn vm_state(&self, r: &ContainerRecord) -> Option<VmState> {
        r.vm.clone().or_else(|| self.legacy_state(&r.id))
    }

    fn legacy_state(&self, id: &str) -> Option<VmState> {
        let bytes = std::fs::read(self.dirs().dir(id).join("vm.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn no_state(&self, id: &str) -> SandboxError {
        SandboxError::Record {
            path: self.dirs().dir(id).join("record.json"),
            reason: "the unikernel container's record has no VM state".into(),
        }
    }

    /// Prepares the guest (its shared root, tap, plan, files) and returns what the monitor runs
    /// (blocking).
    fn launch(&self, state: VmState) -> Result<(VmState, Launch), SandboxError> {
        let req = &state.request;
        if let Some(root) = &req.shared_root {
            // As on the command line of other guests: CRI/image argv, else the image's
            // unikernel command line.
            let argv = crate::vm::cmdline::workload_argv(&req.args, &req.info.cmdline);
            vm_rootfs::mount(
                &self.dirs().dir(&req.container_id),
                &req.layer_dirs,
                &req.mounts,
                &argv,
                &req.env,
                root,
            )?;
            if let Some(image) = launch::block_root(req) {
                // The guest gets a copy of the tree; the tree goes at once.
                let started = std::time::Instant::now();
                let built = self.settings.binary(blockroot::MKFS).and_then(|mkfs| {
                    blockroot::build(&mkfs, &root.rootfs, &image, &blockroot::Limits::default())
                });
                vm_rootfs::unmount(&root.rootfs);
                let usage = built?;
                tracing::info!(
                    container_id = %req.container_id,
                    bytes = usage.bytes,
                    entries = usage.entries,
                    ms = started.elapsed().as_millis(),
                    "the guest's root image is built"
                );
            }
        }
        let prepared = launch::prepare(req, &self.settings, &self.kvm).inspect_err(|_| {
            if let Some(root) = &req.shared_root {
                vm_rootfs::unmount(&root.rootfs);
            }
        })?;
        Ok(launched(state, prepared))
    }

    /// [`VmBackend::launch`] on a prepared QEMU (the guest has no shared root: see
    /// [`qemu_pool::may_fit`]); `None` when the guest does not fit it (nothing was made).
    fn launch_pooled(
        &self,
        state: VmState,
        entry: &QemuEntry,
        pool: &QemuPool,
    ) -> Result<Option<(VmState, Launch)>, SandboxError> {
        let pooled = launch::Pooled {
            seat: &entry.seat,
            argv: &entry.argv,
            ram: &entry.ram,
            vmm_pid: entry.monitor.vmm_pid,
            netns: &pool.netns,
        };
        let prepared = launch::prepare_pooled(&state.request, &self.settings, &self.kvm, pooled)?;
        Ok(prepared.map(|p| launched(state, p)))
    }

    /// The new limits as the VM state records them. A created guest takes anything (it boots
    /// with them). A running one gets them in its VMM's cgroup; its RAM and vCPU count are
    /// fixed at boot, so resources that would give it fewer MiB of RAM or another vCPU count
    /// are `FailedPrecondition` (recreate the container). A higher memory limit raises the
    /// cgroup's limit only: the guest keeps its RAM (no memory hot-plug). Blocking.
    fn updated_state(
        &self,
        r: &ContainerRecord,
        resources: &Resources,
    ) -> Result<VmState, SandboxError> {
        let mut state = self.vm_state(r).ok_or_else(|| self.no_state(&r.id))?;
        let settings = &self.settings;
        let guest = |memory: i64, quota: i64, period: i64| {
            (
                launch::memory_mib(memory, settings.default_memory_mib),
                launch::vcpus(quota, period, settings.max_vcpus),
            )
        };
        let req = &state.request;
        let (mem, cpus) = guest(req.memory_limit_bytes, req.cpu_quota, req.cpu_period);
        let (new_mem, new_cpus) = guest(
            resources.memory_limit_in_bytes,
            resources.cpu_quota,
            resources.cpu_period,
        );
        if r.state == ContainerState::Running {
            // No limit (0) lifts the cgroup's limit: more room, not less RAM.
            let shrinks = resources.memory_limit_in_bytes > 0 && new_mem < mem;
            if shrinks || new_cpus != cpus {
                return Err(SandboxError::FailedPrecondition {
                    reason: format!(
                        "a running unikernel keeps the RAM and vCPUs it booted with ({mem} MiB, \
                         {cpus} vCPU); these resources would need {new_mem} MiB and {new_cpus} \
                         vCPU: recreate the container to change them"
                    ),
                });
            }
            if let Some(relative) = &req.cgroup {
                let limits = Limits {
                    memory_bytes: settings
                        .cgroup_memory_bytes(resources.memory_limit_in_bytes, new_mem),
                    cpu_quota: resources.cpu_quota,
                    cpu_period: resources.cpu_period,
                    cpu_shares: resources.cpu_shares,
                    // Not updated: the rules are set when the cgroup is made.
                    ..Limits::default()
                };
                VmCgroup::new(relative.clone()).update(&limits)?;
            }
        }
        // The request stays what a running guest booted with (the record's resources say what
        // its cgroup has now); a created one boots with the new values.
        if r.state == ContainerState::Created {
            state.request.memory_limit_bytes = resources.memory_limit_in_bytes;
            state.request.cpu_quota = resources.cpu_quota;
            state.request.cpu_period = resources.cpu_period;
            state.request.cpu_shares = resources.cpu_shares;
        }
        Ok(state)
    }

    /// A prepared crid-vmm for this guest, when the pool has one of its size (see
    /// [`Pool::take_and_refill`]).
    fn prepared_for(&self, req: &VmRequest) -> Option<PreparedMonitor> {
        let pool = self
            .pool
            .as_ref()
            .filter(|_| req.info.hypervisor == imagestore::HypervisorKind::Crid)?;
        pool.take_and_refill(launch::memory_mib(
            req.memory_limit_bytes,
            self.settings.default_memory_mib,
        ))
    }

    /// Hands a created container's guest to `prepared` (blocking; see [`super::vm_armed`]):
    /// what a start would prepare, then the gated hand-over. What it made is released when it
    /// fails.
    fn arm(&self, r: &ContainerRecord, prepared: PreparedMonitor) -> Outcome {
        // StartContainer waits for the arming: on short slices its thread, woken on a busy
        // host, runs at once and keeps the CPU while it is due it, instead of waiting behind
        // whatever runs there (another session's compiler, crid's answer to CreateContainer).
        let _short = crate::vm::ShortSlices::new();
        let Some(state) = self.vm_state(r) else {
            return Some(Err(self.no_state(&r.id)));
        };
        let (state, launch) = match self.launch(state.clone()) {
            Ok(planned) => planned,
            Err(e) => {
                self.release(&r.id, Some(&state));
                return Some(Err(e));
            }
        };
        let handed = self.supervisor.arm(r, launch, prepared);
        self.armed(&r.id, state, handed, |gate| gate)
    }

    /// How handing the container to a prepared monitor ended (see [`Supervisor::arm`]):
    /// armed, with its gate made by `gate`; or what the arming made is released, and the start
    /// goes the usual way (the monitor had ended) or reports the error.
    fn armed(
        &self,
        id: &str,
        state: VmState,
        handed: Result<Option<(i32, StartGate)>, String>,
        gate: impl FnOnce(StartGate) -> StartGate,
    ) -> Outcome {
        match handed {
            Ok(Some((pid, g))) => Some(Ok(Armed {
                state,
                pid,
                gate: gate(g),
            })),
            Ok(None) => {
                self.release(id, Some(&state));
                None
            }
            Err(message) => {
                self.release(id, Some(&state));
                Some(Err(runtime_err("start", message)))
            }
        }
    }

    /// A prepared QEMU for this guest, when it may fit one of the pool's (see
    /// [`qemu_pool::may_fit`]).
    fn qemu_for(&self, req: &VmRequest) -> Option<QemuEntry> {
        let pool = self.qemu_pool.as_ref().filter(|_| {
            let vcpus = launch::vcpus(req.cpu_quota, req.cpu_period, self.settings.max_vcpus);
            // A kernel the image does not have fails the usual start, with its error.
            let Ok(kernel) = launch::kernel(req) else {
                return false;
            };
            qemu_pool::may_fit(
                &req.info,
                &kernel,
                vcpus,
                req.netns.is_some(),
                req.shared_root.is_some(),
            )
        })?;
        pool.take(launch::memory_mib(
            req.memory_limit_bytes,
            self.settings.default_memory_mib,
        ))
    }

    /// Hands a created container's guest to a prepared QEMU (blocking; see
    /// [`super::vm_armed`]): its tap, cgroup, kernel and QMP socket, then the gated hand-over
    /// to its monitor; `StartContainer` resumes it. `None` when it does not fit the guest or
    /// its monitor had ended (the start goes the usual way).
    fn arm_qemu(&self, r: &ContainerRecord, entry: QemuEntry, pool: &QemuPool) -> Outcome {
        let Some(state) = self.vm_state(r) else {
            return Some(Err(self.no_state(&r.id)));
        };
        let (state, launch) = match self.launch_pooled(state.clone(), &entry, pool) {
            Ok(Some(planned)) => planned,
            Ok(None) => {
                tracing::info!(container_id = %r.id, "the guest does not fit the prepared QEMU; the start runs one");
                return None;
            }
            Err(e) => {
                self.release(&r.id, Some(&state));
                return Some(Err(e));
            }
        };
        let QemuEntry { monitor, qmp, .. } = entry;
        let handed = self.supervisor.arm(r, launch, monitor);
        self.armed(&r.id, state, handed, |gate| gate.resuming(qmp.keep()))
    }

    /// Ends the armed guest of container `id`, if it has one (its VMM and monitor exit, the
    /// guest never run), and releases what arming made.
    async fn disarm(&self, id: &str) {
        if let Some(Ok(armed)) = self.armed.take(id).await {
            let Armed { state, gate, .. } = armed;
            drop(gate);
            let this = self.clone();
            let id = id.to_owned();
            let _ = tokio::task::spawn_blocking(move || this.release(&id, Some(&state))).await;
        }
    }

    /// Starts the guest armed at create; `None` when it was not armed (the start goes the
    /// usual way).
    async fn start_armed(&self, r: &mut ContainerRecord) -> Option<Result<Started, StartError>> {
        let armed = match self.armed.take(&r.id).await? {
            Ok(armed) => armed,
            Err(error) => {
                return Some(Err(StartError::Failed {
                    message: error.to_string(),
                    error,
                }));
            }
        };
        r.vm = Some(armed.state.clone());
        Some(
            self.supervisor
                .start_armed(&r.id, armed.pid, armed.gate)
                .map_err(|message| {
                    self.release(&r.id, Some(&armed.state));
                    start_failure(&self.dirs().dir(&r.id), message)
                }),
        )
    }

    /// Releases the guest's tap and files; fine to repeat.
    fn release(&self, id: &str, state: Option<&VmState>) {
        let Some(state) = state else {
            return;
        };
        if let Err(e) = launch::release(&state.request) {
            tracing::warn!(container_id = %id, error = %e, "cannot release the guest network");
        }
        // After the VMM and virtiofsd are gone.
        if let Some(root) = &state.request.shared_root {
            vm_rootfs::unmount(&root.rootfs);
        }
    }
}

/// The VM state of a prepared guest and what its monitor runs.
fn launched(mut state: VmState, prepared: launch::PreparedVm) -> (VmState, Launch) {
    state.accel = prepared.accel.clone();
    state.exit_mapping = Some(prepared.plan.exit_mapping);
    state.argv = prepared.argv.clone();
    state.guest_cmdline = prepared.plan.guest_cmdline.clone();
    state.firmware = prepared.plan.firmware.clone();
    let launch = Launch::Command {
        argv: prepared.argv,
        env: vec![],
        cwd: None,
        netns: prepared.netns,
        cgroup_procs: prepared.cgroup_procs,
        exit_port: prepared.plan.exit_port,
        seccomp: prepared.plan.seccomp,
    };
    (state, launch)
}

/// A guest takes over its pod's network interface, so a pod with its own network holds one
/// unikernel container that is not Exited; a second one is `FailedPrecondition` at
/// `CreateContainer` (and, should two creates race, at `StartContainer`, where the live tap of
/// the first is found).
fn check_one_guest_per_pod(pod_id: &str, siblings: &[ContainerRecord]) -> Result<(), SandboxError> {
    let other = siblings.iter().find(|r| {
        r.pod_id == pod_id
            && r.backend == Backend::Process
            && matches!(r.state, ContainerState::Created | ContainerState::Running)
    });
    match other {
        Some(r) => Err(SandboxError::FailedPrecondition {
            reason: format!(
                "pod {pod_id} already has unikernel container {} ({}); a pod holds one \
                 unikernel, which takes over the pod's network interface",
                r.id, r.config.name
            ),
        }),
        None => Ok(()),
    }
}

/// The pod interface the guest takes over (or is routed behind): the one the pod's CNI result
/// names, else the `CNI_IFNAME` crid passed.
fn guest_iface(pod: &PodContext) -> String {
    pod.ifname
        .clone()
        .unwrap_or_else(|| crate::pod::POD_IFNAME.to_owned())
}

#[async_trait::async_trait]
impl ContainerBackend for VmBackend {
    fn kind(&self) -> Backend {
        Backend::Process
    }

    fn create(&self, new: NewContainer) -> Result<ContainerRecord, SandboxError> {
        let NewContainer {
            id,
            config,
            pod,
            image,
            image_config,
            stop_signal,
            log_path,
            siblings,
        } = new;
        let info = image
            .unikernel
            .clone()
            .ok_or_else(|| invalid("the image is not a unikernel"))?;
        check_handler(&pod, &info, &self.settings)?;
        if config.tty || config.stdin {
            return Err(invalid(
                "unikernel containers have a serial console only: no tty or stdin",
            ));
        }
        let args = guest_argv(&config.command, &config.args, &image_config);
        let netns = match &pod.network {
            NsSource::Join(p) => Some(p.clone()),
            NsSource::New | NsSource::Host => None,
        };
        if netns.is_some() {
            check_one_guest_per_pod(&pod.id, &siblings)?;
        }
        let dir = self.dirs().dir(&id);
        // The VMM runs in the cgroup runc would give a container of this pod.
        let cgroups_path = cgroups::cgroups_path(self.cgroup_driver, &pod.cgroup_parent, &id);
        let mut info = info;
        crate::vm::crid_vmm::substitute(
            &mut info,
            &image.layer_dirs,
            netns.is_some(),
            &self.settings,
            &self.kvm,
        );
        let shared = shares_rootfs(&info);
        let (mounts, mount_notes) = guest_mounts(&config.mounts, &pod, &info, shared);
        for n in mount_notes.iter().filter(|n| n.delivery == "skipped") {
            tracing::warn!(container_id = %id, path = %n.container_path, note = %n.note, "mount not given to the guest");
        }
        let shared_root = if let Some(transport) = shared {
            Some(shared_root(
                &config,
                &image_config,
                &image.layer_dirs,
                &dir,
                self.dirs().short_socket("vfs", &id),
                transport,
            )?)
        } else {
            None
        };
        let request = VmRequest {
            container_id: id.clone(),
            info,
            layer_dirs: image.layer_dirs.clone(),
            netns,
            iface: guest_iface(&pod),
            memory_limit_bytes: config.resources.memory_limit_in_bytes,
            cpu_quota: config.resources.cpu_quota,
            cpu_period: config.resources.cpu_period,
            args,
            env: merged_env(
                image_config.env.as_deref().unwrap_or_default(),
                &config.envs,
            ),
            run_dir: dir.join("vm"),
            cgroup: Some(cgroups::relative_dir(&cgroups_path)),
            cpu_shares: config.resources.cpu_shares,
            // Short: unix socket paths are limited to 108 bytes.
            control_socket: Some(self.dirs().short_socket("qmp", &id)),
            mounts,
            ports: declared_ports(&config.annotations)?,
            dns: pod
                .resolv_conf
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|text| nameservers(&text))
                .unwrap_or_default(),
            shared_root,
        };
        let accel = launch::check(&request, &self.settings, &self.kvm)?;
        let annotation_keys = super::unikernel_keys::applied(&pod, &config.annotations);
        Ok(ContainerRecord {
            cgroups_path,
            vm: Some(VmState {
                request,
                accel,
                exit_mapping: None,
                argv: vec![],
                guest_cmdline: String::new(),
                firmware: None,
                mount_notes,
                annotation_keys,
            }),
            ..ContainerRecord::created(
                Backend::Process,
                id,
                config,
                pod,
                image,
                log_path,
                stop_signal,
            )
        })
    }

    /// A crid-vmm guest with a prepared VMM of its size is handed it now, a QEMU guest that
    /// fits a prepared QEMU that one (see `container::vm_armed`), in the background.
    fn created(&self, r: &ContainerRecord) {
        let Some(state) = self.vm_state(r) else {
            return;
        };
        let this = self.clone();
        let record = r.clone();
        let task = if let Some(prepared) = self.prepared_for(&state.request) {
            tokio::task::spawn_blocking(move || this.arm(&record, prepared))
        } else if let Some(entry) = self.qemu_for(&state.request) {
            let Some(pool) = self.qemu_pool.clone() else {
                return;
            };
            tokio::task::spawn_blocking(move || this.arm_qemu(&record, entry, &pool))
        } else {
            return;
        };
        self.armed.insert(&r.id, task);
    }

    /// The rule of runc containers (the rootfs mount), which a guest does not have: a created
    /// guest is reported exited after any restart of crid.
    fn startable(&self, r: &ContainerRecord) -> bool {
        is_mount_point(&self.dirs().dir(&r.id).join("rootfs"))
    }

    /// Creates the tap in the pod's network namespace, plans the VMM command and hands it to
    /// the monitor: the serial console goes to the CRI log, the VMM's exit status becomes the
    /// container's exit code.
    async fn start(&self, r: &mut ContainerRecord) -> Result<Started, StartError> {
        if let Some(started) = self.start_armed(r).await {
            return started;
        }
        let stale = self.supervisor.prepare(r).map_err(StartError::NotStarted)?;
        self.supervisor
            .ready_to_launch(r, stale)
            .await
            .map_err(StartError::NotStarted)?;
        let id = r.id.clone();
        let state = self.vm_state(r).ok_or_else(|| {
            let error = self.no_state(&id);
            StartError::Failed {
                message: error.to_string(),
                error,
            }
        })?;
        let (state, launch) = {
            let this = self.clone();
            let request = state.clone();
            tokio::task::spawn_blocking(move || this.launch(request))
                .await
                .map_err(|e| StartError::NotStarted(runtime_err("start", e.to_string())))?
                .map_err(|error| {
                    self.release(&id, Some(&state));
                    StartError::Failed {
                        message: error.to_string(),
                        error,
                    }
                })?
        };
        r.vm = Some(state.clone());
        let launched = match self.prepared_for(&state.request) {
            Some(prepared) => self.supervisor.launch_prepared(r, launch, prepared).await,
            None => self.supervisor.launch(r, launch, None).await,
        };
        match launched {
            Ok(started) => Ok(started),
            Err(message) => {
                self.release(&id, Some(&state));
                Err(start_failure(&self.dirs().dir(&id), message))
            }
        }
    }

    /// The VMM gets the signal; `all` is moot (it is the container's one process).
    async fn kill(
        &self,
        r: &ContainerRecord,
        signal: &str,
        _all: bool,
    ) -> Result<(), SandboxError> {
        let sig = signal
            .parse::<nix::sys::signal::Signal>()
            .map_err(|e| runtime_err("kill", e.to_string()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(r.pid), sig)
            .map_err(|e| runtime_err("kill", e.to_string()))
    }

    /// Asks the guest to shut down (QEMU: QMP `system_powerdown`, the ACPI power button).
    /// False when the VMM has no control socket or did not take the request.
    async fn request_shutdown(&self, r: &ContainerRecord) -> bool {
        let id = r.id.as_str();
        let Some(sock) = self
            .vm_state(r)
            .filter(|s| s.request.info.hypervisor == imagestore::HypervisorKind::Qemu)
            .and_then(|s| s.request.control_socket)
        else {
            return false;
        };
        let asked = tokio::task::spawn_blocking(move || crate::vm::qmp::system_powerdown(&sock))
            .await
            .unwrap_or_else(|e| Err(runtime_err("QMP", e.to_string())));
        match asked {
            Ok(()) => {
                tracing::info!(container_id = %id, "asked the guest to power off");
                true
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "cannot ask the guest to power off");
                false
            }
        }
    }

    /// A guest armed and never started is disarmed first: its monitor then ends.
    async fn wait_exit(&self, r: &ContainerRecord, timeout: Duration) -> bool {
        self.disarm(&r.id).await;
        self.supervisor.wait_exit(&r.id, timeout).await
    }

    fn has_exit(&self, r: &ContainerRecord) -> bool {
        self.supervisor.has_exit(&r.id)
    }

    /// The guest is gone: its tap goes too (a restart makes a new one). The VMM's exit status
    /// becomes the guest's exit code; a VMM that died of a signal (a code the guest's exit
    /// mapping left as 128 + signal) did not run the guest to its end, which the message says.
    fn collect_exit(&self, r: &ContainerRecord) -> ContainerExit {
        let state = self.vm_state(r);
        let exit = self.supervisor.load_exit(&r.id);
        self.release(&r.id, state.as_ref());
        let mut out = ContainerExit::from_record(exit.as_ref(), |c| exit_code(state.as_ref(), c));
        if exit.is_some() && out.exit_code > 128 {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(out.exit_code - 128) {
                out.message = format!("the hypervisor was killed by {sig}");
            }
        }
        out
    }

    fn reattach(&self, r: &ContainerRecord) -> Option<ExitWatch> {
        self.supervisor.watch(&r.id)
    }

    async fn update_resources(
        &self,
        r: &mut ContainerRecord,
        resources: &Resources,
    ) -> Result<(), SandboxError> {
        spec::linux_resources(resources, cgroups::is_v2())?;
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("container {} is not running", r.id),
            });
        }
        // An armed guest was set up with the old resources: it starts the usual way.
        self.disarm(&r.id).await;
        let this = self.clone();
        let (rec, res) = (r.clone(), resources.clone());
        let state = tokio::task::spawn_blocking(move || this.updated_state(&rec, &res))
            .await
            .map_err(|e| runtime_err("update", e.to_string()))??;
        r.vm = Some(state);
        Ok(())
    }

    async fn stats(&self, r: &ContainerRecord) -> Result<ContainerStats, SandboxError> {
        self.supervisor.stats(r).await
    }

    async fn exec_sync(
        &self,
        r: &ContainerRecord,
        _cmd: Vec<String>,
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, SandboxError> {
        Err(SandboxError::Unimplemented {
            reason: format!(
                "exec is not supported in unikernel container {}: the guest has no shell",
                r.id
            ),
        })
    }

    fn supports_exec(&self) -> bool {
        false
    }

    fn spec_json(&self, r: &ContainerRecord) -> Option<serde_json::Value> {
        let vm = self.vm_state(r)?;
        Some(serde_json::json!({ "unikernel": vm }))
    }

    fn attach_socket(&self, _r: &ContainerRecord) -> Option<PathBuf> {
        None
    }

    fn reopen_log(&self, r: &ContainerRecord) -> Result<(), SandboxError> {
        self.supervisor.reopen_log(r)
    }

    async fn remove(&self, r: &ContainerRecord) -> Result<(), SandboxError> {
        self.disarm(&r.id).await;
        self.release(&r.id, self.vm_state(r).as_ref());
        Ok(())
    }

    async fn release_unrecorded(&self, id: &str) {
        self.disarm(id).await;
        self.supervisor.end_unrecorded(id).await;
        self.release(id, self.legacy_state(id).as_ref());
    }

    /// The VM policy, what the host's KVM offers and how many crid-vmm guests and QEMUs are
    /// prepared, of which guest sizes, and for which sizes none could be and why (`null`
    /// without a pool).
    fn host_report(&self) -> serde_json::Value {
        serde_json::json!({
            "accelerator": self.settings.accelerator,
            "kvm": self.kvm,
            "defaultMemoryMiB": self.settings.default_memory_mib,
            "cridVmmPrepared": self.pool.as_ref().map(|p| p.waiting()),
            "cridVmmPreparedMiB": self.pool.as_ref().map(|p| p.waiting_sizes()),
            "cridVmmArmed": self.armed.count(),
            "cridVmmNotPrepared": self.pool.as_ref().map(|p| not_prepared(p.failures())),
            "qemuPrepared": self.qemu_pool.as_ref().map(|p| p.waiting()),
            "qemuPreparedMiB": self.qemu_pool.as_ref().map(|p| p.waiting_sizes()),
            "qemuNotPrepared": self.qemu_pool.as_ref().map(|p| not_prepared(p.failures())),
        })
    }
}

/// A pool's failures as `Status` verbose lists them.
fn not_prepared(failures: Vec<(u64, String)>) -> serde_json::Value {
    failures
        .into_iter()
        .map(
            |(memory_mib, reason)| serde_json::json!({ "memoryMiB": memory_mib, "reason": reason }),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore::{HypervisorKind, UnikernelSource, UnikernelType};

    fn info() -> UnikernelInfo {
        UnikernelInfo::new(
            UnikernelType::Unikraft,
            HypervisorKind::Qemu,
            "/unikernel/kernel",
            UnikernelSource::ManifestAnnotations,
        )
    }

    #[test]
    fn declared_ports_from_kubelets_annotation() {
        let mut a = std::collections::BTreeMap::new();
        assert!(declared_ports(&a).unwrap().is_empty());
        a.insert(
            PORTS_ANNOTATION.to_owned(),
            r#"[{"name":"user-port","containerPort":8080,"protocol":"TCP"},{"containerPort":53,"protocol":"UDP"},{"containerPort":9,"protocol":"SCTP"},{"containerPort":8080}]"#.to_owned(),
        );
        assert_eq!(
            declared_ports(&a).unwrap(),
            [
                GuestPort {
                    port: 8080,
                    udp: false
                },
                GuestPort {
                    port: 53,
                    udp: true
                }
            ]
        );
        a.insert(PORTS_ANNOTATION.to_owned(), "8080".to_owned());
        let err = declared_ports(&a).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
        assert!(err.to_string().contains(PORTS_ANNOTATION), "{err}");
    }

    #[test]
    fn argv_follows_kubernetes_command_and_args() {
        let image = spec::ImageConfig {
            entrypoint: Some(vec!["/app/run".into()]),
            cmd: Some(vec!["--default".into()]),
            ..Default::default()
        };
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(guest_argv(&[], &[], &image), v(&["/app/run", "--default"]));
        assert_eq!(guest_argv(&[], &v(&["x"]), &image), v(&["/app/run", "x"]));
        assert_eq!(guest_argv(&v(&["/bin/sh"]), &[], &image), v(&["/bin/sh"]));
        assert_eq!(
            guest_argv(&v(&["/bin/sh"]), &v(&["-c"]), &image),
            v(&["/bin/sh", "-c"])
        );
        let none = spec::ImageConfig::default();
        assert_eq!(guest_argv(&[], &v(&["exit=5"]), &none), v(&["exit=5"]));
    }

    #[test]
    fn pod_dns_servers() {
        let text = "search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\n\
                    nameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:5\n";
        assert_eq!(
            nameservers(text),
            [
                std::net::Ipv4Addr::new(10, 96, 0, 10),
                std::net::Ipv4Addr::new(1, 1, 1, 1)
            ]
        );
    }

    #[test]
    fn image_env_then_cri_env() {
        let image = ["PATH=/bin".to_owned(), "A=1".into(), "EMPTY".into()];
        let cri = [("A".to_owned(), "2".to_owned()), ("B".into(), "3".into())];
        assert_eq!(
            merged_env(&image, &cri),
            [
                ("PATH".to_owned(), "/bin".to_owned()),
                ("A".into(), "2".into()),
                ("EMPTY".into(), String::new()),
                ("B".into(), "3".into()),
            ]
        );
    }

    /// A 9p guest writes as QEMU's uid: a read-write mount that is not world-writable is noted
    /// as one it may not write; a world-writable one (kubelet's emptyDir) and a read-only one
    /// are not.
    #[test]
    fn a_9p_guest_is_told_which_read_write_mounts_it_may_not_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (closed, open) = (dir.path().join("closed"), dir.path().join("open"));
        for (d, mode) in [(&closed, 0o755), (&open, 0o777)] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mount =
            |container_path: &str, host: &Path, readonly: bool| super::super::config::MountSpec {
                container_path: container_path.into(),
                host_path: host.display().to_string(),
                readonly,
                ..Default::default()
            };
        let cri = vec![
            mount("/volume", &closed, false),
            mount("/data", &open, false),
            mount("/config", &closed, true),
        ];
        let mut unikraft = info();
        unikraft.mount_rootfs = Some(true);
        let (_, notes) = guest_mounts(
            &cri,
            &PodContext::default(),
            &unikraft,
            shares_rootfs(&unikraft),
        );
        let refused: Vec<&str> = notes
            .iter()
            .filter(|n| n.note.contains("may not write this one"))
            .map(|n| n.container_path.as_str())
            .collect();
        assert_eq!(refused, ["/volume"], "{notes:?}");
        assert!(notes[0].note.contains("mode 755"), "{notes:?}");
        assert!(notes[1].note.contains("unprivileged uid"), "{notes:?}");
    }

    #[test]
    fn mounts_go_into_an_initrd_linux_guest_and_are_noted_as_skipped_elsewhere() {
        let cri = vec![
            super::super::config::MountSpec {
                container_path: "/etc/hosts".into(),
                host_path: "/pods/p/etc-hosts".into(),
                ..Default::default()
            },
            super::super::config::MountSpec {
                container_path: "/dev/termination-log".into(),
                host_path: "/pods/p/c/0".into(),
                ..Default::default()
            },
            super::super::config::MountSpec {
                container_path: "/etc/app".into(),
                host_path: "/pods/p/volumes/config".into(),
                readonly: true,
                ..Default::default()
            },
        ];
        let pod = PodContext {
            hosts_file: Some("/run/pod/hosts".into()),
            resolv_conf: Some("/run/pod/resolv.conf".into()),
            ..Default::default()
        };
        let (mounts, notes) = guest_mounts(&cri, &pod, &info(), shares_rootfs(&info()));
        assert!(mounts.is_empty());
        assert_eq!(notes.len(), 3);
        assert!(notes.iter().all(|n| n.delivery == "skipped"), "{notes:?}");
        assert!(notes[0].note.contains("unikraft"), "{notes:?}");

        // A unikraft guest with mountRootfs=true on QEMU: bound into its root, shared over 9p.
        let mut unikraft = info();
        unikraft.mount_rootfs = Some(true);
        assert_eq!(shares_rootfs(&unikraft), Some(Transport::NineP));
        let (shared, notes) = guest_mounts(&cri, &pod, &unikraft, shares_rootfs(&unikraft));
        assert_eq!(shared.len(), 4, "{shared:?}");
        assert!(notes.iter().all(|n| n.delivery == "9p"), "{notes:?}");
        // A read-only mount is not one the guest writes.
        assert!(notes[2].note.contains("read-only"), "{notes:?}");
        assert!(notes[2].note.contains("guest writes refused"), "{notes:?}");
        assert!(notes[1].note.contains("guest writes"), "{notes:?}");
        assert!(!notes[1].note.contains("refused"), "{notes:?}");
        unikraft.initrd = Some("/unikernel/initrd".into());
        assert_eq!(shares_rootfs(&unikraft), None);
        unikraft.initrd = None;
        unikraft.hypervisor = HypervisorKind::Firecracker;
        assert_eq!(shares_rootfs(&unikraft), None);

        let mut linux = info();
        linux.unikernel_type = UnikernelType::Linux;
        linux.initrd = Some("/unikernel/initrd.gz".into());
        let (mounts, notes) = guest_mounts(&cri, &pod, &linux, shares_rootfs(&linux));
        let paths: Vec<&str> = mounts.iter().map(|m| m.container_path.as_str()).collect();
        // The CRI mount of /etc/hosts wins over the pod's file; the pod's resolv.conf is added.
        assert_eq!(
            paths,
            [
                "/etc/resolv.conf",
                "/etc/hosts",
                "/dev/termination-log",
                "/etc/app"
            ]
        );
        assert_eq!(mounts[1].host_path, PathBuf::from("/pods/p/etc-hosts"));
        assert!(notes.iter().all(|n| n.delivery == "initrd"), "{notes:?}");

        // urunc's mountRootfs=true on QEMU: the same mounts, bound into the shared root.
        linux.mount_rootfs = Some(true);
        assert_eq!(shares_rootfs(&linux), Some(Transport::Virtiofs));
        let (shared, notes) = guest_mounts(&cri, &pod, &linux, shares_rootfs(&linux));
        assert_eq!(shared, mounts);
        assert!(notes.iter().all(|n| n.delivery == "virtiofs"), "{notes:?}");
        assert!(notes[2].note.contains("guest writes refused"), "{notes:?}");
        // Without a shared file system (and on QEMU with useDMBlock=true): the same mounts,
        // copied into the guest's block root.
        for other in [
            HypervisorKind::Firecracker,
            HypervisorKind::CloudHypervisor,
            HypervisorKind::Crid,
        ] {
            linux.hypervisor = other;
            assert_eq!(shares_rootfs(&linux), Some(Transport::Block), "{other:?}");
        }
        let (copied, notes) = guest_mounts(&cri, &pod, &linux, shares_rootfs(&linux));
        assert_eq!(copied, mounts);
        assert!(notes.iter().all(|n| n.delivery == "block"), "{notes:?}");
        assert!(notes[0].note.contains("not shared"), "{notes:?}");
        // An image with a block file of its own keeps the initrd copy there.
        linux.block = Some("/unikernel/disk.img".into());
        assert_eq!(shares_rootfs(&linux), None);
        linux.block = None;
        linux.hypervisor = HypervisorKind::Qemu;
        linux.use_dm_block = Some(true);
        assert_eq!(shares_rootfs(&linux), Some(Transport::Block));
        linux.use_dm_block = Some(false);
        assert_eq!(shares_rootfs(&linux), Some(Transport::Virtiofs));
        linux.initrd = None;
        assert_eq!(shares_rootfs(&linux), None);
    }

    #[test]
    fn the_guest_uses_the_interface_the_cni_result_names() {
        let mut pod = PodContext::default();
        assert_eq!(guest_iface(&pod), "eth0");
        pod.ifname = Some("net1".into());
        assert_eq!(guest_iface(&pod), "net1");
    }

    #[test]
    fn unikernel_images_need_a_vm_handler_unless_detected() {
        let settings = VmSettings::default();
        let mut pod = PodContext {
            runtime_handler: "urunc".into(),
            is_unikernel: true,
            ..Default::default()
        };
        check_handler(&pod, &info(), &settings).unwrap();

        pod.is_unikernel = false;
        pod.runtime_handler = String::new();
        let err = check_handler(&pod, &info(), &settings).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::FailedPrecondition);
        let msg = err.to_string();
        assert!(
            msg.contains("\"urunc\" or \"unikernel\"") && msg.contains("unikraft"),
            "{msg}"
        );

        let detecting = VmSettings {
            autodetect_handlers: vec![String::new()],
            ..VmSettings::default()
        };
        check_handler(&pod, &info(), &detecting).unwrap();
        pod.runtime_handler = "runc".into();
        assert!(check_handler(&pod, &info(), &detecting).is_err());
    }
}
