//! NRI end to end: the real crid binary with its NRI socket in the test's directory, real
//! runc, a busybox image from conformance's in-process registry, and a small NRI plugin
//! written here against the `nri` crate's transport. The plugin joins late and is
//! synchronized with the pod and container that exist, adds an env var, an annotation, an
//! rlimit and an OCI hook to new containers, refuses a pod and a container by name, asks for an unsolicited resource
//! update and an eviction, and records every event, whose order is checked (a container that
//! exits by itself gets its `StopContainer` before anyone removes it). Needs root, runc and a
//! static busybox; skipped with a reason otherwise (failing under CI).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Crid;
use conformance::fixtures::build::{Compression, Format, ImageSpec, Layer, image};
use conformance::fixtures::fake_registry::{Content, FakeRegistry};
use nri::api;
use nri::transport::{self, BoxFuture, Channel, Handler, Status};
use prost::Message;
use proto::cri;
use tonic::Code;

fn can_run() -> bool {
    if !common::can_run_pods_for("nri") {
        return false;
    }
    for bin in ["runc"] {
        if !common::on_path(bin) {
            common::skip("nri", &format!("{bin} is not installed"));
            return false;
        }
    }
    if common::host_busybox().is_none() {
        common::skip("nri", "busybox is not installed");
        return false;
    }
    true
}

async fn registry() -> (FakeRegistry, String) {
    let t = common::busybox_tree(&["sh", "sleep", "cat", "true"]);
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]});
    let built = image(&ImageSpec::new(
        Format::Oci,
        vec![Layer::new(&t.finish(), Compression::Gzip, Format::Oci)],
        config,
    ));
    let mut content = Content::default();
    content.add_image("nri/busybox", "1", &built);
    let reg = FakeRegistry::start(content).await.expect("fake registry");
    let image = format!("{}/nri/busybox:1", reg.host());
    (reg, image)
}

/// The test plugin: every event as `Method container-or-pod-id`, in arrival order.
#[derive(Default)]
struct Plugin {
    events: Mutex<Vec<String>>,
    synced: Mutex<(Vec<String>, Vec<String>)>,
    /// What the poststart hook the plugin adds writes the container's name to.
    hook_dir: std::path::PathBuf,
}

