//! crid's configuration: a TOML file whose every key has a built-in default, so crid runs with
//! no file at all. `crid config default` prints [`DEFAULT_TOML`], which a test keeps equal to
//! [`Config::default`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The documented default configuration, printed by `crid config default`.
pub const DEFAULT_TOML: &str = include_str!("default-config.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: images, layers, pod and container records.
    pub root: PathBuf,
    /// Volatile state (tmpfs): sockets, namespace mounts, monitor pid files.
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub images: ImagesConfig,
    pub cni: CniConfig,
    pub runtime: RuntimeConfig,
    pub streaming: StreamingConfig,
    pub vm: VmConfig,
    pub metrics: MetricsConfig,
    pub nri: NriConfig,
}

/// NRI (Node Resource Interface): the socket external plugins connect to. On by default, as
/// in containerd 2; with no plugin connected it costs nothing but the listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NriConfig {
    pub enable: bool,
    pub socket_path: PathBuf,
    /// How long a connecting plugin has to register, and to synchronize.
    pub registration_timeout_ms: u64,
    /// How long a plugin has for one event; a plugin that takes longer is disconnected.
    pub request_timeout_ms: u64,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: true,
            socket_path: PathBuf::from("/var/run/nri/nri.sock"),
            registration_timeout_ms: 5000,
            request_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub socket: PathBuf,
    /// Octal permission bits of the socket, as a string ("0660").
    pub socket_mode: String,
    pub max_message_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd-style `certs.d` directory: `<host>/hosts.toml` per registry.
    pub config_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// kubelet's sandbox (pause) image, always pinned; crid itself runs no pause container.
    pub pause_image: String,
    /// Further images that `RemoveImage` and garbage collection never delete.
    pub pinned_images: Vec<String>,
    /// Tarballs (OCI layout or `docker save`) found here are imported at start-up.
    /// Empty means `<root>/import`.
    pub import_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// Upper bound for one plugin invocation, in seconds.
    pub plugin_timeout_secs: u64,
    /// Pod networks kept prepared ahead of need: the leading plugins of the list that depend
    /// on nothing of the pod (bridge, ptp, macvlan, ipvlan, loopback; host-local IPAM) are
    /// ADDed before a pod asks, and a new pod only runs the rest of the chain. Each one holds
    /// an address while it waits. 0 turns this off.
    pub prepared_networks: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// "auto", "systemd" or "cgroupfs".
    pub cgroup_driver: String,
    /// RuntimeClass handler → the OCI runtime (binary name or path) of its ordinary pods, as
    /// containerd's `runtimes` table; "" is the default handler. "auto": crun where it is
    /// installed and accepts the host's cgroups, else runc.
    pub oci_runtimes: BTreeMap<String, PathBuf>,
    /// Runtime handler names that give a pod that may hold unikernel containers.
    pub unikernel_handlers: Vec<String>,
    /// Handlers of `oci_runtimes` whose pods also run a unikernel image as a VM (automatic
    /// detection). Under any other handler a unikernel image is `FAILED_PRECONDITION`.
    pub unikernel_autodetect_handlers: Vec<String>,
    /// Directory that `Localhost` seccomp profiles must live under (relative names resolve
    /// there). Empty (the default): any absolute path, as kubelet resolves profiles itself.
    pub seccomp_profile_root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    pub address: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Exec/attach/port-forward connections with no traffic for this long are closed.
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// "auto", "kvm" or "tcg".
    pub accelerator: String,
    pub default_memory_mib: u64,
    pub qemu_path: PathBuf,
    pub firecracker_path: PathBuf,
    pub cloud_hypervisor_path: PathBuf,
    pub solo5_hvt_path: PathBuf,
    pub solo5_spt_path: PathBuf,
    /// Firmware for QEMU's `pc` machine; empty keeps QEMU's SeaBIOS.
    pub qemu_firmware: PathBuf,
    /// Boot guests with PCI devices on `pc` with crid's PCI firmware, the PCI shim (installed
    /// in `<root>/vm/`); false gives them SeaBIOS.
    pub pci_shim: bool,
    /// QEMU's reduced microvm build, used for the microvm-machine guests it can run (it
    /// starts faster); empty runs every guest on `qemu_path`.
    pub qemu_microvm_path: PathBuf,
    /// virtiofsd, for `linux` guests that mount their container's root file system.
    pub virtiofsd_path: PathBuf,
    /// crid's own VMM: the default name is looked up next to the crid executable first (where
    /// it is installed, like crid-monitor), then in the binary directories.
    pub crid_vmm_path: PathBuf,
    /// Images annotated for these hypervisors ("qemu", "firecracker") run on crid-vmm when
    /// their guest is compatible.
    pub crid_vmm_for: Vec<String>,
    /// crid-vmm guests kept prepared (a monitor with its VMM's VM built, handed a container at
    /// CreateContainer), shared among the guest sizes started lately (at most 4; see
    /// `sandbox::vm::pool`); 0 prepares none, at most 16.
    pub crid_vmm_pool: usize,
    /// QEMU processes started and paused ahead for PCI guests in a pod network (handed a
    /// fitting guest at CreateContainer, resumed at StartContainer), shared among the guest
    /// sizes started lately as `crid_vmm_pool`'s are; 0 prepares none, at most 16.
    pub qemu_pool: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus endpoint (`/metrics`); empty turns it off.
    pub address: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/crid"),
            state: PathBuf::from("/run/crid"),
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            registry: RegistryConfig::default(),
            images: ImagesConfig::default(),
            cni: CniConfig::default(),
            runtime: RuntimeConfig::default(),
            streaming: StreamingConfig::default(),
            vm: VmConfig::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            socket: PathBuf::from("/run/crid/crid.sock"),
            socket_mode: "0660".into(),
            // kubelet's limit.
            max_message_size: 16 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: PathBuf::from("/etc/crid/certs.d"),
        }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            pause_image: "registry.k8s.io/pause:3.10".into(),
            pinned_images: Vec::new(),
            import_dir: None,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout_secs: 30,
            prepared_networks: 2,
        }
    }
}

