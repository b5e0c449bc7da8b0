//! Start-up and serving: builds the shared [`State`], binds the CRI socket, serves both CRI
//! services until SIGTERM/SIGINT and then shuts down gracefully.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::cri::image_service_server::ImageServiceServer;
use proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::cri::CriService;
use crate::notify::{NotifyState, Systemd};
use crate::state::State;
use crate::streaming::{Server, ServerConfig};

/// Binds the CRI socket (or takes the one systemd passed) and serves until a termination
/// signal arrives.
pub async fn run(config: Config, mut systemd: Systemd) -> anyhow::Result<()> {
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

    // Before anything can remove an image: the leases file may be behind the records.
    if let Err(e) = state.runtime.rebuild_image_leases() {
        tracing::error!(error = %e, "cannot rebuild the image leases from the containers");
    }
    state.pods.collect_garbage().await;
    state.pods.prepare_networks();
    crate::cri::image::import_at_startup(
        state.images.clone(),
        crate::state::import_dir(&state.config),
    )
    .await;

    // A plugin socket that cannot be set up (another runtime serves it) leaves crid without
    // NRI, not without CRI.
    let _nri = match crate::nri::start(&state.config.nri, &state.runtime) {
        Ok(nri) => nri,
        Err(e) => {
            tracing::error!(error = %e, "NRI is off: cannot serve its socket");
            None
        }
    };

    let streaming = start_streaming(&state)
        .await
        .context("cannot start the streaming server")?;
    let _ = state.streaming.set(streaming);

    let listener = match systemd.take_listener() {
        Some(l) => {
            l.set_nonblocking(true)?;
            tracing::info!("using the socket passed by systemd");
            UnixListener::from_std(l)?
        }
        None => bind(&socket, mode)?,
    };
    let metrics = Arc::new(crate::metrics::Metrics::new(true));
    let service = CriService::new(state.clone(), metrics.clone());
    let runtime = RuntimeServiceServer::new(service.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let images = ImageServiceServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    crate::metrics::serve(
        &state.config.metrics.address,
        metrics.clone(),
        state.clone(),
    )
    .await?;

    tracing::info!(socket = %socket.display(), "serving CRI v1");
    systemd.notify(NotifyState::Ready);
    systemd.spawn_watchdog();
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
        .layer(crate::metrics::RpcLayer(metrics.clone()))
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    systemd.notify(NotifyState::Stopping);
    let _ = std::fs::remove_file(&socket);
    state.pods.release_prepared_networks().await;
    result.context("gRPC server failed")?;
    tracing::info!("crid stopped");
    Ok(())
}

/// Starts the daemon's streaming server as `[streaming]` configures it, over the daemon's pods
/// and containers.
async fn start_streaming(state: &State) -> std::io::Result<Arc<Server>> {
    let c = &state.config;
    let config = ServerConfig {
        address: c.streaming.address.clone(),
        port: c.streaming.port,
        idle_timeout: Duration::from_secs(c.streaming.idle_timeout_secs.max(1)),
        ..ServerConfig::default()
    };
    let backend = crate::streaming::runtime::RuntimeBackend {
        pods: state.pods.clone(),
        containers: state.containers.clone(),
        work_dir: c.state.join("streaming"),
    };
    let server = Server::start(&config, Arc::new(backend)).await?;
    tracing::info!(address = %server.addr(), "streaming server listening");
    Ok(server)
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
