//! The daemon's shared state: configuration, the pod and container managers and the image
//! store, built once at start-up and handed to the gRPC handlers, the streaming server and the
//! metrics endpoint. Depends on no other module of the daemon but the configuration and the
//! streaming server it holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use imagestore::{HypervisorKind, ImageError, ImageStore, ImageStoreConfig};
use sandbox::pod::CgroupDriver;
use serde::Serialize;

use crate::config::Config;

/// The cgroup driver `runtime.cgroup_driver` names; `auto` means systemd when systemd is the
/// init system (it owns the cgroup tree then), cgroupfs otherwise.
pub fn cgroup_driver(configured: &str) -> CgroupDriver {
    match configured {
        "systemd" => CgroupDriver::Systemd,
        "cgroupfs" => CgroupDriver::Cgroupfs,
        _ if Path::new("/run/systemd/system").is_dir() => CgroupDriver::Systemd,
        _ => CgroupDriver::Cgroupfs,
    }
}

/// Whether pods can get a network, as reported by `Status`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkStatus {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// Everything the gRPC handlers share.
pub struct State {
    pub config: Config,
    pub cgroup_driver: CgroupDriver,
    pub started_at_unix: u64,
    /// Pod sandboxes (and, through them, CNI).
    pub pods: Arc<sandbox::pod::PodManager>,
    /// Containers (OCI runtimes and monitors).
    pub containers: Arc<sandbox::container::ContainerManager>,
    /// RuntimeClass handler → the OCI runtime binary its ordinary pods run with, resolved at
    /// start (`auto` decided, names looked up in PATH).
    pub oci_runtimes: BTreeMap<String, PathBuf>,
    /// Images: pull, content store, layers, leases.
    pub images: imagestore::ImageStore,
    /// The three above as one runtime: what spans pods, containers and images (cascades,
    /// leases, PID namespace holders) goes through it.
    pub runtime: Arc<sandbox::Runtime>,
    /// The exec/attach/port-forward server, started by [`crate::daemon::run`].
    pub streaming: OnceLock<Arc<crate::streaming::Server>>,
}

impl State {
    pub fn new(config: Config) -> anyhow::Result<State> {
        State::with_parts(config, Arc::new(sandbox::sys::HostSys::default()), None)
    }

    /// [`State::new`] with the pods' kernel operations (namespaces, mounts) and the container
    /// backends given (`None`: runc and the host's hypervisors): fakes in the in-process
    /// tests, which need no root.
    pub fn with_parts(
        config: Config,
        sys: Arc<dyn sandbox::sys::PodSys>,
        backends: Option<sandbox::container::Backends>,
    ) -> anyhow::Result<State> {
        for dir in [&config.root, &config.state] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let cgroup_driver = cgroup_driver(&config.runtime.cgroup_driver);
        let oci_runtimes = resolve_oci_runtimes(&config);
        let pods = Arc::new(pod_manager(&config, &oci_runtimes, cgroup_driver, sys)?);
        let containers = container_manager(&config, &oci_runtimes, cgroup_driver, backends)?;
        let images = open_store(&config).context("cannot open the image store")?;
        let runtime = Arc::new(
            sandbox::Runtime::new(
                pods.clone(),
                containers.clone(),
                images.clone(),
                sandbox::RuntimeSettings {
                    state: config.state.clone(),
                    monitor_exe: std::env::current_exe()
                        .context("cannot find the crid executable")?,
                },
            )
            .context("cannot set up the runtime")?,
        );
        Ok(State {
            pods,
            containers,
            oci_runtimes,
            images,
            runtime,
            cgroup_driver,
            started_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            streaming: OnceLock::new(),
            config,
        })
    }

