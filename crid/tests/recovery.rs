//! Restart recovery with the real crid binary: SIGKILL after and in the middle of
//! RunPodSandbox and PullImage, a reboot (state dir wiped, root kept), a corrupt pod record,
//! and image garbage collection of shared layers. After each restart nothing half-made is
//! listed as ready, everything is removable, a same-name retry works and nothing leaks
//! (IPAM addresses, veths, namespace pins, mounts, ingest files).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Crid, Net, mounts_under, noise, plain_http_registry, write_config};
use conformance::fixtures::build::{Compression, Format, ImageSpec, Layer, TarBuilder, image};
use conformance::fixtures::fake_registry::{Content, FakeRegistry};
use proto::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY: i32 = cri::PodSandboxState::SandboxReady as i32;
const NOT_READY: i32 = cri::PodSandboxState::SandboxNotready as i32;

/// A CNI plugin chained after bridge that, while `<dir>/hang` exists, signals
/// `<dir>/add-started` and blocks in ADD; otherwise it passes the previous result on.
fn hang_plugin(dir: &Path) -> String {
    let hang = dir.join("hang");
    let started = dir.join("add-started");
    format!(
        "#!/bin/sh\nconf=$(cat)\ncase \"$CNI_COMMAND\" in\n\
         ADD) if [ -e {h} ]; then touch {s}; i=0; while [ -e {h} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; fi\n\
         printf '%s' \"$conf\" | jq -c .prevResult ;;\n\
         DEL) ;;\n\
         VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}' ;;\n\
         esac\n",
        h = hang.display(),
        s = started.display(),
    )
}

fn install_plugin(dir: &Path, name: &str, body: &str) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let p = bin.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The conflist of `net` with the hang plugin chained after bridge.
fn conflist_with_hang(net: &Net) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&net.conflist()).unwrap();
    v["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, serde_json::json!({"type": "hangplug"}));
    v.to_string()
}

/// Nothing of any pod is left: addresses, veths, pins, mounts.
fn assert_no_pod_leftovers(dir: &Path, net: &Net, log: &str) {
    assert!(
        net.reservations().is_empty(),
        "IPAM leak {:?}\n{log}",
        net.reservations()
    );
    assert!(net.veths().is_empty(), "veth leak {:?}\n{log}", net.veths());
    assert!(
        common::pins(dir).is_empty(),
        "pin leak {:?}\n{log}",
        common::pins(dir)
    );
    assert!(
        mounts_under(dir).is_empty(),
        "mount leak {:?}\n{log}",
        mounts_under(dir)
    );
}

async fn pod_state(crid: &Crid, id: &str) -> Option<i32> {
    crid.pods()
        .await
        .iter()
        .find(|p| p.id == id)
        .map(|p| p.state)
}

