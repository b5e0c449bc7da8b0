//! The gRPC layer in-process, over the daemon library: a real tonic server on a unix socket in
//! a temp dir, the generated client, pods whose kernel operations (namespaces, mounts) are a
//! fake and containers run by a fake backend ([`FakeBackend`], behind the same
//! `ContainerBackend` trait as runc and the VMs), so these tests need no root, no runc, no CNI
//! plugin and no /dev/kvm and take milliseconds. They cover the error → status map, the
//! idempotence the CRI promises, the pod → container cascade rules and recovery of pods and
//! containers after a restart. What the backends do with the kernel (rootfs mounts, runc,
//! VMMs) is the end-to-end tests' business.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cni::netns::NsKind;
use conformance::client::Cri;
use conformance::tests::userns::with_userns;
use crid::config::Config;
use crid::cri::CriService;
use crid::state::State;
use proto::cri;
use proto::cri::image_service_server::ImageServiceServer;
use proto::cri::runtime_service_server::RuntimeServiceServer;
use sandbox::SandboxError;
use sandbox::container::{
    Backend, Backends, ContainerBackend, ContainerExit, ContainerRecord, ContainerState,
    ContainerStats, ExitWatch, NewContainer, Resources, StartError, Started,
};
use sandbox::monitor::ExitRecord;
use sandbox::runc::ExecOutput;
use sandbox::sys::PodSys;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Code;

/// Namespaces and mounts as plain files under the temp dir.
struct FakeSys;

