//! The gRPC layer in-process, over the daemon library: a real tonic server on a unix socket in
//! a temp dir, the generated client, and pods whose kernel operations (namespaces, mounts) are
//! a fake, so these tests need no root, no runc, no CNI plugin and no /dev/kvm and take
//! milliseconds. They cover the error → status map, the idempotence the CRI promises, the
//! pod → container cascade rules and recovery of pods after a restart. Containers themselves
//! (rootfs mounts, runc, VMMs) are the end-to-end tests' business.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cni::netns::NsKind;
use conformance::client::Cri;
use crid::config::Config;
use crid::cri::CriService;
use crid::state::State;
use proto::cri;
use proto::cri::image_service_server::ImageServiceServer;
use proto::cri::runtime_service_server::RuntimeServiceServer;
use sandbox::SandboxError;
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
    fn read_in(&self, _pins: &[(NsKind, PathBuf)], path: &str) -> Result<String, SandboxError> {
        Err(SandboxError::Unimplemented {
            reason: format!("fake: cannot read {path}"),
        })
    }
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
    let state = Arc::new(State::with_pod_sys(config, Arc::new(FakeSys)).unwrap());
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
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["true".into()],
        ..Default::default()
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
