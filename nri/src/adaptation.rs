//! The runtime side of NRI: the socket plugins connect to, their registration, configuration
//! and synchronization, and the fan-out of lifecycle events to them in index order.
//!
//! A plugin is untrusted and may hang: every call carries the request timeout, and a plugin
//! that times out, breaks the protocol or disconnects is dropped, the event going on without
//! it (as containerd does). Only an error the plugin answers on purpose to `RunPodSandbox` or
//! `CreateContainer` fails the CRI call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::NriError;
use crate::api::{self, Event};
use crate::transport::{self, BoxFuture, CallError, Channel, Handler, Status};

/// The NRI version crid implements, told to plugins in `Configure`.
pub const NRI_VERSION: &str = "v0.12.0";

#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub registration_timeout: Duration,
    pub request_timeout: Duration,
    pub runtime_name: String,
    pub runtime_version: String,
}

/// The current pods and containers for a synchronizing plugin, and a guard the runtime
/// holds until the plugin is synchronized and receives events (so no pod or container
/// created meanwhile is missed: creation takes the other side of that lock).
pub struct SyncState {
    pub pods: Vec<api::PodSandbox>,
    pub containers: Vec<api::Container>,
    pub guard: Box<dyn Send>,
}

/// What the adaptation needs of the runtime.
pub trait RuntimeState: Send + Sync + 'static {
    /// A snapshot for a plugin's `Synchronize`, with the guard described at [`SyncState`].
    fn synchronize(&self) -> BoxFuture<SyncState>;
    /// Applies container updates and evictions (stops) plugins asked for; returns the
    /// updates that failed.
    fn update_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
        evict: Vec<api::ContainerEviction>,
    ) -> BoxFuture<Vec<api::ContainerUpdate>>;
}

/// One connected, registered plugin.
struct Plugin {
    name: String,
    idx: String,
    events: i32,
    channel: Arc<Channel>,
}

impl Plugin {
    fn qualified(&self) -> String {
        format!("{}-{}", self.idx, self.name)
    }
}

/// The NRI server of one runtime.
pub struct Adaptation {
    settings: Settings,
    plugins: RwLock<Vec<Arc<Plugin>>>,
    state: Arc<dyn RuntimeState>,
}