impl PodSys for FakeSys {
    fn create_namespaces(
        &self,
        pins: &[(NsKind, PathBuf)],
        _hostname: Option<String>,
    ) -> Result<(), SandboxError> {
        for (_, p) in pins {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        Ok(())
    }
    fn create_user_namespaces(
        &self,
        plan: &sandbox::sys::UsernsPlan,
        pins: &[(NsKind, PathBuf)],
        hostname: Option<String>,
    ) -> Result<(), SandboxError> {
        std::fs::create_dir_all(plan.pin.parent().unwrap()).unwrap();
        std::fs::write(&plan.pin, b"").unwrap();
        self.create_namespaces(pins, hostname)
    }
    fn remove_pin(&self, path: &Path) -> Result<(), SandboxError> {
        let _ = std::fs::remove_file(path);
        Ok(())
    }
    fn is_pinned(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn mount_shm(&self, path: &Path, _size_bytes: u64) -> Result<(), SandboxError> {
        std::fs::create_dir_all(path).unwrap();
        Ok(())
    }
    fn unmount(&self, _path: &Path) -> Result<(), SandboxError> {
        Ok(())
    }
    fn write_sysctls(
        &self,
        _pins: &[(NsKind, PathBuf)],
        _writes: Vec<(String, String)>,
    ) -> Result<(), SandboxError> {
        Ok(())
    }
}

/// Containers as files under `<dir>/fake`: `<id>.running` while one "runs", `<id>.exit` (its
/// exit code) once it ended, so a new daemon over the same directories finds them as a real
/// backend finds its monitors. A container whose command is `fail-start` fails to start; one
/// whose command is `ignore-term` ignores its stop signal; one whose command is `slow-create`
/// takes [`SLOW_CREATE`] to create.
struct FakeBackend {
    dir: PathBuf,
}

/// How long the fake backend takes to create a `slow-create` container.
const SLOW_CREATE: Duration = Duration::from_millis(300);

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

impl FakeBackend {
    fn running(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.running"))
    }
    fn exit(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.exit"))
    }
    fn end(&self, id: &str, code: i32) {
        std::fs::write(self.exit(id), code.to_string()).unwrap();
        let _ = std::fs::remove_file(self.running(id));
    }
    /// Resolves once the container has an exit file.
    fn watch(&self, id: &str) -> ExitWatch {
        let exit = self.exit(id);
        Box::pin(async move {
            while !exit.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

#[tonic::async_trait]
impl ContainerBackend for FakeBackend {
    fn kind(&self) -> Backend {
        Backend::Runc
    }
    fn create(&self, new: NewContainer) -> Result<ContainerRecord, SandboxError> {
        if new.config.command.first().map(String::as_str) == Some("slow-create") {
            std::thread::sleep(SLOW_CREATE);
        }
        Ok(ContainerRecord::created(
            Backend::Runc,
            new.id,
            new.config,
            new.pod,
            new.image,
            new.log_path,
            new.stop_signal,
        ))
    }
    fn startable(&self, _r: &ContainerRecord) -> bool {
        true
    }
    async fn start(&self, r: &mut ContainerRecord) -> Result<Started, StartError> {
        if r.config.command.first().map(String::as_str) == Some("fail-start") {
            return Err(StartError::Failed {
                message: "fake: the command cannot run".into(),
                error: SandboxError::Runtime {
                    op: "start".into(),
                    reason: "fake".into(),
                },
            });
        }
        let _ = std::fs::remove_file(self.exit(&r.id));
        std::fs::write(self.running(&r.id), b"").unwrap();
        Ok(Started {
            pid: std::process::id() as i32,
            started_at: now_ns(),
            exited: Some(self.watch(&r.id)),
        })
    }
    async fn kill(
        &self,
        r: &ContainerRecord,
        signal: &str,
        _all: bool,
    ) -> Result<(), SandboxError> {
        let ignores = r.config.command.first().map(String::as_str) == Some("ignore-term");
        if signal == "SIGKILL" {
            self.end(&r.id, 137);
        } else if !ignores {
            self.end(&r.id, 0);
        }
        Ok(())
    }
    async fn wait_exit(&self, r: &ContainerRecord, timeout: Duration) -> bool {
        let running = self.running(&r.id);
        let gone = async move {
            while running.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(timeout, gone).await.is_ok()
    }
    fn has_exit(&self, r: &ContainerRecord) -> bool {
        self.exit(&r.id).exists()
    }
    fn collect_exit(&self, r: &ContainerRecord) -> ContainerExit {
        let code = std::fs::read_to_string(self.exit(&r.id))
            .ok()
            .and_then(|s| s.parse().ok());
        let exit = code.map(|exit_code| ExitRecord {
            exit_code,
            finished_at_ns: now_ns(),
            oom_killed: false,
        });
        ContainerExit::from_record(exit.as_ref(), |c| c)
    }
    fn reattach(&self, r: &ContainerRecord) -> Option<ExitWatch> {
        (self.running(&r.id).exists() && !self.exit(&r.id).exists()).then(|| self.watch(&r.id))
    }
    async fn update_resources(
        &self,
        r: &mut ContainerRecord,
        _resources: &Resources,
    ) -> Result<(), SandboxError> {
        match r.state {
            ContainerState::Created | ContainerState::Running => Ok(()),
            _ => Err(SandboxError::FailedPrecondition {
                reason: format!("container {} is not running", r.id),
            }),
        }
    }
    async fn stats(&self, _r: &ContainerRecord) -> Result<ContainerStats, SandboxError> {
        Ok(ContainerStats {
            timestamp: now_ns(),
            ..Default::default()
        })
    }
    async fn exec_sync(
        &self,
        _r: &ContainerRecord,
        cmd: Vec<String>,
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, SandboxError> {
        Ok(ExecOutput {
            stdout: cmd.join(" ").into_bytes(),
            ..Default::default()
        })
    }
    fn supports_exec(&self) -> bool {
        true
    }
    fn spec_json(&self, r: &ContainerRecord) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "fake": true, "unikernel": r.image.unikernel }))
    }
    fn attach_socket(&self, _r: &ContainerRecord) -> Option<PathBuf> {
        None
    }
    fn reopen_log(&self, _r: &ContainerRecord) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn remove(&self, r: &ContainerRecord) -> Result<(), SandboxError> {
        let _ = std::fs::remove_file(self.running(&r.id));
        let _ = std::fs::remove_file(self.exit(&r.id));
        Ok(())
    }
    async fn release_unrecorded(&self, _id: &str) {}
}

fn fake_backends(dir: &Path) -> Backends {
    let dir = dir.join("fake");
    std::fs::create_dir_all(&dir).unwrap();
    let fake: Arc<dyn ContainerBackend> = Arc::new(FakeBackend { dir });
    Backends {
        runc: fake.clone(),
        vm: fake,
    }
}

/// The image the fake containers are created from, imported from [`image_archive`].
const IMAGE: &str = "fake.invalid/tiny:1";
/// A unikernel image (urunc's keys as config labels), imported from [`image_archive`].
const UNIKERNEL_IMAGE: &str = "fake.invalid/unikernel:1";

/// A `docker save` archive of [`IMAGE`] (one layer with one file) and [`UNIKERNEL_IMAGE`] (one
/// layer with its kernel).
fn image_archive(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let append = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut archive = tar::Builder::new(Vec::new());
    let mut manifest = vec![];
    let images = [
        (IMAGE, "hello", serde_json::json!({})),
        (
            UNIKERNEL_IMAGE,
            "unikernel/kernel",
            serde_json::json!({
                "com.urunc.unikernel.unikernelType": "unikraft",
                "com.urunc.unikernel.hypervisor": "qemu",
                "com.urunc.unikernel.binary": "/unikernel/kernel",
                "com.urunc.unikernel.cmdline": "from-image",
            }),
        ),
    ];
    for (i, (tag, file, labels)) in images.into_iter().enumerate() {
        let mut layer = tar::Builder::new(Vec::new());
        append(&mut layer, file, b"hello\n");
        let layer = layer.into_inner().unwrap();
        let diff_id = hex::encode(sha2::Sha256::digest(&layer));
        let config = serde_json::json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": { "Cmd": ["true"], "Labels": labels },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        })
        .to_string();
        append(&mut archive, &format!("config{i}.json"), config.as_bytes());
        append(&mut archive, &format!("layer{i}.tar"), &layer);
        manifest.push(serde_json::json!({
            "Config": format!("config{i}.json"),
            "RepoTags": [tag],
            "Layers": [format!("layer{i}.tar")],
        }));
    }
    let manifest = serde_json::Value::from(manifest).to_string();
    append(&mut archive, "manifest.json", manifest.as_bytes());
    let path = dir.join("image.tar");
    std::fs::write(&path, archive.into_inner().unwrap()).unwrap();
    path
}

/// A daemon served in-process until dropped.
struct Daemon {
    dir: PathBuf,
    cri: Cri,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn config(dir: &Path) -> Config {
    let mut c = Config {
        root: dir.join("root"),
        state: dir.join("state"),
        ..Default::default()
    };
    c.grpc.socket = dir.join("crid.sock");
    c.cni.conf_dir = dir.join("net.d");
    c.cni.prepared_networks = 0;
    c
}

async fn serve(dir: &Path) -> Daemon {
    let config = config(dir);
    let socket = config.grpc.socket.clone();
    let _ = std::fs::remove_file(&socket);
    let backends = Some(fake_backends(dir));
    let state = Arc::new(State::with_parts(config, Arc::new(FakeSys), backends).unwrap());
    if state.images.resolve(IMAGE).is_err() {
        state.images.import_tar(&image_archive(dir)).unwrap();
    }
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let service = CriService::new(state, Arc::new(crid::metrics::Metrics::new(false)));
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(service.clone()))
            .add_service(ImageServiceServer::new(service))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
    let cri = Cri::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    Daemon {
        dir: dir.to_owned(),
        cri,
        server,
    }
}

/// A host-network pod with a PID namespace per container (nothing for CNI to do).
fn pod(name: &str, dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "test".into(),
            attempt: 0,
        }),
        log_directory: dir.join("logs").join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(name: &str, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        command: vec!["true".into()],
        ..conformance::tests::container(name, image)
    }
}

impl Daemon {
    async fn run_pod(&self, name: &str) -> String {
        self.cri
            .runtime
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod(name, &self.dir)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    async fn pod_state(&self, id: &str) -> Result<i32, Code> {
        self.cri
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().status.unwrap().state)
            .map_err(|s| s.code())
    }
}

/// The code of a failed call.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn unknown_ids_and_bad_requests_get_their_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let missing = "0".repeat(64);

    let r = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: missing.clone(),
            verbose: false,
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = rt
        .start_container(cri::StartContainerRequest {
            container_id: missing.clone(),
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: missing.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: missing.clone(),
            linux: Some(Default::default()),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    assert_eq!(d.pod_state(&missing).await, Err(Code::NotFound));
    let r = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: missing.clone(),
            config: Some(container("c", "busybox")),
            sandbox_config: None,
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: missing.clone(),
            config: None,
            sandbox_config: None,
        })
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod("handler", &d.dir)),
            runtime_handler: "no-such-handler".into(),
        })
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = rt
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: missing.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::Unimplemented);

    // An image that is not there: ImageStatus answers with none; a container of it is
    // NotFound, in a pod that exists.
    let status = d
        .cri
        .images
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "example.invalid/none:1".into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_none());
    let pod = d.run_pod("noimage").await;
    let r = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container("c", "example.invalid/none:1")),
            sandbox_config: None,
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test]
async fn stop_and_remove_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let missing = "f".repeat(64);
    rt.stop_container(cri::StopContainerRequest {
        container_id: missing.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: missing.clone(),
    })
    .await
    .unwrap();
    let pod = d.run_pod("twice").await;
    for id in [&missing, &pod, &pod] {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    for id in [&missing, &pod, &pod] {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    assert_eq!(d.pod_state(&pod).await, Err(Code::NotFound));
}

#[tokio::test]
async fn a_stopped_pod_takes_no_containers_and_goes_with_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let pod = d.run_pod("cascade").await;
    assert_eq!(
        d.pod_state(&pod).await,
        Ok(cri::PodSandboxState::SandboxReady as i32)
    );
    // The same pod again while it exists: the name is taken.
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config_of(&d, "cascade")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        d.pod_state(&pod).await,
        Ok(cri::PodSandboxState::SandboxNotready as i32)
    );
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container("late", "busybox")),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
}