/// The `oci_runtimes` value that lets crid choose (see `sandbox::runc::default_runtime`).
pub const AUTO_RUNTIME: &str = "auto";

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cgroup_driver: "auto".into(),
            oci_runtimes: BTreeMap::from([
                (String::new(), PathBuf::from(AUTO_RUNTIME)),
                ("runc".into(), PathBuf::from("runc")),
            ]),
            unikernel_handlers: vec!["urunc".into(), "unikernel".into()],
            unikernel_autodetect_handlers: vec![],
            seccomp_profile_root: PathBuf::new(),
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            // kubelet's streaming connection idle timeout.
            idle_timeout_secs: 4 * 60 * 60,
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            accelerator: "auto".into(),
            default_memory_mib: 256,
            qemu_path: PathBuf::from("qemu-system-x86_64"),
            firecracker_path: PathBuf::from("firecracker"),
            cloud_hypervisor_path: PathBuf::from("cloud-hypervisor"),
            solo5_hvt_path: PathBuf::from("solo5-hvt"),
            solo5_spt_path: PathBuf::from("solo5-spt"),
            qemu_firmware: PathBuf::from(sandbox::vm::launch::DEFAULT_QEMU_FIRMWARE),
            pci_shim: true,
            qemu_microvm_path: PathBuf::from(sandbox::vm::qemu::MICROVM_BINARY),
            virtiofsd_path: PathBuf::from(sandbox::vm::virtiofs::DEFAULT_PATH),
            crid_vmm_path: PathBuf::from(sandbox::vm::crid_vmm::BINARY),
            crid_vmm_for: vec![],
            crid_vmm_pool: 1,
            qemu_pool: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Loads `path`, or the built-in defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_mode()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid {
                key: "log.format",
                reason: format!("{:?} is neither \"text\" nor \"json\"", self.log.format),
            });
        }
        if !matches!(
            self.runtime.cgroup_driver.as_str(),
            "auto" | "systemd" | "cgroupfs"
        ) {
            return Err(ConfigError::Invalid {
                key: "runtime.cgroup_driver",
                reason: format!(
                    "{:?} is not auto, systemd or cgroupfs",
                    self.runtime.cgroup_driver
                ),
            });
        }
        if !matches!(self.vm.accelerator.as_str(), "auto" | "kvm" | "tcg") {
            return Err(ConfigError::Invalid {
                key: "vm.accelerator",
                reason: format!("{:?} is not auto, kvm or tcg", self.vm.accelerator),
            });
        }
        if self.vm.crid_vmm_pool > sandbox::vm::pool::MAX_SIZE {
            return Err(ConfigError::Invalid {
                key: "vm.crid_vmm_pool",
                reason: format!(
                    "{} is more than {}",
                    self.vm.crid_vmm_pool,
                    sandbox::vm::pool::MAX_SIZE
                ),
            });
        }
        if self.vm.qemu_pool > sandbox::vm::pool::MAX_SIZE {
            return Err(ConfigError::Invalid {
                key: "vm.qemu_pool",
                reason: format!(
                    "{} is more than {}",
                    self.vm.qemu_pool,
                    sandbox::vm::pool::MAX_SIZE
                ),
            });
        }
        if !self.metrics.address.is_empty()
            && self
                .metrics
                .address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError::Invalid {
                key: "metrics.address",
                reason: format!("{:?} is not an IP:port address", self.metrics.address),
            });
        }
        Ok(())
    }

    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.grpc.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                key: "grpc.socket_mode",
                reason: format!("{:?} is not an octal mode", self.grpc.socket_mode),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_matches_builtin() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let parsed: Config = toml::from_str("").unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn oci_runtimes_per_handler() {
        let parsed: Config =
            toml::from_str("[runtime.oci_runtimes]\n\"\" = \"runc\"\ncrun = \"/usr/bin/crun\"\n")
                .unwrap();
        assert_eq!(
            parsed.runtime.oci_runtimes,
            BTreeMap::from([
                (String::new(), PathBuf::from("runc")),
                ("crun".into(), PathBuf::from("/usr/bin/crun")),
            ])
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("rooot = \"/x\"").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = Config::default();
        c.grpc.socket_mode = "999".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.vm.accelerator = "hvf".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.vm.crid_vmm_pool = 17;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.vm.qemu_pool = 17;
        assert!(c.validate().is_err());
        assert_eq!(Config::default().socket_mode().unwrap(), 0o660);
    }
}