async fn wait_for(path: &Path, what: &str) {
    for _ in 0..300 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn setup(tag: u8) -> (tempfile::TempDir, Net) {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), "");
    let net = Net::new(tag, tmp.path());
    std::fs::write(tmp.path().join("net.d/10-test.conflist"), net.conflist()).unwrap();
    (tmp, net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_run_pod_sandbox_keeps_a_working_pod() {
    if !common::can_run_pods() {
        return;
    }
    let (tmp, net) = setup(2);
    let dir = tmp.path();
    let mut crid = Crid::start(dir).await;
    let id = crid.run_pod("after").await.expect("run pod");
    crid.sigkill();

    let crid = Crid::start(dir).await;
    assert_eq!(pod_state(&crid, &id).await, Some(READY), "{}", crid.log());
    // The name is still taken by the recovered pod.
    let again = crid.run_pod("after").await;
    assert_eq!(
        again.as_ref().map_err(|e| e.code()),
        Err(tonic::Code::AlreadyExists),
        "{again:?}"
    );
    crid.stop_and_remove_pod(&id).await;
    assert!(crid.pods().await.is_empty());
    assert_no_pod_leftovers(dir, &net, &crid.log());
    let id2 = crid.run_pod("after").await.expect("same-name retry");
    crid.stop_and_remove_pod(&id2).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_cni_add_leaves_a_removable_not_ready_pod() {
    if !common::can_run_pods() {
        return;
    }
    let (tmp, net) = setup(3);
    let dir = tmp.path();
    install_plugin(dir, "hangplug", &hang_plugin(dir));
    std::fs::write(dir.join("net.d/10-test.conflist"), conflist_with_hang(&net)).unwrap();
    std::fs::write(dir.join("hang"), "").unwrap();

    let mut crid = Crid::start(dir).await;
    let rt = crid.cri.runtime.clone();
    let cfg = common::pod_config("during", dir);
    let call = tokio::spawn(async move {
        let mut rt = rt;
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await
    });
    // bridge and host-local have run: a veth and an address exist.
    wait_for(&dir.join("add-started"), "CNI ADD to reach the hang plugin").await;
    assert_eq!(net.reservations().len(), 1);
    crid.sigkill();
    let _ = call.await;
    // The orphaned plugin finishes; nobody reads its answer.
    std::fs::remove_file(dir.join("hang")).unwrap();

    let crid = Crid::start(dir).await;
    let pods = crid.pods().await;
    assert!(
        pods.iter().all(|p| p.state != READY),
        "a half-made pod is listed as ready: {pods:?}"
    );
    for p in &pods {
        crid.stop_and_remove_pod(&p.id).await;
    }
    assert!(crid.pods().await.is_empty());
    assert_no_pod_leftovers(dir, &net, &crid.log());
    let id = crid.run_pod("during").await.expect("same-name retry");
    assert_eq!(pod_state(&crid, &id).await, Some(READY));
    crid.stop_and_remove_pod(&id).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_makes_pods_not_ready_and_keeps_images() {
    if !common::can_run_pods() {
        return;
    }
    let (tmp, net) = setup(4);
    let dir = tmp.path();
    let mut content = Content::default();
    content.add_image(
        "reboot/img",
        "v1",
        &conformance::fixtures::fake_registry::small_image("survives reboots"),
    );
    let reg = FakeRegistry::start(content).await.unwrap();
    plain_http_registry(dir, &reg.host());
    let image = format!("{}/reboot/img:v1", reg.host());

    let mut crid = Crid::start(dir).await;
    let image_id = crid.pull(&image).await.expect("pull");
    let id = crid.run_pod("reboot").await.expect("run pod");
    crid.sigkill();

    // The reboot: everything in the volatile state dir is gone (its mounts with it), the
    // persistent root stays.
    common::unmount_all(&dir.join("state"));
    std::fs::remove_dir_all(dir.join("state")).unwrap();

    let crid = Crid::start(dir).await;
    assert_eq!(
        pod_state(&crid, &id).await,
        Some(NOT_READY),
        "{}",
        crid.log()
    );
    let images = crid.images().await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, image_id);
    let status = crid
        .cri
        .runtime
        .clone()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .expect("status of a pod from before the reboot")
        .into_inner();
    assert_eq!(status.status.unwrap().state, NOT_READY);
    crid.stop_and_remove_pod(&id).await;
    assert!(crid.pods().await.is_empty());
    assert_no_pod_leftovers(dir, &net, &crid.log());
    let id = crid
        .run_pod("reboot")
        .await
        .expect("same-name pod after reboot");
    crid.stop_and_remove_pod(&id).await;
    assert_eq!(crid.images().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_pod_record_is_quarantined_and_its_pieces_released() {
    if !common::can_run_pods() {
        return;
    }
    let (tmp, net) = setup(5);
    let dir = tmp.path();
    let mut crid = Crid::start(dir).await;
    let bad = crid.run_pod("corrupt").await.expect("run pod");
    let good = crid.run_pod("fine").await.expect("run pod");
    crid.sigkill();

    // A torn write: half a record.
    let record = dir.join("root/pods").join(format!("{bad}.json"));
    let bytes = std::fs::read(&record).unwrap();
    std::fs::write(&record, &bytes[..bytes.len() / 2]).unwrap();

    let crid = Crid::start(dir).await;
    let pods = crid.pods().await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, good);
    assert_eq!(pods[0].state, READY);
    assert!(!record.exists());
    let quarantined: Vec<String> = std::fs::read_dir(dir.join("root/pods/quarantine"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].starts_with(&format!("{bad}.json.")));
    assert!(crid.log().contains("quarantined"));
    // The unknown pod's namespaces, shm and address were released at start-up.
    assert!(
        common::pins(dir).iter().all(|p| !p.contains(&bad)),
        "{:?}",
        common::pins(dir)
    );
    assert!(mounts_under(dir).iter().all(|m| !m.contains(&bad)));
    assert_eq!(net.reservations().len(), 1, "{:?}", net.reservations());
    // Its PID namespace holder, known only from the lost record, was killed: the good pod's
    // is the only one left (a killed holder is a zombie, whose command line is empty).
    let holders = common::processes_under(&dir.join("state/pidns-root"), None);
    assert_eq!(holders.len(), 1, "{holders:?}");
    // The daemon serves, and the name of the lost pod can be used again.
    let again = crid.run_pod("corrupt").await.expect("same-name pod");
    crid.stop_and_remove_pod(&again).await;
    crid.stop_and_remove_pod(&good).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
}

fn layer(name: &str, size: usize, seed: u64) -> Layer {
    let mut t = TarBuilder::new();
    t.file(name, 0o644, &noise(size, seed));
    Layer::new(&t.finish(), Compression::Gzip, Format::Oci)
}

fn store_setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), "");
    tmp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_images_collects_unshared_layers_and_blobs() {
    let shared = layer("shared", 200_000, 1);
    let a = image(&ImageSpec::new(
        Format::Oci,
        vec![shared.clone(), layer("a", 300_000, 2)],
        serde_json::json!({"Cmd": ["/a"]}),
    ));
    let b = image(&ImageSpec::new(
        Format::Oci,
        vec![shared.clone(), layer("b", 300_000, 3)],
        serde_json::json!({"Cmd": ["/b"]}),
    ));
    let mut content = Content::default();
    content.add_image("gc/a", "v1", &a);
    content.add_image("gc/b", "v1", &b);
    let reg = FakeRegistry::start(content).await.unwrap();
    let tmp = store_setup();
    let dir = tmp.path();
    plain_http_registry(dir, &reg.host());
    let crid = Crid::start(dir).await;
    let (ia, ib) = (
        format!("{}/gc/a:v1", reg.host()),
        format!("{}/gc/b:v1", reg.host()),
    );
    let empty = crid.image_fs_used().await;
    crid.pull(&ia).await.expect("pull a");
    crid.pull(&ib).await.expect("pull b");
    let both = crid.image_fs_used().await;
    let layers = crid.store_entries("layers/sha256");
    let blobs = crid.store_entries("blobs/sha256");
    assert_eq!(layers.len(), 3, "{layers:?}");
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let shared_dir = hex(&shared.diff_id);
    assert!(layers.contains(&shared_dir), "{layers:?}");

    crid.remove_image(&ia).await;
    let layers = crid.store_entries("layers/sha256");
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert!(
        layers.contains(&shared_dir),
        "the shared layer went: {layers:?}"
    );
    let blobs_b = crid.store_entries("blobs/sha256");
    assert!(blobs_b.len() < blobs.len());
    for blob in &b.blobs {
        assert!(blobs_b.contains(&hex(&blob.digest)) || blob.media_type.contains("layer"));
    }
    let one = crid.image_fs_used().await;
    assert!(one < both, "ImageFsInfo did not drop: {both} -> {one}");

    crid.remove_image(&ib).await;
    assert!(crid.store_entries("layers/sha256").is_empty());
    assert!(crid.store_entries("blobs/sha256").is_empty());
    let none = crid.image_fs_used().await;
    assert!(none < one, "ImageFsInfo did not drop: {one} -> {none}");
    assert!(
        none <= empty + 64 * 1024,
        "ImageFsInfo after removing everything: {none} (empty store: {empty})"
    );
    assert!(crid.images().await.is_empty());
}

/// A registry that serves `content`, except that while `stall` is set the blob `slow` is cut
/// off half way (headers promise all of it) and the connection hangs.
struct SlowRegistry {
    addr: String,
    stall: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowRegistry {
    async fn start(content: Content, slow: String) -> SlowRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stall = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(AtomicUsize::new(0));
        let content = Arc::new(content);
        let (s, c) = (stall.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (content, slow, s, c) = (content.clone(), slow.clone(), s.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, &content, &slow, &s, &c).await;
                });
            }
        });
        SlowRegistry {
            addr,
            stall,
            cut,
            task,
        }
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    content: &Content,
    slow: &str,
    stall: &AtomicBool,
    cut: &AtomicUsize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    let (status, ctype, body, digest): (&str, String, Vec<u8>, String) = if path == "/v2/" {
        (
            "200 OK",
            "application/json".into(),
            b"{}".to_vec(),
            String::new(),
        )
    } else if let Some(i) = rest.rfind("/manifests/") {
        match content
            .manifests
            .get(&(rest[..i].to_owned(), rest[i + 11..].to_owned()))
        {
            Some((mt, b, d)) => ("200 OK", mt.clone(), b.clone(), d.clone()),
            None => (
                "404 Not Found",
                "application/json".into(),
                Vec::new(),
                String::new(),
            ),
        }
    } else if let Some(i) = rest.rfind("/blobs/") {
        let d = &rest[i + 7..];
        match content.blobs.get(d) {
            Some(b) => (
                "200 OK",
                "application/octet-stream".into(),
                b.clone(),
                d.to_owned(),
            ),
            None => (
                "404 Not Found",
                "application/json".into(),
                Vec::new(),
                String::new(),
            ),
        }
    } else {
        (
            "404 Not Found",
            "application/json".into(),
            Vec::new(),
            String::new(),
        )
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nDocker-Distribution-Api-Version: registry/2.0\r\n",
        body.len()
    );
    if !digest.is_empty() {
        reply.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
    }
    reply.push_str("\r\n");
    stream.write_all(reply.as_bytes()).await?;
    if method == "HEAD" {
        return Ok(());
    }
    if digest == slow && stall.load(Ordering::SeqCst) {
        let half = body.len() / 2;
        stream.write_all(&body[..half]).await?;
        stream.flush().await?;
        cut.fetch_add(1, Ordering::SeqCst);
        // Hang (bounded) with the connection open.
        tokio::time::sleep(Duration::from_secs(120)).await;
        return Ok(());
    }
    stream.write_all(&body).await?;
    stream.flush().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_midway_leaves_nothing_and_can_be_retried() {
    let big = layer("big", 8 << 20, 7);
    let small = layer("small", 10_000, 8);
    let img = image(&ImageSpec::new(
        Format::Oci,
        vec![small, big.clone()],
        serde_json::json!({"Cmd": ["/big"]}),
    ));
    let mut content = Content::default();
    content.add_image("slow/img", "v1", &img);
    let reg = SlowRegistry::start(content, big.blob.digest.clone()).await;
    let tmp = store_setup();
    let dir = tmp.path();
    plain_http_registry(dir, &reg.addr);
    let reference = format!("{}/slow/img:v1", reg.addr);

    let mut crid = Crid::start(dir).await;
    let images = crid.cri.images.clone();
    let r = reference.clone();
    let pull = tokio::spawn(async move {
        let mut images = images;
        images
            .pull_image(cri::PullImageRequest {
                image: Some(common::spec(&r)),
                ..Default::default()
            })
            .await
    });
    for _ in 0..300 {
        if reg.cut.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reg.cut.load(Ordering::SeqCst) > 0,
        "the pull never reached the big layer"
    );
    // Let the half layer reach the ingest file.
    tokio::time::sleep(Duration::from_millis(500)).await;
    crid.sigkill();
    let _ = pull.await;
    let ingest_before: usize = ["ingest", "tmp"]
        .iter()
        .map(|d| crid.store_entries(d).len())
        .sum();
    assert!(
        ingest_before > 0,
        "the killed pull left no partial download, so this test proves nothing"
    );

    let crid = Crid::start(dir).await;
    assert!(crid.images().await.is_empty());
    for d in ["ingest", "tmp"] {
        assert!(
            crid.store_entries(d).is_empty(),
            "{d} after restart: {:?}",
            crid.store_entries(d)
        );
    }
    // Nothing half-downloaded counts as content.
    assert!(
        !crid
            .store_entries("blobs/sha256")
            .contains(&big.blob.digest.trim_start_matches("sha256:").to_owned())
    );
    reg.stall.store(false, Ordering::SeqCst);
    let id = crid.pull(&reference).await.expect("retried pull");
    assert_eq!(Some(id.as_str()), img.config().map(|c| c.digest.as_str()));
}