impl Adaptation {
    /// Listens on the socket (a stale socket file is replaced; one another process still
    /// serves is an error) and accepts plugins in the background.
    pub fn start(
        settings: Settings,
        state: Arc<dyn RuntimeState>,
    ) -> Result<Arc<Adaptation>, NriError> {
        let listener = bind(&settings.socket)?;
        let adaptation = Arc::new(Adaptation {
            settings,
            plugins: RwLock::new(Vec::new()),
            state: state.clone(),
        });
        let this = adaptation.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let this = this.clone();
                        let state = state.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.connect(stream, state).await {
                                tracing::warn!(error = %e, "NRI plugin not accepted");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "NRI socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(socket = %adaptation.settings.socket.display(), "NRI socket listening");
        Ok(adaptation)
    }

    pub fn socket(&self) -> &Path {
        &self.settings.socket
    }

    /// The registered plugins' names (`idx-name`), in call order.
    pub fn plugin_names(&self) -> Vec<String> {
        self.lock_plugins()
            .iter()
            .filter(|p| !p.channel.is_closed())
            .map(|p| p.qualified())
            .collect()
    }

    fn lock_plugins(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Plugin>>> {
        self.plugins.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Registration, configuration and synchronization of a new connection.
    async fn connect(
        self: &Arc<Self>,
        stream: UnixStream,
        state: Arc<dyn RuntimeState>,
    ) -> Result<(), NriError> {
        let (reg_tx, reg_rx) = oneshot::channel();
        let service = Arc::new(RuntimeService {
            registration: std::sync::Mutex::new(Some(reg_tx)),
            state: state.clone(),
        });
        let channel = Channel::start(
            stream,
            transport::PLUGIN_CONN,
            transport::RUNTIME_CONN,
            service,
        );
        let registered = tokio::time::timeout(self.settings.registration_timeout, reg_rx).await;
        let (name, idx) = match registered {
            Ok(Ok(r)) => r,
            _ => {
                channel.close();
                return Err(NriError::Registration(
                    "no valid registration in time".into(),
                ));
            }
        };
        let qualified = format!("{idx}-{name}");
        let fail = |e: CallError| {
            channel.close();
            NriError::Plugin {
                plugin: qualified.clone(),
                reason: e.to_string(),
            }
        };
        let configure = api::ConfigureRequest {
            config: String::new(),
            runtime_name: self.settings.runtime_name.clone(),
            runtime_version: self.settings.runtime_version.clone(),
            registration_timeout: millis(self.settings.registration_timeout),
            request_timeout: millis(self.settings.request_timeout),
            nri_version: NRI_VERSION.into(),
        };
        let reply: api::ConfigureResponse = channel
            .call(
                api::PLUGIN_SERVICE,
                "Configure",
                &configure,
                self.settings.request_timeout,
            )
            .await
            .map_err(fail)?;
        let events = match reply.events {
            0 => api::VALID_EVENTS,
            e if e & !api::VALID_EVENTS != 0 => {
                channel.close();
                return Err(NriError::Registration(format!("invalid event mask {e:#x}")));
            }
            e => e,
        };
        let plugin = Arc::new(Plugin {
            name,
            idx,
            events,
            channel: channel.clone(),
        });
        // Synchronize is the end of the handshake, bounded like registration: a plugin may
        // have much state to reconcile.
        let snapshot = state.synchronize().await;
        // One call for the whole handshake's deadline, in as many messages as ttrpc's size
        // limit needs (`more` on all but the last; the plugin answers the last).
        let deadline = tokio::time::Instant::now() + self.settings.registration_timeout;
        let mut reply = api::SynchronizeResponse::default();
        for sync in split_sync(snapshot.pods, snapshot.containers) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            reply = channel
                .call(api::PLUGIN_SERVICE, "Synchronize", &sync, left)
                .await
                .map_err(fail)?;
        }
        {
            let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
            plugins.push(plugin.clone());
            plugins.sort_by(|a, b| (&a.idx, &a.name).cmp(&(&b.idx, &b.name)));
        }
        drop(snapshot.guard);
        tracing::info!(plugin = %plugin.qualified(), events = format_args!("{events:#x}"), "NRI plugin synchronized");
        self.apply(reply.update, Vec::new()).await;
        let this = self.clone();
        tokio::spawn(async move {
            plugin.channel.closed().await;
            this.remove(&plugin);
            tracing::info!(plugin = %plugin.qualified(), "NRI plugin disconnected");
        });
        Ok(())
    }

    fn remove(&self, plugin: &Arc<Plugin>) {
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        plugins.retain(|p| !Arc::ptr_eq(p, plugin));
    }

    /// The plugins subscribed to `event`, in order.
    fn subscribed(&self, event: Event) -> Vec<Arc<Plugin>> {
        self.lock_plugins()
            .iter()
            .filter(|p| p.events & event.mask() != 0 && !p.channel.is_closed())
            .cloned()
            .collect()
    }

    /// Calls `method` on one plugin; a fatal error drops the plugin and counts as no answer
    /// (`Ok(None)`), an error status is the plugin's answer. A plugin that does not know the
    /// dedicated call gets the deprecated `StateChange` instead.
    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        plugin: &Plugin,
        event: Event,
        method: &str,
        req: &Req,
        fallback: Option<api::StateChangeEvent>,
    ) -> Result<Option<Resp>, NriError> {
        let timeout = self.settings.request_timeout;
        let mut result = plugin
            .channel
            .call(api::PLUGIN_SERVICE, method, req, timeout)
            .await;
        if let (Err(CallError::Status { code, .. }), Some(ev)) = (&result, fallback) {
            if *code == transport::code::UNIMPLEMENTED {
                result = plugin
                    .channel
                    .call::<_, api::Empty>(api::PLUGIN_SERVICE, "StateChange", &ev, timeout)
                    .await
                    .map(|_| Resp::default());
            }
        }
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_fatal() => {
                tracing::error!(plugin = %plugin.qualified(), ?event, error = %e, "closing NRI plugin");
                plugin.channel.close();
                Ok(None)
            }
            Err(e) => Err(NriError::Plugin {
                plugin: plugin.qualified(),
                reason: format!("{event:?}: {e}"),
            }),
        }
    }