fn pod_config_of(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    pod(name, &d.dir)
}

#[tokio::test]
async fn pods_survive_a_restart_of_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let ready = d.run_pod("kept").await;
    let stopped = d.run_pod("stopped").await;
    d.cri
        .runtime
        .clone()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: stopped.clone(),
        })
        .await
        .unwrap();
    // A new daemon over the same directories (the fake pins are still there).
    drop(d);
    let d = serve(tmp.path()).await;
    assert_eq!(
        d.pod_state(&ready).await,
        Ok(cri::PodSandboxState::SandboxReady as i32)
    );
    assert_eq!(
        d.pod_state(&stopped).await,
        Ok(cri::PodSandboxState::SandboxNotready as i32)
    );
    // Its name is still reserved, and it can be stopped and removed.
    let err = d
        .cri
        .runtime
        .clone()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config_of(&d, "kept")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let mut rt = d.cri.runtime.clone();
    for id in [&ready, &stopped] {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
}

/// A container of [`IMAGE`] whose command tells the fake backend how to behave.
fn fake_container(name: &str, command: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        command: vec![command.into()],
        ..container(name, IMAGE)
    }
}

impl Daemon {
    async fn create(&self, pod: &str, name: &str, command: &str) -> Result<String, Code> {
        self.cri
            .runtime
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(fake_container(name, command)),
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().container_id)
            .map_err(|s| s.code())
    }

    async fn start(&self, id: &str) -> Result<(), Code> {
        self.cri
            .runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    async fn stop(&self, id: &str, timeout: i64) -> Result<(), Code> {
        self.cri
            .runtime
            .clone()
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    async fn remove(&self, id: &str) -> Result<(), Code> {
        self.cri
            .runtime
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    /// State, exit code and reason of a container.
    async fn container(&self, id: &str) -> Result<(cri::ContainerState, i32, String), Code> {
        let s = self
            .cri
            .runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|s| s.code())?
            .into_inner()
            .status
            .unwrap();
        Ok((s.state(), s.exit_code, s.reason))
    }

    async fn containers(&self) -> Vec<cri::Container> {
        self.cri
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
    }

    async fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.containers().await.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }
}