/// A busybox image (busybox-static from the host, `sh` and `sleep` links) on a fake registry.
async fn busybox_registry() -> Option<(FakeRegistry, String)> {
    common::host_busybox()?;
    let t = common::busybox_tree(&["sh", "sleep"]);
    let img = image(&ImageSpec::new(
        Format::Oci,
        vec![Layer::new(&t.finish(), Compression::Gzip, Format::Oci)],
        serde_json::json!({"Cmd": ["/bin/sh"]}),
    ));
    let mut content = Content::default();
    content.add_image("recovery/busybox", "v1", &img);
    let reg = FakeRegistry::start(content).await.ok()?;
    let name = format!("{}/recovery/busybox:v1", reg.host());
    Some((reg, name))
}

/// The busybox registry (kept by the caller for the test's length) and the image's name for a
/// container test; `None` (skip) when this host cannot run containers.
async fn container_registry() -> Option<(FakeRegistry, String)> {
    if !can_run_containers() {
        return None;
    }
    Some(
        busybox_registry()
            .await
            .expect("cannot build the busybox image"),
    )
}

/// crid on `dir`, which takes `image`'s registry over plain HTTP, with `image` pulled and pod
/// `ctr` running; returns crid and the pod's id.
async fn start_with_pod(dir: &Path, image: &str) -> (Crid, String) {
    plain_http_registry(dir, image.split('/').next().unwrap());
    let crid = Crid::start(dir).await;
    crid.pull(image).await.expect("pull");
    let pod = crid.run_pod("ctr").await.expect("run pod");
    (crid, pod)
}