    /// Whether pods can be networked: a valid network configuration whose plugins exist and
    /// (CNI 1.1) answer STATUS.
    pub async fn network_status(&self) -> NetworkStatus {
        match self.pods.cni().status().await {
            Ok(()) => NetworkStatus {
                ready: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => NetworkStatus {
                ready: false,
                reason: "NetworkPluginNotReady".into(),
                message: e.to_string(),
            },
        }
    }
}

/// `runtime.oci_runtimes` with `auto` decided and names looked up in PATH once rather than on
/// every call (a name not there yet is kept as given: then each call looks again).
fn resolve_oci_runtimes(config: &Config) -> BTreeMap<String, PathBuf> {
    let resolve = |binary: &Path| find_in_path(binary).unwrap_or_else(|_| binary.to_owned());
    config
        .runtime
        .oci_runtimes
        .iter()
        .map(|(handler, binary)| {
            let binary = if binary == Path::new(crate::config::AUTO_RUNTIME) {
                let (chosen, why) = sandbox::runc::default_runtime(
                    find_in_path(Path::new("crun")).ok(),
                    &sandbox::container::cgroups::hybrid_v2_controllers(),
                );
                tracing::info!(handler = %handler, runtime = %chosen.display(), reason = %why, "OCI runtime chosen");
                resolve(&chosen)
            } else {
                resolve(binary)
            };
            (handler.clone(), binary)
        })
        .collect()
}

/// The pod manager over CNI, as configured.
fn pod_manager(
    config: &Config,
    oci_runtimes: &BTreeMap<String, PathBuf>,
    driver: CgroupDriver,
    sys: Arc<dyn sandbox::sys::PodSys>,
) -> anyhow::Result<sandbox::pod::PodManager> {
    let cni = cni::Cni::new(cni::CniSettings {
        conf_dir: config.cni.conf_dir.clone(),
        bin_dirs: config.cni.bin_dirs.clone(),
        cache_dir: config.root.join("cni").join("results"),
        timeout: std::time::Duration::from_secs(config.cni.plugin_timeout_secs.max(1)),
    });
    let settings = sandbox::pod::PodSettings {
        root: config.root.clone(),
        state: config.state.clone(),
        runc_handlers: oci_runtimes.keys().cloned().collect(),
        unikernel_handlers: config.runtime.unikernel_handlers.clone(),
        cgroup_driver: driver,
        host_resolv_conf: sandbox::pod::files::host_resolv_conf(),
        warm_networks: config.cni.prepared_networks,
        monitor_exe: std::env::current_exe().context("cannot find the crid executable")?,
    };
    sandbox::pod::PodManager::with_sys(settings, Arc::new(cni), sys).context("cannot load pods")
}

/// The container manager, as configured; re-attaches to containers still running.
fn container_manager(
    config: &Config,
    oci_runtimes: &BTreeMap<String, PathBuf>,
    driver: CgroupDriver,
    backends: Option<sandbox::container::Backends>,
) -> anyhow::Result<Arc<sandbox::container::ContainerManager>> {
    let settings = sandbox::container::ContainerSettings {
        root: config.root.clone(),
        state: config.state.clone(),
        oci_runtimes: oci_runtimes.clone(),
        cgroup_driver: driver,
        monitor_exe: std::env::current_exe().context("cannot find the crid executable")?,
        seccomp_profile_root: config.runtime.seccomp_profile_root.clone(),
        vm: install_pci_shim(vm_settings(config)?),
    };
    match backends {
        Some(b) => sandbox::container::ContainerManager::with_backends(settings, b),
        None => sandbox::container::ContainerManager::open(settings),
    }
    .context("cannot load containers")
}

/// Writes crid's PCI firmware (the PCI shim) where `vm` says; when it cannot, PCI guests get SeaBIOS (a
/// slower start, not a failure).
fn install_pci_shim(mut vm: sandbox::vm::launch::VmSettings) -> sandbox::vm::launch::VmSettings {
    if let Some(path) = &vm.pci_shim {
        if let Err(e) = sandbox::vm::pcishim::install(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot install the PCI firmware: PCI guests boot with SeaBIOS");
            vm.pci_shim = None;
        }
    }
    vm
}

/// The `[vm]` section as the VM backend's settings.
pub fn vm_settings(config: &Config) -> anyhow::Result<sandbox::vm::launch::VmSettings> {
    let vm = &config.vm;
    let accelerator = vm
        .accelerator
        .parse()
        .map_err(|e| anyhow::anyhow!("vm.accelerator: {e}"))?;
    Ok(sandbox::vm::launch::VmSettings {
        accelerator,
        default_memory_mib: vm.default_memory_mib,
        binaries: vec![
            ("qemu-system-x86_64".into(), vm.qemu_path.clone()),
            ("firecracker".into(), vm.firecracker_path.clone()),
            ("cloud-hypervisor".into(), vm.cloud_hypervisor_path.clone()),
            ("solo5-hvt".into(), vm.solo5_hvt_path.clone()),
            ("solo5-spt".into(), vm.solo5_spt_path.clone()),
            (sandbox::vm::crid_vmm::BINARY.into(), crid_vmm_path(vm)),
            (
                sandbox::vm::virtiofs::BINARY.into(),
                vm.virtiofsd_path.clone(),
            ),
        ],
        qemu_firmware: (!vm.qemu_firmware.as_os_str().is_empty()).then(|| vm.qemu_firmware.clone()),
        pci_shim: vm
            .pci_shim
            .then(|| config.root.join("vm").join(sandbox::vm::pcishim::FILE_NAME)),
        qemu_microvm: (!vm.qemu_microvm_path.as_os_str().is_empty())
            .then(|| vm.qemu_microvm_path.clone()),
        unikernel_handlers: config.runtime.unikernel_handlers.clone(),
        autodetect_handlers: config.runtime.unikernel_autodetect_handlers.clone(),
        crid_vmm_for: vm
            .crid_vmm_for
            .iter()
            .map(|h| match HypervisorKind::parse(h) {
                Some(k @ (HypervisorKind::Qemu | HypervisorKind::Firecracker)) => Ok(k),
                _ => Err(anyhow::anyhow!(
                    "vm.crid_vmm_for: {h:?} is not \"qemu\" or \"firecracker\""
                )),
            })
            .collect::<anyhow::Result<_>>()?,
        crid_vmm_pool: vm.crid_vmm_pool,
        qemu_pool: vm.qemu_pool,
        ..Default::default()
    })
}

/// `vm.crid_vmm_path`: the default name resolves to the crid-vmm installed next to this
/// executable when there is one (like crid-monitor), else it is searched like the other VMMs.
fn crid_vmm_path(vm: &crate::config::VmConfig) -> PathBuf {
    let name = sandbox::vm::crid_vmm::BINARY;
    if vm.crid_vmm_path.as_os_str() == name {
        if let Some(beside) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(name)))
            .filter(|p| p.is_file())
        {
            return beside;
        }
    }
    vm.crid_vmm_path.clone()
}