#[tokio::test]
async fn container_calls_get_their_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let pod = d.run_pod("codes").await;
    let id = d.create(&pod, "c", "sleep").await.unwrap();
    assert_eq!(d.create(&pod, "c", "sleep").await, Err(Code::AlreadyExists));
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into()],
            timeout: 1,
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition, "exec in a created one");
    d.start(&id).await.unwrap();
    assert_eq!(d.start(&id).await, Err(Code::FailedPrecondition));
    assert_eq!(
        d.container(&id).await.unwrap().0,
        cri::ContainerState::ContainerRunning
    );
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "hi".into()],
            timeout: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.stdout, b"echo hi");
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![],
            timeout: 1,
        })
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::Ok);
    d.stop(&id, 1).await.unwrap();
    let r = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(Default::default()),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition, "update of an exited one");
    let r = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await;
    assert_eq!(
        code(r),
        Code::FailedPrecondition,
        "reopen the log of an exited one"
    );
    assert_eq!(d.start(&id).await, Err(Code::FailedPrecondition));

    // A start the backend fails is INTERNAL and leaves the container exited with StartError.
    let bad = d.create(&pod, "bad", "fail-start").await.unwrap();
    assert_eq!(d.start(&bad).await, Err(Code::Internal));
    let (state, exit_code, reason) = d.container(&bad).await.unwrap();
    assert_eq!(state, cri::ContainerState::ContainerExited);
    assert_eq!((exit_code, reason.as_str()), (128, "StartError"));
}