    async fn pod_event(
        &self,
        event: Event,
        method: &str,
        pod: &api::PodSandbox,
    ) -> Result<(), NriError> {
        let req = api::PodRequest {
            pod: Some(pod.clone()),
        };
        let fallback = api::StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: None,
        };
        for p in self.subscribed(event) {
            self.call::<_, api::Empty>(&p, event, method, &req, Some(fallback.clone()))
                .await?;
        }
        Ok(())
    }

    /// `RunPodSandbox`: a plugin's error fails the pod.
    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), NriError> {
        self.pod_event(Event::RunPodSandbox, "RunPodSandbox", pod)
            .await
    }

    /// `StopPodSandbox`: errors are logged.
    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) {
        if let Err(e) = self
            .pod_event(Event::StopPodSandbox, "StopPodSandbox", pod)
            .await
        {
            tracing::warn!(pod_sandbox_id = %pod.id, error = %e, "NRI StopPodSandbox");
        }
    }

    /// `RemovePodSandbox`: errors are logged.
    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) {
        if let Err(e) = self
            .pod_event(Event::RemovePodSandbox, "RemovePodSandbox", pod)
            .await
        {
            tracing::warn!(pod_sandbox_id = %pod.id, error = %e, "NRI RemovePodSandbox");
        }
    }

    /// `UpdatePodSandbox` (CRI `UpdatePodSandboxResources`): a plugin's error fails it.
    pub async fn update_pod_sandbox(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<api::LinuxResources>,
        resources: Option<api::LinuxResources>,
    ) -> Result<(), NriError> {
        let req = api::UpdatePodSandboxRequest {
            pod: Some(pod.clone()),
            overhead_linux_resources: overhead,
            linux_resources: resources,
        };
        for p in self.subscribed(Event::UpdatePodSandbox) {
            self.call::<_, api::Empty>(&p, Event::UpdatePodSandbox, "UpdatePodSandbox", &req, None)
                .await?;
        }
        Ok(())
    }

    /// `PostUpdatePodSandbox`: errors are logged.
    pub async fn post_update_pod_sandbox(&self, pod: &api::PodSandbox) {
        if let Err(e) = self
            .pod_event(Event::PostUpdatePodSandbox, "PostUpdatePodSandbox", pod)
            .await
        {
            tracing::warn!(pod_sandbox_id = %pod.id, error = %e, "NRI PostUpdatePodSandbox");
        }
    }

    /// `CreateContainer`: each plugin in turn sees the container with the adjustments of
    /// those before it; a plugin's error fails the creation. Returns the merged adjustment;
    /// the updates and evictions of other containers the plugins ask for are applied.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<api::ContainerAdjustment, NriError> {
        let mut merged = api::ContainerAdjustment::default();
        let (mut updates, mut evict) = (Vec::new(), Vec::new());
        let mut current = container.clone();
        for p in self.subscribed(Event::CreateContainer) {
            let req = api::ContainerRequest {
                pod: Some(pod.clone()),
                container: Some(current.clone()),
            };
            let reply: Option<api::CreateContainerResponse> = self
                .call(&p, Event::CreateContainer, "CreateContainer", &req, None)
                .await?;
            let Some(reply) = reply else { continue };
            if let Some(adjust) = reply.adjust {
                crate::adjust::apply(&mut current, &adjust);
                crate::adjust::merge(&mut merged, adjust);
            }
            updates.extend(reply.update);
            evict.extend(reply.evict);
        }
        self.apply(updates, evict).await;
        Ok(merged)
    }

    /// Applies what plugins asked for other containers, logging failures.
    async fn apply(&self, updates: Vec<api::ContainerUpdate>, evict: Vec<api::ContainerEviction>) {
        if updates.is_empty() && evict.is_empty() {
            return;
        }
        for u in self.state.update_containers(updates, evict).await {
            tracing::warn!(container_id = %u.container_id, "NRI plugin's container update failed");
        }
    }

    async fn container_event(
        &self,
        event: Event,
        method: &str,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) {
        let req = api::ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        let fallback = api::StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        let (mut updates, mut evict) = (Vec::new(), Vec::new());
        for p in self.subscribed(event) {
            match self
                .call::<_, api::UpdatesResponse>(&p, event, method, &req, Some(fallback.clone()))
                .await
            {
                Ok(Some(r)) => {
                    updates.extend(r.update);
                    evict.extend(r.evict);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(container_id = %container.id, error = %e, "NRI {method}"),
            }
        }
        self.apply(updates, evict).await;
    }

    pub async fn post_create_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.container_event(
            Event::PostCreateContainer,
            "PostCreateContainer",
            pod,
            container,
        )
        .await;
    }

    pub async fn start_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.container_event(Event::StartContainer, "StartContainer", pod, container)
            .await;
    }

    pub async fn post_start_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.container_event(
            Event::PostStartContainer,
            "PostStartContainer",
            pod,
            container,
        )
        .await;
    }

    pub async fn stop_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.container_event(Event::StopContainer, "StopContainer", pod, container)
            .await
    }

    pub async fn remove_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.container_event(Event::RemoveContainer, "RemoveContainer", pod, container)
            .await;
    }

    /// `UpdateContainer` (CRI `UpdateContainerResources`): the plugins may change the new
    /// resources of this container (the updates naming it are returned, in order) and ask
    /// for updates and evictions of others (applied); a plugin's error fails the update.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
        resources: &api::LinuxResources,
    ) -> Result<Vec<api::ContainerUpdate>, NriError> {
        let (mut updates, mut evict) = (Vec::new(), Vec::new());
        for p in self.subscribed(Event::UpdateContainer) {
            let req = api::UpdateContainerRequest {
                pod: Some(pod.clone()),
                container: Some(container.clone()),
                linux_resources: Some(resources.clone()),
            };
            let reply: Option<api::UpdatesResponse> = self
                .call(&p, Event::UpdateContainer, "UpdateContainer", &req, None)
                .await?;
            if let Some(r) = reply {
                updates.extend(r.update);
                evict.extend(r.evict);
            }
        }
        let (own, others): (Vec<_>, Vec<_>) = updates
            .into_iter()
            .partition(|u| u.container_id == container.id);
        self.apply(others, evict).await;
        Ok(own)
    }

    pub async fn post_update_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.container_event(
            Event::PostUpdateContainer,
            "PostUpdateContainer",
            pod,
            container,
        )
        .await;
    }
}

