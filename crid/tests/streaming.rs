//! Exec/Attach/PortForward through the real crid binary: the CRI calls hand out URLs of the
//! streaming server, and the real SPDY and WebSocket clients of `conformance::stream_client`
//! forward ports into a real pod's network namespace (CNI bridge from /usr/lib/cni). Needs
//! root; skipped with a reason otherwise (and failing under CI=true).

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::stream_client::{self, spdy, ws};
use proto::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use common::{Crid, Net, PLUGINS};

fn can_run() -> bool {
    common::can_run_pods_for("streaming")
}

/// crid on a temp dir with a bridge network of its own (deleted when the [`Net`] drops).
/// `tag` keeps the networks of tests running at the same time apart. The [`Net`] comes first
/// so that a test's `let (_net, crid)` drops crid first: a crid still running when the bridge
/// goes may refill its prepared pod networks, and that CNI ADD would make the bridge again,
/// left behind on the host.
async fn start(tag: u8) -> (Net, Crid) {
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    let pid = std::process::id();
    let net = Net {
        bridge: format!("crs{tag}x{}", pid % 100_000),
        prefix: format!("10.{}.{}", 160 + u32::from(tag % 8), pid % 250),
        name: "crid-streaming-test".into(),
        ipam_dir: d.join("ipam"),
    };
    std::fs::create_dir_all(d.join("net.d")).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge", "bridge": net.bridge, "isGateway": true,
                "ipam": {
                    "type": "host-local", "dataDir": net.ipam_dir,
                    "ranges": [[{"subnet": format!("{}.0/24", net.prefix)}]]
                }
            },
            {"type": "loopback"}
        ]
    });
    std::fs::write(d.join("net.d/10-test.conflist"), conflist.to_string()).unwrap();
    let config = format!(
        "[cni]\nconf_dir = {:?}\nbin_dirs = [{PLUGINS:?}]\n[streaming]\naddress = \"127.0.0.1\"\nport = 0\n",
        d.join("net.d"),
    );
    std::fs::write(d.join("config.toml"), config).unwrap();
    (net, Crid::start_owned(dir).await)
}

/// This file's pod and port-forward helpers on the shared [`Crid`].
impl Crid {
    async fn run_streaming_pod(&self, name: &str) -> String {
        let config = common::net_pod(name, "streaming");
        self.run_pod_under(&config, "").await
    }

    async fn remove_pod(&self, id: &str) {
        let _ = self
            .rt()
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await;
        let _ = self
            .rt()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await;
    }

    fn netns(&self, pod: &str) -> PathBuf {
        self.path().join("state/netns").join(pod)
    }

    async fn port_forward_url(&self, pod: &str, ports: Vec<i32>) -> Result<String, tonic::Status> {
        self.rt()
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: ports,
            })
            .await
            .map(|r| r.into_inner().url)
    }
}

/// An echo server listening on 127.0.0.1 inside the namespace at `netns`.
async fn echo_in_netns(netns: &Path) -> u16 {
    let netns = netns.to_owned();
    let listener = std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind in pod")
    })
    .join()
    .expect("listener thread");
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_listener_inside_the_pod() {
    if !can_run() {
        return;
    }
    let (_net, crid) = start(1).await;
    let pod = crid.run_streaming_pod("pf").await;
    let port = echo_in_netns(&crid.netns(&pod)).await;
    // The listener exists only in the pod: the host's loopback has nothing there.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let url = crid
        .port_forward_url(&pod, vec![i32::from(port)])
        .await
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let conn = spdy::port_forward(&url).await.unwrap();
    let (mut data, mut error) = conn.forward(port, 0).await.unwrap();
    let got = spdy::round_trip(&mut data, b"over spdy", 9).await.unwrap();
    assert_eq!(got, b"over spdy");
    data.close().await;
    assert!(
        error
            .read_to_end(Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty()
    );
    drop(conn);

    // The URL was single-use.
    let e = spdy::port_forward(&url)
        .await
        .err()
        .expect("reused URL refused");
    assert_eq!(stream_client::http_status(&e), Some(404), "{e:#}");

    let url = crid
        .port_forward_url(&pod, vec![i32::from(port)])
        .await
        .unwrap();
    let mut wsc = ws::WsPortForward::connect(&url, &[port]).await.unwrap();
    assert_eq!(wsc.round_trip(0, b"over ws", 7).await.unwrap(), b"over ws");
    drop(wsc);

    // URLs handed out before the pod stopped: its reason on each forwarded connection's error
    // stream after the upgrade (as kubelet's streaming server reports it); once the pod is
    // removed, 404.
    let stopped = crid.port_forward_url(&pod, vec![]).await.unwrap();
    let removed = crid.port_forward_url(&pod, vec![]).await.unwrap();
    crid.rt()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let conn = spdy::port_forward(&stopped).await.unwrap();
    let (_data, mut error) = conn.forward(port, 1).await.unwrap();
    let msg = String::from_utf8(error.read_to_end(Duration::from_secs(10)).await.unwrap()).unwrap();
    assert!(msg.contains("is not ready"), "{msg}");
    drop(conn);
    crid.remove_pod(&pod).await;
    let e = spdy::port_forward(&removed)
        .await
        .err()
        .expect("a removed pod's URL refused");
    assert_eq!(stream_client::http_status(&e), Some(404), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_requests_for_unknown_ids_or_bad_input_are_refused() {
    if !can_run() {
        return;
    }
    let (_net, crid) = start(2).await;
    let e = crid.port_forward_url("nope", vec![80]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = crid
        .rt()
        .exec(cri::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = crid
        .rt()
        .attach(cri::AttachRequest {
            container_id: "nope".into(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = crid
        .rt()
        .exec(cri::ExecRequest {
            container_id: "nope".into(),
            cmd: vec![],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let pod = crid.run_streaming_pod("bad-ports").await;
    let e = crid.port_forward_url(&pod, vec![70000]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    crid.remove_pod(&pod).await;
}