/// A CreateContainer whose client gave up (its deadline passed) while the backend created the
/// container is finished all the same: the container is listed, so that kubelet (which then
/// retries under the next attempt) and the pod's removal find it, where a record on disk and
/// the name reserved were left that nothing knew, a retry of the same name refused for ever.
#[tokio::test]
async fn a_create_its_client_gave_up_on_leaves_a_listed_container() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let pod = d.run_pod("p").await;
    let mut request = tonic::Request::new(cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(fake_container("slow", "slow-create")),
        sandbox_config: None,
    });
    request.set_timeout(SLOW_CREATE / 6);
    let given_up = d.cri.runtime.clone().create_container(request).await;
    assert!(given_up.is_err(), "{given_up:?}");
    let deadline = std::time::Instant::now() + 10 * SLOW_CREATE;
    let mut listed = d.containers().await;
    while listed.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        listed = d.containers().await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].pod_sandbox_id, pod);
    assert_eq!(
        listed[0].state,
        cri::ContainerState::ContainerCreated as i32
    );
    assert_eq!(
        d.create(&pod, "slow", "true").await,
        Err(Code::AlreadyExists),
        "the name is the listed container's"
    );
    let mut rt = d.cri.runtime.clone();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert!(d.containers().await.is_empty());
}

#[tokio::test]
async fn container_stop_and_remove_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let pod = d.run_pod("idem").await;
    let id = d.create(&pod, "c", "sleep").await.unwrap();
    // Stopping a created container is a no-op.
    d.stop(&id, 0).await.unwrap();
    assert_eq!(
        d.container(&id).await.unwrap().0,
        cri::ContainerState::ContainerCreated
    );
    d.start(&id).await.unwrap();
    for _ in 0..2 {
        d.stop(&id, 5).await.unwrap();
        let (state, exit_code, reason) = d.container(&id).await.unwrap();
        assert_eq!(state, cri::ContainerState::ContainerExited);
        assert_eq!((exit_code, reason.as_str()), (0, "Completed"));
    }
    // One that ignores its stop signal is killed after the timeout.
    let stubborn = d.create(&pod, "stubborn", "ignore-term").await.unwrap();
    d.start(&stubborn).await.unwrap();
    d.stop(&stubborn, 1).await.unwrap();
    let (_, exit_code, reason) = d.container(&stubborn).await.unwrap();
    assert_eq!((exit_code, reason.as_str()), (137, "Error"));
    for _ in 0..2 {
        d.remove(&id).await.unwrap();
        d.remove(&stubborn).await.unwrap();
    }
    assert_eq!(d.container(&id).await, Err(Code::NotFound));
    assert!(d.container_ids().await.is_empty());
    // The name is free again.
    d.create(&pod, "c", "sleep").await.unwrap();
}