fn can_run_containers() -> bool {
    if !common::can_run_pods() {
        return false;
    }
    let runc = common::on_path("runc");
    let busybox = common::host_busybox().is_some();
    if runc && busybox {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "container recovery tests cannot run in CI without runc and busybox"
    );
    eprintln!("skipped: needs runc and busybox");
    false
}

async fn create_container(
    crid: &Crid,
    pod: &str,
    image: &str,
    name: &str,
    args: &[&str],
) -> Result<String, tonic::Status> {
    let pod = (pod.to_owned(), common::pod_config("ctr", &crid.dir));
    crid.create(&pod, common::container_config(image, name, args))
        .await
}

/// Kills every process of the test's containers and monitors and unmounts what crid
/// mounted, as a reboot would.
fn reboot_containers(dir: &Path) {
    common::release_leftovers(dir);
    if let Ok(d) = std::fs::read_dir(dir.join("state/containers")) {
        for e in d.flatten() {
            if let Some(pid) = std::fs::read_to_string(e.path().join("monitor.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_with_containers_leaves_them_stopped_and_removable() {
    let Some((_reg, image)) = container_registry().await else {
        return;
    };
    let (tmp, net) = setup(6);
    let dir = tmp.path();
    let (mut crid, pod) = start_with_pod(dir, &image).await;
    let running = create_container(&crid, &pod, &image, "running", &["sleep", "1000"])
        .await
        .expect("create");
    crid.start_container(&running).await;
    let created = create_container(&crid, &pod, &image, "created", &["sleep", "1000"])
        .await
        .expect("create");
    crid.sigkill();

    reboot_containers(dir);
    std::fs::remove_dir_all(dir.join("state")).unwrap();

    let crid = Crid::start(dir).await;
    assert_eq!(
        pod_state(&crid, &pod).await,
        Some(NOT_READY),
        "{}",
        crid.log()
    );
    let list = crid.containers().await;
    assert_eq!(list.len(), 2, "{list:?}");
    let state_of = |id: &str| list.iter().find(|c| c.id == id).map(|c| c.state);
    eprintln!(
        "after the reboot: running -> {:?}, created -> {:?}",
        state_of(&running),
        state_of(&created)
    );
    assert_eq!(
        state_of(&running),
        Some(cri::ContainerState::ContainerExited as i32),
        "{}",
        crid.log()
    );
    // A container that was only created can never start after a reboot (its pod's
    // namespaces are gone): it is reported exited too.
    assert_eq!(
        state_of(&created),
        Some(cri::ContainerState::ContainerExited as i32),
        "{}",
        crid.log()
    );
    // The offline CLI sees the same containers.
    let ps: serde_json::Value =
        serde_json::from_str(&common::crid_cli(dir, &["ps", "-a", "--json"])).unwrap();
    let mut ids: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut want = vec![running.as_str(), created.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    for id in [&running, &created] {
        crid.stop_and_remove_container(id).await;
    }
    crid.stop_and_remove_pod(&pod).await;
    assert!(crid.containers().await.is_empty());
    assert_no_pod_leftovers(dir, &net, &crid.log());
    let procs = common::processes_under(dir, crid.pid());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(!crid.images().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_create_and_start_container() {
    let Some((_reg, image)) = container_registry().await else {
        return;
    };
    let (tmp, net) = setup(7);
    let dir = tmp.path();
    let (mut crid, pod) = start_with_pod(dir, &image).await;

    // Killed while CreateContainer is in flight (wherever it got to).
    let rt = crid.cri.runtime.clone();
    let (p, i, d) = (pod.clone(), image.clone(), dir.to_owned());
    let call = tokio::spawn(async move {
        let mut rt = rt;
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: p,
            config: Some(common::container_config(&i, "c", &["sleep", "1000"])),
            sandbox_config: Some(common::pod_config("ctr", &d)),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    crid.sigkill();
    let _ = call.await;

    let crid = Crid::start(dir).await;
    assert_eq!(pod_state(&crid, &pod).await, Some(READY));
    for c in crid.containers().await {
        eprintln!(
            "after a kill during CreateContainer: {} is {}",
            c.id, c.state
        );
        assert_ne!(
            c.state,
            cri::ContainerState::ContainerRunning as i32,
            "a container nobody started runs"
        );
        crid.stop_and_remove_container(&c.id).await;
    }
    // The same name can be created again, and started.
    let id = create_container(&crid, &pod, &image, "c", &["sleep", "1000"])
        .await
        .unwrap_or_else(|e| panic!("same-name retry: {e}\n{}", crid.log()));

    // Killed while StartContainer is in flight.
    let mut rt = crid.cri.runtime.clone();
    let cid = id.clone();
    let call = tokio::spawn(async move {
        rt.start_container(cri::StartContainerRequest { container_id: cid })
            .await
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut crid = crid;
    crid.sigkill();
    let _ = call.await;

    let crid = Crid::start(dir).await;
    let list = crid.containers().await;
    assert_eq!(list.len(), 1, "{list:?}");
    eprintln!("after a kill during StartContainer: {}", list[0].state);
    crid.stop_and_remove_container(&id).await;
    let rootfs = dir.join("root/containers").join(&id);
    assert!(!rootfs.exists(), "container directory left behind");
    crid.stop_and_remove_pod(&pod).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
    let procs = common::processes_under(dir, crid.pid());
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_container_record_is_quarantined_and_its_container_released() {
    let Some((_reg, image)) = container_registry().await else {
        return;
    };
    let (tmp, net) = setup(8);
    let dir = tmp.path();
    let (mut crid, pod) = start_with_pod(dir, &image).await;
    let mut ids = Vec::new();
    for name in ["torn", "fine"] {
        let id = create_container(&crid, &pod, &image, name, &["sleep", "1000"])
            .await
            .expect("create");
        crid.start_container(&id).await;
        ids.push(id);
    }
    let (torn, fine) = (ids[0].clone(), ids[1].clone());
    crid.sigkill();

    let torn_pid: i32 = std::fs::read_to_string(
        dir.join("state/containers")
            .join(&torn)
            .join("container.pid"),
    )
    .expect("container pid file")
    .trim()
    .parse()
    .unwrap();
    let record = dir.join("root/containers").join(&torn).join("record.json");
    let bytes = std::fs::read(&record).unwrap();
    std::fs::write(&record, &bytes[..bytes.len() / 2]).unwrap();

    let crid = Crid::start(dir).await;
    let list = crid.containers().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, fine);
    assert_eq!(list[0].state, cri::ContainerState::ContainerRunning as i32);
    let quarantined: Vec<String> = std::fs::read_dir(dir.join("root/containers/quarantine"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].starts_with(&format!("{torn}.json.")));
    assert!(
        crid.log()
            .contains("unreadable container record quarantined")
    );

    // Released in the background: its process, runc state, rootfs mount and directories.
    let torn_dir = dir.join("root/containers").join(&torn);
    for _ in 0..100 {
        if !torn_dir.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!torn_dir.exists(), "{}", crid.log());
    for runtime in ["runc", "crun"] {
        assert!(!dir.join("state").join(runtime).join(&torn).exists());
    }
    assert!(mounts_under(dir).iter().all(|m| !m.contains(&torn)));
    let procs = common::processes_under(dir, crid.pid());
    assert!(
        procs.iter().all(|p| !p.contains(&torn)),
        "processes of the quarantined container: {procs:?}"
    );
    let state = std::fs::read_to_string(format!("/proc/{torn_pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || process_state(&state) == Some('Z'),
        "the quarantined container's process still runs: {state}"
    );

    // The name is free again, and the pod is removable.
    let again = create_container(&crid, &pod, &image, "torn", &["sleep", "1000"])
        .await
        .unwrap_or_else(|e| panic!("same-name container: {e}\n{}", crid.log()));
    for id in [&again, &fine] {
        crid.stop_and_remove_container(id).await;
    }
    crid.stop_and_remove_pod(&pod).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
    let procs = common::processes_under(dir, crid.pid());
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

/// The state letter of a `/proc/PID/stat` line.
fn process_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A pod in its own user namespace survives a SIGKILL of crid: its pins (the user namespace's
/// among them) are found again and the pod stays ready; a container started after the restart
/// joins the same user namespace as one started before, sees the image's root-owned files as
/// its root's (id-mapped layers), and what it writes lands in its upper layer under the pod's
/// host ids. Removal leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_pod_survives_a_restart() {
    if !can_run_containers() {
        return;
    }
    if !sandbox::sys::userns::supported() {
        common::skip(
            "user namespace pods",
            "the kernel cannot id-map overlay layers",
        );
        return;
    }
    let Some((_reg, image)) = busybox_registry().await else {
        panic!("cannot build the busybox image");
    };
    let (tmp, net) = setup(61);
    let dir = tmp.path();
    // Searchable by others, as crid's root and state must be for user namespaces.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    plain_http_registry(dir, image.split('/').next().unwrap());
    const UID_BASE: u32 = 400_000;
    const GID_BASE: u32 = 500_000;
    let range = |host_id| {
        vec![cri::IdMapping {
            container_id: 0,
            host_id,
            length: 65536,
        }]
    };
    let mut config = common::pod_config("userns", dir);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: range(UID_BASE),
                    gids: range(GID_BASE),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut crid = Crid::start(dir).await;
    crid.pull(&image).await.expect("pull");
    let pod = crid.run_pod_under(&config, "").await;
    let pod = (pod, config);
    let before = crid
        .create_start(
            &pod,
            common::container_config(&image, "before", &["sleep", "1000"]),
        )
        .await;
    crid.sigkill();

    let crid = Crid::start(dir).await;
    assert_eq!(
        pod_state(&crid, &pod.0).await,
        Some(READY),
        "{}",
        crid.log()
    );
    let after = crid
        .create_start(
            &pod,
            common::container_config(&image, "after", &["sleep", "1000"]),
        )
        .await;
    let exec = |id: String, script: &'static str| {
        let mut rt = crid.rt();
        async move {
            let r = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["sh".into(), "-c".into(), script.into()],
                    timeout: 20,
                })
                .await
                .expect("exec")
                .into_inner();
            assert_eq!(
                r.exit_code,
                0,
                "{script}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            String::from_utf8_lossy(&r.stdout).trim().to_owned()
        }
    };
    let userns = "readlink /proc/self/ns/user";
    assert_eq!(
        exec(before.clone(), userns).await,
        exec(after.clone(), userns).await
    );
    let map = exec(after.clone(), "cat /proc/self/uid_map").await;
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &UID_BASE.to_string(), "65536"]
    );
    let owner = exec(after.clone(), "stat -c '%u %g' /bin/busybox").await;
    assert_eq!(owner, "0 0", "the image's file as the container sees it");
    exec(after.clone(), "echo x > /etc/written").await;
    let upper = dir
        .join("root/containers")
        .join(&after)
        .join("upper/etc/written");
    let meta = std::fs::metadata(&upper).unwrap_or_else(|e| panic!("{}: {e}", upper.display()));
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (UID_BASE, GID_BASE), "on disk");

    for id in [&before, &after] {
        crid.stop_and_remove_container(id).await;
    }
    crid.stop_and_remove_pod(&pod.0).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
}

/// The image leases file is written without waiting for the disk, so after a power loss it may
/// be gone or older than the container records: crid rebuilds it from the records at start-up.
/// Removing an image a recorded container uses then only hides it (its layers stay); removing
/// the container lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_leases_are_rebuilt_from_the_container_records_at_start_up() {
    let Some((_reg, image)) = container_registry().await else {
        return;
    };
    let (tmp, net) = setup(62);
    let dir = tmp.path();
    let (mut crid, pod) = start_with_pod(dir, &image).await;
    let id = create_container(&crid, &pod, &image, "leased", &["sleep", "1000"])
        .await
        .expect("create");
    let leases = dir.join("root/images/leases.json");
    let text = std::fs::read_to_string(&leases).expect("leases file");
    assert!(text.contains(&id), "{text}");
    crid.sigkill();
    // What a power loss may leave: the record, but no leases file.
    std::fs::remove_file(&leases).unwrap();

    let crid = Crid::start(dir).await;
    let text = std::fs::read_to_string(&leases).expect("leases file rebuilt");
    assert!(text.contains(&id), "{text}\n{}", crid.log());
    crid.remove_image(&image).await;
    assert!(crid.images().await.is_empty());
    let layers = || {
        std::fs::read_dir(dir.join("root/images/layers/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(layers(), 1, "the leased image's layer went\n{}", crid.log());
    crid.stop_and_remove_container(&id).await;
    assert_eq!(layers(), 0, "the layer outlived its last lease");
    crid.stop_and_remove_pod(&pod).await;
    assert_no_pod_leftovers(dir, &net, &crid.log());
}