/// What one `Synchronize` message may carry: well under ttrpc's 4 MiB.
const SYNC_MESSAGE_BUDGET: usize = transport::MAX_MESSAGE / 2;

/// The synchronization state in messages of at most [`SYNC_MESSAGE_BUDGET`] bytes (a single
/// object larger than that still goes alone), pods first; `more` on all but the last.
fn split_sync(
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
) -> Vec<api::SynchronizeRequest> {
    let mut out = vec![api::SynchronizeRequest::default()];
    let mut size = 0;
    let mut next = |out: &mut Vec<api::SynchronizeRequest>, len: usize| {
        if size + len > SYNC_MESSAGE_BUDGET && size > 0 {
            out.push(api::SynchronizeRequest::default());
            size = 0;
        }
        size += len;
    };
    for p in pods {
        next(&mut out, p.encoded_len() + 8);
        if let Some(last) = out.last_mut() {
            last.pods.push(p);
        }
    }
    for c in containers {
        next(&mut out, c.encoded_len() + 8);
        if let Some(last) = out.last_mut() {
            last.containers.push(c);
        }
    }
    let n = out.len();
    for (i, m) in out.iter_mut().enumerate() {
        m.more = i + 1 < n;
    }
    out
}

/// The runtime's service on a plugin's connection: registration, then unsolicited updates.
struct RuntimeService {
    registration: std::sync::Mutex<Option<oneshot::Sender<(String, String)>>>,
    state: Arc<dyn RuntimeState>,
}