#[tokio::test]
async fn stopping_and_removing_a_pod_takes_its_containers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let pod = d.run_pod("cascade").await;
    let other = d.run_pod("other").await;
    let running = d.create(&pod, "running", "sleep").await.unwrap();
    d.start(&running).await.unwrap();
    let created = d.create(&pod, "created", "sleep").await.unwrap();
    let elsewhere = d.create(&other, "elsewhere", "sleep").await.unwrap();
    d.start(&elsewhere).await.unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        d.container(&running).await.unwrap().0,
        cri::ContainerState::ContainerExited
    );
    assert_eq!(
        d.container(&elsewhere).await.unwrap().0,
        cri::ContainerState::ContainerRunning,
        "another pod's container runs on"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(d.container_ids().await, [elsewhere]);
    assert_eq!(d.container(&running).await, Err(Code::NotFound));
    assert_eq!(d.container(&created).await, Err(Code::NotFound));
}

#[tokio::test]
async fn containers_survive_a_restart_of_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let pod = d.run_pod("kept").await;
    let running = d.create(&pod, "running", "sleep").await.unwrap();
    d.start(&running).await.unwrap();
    let ended = d.create(&pod, "ended", "sleep").await.unwrap();
    d.start(&ended).await.unwrap();
    let stopped = d.create(&pod, "stopped", "sleep").await.unwrap();
    d.start(&stopped).await.unwrap();
    d.stop(&stopped, 1).await.unwrap();
    let created = d.create(&pod, "created", "sleep").await.unwrap();
    drop(d);
    // While no daemon runs, one container ends (its exit is recorded, as a monitor does).
    std::fs::write(tmp.path().join("fake").join(format!("{ended}.exit")), "3").unwrap();
    let _ = std::fs::remove_file(tmp.path().join("fake").join(format!("{ended}.running")));

    let d = serve(tmp.path()).await;
    let state = |s: Result<(cri::ContainerState, i32, String), Code>| s.unwrap();
    assert_eq!(
        state(d.container(&running).await).0,
        cri::ContainerState::ContainerRunning
    );
    let (s, exit_code, reason) = state(d.container(&ended).await);
    assert_eq!(s, cri::ContainerState::ContainerExited);
    assert_eq!((exit_code, reason.as_str()), (3, "Error"));
    assert_eq!(
        state(d.container(&stopped).await).0,
        cri::ContainerState::ContainerExited
    );
    assert_eq!(
        state(d.container(&created).await).0,
        cri::ContainerState::ContainerCreated
    );
    // Names are still reserved; the recovered containers can be driven on.
    assert_eq!(
        d.create(&pod, "running", "sleep").await,
        Err(Code::AlreadyExists)
    );
    d.start(&created).await.unwrap();
    d.stop(&running, 1).await.unwrap();
    assert_eq!(
        state(d.container(&running).await).0,
        cri::ContainerState::ContainerExited
    );
    d.cri
        .runtime
        .clone()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    assert!(d.container_ids().await.is_empty());
}

/// Collects a server stream's responses, each checked to carry at least one item.
async fn collect_stream<R, T>(
    r: Result<tonic::Response<tonic::Streaming<R>>, tonic::Status>,
    items: fn(R) -> Vec<T>,
) -> Vec<T> {
    let mut stream = r.unwrap().into_inner();
    let mut all = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        let got = items(reply);
        assert!(!got.is_empty(), "a response without items");
        all.extend(got);
    }
    all
}

