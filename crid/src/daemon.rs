//! Start-up and serving: builds the shared [`State`], binds the CRI socket, serves both CRI
//! services until SIGTERM/SIGINT and then shuts down gracefully.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use proto::cri::image_service_server::ImageServiceServer;
use proto::cri::runtime_service_server::RuntimeServiceServer;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::cri::CriService;

/// The cgroup driver in use, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

impl std::fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        })
    }
}

impl CgroupDriver {
    /// `auto` means systemd when systemd is the init system (it owns the cgroup tree then),
    /// cgroupfs otherwise.
    pub fn resolve(configured: &str) -> CgroupDriver {
        match configured {
            "systemd" => CgroupDriver::Systemd,
            "cgroupfs" => CgroupDriver::Cgroupfs,
            _ if Path::new("/run/systemd/system").is_dir() => CgroupDriver::Systemd,
            _ => CgroupDriver::Cgroupfs,
        }
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
    pod_cidr: Mutex<String>,
    /// Pod sandboxes (and, through them, CNI).
    pub pods: Arc<sandbox::pod::PodManager>,
    /// Containers (runc and monitors).
    pub containers: Arc<sandbox::container::ContainerManager>,
    /// Images: pull, content store, layers, leases.
    pub images: imagestore::ImageStore,
    /// The exec/attach/port-forward server, started by [`run`].
    pub streaming: std::sync::OnceLock<Arc<crate::streaming::Server>>,
}

impl State {
    pub fn new(config: Config) -> anyhow::Result<State> {
        for dir in [&config.root, &config.state] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let cgroup_driver = CgroupDriver::resolve(&config.runtime.cgroup_driver);
        let pods = Arc::new(pod_manager(&config, cgroup_driver)?);
        let containers = container_manager(&config, cgroup_driver)?;
        let images =
            crate::cri::image::open_store(&config).context("cannot open the image store")?;
        Ok(State {
            pods,
            containers,
            images,
            cgroup_driver,
            started_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            pod_cidr: Mutex::new(String::new()),
            streaming: std::sync::OnceLock::new(),
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

    pub fn set_pod_cidr(&self, cidr: String) {
        if let Ok(mut c) = self.pod_cidr.lock() {
            *c = cidr;
        }
    }
}

/// The pod manager over CNI, as configured.
fn pod_manager(config: &Config, driver: CgroupDriver) -> anyhow::Result<sandbox::pod::PodManager> {
    let cni = cni::Cni::new(cni::CniSettings {
        conf_dir: config.cni.conf_dir.clone(),
        bin_dirs: config.cni.bin_dirs.clone(),
        cache_dir: config.root.join("cni").join("results"),
        timeout: std::time::Duration::from_secs(config.cni.plugin_timeout_secs.max(1)),
    });
    let settings = sandbox::pod::PodSettings {
        root: config.root.clone(),
        state: config.state.clone(),
        runc_handlers: config.runtime.runc_handlers.clone(),
        unikernel_handlers: config.runtime.unikernel_handlers.clone(),
        cgroup_driver: match driver {
            CgroupDriver::Systemd => sandbox::pod::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => sandbox::pod::CgroupDriver::Cgroupfs,
        },
        host_resolv_conf: sandbox::pod::files::host_resolv_conf(),
        warm_networks: config.cni.prepared_networks,
    };
    sandbox::pod::PodManager::open(settings, Arc::new(cni)).context("cannot load pods")
}

/// The container manager, as configured; re-attaches to containers still running.
fn container_manager(
    config: &Config,
    driver: CgroupDriver,
) -> anyhow::Result<Arc<sandbox::container::ContainerManager>> {
    let settings = sandbox::container::ContainerSettings {
        root: config.root.clone(),
        state: config.state.clone(),
        // Looked up in $PATH once rather than on every runc call (kept as given when it is
        // not there yet: then each call looks again).
        runc: crate::cri::runtime::find_in_path(&config.runtime.runc_path)
            .unwrap_or_else(|_| config.runtime.runc_path.clone()),
        cgroup_driver: match driver {
            CgroupDriver::Systemd => sandbox::pod::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => sandbox::pod::CgroupDriver::Cgroupfs,
        },
        monitor_exe: std::env::current_exe().context("cannot find the crid executable")?,
        seccomp_profile_root: config.runtime.seccomp_profile_root.clone(),
    };
    sandbox::container::vm::configure(vm_settings(&config.vm)?);
    sandbox::container::ContainerManager::open(settings).context("cannot load containers")
}

/// The `[vm]` section as the VM backend's settings.
pub(crate) fn vm_settings(
    vm: &crate::config::VmConfig,
) -> anyhow::Result<sandbox::vm::launch::VmSettings> {
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
        ],
        ..Default::default()
    })
}

/// Binds the CRI socket and serves until a termination signal arrives.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let socket = config.grpc.socket.clone();
    let mode = config.socket_mode()?;
    let max = config.grpc.max_message_size;
    let state = Arc::new(State::new(config)?);
    crate::sys::trim_heap();
    tracing::info!(
        root = %state.config.root.display(),
        state = %state.config.state.display(),
        cgroup_driver = %state.cgroup_driver,
        "crid starting"
    );

    state.pods.collect_garbage().await;
    state.pods.prepare_networks();
    crate::cri::image::import_at_startup(
        state.images.clone(),
        crate::cri::image::import_dir(&state.config),
    )
    .await;

    let streaming = crate::streaming::start(&state)
        .await
        .context("cannot start the streaming server")?;
    let _ = state.streaming.set(streaming);

    let listener = match crate::notify::activated_listener() {
        Some(l) => {
            l.set_nonblocking(true)?;
            tracing::info!("using the socket passed by systemd");
            UnixListener::from_std(l)?
        }
        None => bind(&socket, mode)?,
    };
    let service = CriService::new(state.clone());
    let runtime = RuntimeServiceServer::new(service.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let images = ImageServiceServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    crate::metrics::serve(&state.config.metrics.address, state.clone()).await?;

    tracing::info!(socket = %socket.display(), "serving CRI v1");
    crate::notify::notify("READY=1");
    crate::notify::spawn_watchdog();
    let result = tonic::transport::Server::builder()
        .trace_fn(|req| {
            tracing::info_span!(
                "rpc",
                method = %req.uri().path().rsplit('/').next().unwrap_or_default(),
                pod_sandbox_id = tracing::field::Empty,
                container_id = tracing::field::Empty,
                image = tracing::field::Empty,
            )
        })
        .layer(crate::metrics::RpcLayer)
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    crate::notify::notify("STOPPING=1");
    let _ = std::fs::remove_file(&socket);
    state.pods.release_prepared_networks().await;
    result.context("gRPC server failed")?;
    tracing::info!("crid stopped");
    Ok(())
}

fn bind(socket: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // A socket file left by a previous run would make bind fail with EADDRINUSE.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("cannot bind {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", socket.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop crid with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
