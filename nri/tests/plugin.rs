//! A plugin written against the transport, talking to the adaptation over a real socket:
//! registration, configuration, synchronization, an adjustment, unsolicited updates, and a
//! hung plugin that must not hang the runtime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nri::api::{self, Event};
use nri::transport::{self, BoxFuture, Channel, Handler, Status};
use nri::{Adaptation, RuntimeState, Settings, SyncState};
use prost::Message;

#[derive(Default)]
struct FakeRuntime {
    updates: Mutex<Vec<api::ContainerUpdate>>,
    /// Extra containers in the snapshot, 1 KiB of env each.
    extra: usize,
}

impl RuntimeState for FakeRuntime {
    fn synchronize(&self) -> BoxFuture<SyncState> {
        let extra = self.extra;
        Box::pin(async move {
            SyncState {
                pods: vec![api::PodSandbox {
                    id: "pod1".into(),
                    ..Default::default()
                }],
                containers: std::iter::once(api::Container {
                    id: "ctr1".into(),
                    pod_sandbox_id: "pod1".into(),
                    ..Default::default()
                })
                .chain((0..extra).map(|i| api::Container {
                    id: format!("extra{i}"),
                    env: vec![format!("E={}", "x".repeat(1024))],
                    ..Default::default()
                }))
                .collect(),
                guard: Box::new(()),
            }
        })
    }

    fn update_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
        _evict: Vec<api::ContainerEviction>,
    ) -> BoxFuture<Vec<api::ContainerUpdate>> {
        self.updates.lock().unwrap().extend(updates);
        Box::pin(async { Vec::new() })
    }
}

/// The test plugin: records what it is told, adds `NRI_TEST=1`, or hangs on create.
struct TestPlugin {
    events: i32,
    hang: bool,
    seen: Mutex<Vec<String>>,
}