impl Handler for RuntimeService {
    fn handle(
        &self,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, Status>> {
        if service != api::RUNTIME_SERVICE {
            return Box::pin(async move {
                Err(Status::new(
                    transport::code::UNIMPLEMENTED,
                    format!("service {service}"),
                ))
            });
        }
        match method.as_str() {
            "RegisterPlugin" => {
                let result =
                    transport::decode::<api::RegisterPluginRequest>(&payload).and_then(|req| {
                        check_identity(&req)?;
                        let tx = self
                            .registration
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take()
                            .ok_or_else(|| {
                                Status::new(transport::code::INVALID_ARGUMENT, "already registered")
                            })?;
                        let _ = tx.send((req.plugin_name, req.plugin_idx));
                        Ok(api::Empty {}.encode_to_vec())
                    });
                Box::pin(async move { result })
            }
            "UpdateContainers" => {
                let state = self.state.clone();
                let registered = self
                    .registration
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none();
                Box::pin(async move {
                    if !registered {
                        return Err(Status::new(
                            transport::code::INVALID_ARGUMENT,
                            "not registered",
                        ));
                    }
                    let req = transport::decode::<api::UpdateContainersRequest>(&payload)?;
                    let failed = state.update_containers(req.update, req.evict).await;
                    Ok(api::UpdateContainersResponse { failed }.encode_to_vec())
                })
            }
            _ => Box::pin(async move {
                Err(Status::new(
                    transport::code::UNIMPLEMENTED,
                    format!("method {method}"),
                ))
            }),
        }
    }
}

/// Plugin names are non-empty and free of path separators; indices are two digits.
fn check_identity(req: &api::RegisterPluginRequest) -> Result<(), Status> {
    let bad = |what: String| Err(Status::new(transport::code::INVALID_ARGUMENT, what));
    if req.plugin_name.is_empty() || req.plugin_name.len() > 128 || req.plugin_name.contains('/') {
        return bad(format!("invalid plugin name {:?}", req.plugin_name));
    }
    if req.plugin_idx.len() != 2 || !req.plugin_idx.bytes().all(|b| b.is_ascii_digit()) {
        return bad(format!("invalid plugin index {:?}", req.plugin_idx));
    }
    Ok(())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Binds the socket, creating its directory (0700 when new) and replacing a stale socket
/// file; the socket is 0600 (plugins run as root, like the runtime).
fn bind(path: &Path) -> Result<UnixListener, NriError> {
    let io = |e: std::io::Error| NriError::Socket {
        path: path.to_owned(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket",
            )));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_state_is_synchronized_in_several_messages() {
        let containers: Vec<api::Container> = (0..3000)
            .map(|i| api::Container {
                id: format!("{i:064}"),
                env: vec!["X".repeat(1000)],
                ..Default::default()
            })
            .collect();
        let pods = vec![api::PodSandbox::default()];
        let parts = split_sync(pods, containers);
        assert!(parts.len() >= 2);
        assert!(
            parts
                .iter()
                .all(|p| p.encoded_len() < transport::MAX_MESSAGE)
        );
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more));
        assert!(!parts.last().unwrap().more);
        assert_eq!(
            parts.iter().map(|p| p.containers.len()).sum::<usize>(),
            3000
        );
        assert_eq!(parts[0].pods.len(), 1);
    }

    #[test]
    fn a_small_state_is_one_message() {
        let parts = split_sync(Vec::new(), Vec::new());
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].more);
    }
}