impl Plugin {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (bounded) until `event` has been seen.
    async fn wait_for(&self, event: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.events().iter().any(|e| e == event) {
            assert!(
                Instant::now() < deadline,
                "{event} never came: {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn position(&self, event: &str) -> usize {
        self.events()
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event} in {:?}", self.events()))
    }
}

impl Handler for Plugin {
    fn handle(
        &self,
        _service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, Status>> {
        let reply = match method.as_str() {
            // 0: every event.
            "Configure" => Ok(api::ConfigureResponse { events: 0 }.encode_to_vec()),
            "Synchronize" => {
                let req = api::SynchronizeRequest::decode(payload.as_slice()).unwrap();
                *self.synced.lock().unwrap() = (
                    req.pods.into_iter().map(|p| p.id).collect(),
                    req.containers.into_iter().map(|c| c.id).collect(),
                );
                Ok(api::SynchronizeResponse::default().encode_to_vec())
            }
            "RunPodSandbox"
            | "StopPodSandbox"
            | "RemovePodSandbox"
            | "UpdatePodSandbox"
            | "PostUpdatePodSandbox" => {
                let pod = api::PodRequest::decode(payload.as_slice())
                    .unwrap()
                    .pod
                    .unwrap();
                self.events
                    .lock()
                    .unwrap()
                    .push(format!("{method} {}", pod.id));
                if method == "RunPodSandbox" && pod.name == "refused-pod" {
                    Err(Status::new(transport::code::UNKNOWN, "no pods like this"))
                } else {
                    Ok(api::Empty {}.encode_to_vec())
                }
            }
            "CreateContainer" => {
                let req = api::ContainerRequest::decode(payload.as_slice()).unwrap();
                let c = req.container.unwrap();
                self.events
                    .lock()
                    .unwrap()
                    .push(format!("{method} {}", c.id));
                if c.name == "refused" {
                    Err(Status::new(transport::code::UNKNOWN, "not on this node"))
                } else {
                    Ok(api::CreateContainerResponse {
                        adjust: Some(api::ContainerAdjustment {
                            env: vec![api::KeyValue {
                                key: "NRI_TEST".into(),
                                value: "from-the-plugin".into(),
                            }],
                            annotations: [("nri.test/adjusted".to_string(), "yes".to_string())]
                                .into_iter()
                                .collect(),
                            hooks: Some(api::Hooks {
                                poststart: vec![api::Hook {
                                    path: "/bin/sh".into(),
                                    args: vec![
                                        "sh".into(),
                                        "-c".into(),
                                        format!(
                                            "echo started > {}/{}",
                                            self.hook_dir.display(),
                                            c.name
                                        ),
                                    ],
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }),
                            rlimits: vec![api::PosixRlimit {
                                r#type: "RLIMIT_NOFILE".into(),
                                hard: 1001,
                                soft: 1000,
                            }],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                    .encode_to_vec())
                }
            }
            "UpdateContainer" => {
                let req = api::UpdateContainerRequest::decode(payload.as_slice()).unwrap();
                self.events
                    .lock()
                    .unwrap()
                    .push(format!("{method} {}", req.container.unwrap().id));
                Ok(api::UpdatesResponse::default().encode_to_vec())
            }
            _ => {
                let req = api::ContainerRequest::decode(payload.as_slice()).unwrap();
                self.events
                    .lock()
                    .unwrap()
                    .push(format!("{method} {}", req.container.unwrap().id));
                Ok(api::UpdatesResponse::default().encode_to_vec())
            }
        };
        Box::pin(async move { reply })
    }
}

/// Connects and registers the plugin; returns once crid has synchronized it.
async fn connect(socket: &Path, plugin: Arc<Plugin>) -> Arc<Channel> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the NRI socket");
    let ch = Channel::start(
        stream,
        transport::RUNTIME_CONN,
        transport::PLUGIN_CONN,
        plugin.clone(),
    );
    let req = api::RegisterPluginRequest {
        plugin_name: "crid-test".into(),
        plugin_idx: "10".into(),
        nri_version: "v0.12.0".into(),
    };
    let _: api::Empty = ch
        .call(
            api::RUNTIME_SERVICE,
            "RegisterPlugin",
            &req,
            Duration::from_secs(5),
        )
        .await
        .expect("register");
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin.synced.lock().unwrap().0.is_empty() {
        assert!(Instant::now() < deadline, "never synchronized");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Synchronize answered; crid adds the plugin right after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ch
}

fn sleeper(image: &str, name: &str) -> cri::ContainerConfig {
    common::container_config(image, name, &["sleep", "1000"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_is_synchronized_adjusts_containers_and_sees_every_event() {
    if !can_run() {
        return;
    }
    let (_reg, image) = registry().await;
    let tmp = tempfile::tempdir().unwrap();
    common::write_config(tmp.path(), "");
    common::plain_http_registry(tmp.path(), image.split('/').next().unwrap());
    let crid = Crid::start_owned(tmp).await;
    crid.expect_pull(&image).await;

    // One PID namespace for the pod (the CRI default, critest's): its holder starts while
    // the pod is still hidden from the CRI.
    let mut config = common::host_net_pod("nri-pod", &crid.path().join("logs/nri-pod"));
    if let Some(ns) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
    let id = crid.run_pod_under(&config, "").await;
    let pod = (id, config);
    let before = crid.create_start(&pod, sleeper(&image, "before")).await;

    let hook_dir = crid.path().join("hooks");
    std::fs::create_dir_all(&hook_dir).unwrap();
    let plugin = Arc::new(Plugin {
        hook_dir: hook_dir.clone(),
        ..Default::default()
    });
    let ch = connect(&crid.path().join("nri.sock"), plugin.clone()).await;
    let (pods, containers) = plugin.synced.lock().unwrap().clone();
    assert_eq!(pods, vec![pod.0.clone()]);
    assert_eq!(containers, vec![before.clone()]);

    // An adjusted container: the plugin's env var and annotation are in it.
    let adjusted = crid.create_start(&pod, sleeper(&image, "adjusted")).await;
    let out = crid
        .exec_sync(&adjusted, &["sh", "-c", "echo $NRI_TEST"], 10)
        .await
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from-the-plugin"
    );
    let (status, _) = crid.container_status(&adjusted).await;
    assert_eq!(status.annotations["nri.test/adjusted"], "yes");
    // ... its rlimit, and the OCI hook the plugin added ran on the host at start.
    // (The container's own process: an exec's soft limit is runc's, which raises it.)
    let out = crid
        .exec_sync(&adjusted, &["cat", "/proc/1/limits"], 10)
        .await
        .expect("exec");
    let limits = String::from_utf8_lossy(&out.stdout).into_owned();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(nofile[3..5], ["1000", "1001"], "{limits}");
    assert_eq!(
        std::fs::read_to_string(hook_dir.join("adjusted")).unwrap_or_default(),
        "started\n"
    );

    // A refused container fails to create and leaves nothing behind.
    let err = crid
        .create(&pod, sleeper(&image, "refused"))
        .await
        .expect_err("the plugin refuses it");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not on this node"), "{err:?}");
    let listed = crid.containers().await;
    assert_eq!(listed.len(), 2, "{listed:?}");

    // A container that exits by itself: StopContainer comes without a CRI call.
    let quitter = crid
        .create_start(
            &pod,
            common::container_config(&image, "quitter", &["sh", "-c", "exit 3"]),
        )
        .await;
    crid.wait_state(&quitter, cri::ContainerState::ContainerExited)
        .await;
    plugin.wait_for(&format!("StopContainer {quitter}")).await;
    assert!(
        plugin.position(&format!("StartContainer {quitter}"))
            < plugin.position(&format!("StopContainer {quitter}"))
    );

    // An unsolicited update from the plugin, and a CRI update the plugin sees.
    let update = api::UpdateContainersRequest {
        update: vec![api::ContainerUpdate {
            container_id: adjusted.clone(),
            linux: Some(api::LinuxContainerUpdate {
                resources: Some(api::LinuxResources {
                    cpu: Some(api::LinuxCpu {
                        shares: Some(api::OptionalUInt64 { value: 512 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ignore_failure: false,
        }],
        // And an eviction: the container that was there before the plugin is stopped.
        evict: vec![api::ContainerEviction {
            container_id: before.clone(),
            reason: "test".into(),
        }],
    };
    let reply: api::UpdateContainersResponse = ch
        .call(
            api::RUNTIME_SERVICE,
            "UpdateContainers",
            &update,
            Duration::from_secs(10),
        )
        .await
        .expect("UpdateContainers");
    assert!(reply.failed.is_empty(), "{reply:?}");
    crid.wait_state(&before, cri::ContainerState::ContainerExited)
        .await;
    plugin.wait_for(&format!("StopContainer {before}")).await;
    let (status, _) = crid.container_status(&adjusted).await;
    let linux = status.resources.and_then(|r| r.linux).unwrap();
    assert_eq!(linux.cpu_shares, 512);
    crid.rt()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: adjusted.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 256,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("update");
    plugin
        .wait_for(&format!("UpdateContainer {adjusted}"))
        .await;
    plugin
        .wait_for(&format!("PostUpdateContainer {adjusted}"))
        .await;
    crid.rt()
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.0.clone(),
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 1024,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("update pod");
    plugin
        .wait_for(&format!("PostUpdatePodSandbox {}", pod.0))
        .await;
    assert!(
        plugin.position(&format!("UpdatePodSandbox {}", pod.0))
            < plugin.position(&format!("PostUpdatePodSandbox {}", pod.0))
    );

    // Stopping and removing the pod: containers stop before the pod's stop event, removals
    // after their stops, the pod's removal last.
    crid.stop_and_remove_pod(&pod.0).await;
    plugin
        .wait_for(&format!("RemovePodSandbox {}", pod.0))
        .await;
    let stop_pod = plugin.position(&format!("StopPodSandbox {}", pod.0));
    for c in [&before, &adjusted] {
        assert!(plugin.position(&format!("StopContainer {c}")) < stop_pod);
        assert!(
            plugin.position(&format!("StopContainer {c}"))
                < plugin.position(&format!("RemoveContainer {c}"))
        );
    }
    let events = plugin.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("StopContainer"))
            .count(),
        3,
        "one StopContainer per container: {events:?}"
    );
    assert_eq!(
        events.last().unwrap(),
        &format!("RemovePodSandbox {}", pod.0)
    );
    // The plugin joined after the pod ran: it learnt of it by synchronization only.
    assert!(!events.iter().any(|e| e.starts_with("RunPodSandbox")));

    // A refused pod fails and is gone again; the plugin saw its id.
    let refused = common::host_net_pod("refused-pod", &crid.path().join("logs/refused-pod"));
    let err = crid
        .try_run_pod(&refused, "")
        .await
        .expect_err("the plugin refuses the pod");
    assert!(err.message().contains("no pods like this"), "{err:?}");
    assert!(crid.pods().await.is_empty());
    assert!(
        plugin
            .events()
            .iter()
            .any(|e| e.starts_with("RunPodSandbox "))
    );
    ch.close();
    crid.finish().await;
}