impl Handler for TestPlugin {
    fn handle(
        &self,
        _service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, Status>> {
        let mut seen = self.seen.lock().unwrap();
        let reply: Result<Vec<u8>, Status> = match method.as_str() {
            "Configure" => Ok(api::ConfigureResponse {
                events: self.events,
            }
            .encode_to_vec()),
            "Synchronize" => {
                let req = api::SynchronizeRequest::decode(payload.as_slice()).unwrap();
                seen.push(format!(
                    "sync {} {} +{}",
                    req.pods[0].id,
                    req.containers[0].id,
                    req.containers.len() - 1
                ));
                Ok(api::SynchronizeResponse::default().encode_to_vec())
            }
            "CreateContainer" => {
                let req = api::ContainerRequest::decode(payload.as_slice()).unwrap();
                seen.push(format!("create {}", req.container.unwrap().id));
                if self.hang {
                    return Box::pin(futures::future::pending());
                }
                Ok(api::CreateContainerResponse {
                    adjust: Some(api::ContainerAdjustment {
                        env: vec![api::KeyValue {
                            key: "NRI_TEST".into(),
                            value: "1".into(),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec())
            }
            // An older plugin: events through the deprecated StateChange only.
            "StateChange" => {
                let ev = api::StateChangeEvent::decode(payload.as_slice()).unwrap();
                seen.push(format!("state-change {:?}", ev.event()));
                Ok(api::Empty {}.encode_to_vec())
            }
            m => Err(Status::new(transport::code::UNIMPLEMENTED, m)),
        };
        Box::pin(async move { reply })
    }
}

async fn start(
    dir: &std::path::Path,
    timeout: Duration,
    extra: usize,
) -> (Arc<Adaptation>, Arc<FakeRuntime>) {
    let runtime = Arc::new(FakeRuntime {
        extra,
        ..Default::default()
    });
    let settings = Settings {
        socket: dir.join("nri/nri.sock"),
        registration_timeout: Duration::from_secs(5),
        request_timeout: timeout,
        runtime_name: "crid".into(),
        runtime_version: "test".into(),
    };
    (
        Adaptation::start(settings, runtime.clone()).unwrap(),
        runtime,
    )
}

async fn connect(a: &Adaptation, idx: &str, plugin: Arc<TestPlugin>) -> Arc<Channel> {
    let stream = tokio::net::UnixStream::connect(a.socket()).await.unwrap();
    let ch = Channel::start(
        stream,
        transport::RUNTIME_CONN,
        transport::PLUGIN_CONN,
        plugin,
    );
    let req = api::RegisterPluginRequest {
        plugin_name: "test".into(),
        plugin_idx: idx.into(),
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
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.plugin_names().contains(&format!("{idx}-test")) {
        assert!(Instant::now() < deadline, "plugin never synchronized");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ch
}

fn container(id: &str) -> api::Container {
    api::Container {
        id: id.into(),
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_plugin_registers_synchronizes_and_adjusts_a_container() {
    let dir = tempfile::tempdir().unwrap();
    let (a, runtime) = start(dir.path(), Duration::from_secs(2), 0).await;
    let plugin = Arc::new(TestPlugin {
        events: Event::CreateContainer.mask(),
        hang: false,
        seen: Mutex::new(Vec::new()),
    });
    let ch = connect(&a, "10", plugin.clone()).await;

    let adjust = a
        .create_container(&api::PodSandbox::default(), &container("ctr2"))
        .await
        .unwrap();
    assert_eq!(adjust.env.len(), 1);
    assert_eq!(adjust.env[0].key, "NRI_TEST");
    // Not subscribed: never sent.
    a.start_container(&api::PodSandbox::default(), &container("ctr2"))
        .await;
    assert_eq!(
        *plugin.seen.lock().unwrap(),
        vec!["sync pod1 ctr1 +0", "create ctr2"]
    );

    // An unsolicited update reaches the runtime.
    let req = api::UpdateContainersRequest {
        update: vec![api::ContainerUpdate {
            container_id: "ctr1".into(),
            ..Default::default()
        }],
        evict: Vec::new(),
    };
    let reply: api::UpdateContainersResponse = ch
        .call(
            api::RUNTIME_SERVICE,
            "UpdateContainers",
            &req,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(reply.failed.is_empty());
    assert_eq!(runtime.updates.lock().unwrap()[0].container_id, "ctr1");

    // Disconnecting drops the plugin.
    ch.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.plugin_names().is_empty() {
        assert!(Instant::now() < deadline, "plugin never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_hung_plugin_is_dropped_after_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = start(dir.path(), Duration::from_millis(300), 0).await;
    let plugin = Arc::new(TestPlugin {
        events: 0,
        hang: true,
        seen: Mutex::new(Vec::new()),
    });
    let _ch = connect(&a, "05", plugin).await;
    let started = Instant::now();
    let adjust = a
        .create_container(&api::PodSandbox::default(), &container("ctr2"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(adjust, api::ContainerAdjustment::default());
    assert!(a.plugin_names().is_empty());
}

#[tokio::test]
async fn garbage_on_the_socket_closes_only_that_connection() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = start(dir.path(), Duration::from_secs(1), 0).await;
    let mut s = tokio::net::UnixStream::connect(a.socket()).await.unwrap();
    // A frame claiming 1 GiB, then a well-formed frame of a broken ttrpc message.
    s.write_all(&[0, 0, 0, 2, 0x40, 0, 0, 0]).await.unwrap();
    let mut s2 = tokio::net::UnixStream::connect(a.socket()).await.unwrap();
    s2.write_all(&[
        0, 0, 0, 2, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 1, 1, 0, 0xff, 0xff,
    ])
    .await
    .unwrap();
    let plugin = Arc::new(TestPlugin {
        events: 0,
        hang: false,
        seen: Mutex::new(Vec::new()),
    });
    let _ch = connect(&a, "01", plugin).await;
    assert_eq!(a.plugin_names(), vec!["01-test"]);
}

#[tokio::test]
async fn a_large_synchronization_and_an_older_plugin_s_state_change() {
    let dir = tempfile::tempdir().unwrap();
    // 2000 containers of 1 KiB: ~2 MiB, carried in 4 KiB frames and reassembled.
    let (a, _) = start(dir.path(), Duration::from_secs(5), 2000).await;
    let plugin = Arc::new(TestPlugin {
        events: Event::StartContainer.mask(),
        hang: false,
        seen: Mutex::new(Vec::new()),
    });
    let _ch = connect(&a, "20", plugin.clone()).await;
    a.start_container(&api::PodSandbox::default(), &container("ctr2"))
        .await;
    assert_eq!(
        *plugin.seen.lock().unwrap(),
        vec!["sync pod1 ctr1 +2000", "state-change StartContainer"]
    );
}