#[tokio::test]
async fn stream_rpcs_answer_what_the_lists_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let mut images = d.cri.images.clone();
    let pods = [d.run_pod("stream-a").await, d.run_pod("stream-b").await];
    // More containers than one streamed response carries.
    for n in 0..20 {
        let id = d
            .create(&pods[n % 2], &format!("c{n}"), "sleep")
            .await
            .unwrap();
        d.start(&id).await.unwrap();
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    let streamed = collect_stream(
        rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None })
            .await,
        |r| r.pod_sandboxes,
    )
    .await;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        sorted(streamed.into_iter().map(|p| p.id).collect()),
        sorted(listed.into_iter().map(|p| p.id).collect())
    );

    let filter = cri::ContainerFilter {
        pod_sandbox_id: pods[0].clone(),
        ..Default::default()
    };
    let listed = d.container_ids().await;
    let streamed = collect_stream(
        rt.stream_containers(cri::StreamContainersRequest { filter: None })
            .await,
        |r| r.containers,
    )
    .await;
    assert_eq!(listed.len(), 20);
    assert_eq!(sorted(streamed.into_iter().map(|c| c.id).collect()), listed);
    let in_pod = collect_stream(
        rt.stream_containers(cri::StreamContainersRequest {
            filter: Some(filter),
        })
        .await,
        |r| r.containers,
    )
    .await;
    assert_eq!(in_pod.len(), 10, "the filter was not applied");
    assert!(in_pod.iter().all(|c| c.pod_sandbox_id == pods[0]));

    let stats = collect_stream(
        rt.stream_container_stats(cri::StreamContainerStatsRequest { filter: None })
            .await,
        |r| r.container_stats,
    )
    .await;
    let ids = stats
        .into_iter()
        .filter_map(|s| s.attributes.map(|a| a.id))
        .collect();
    assert_eq!(sorted(ids), listed);

    let listed = images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let streamed = collect_stream(
        images
            .stream_images(cri::StreamImagesRequest { filter: None })
            .await,
        |r| r.images,
    )
    .await;
    assert_eq!(streamed, listed);

    // Kubernetes 1.36's pod resize notification: fine for a pod, NOT_FOUND without one.
    let update = |id: &str| cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(rt.update_pod_sandbox_resources(update(&pods[0])).await),
        Code::Ok
    );
    assert_eq!(
        code(rt.update_pod_sandbox_resources(update("nope")).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn the_stop_signal_kubernetes_asks_for_is_kept_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let pod = d.run_pod("signals").await;
    let mut config = fake_container("quit", "sleep");
    config.stop_signal = cri::Signal::Sigquit as i32;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let plain = d.create(&pod, "plain", "sleep").await.unwrap();
    let signal = |id: String| {
        let mut rt = rt.clone();
        async move {
            rt.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .stop_signal()
        }
    };
    assert_eq!(signal(id).await, cri::Signal::Sigquit);
    assert_eq!(signal(plain).await, cri::Signal::Sigterm, "the default");
}

async fn reports_user_namespaces(d: &Daemon) -> bool {
    let status = d
        .cri
        .runtime
        .clone()
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let default = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .expect("the default handler is listed");
    default.features.as_ref().unwrap().user_namespaces
}

/// `Status` reports user namespaces only where they work: a kernel that id-maps overlay
/// layers and crid directories a container's root can reach (a 0700 temp dir is not); the
/// requests critest and containerd refuse get `INVALID_ARGUMENT`.
#[tokio::test]
async fn user_namespaces_reported_where_they_work_and_bad_requests_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!reports_user_namespaces(&d).await, "under a 0700 directory");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let searchable = sandbox::sys::userns::searchable_by_others(tmp.path());
    assert_eq!(
        reports_user_namespaces(&d).await,
        sandbox::sys::userns::supported() && searchable
    );

    let map = |container_id, host_id| {
        vec![cri::IdMapping {
            container_id,
            host_id,
            length: 65536,
        }]
    };
    let pod_mode = cri::NamespaceMode::Pod as i32;
    let mut two = map(0, 100_000);
    two.extend(map(0, 200_000));
    let cases = [
        ("two ranges", pod_mode, two),
        ("container id 0 unmapped", pod_mode, map(1, 100_000)),
        ("no mappings", pod_mode, vec![]),
        ("host id 0 mapped", pod_mode, map(0, 0)),
        (
            "NODE with mappings",
            cri::NamespaceMode::Node as i32,
            map(0, 100_000),
        ),
        ("CONTAINER", cri::NamespaceMode::Container as i32, vec![]),
        ("TARGET", cri::NamespaceMode::Target as i32, vec![]),
        // (The test pod is host-network: no user namespace of its own can own that.)
        ("host network", pod_mode, map(0, 100_000)),
    ];
    let mut rt = d.cri.runtime.clone();
    for (i, (what, mode, ids)) in cases.into_iter().enumerate() {
        let config = with_userns(
            pod(&format!("userns-{i}"), &d.dir),
            cri::UserNamespace {
                mode,
                uids: ids.clone(),
                gids: ids,
            },
        );
        let r = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await;
        assert_eq!(code(r), Code::InvalidArgument, "{what}");
    }
    // NODE without mappings is the host's user namespace: an ordinary pod.
    let config = with_userns(
        pod("userns-node", &d.dir),
        cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            uids: vec![],
            gids: vec![],
        },
    );
    let r = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await;
    assert_eq!(code(r), Code::Ok);
}