/// Opens the image store under `<root>/images` with the configured registries and pinned
/// images (the pause image is always pinned).
pub fn open_store(config: &Config) -> Result<ImageStore, ImageError> {
    ImageStore::open(store_config(config))
}

/// Opens the image store for `crid images import`, next to a daemon that may be running.
pub fn open_store_offline(config: &Config) -> Result<ImageStore, ImageError> {
    ImageStore::open_offline(store_config(config))
}

fn store_config(config: &Config) -> ImageStoreConfig {
    let mut pinned = vec![config.images.pause_image.clone()];
    pinned.extend(config.images.pinned_images.iter().cloned());
    ImageStoreConfig {
        dir: config.root.join("images"),
        registry_config_path: config.registry.config_path.clone(),
        pinned_images: pinned,
    }
}

/// Where archives are imported from at start-up: `images.import_dir`, or `<root>/import`.
pub fn import_dir(config: &Config) -> PathBuf {
    config
        .images
        .import_dir
        .clone()
        .unwrap_or_else(|| config.root.join("import"))
}

/// `path` itself when it has a directory part (absolute or relative), else the first executable
/// of that name in `$PATH`, as `Command` finds it.
pub fn find_in_path(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if path.components().count() > 1 {
        return match executable(path) {
            true => Ok(path.to_owned()),
            false => Err(format!("{} is not an executable file", path.display())),
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(path))
        .find(|p| executable(p))
        .ok_or_else(|| format!("{} is not in PATH", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pci_shim_goes_under_the_root_unless_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            root: dir.path().join("root"),
            ..Config::default()
        };
        let vm = install_pci_shim(vm_settings(&config).unwrap());
        let shim = dir.path().join("root/vm/pci-shim.rom");
        assert_eq!(vm.pci_shim.as_deref(), Some(shim.as_path()));
        assert_eq!(std::fs::read(&shim).unwrap(), sandbox::vm::pcishim::IMAGE);
        config.vm.pci_shim = false;
        assert_eq!(vm_settings(&config).unwrap().pci_shim, None);
        // A root where nothing can be written: no shim, SeaBIOS (a warning, not a failure).
        config.vm.pci_shim = true;
        config.root = shim.join("not-a-directory");
        assert_eq!(
            install_pci_shim(vm_settings(&config).unwrap()).pci_shim,
            None
        );
    }
}