/// urunc's keys as pod and container annotations, decided before any backend runs: container
/// over pod over image, key by key; a bad value is INVALID_ARGUMENT naming the key and where
/// it came from; unknown keys are ignored; a pod's keys leave its ordinary containers alone,
/// and a container's own keys on an ordinary image are refused.
#[tokio::test]
async fn urunc_keys_in_annotations_tune_unikernel_images_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = serve(tmp.path()).await;
    let mut rt = d.cri.runtime.clone();
    let key = |k: &str| format!("com.urunc.unikernel.{k}");
    let mut pod_config = pod("tuned", &d.dir);
    pod_config.annotations = [
        (key("unikernelVersion"), "0.15.0".to_owned()),
        (key("mountRootfs"), "false".to_owned()),
        (key("someFutureKey"), "x".to_owned()),
    ]
    .into();
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let create = |name: &str, image: &str, annotations: &[(String, &str)]| {
        let mut rt = rt.clone();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri::ContainerConfig {
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).to_owned()))
                    .collect(),
                ..container(name, image)
            }),
            sandbox_config: Some(pod_config.clone()),
        };
        async move {
            rt.create_container(request)
                .await
                .map(|r| r.into_inner().container_id)
        }
    };
    let id = create(
        "guest",
        UNIKERNEL_IMAGE,
        &[(key("unikernelVersion"), "0.16.1"), (key("other"), "x")],
    )
    .await
    .unwrap();
    let status = d
        .cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id,
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let uk = &info["runtimeSpec"]["unikernel"];
    assert_eq!(uk["version"], "0.16.1", "{info}");
    assert_eq!(uk["mount_rootfs"], false, "{info}");
    assert_eq!(uk["cmdline"], "from-image", "{info}");

    // The pod's keys are not for its ordinary containers.
    create("sidecar", IMAGE, &[]).await.unwrap();

    for (name, image, annotations, want) in [
        (
            "bad-value",
            UNIKERNEL_IMAGE,
            vec![(key("useDMBlock"), "yes")],
            "container annotation com.urunc.unikernel.useDMBlock",
        ),
        (
            "host-file",
            UNIKERNEL_IMAGE,
            vec![(key("initrd"), "/../../../etc/shadow")],
            "container annotation com.urunc.unikernel.initrd",
        ),
        (
            "not-a-guest",
            IMAGE,
            vec![(key("unikernelType"), "linux")],
            "com.urunc.unikernel.unikernelType: image fake.invalid/tiny:1 is not a unikernel",
        ),
    ] {
        let err = create(name, image, &annotations).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err}");
        assert!(err.message().contains(want), "{name}: {err}");
    }
}
