//! Hostile requests and process hygiene, through gRPC against the real crid binary, real runc
//! and images served by conformance's in-process registry: oversized requests, memory limits
//! at the edges, image users out of range, log paths leaving the log directory, every RPC on an
//! unknown id, an `ExecSync` printing 1 GiB, a container flooding its stdout, the file
//! descriptors a container's init holds, and the runtime binaries `Status` names. Needs root,
//! runc and a static busybox on the host; skipped with a reason otherwise (failing under CI).

mod common;

use std::path::Path;
use std::time::Duration;

use conformance::fixtures::build::{Compression, Format, ImageSpec, Layer, image};
use conformance::fixtures::fake_registry::{Content, FakeRegistry};
use hyper_util::rt::TokioIo;
use proto::cri;
use proto::cri::runtime_service_client::RuntimeServiceClient;
use serde_json::Value;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

const MIB: u64 = 1 << 20;

fn skip(reason: &str) -> bool {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "hardening tests cannot run in CI: {reason}"
    );
    eprintln!("skipped: {reason}");
    false
}

/// Whether containers can run here: root, runc and a static busybox.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root");
    }
    if common::which("runc").is_none() {
        return skip("runc is not installed");
    }
    if common::host_busybox().is_none() {
        return skip("busybox is not installed");
    }
    true
}

/// A busybox image whose config has `User` = `user` (empty: none), with `extra` files
/// (path, mode, content) added.
fn busybox_image(
    user: &str,
    extra: &[(&str, u32, Vec<u8>)],
) -> conformance::fixtures::build::Built {
    let mut t = common::busybox_tree(&["sh", "sleep", "head", "yes", "cat", "ls", "true"]);
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    t.file("etc/group", 0o644, b"root:x:0:\n");
    for (path, mode, content) in extra {
        t.file(path, *mode, content);
    }
    let mut config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]});
    if !user.is_empty() {
        config["User"] = user.into();
    }
    image(&ImageSpec::new(
        Format::Oci,
        vec![Layer::new(&t.finish(), Compression::Gzip, Format::Oci)],
        config,
    ))
}

/// The seccomp probe (`tests/fixtures/seccomp_probe.c`) built static with gcc, once per test
/// process; `None` without gcc.
fn seccomp_probe() -> Option<&'static [u8]> {
    static PROBE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            common::which("gcc")?;
            let dir = tempfile::tempdir().ok()?;
            let out = dir.path().join("seccomp-probe");
            let source =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seccomp_probe.c");
            let st = std::process::Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&out)
                .arg(&source)
                .status()
                .ok()?;
            assert!(st.success(), "gcc could not build {}", source.display());
            std::fs::read(&out).ok()
        })
        .as_deref()
}

/// The test images on an in-process registry: `hardening/busybox:{ok,uid-2-31,uid-2-32,gid-2-32}`
/// and, with gcc, `hardening/busybox:seccomp` with the seccomp probe at `/bin/seccomp-probe`.
async fn registry() -> (FakeRegistry, String) {
    let mut content = Content::default();
    for (tag, user) in [
        ("ok", ""),
        ("uid-2-31", "2147483648"),
        ("uid-2-32", "4294967296"),
        ("gid-2-32", "0:4294967296"),
    ] {
        content.add_image("hardening/busybox", tag, &busybox_image(user, &[]));
    }
    if let Some(probe) = seccomp_probe() {
        let extra = [("bin/seccomp-probe", 0o755, probe.to_vec())];
        content.add_image("hardening/busybox", "seccomp", &busybox_image("", &extra));
    }
    let reg = FakeRegistry::start(content).await.expect("fake registry");
    let repo = format!("{}/hardening/busybox", reg.host());
    (reg, repo)
}

/// A raw client without the 16 MiB encoding limit of conformance's client, so oversized
/// requests reach the daemon.
async fn unlimited_client(socket: &Path) -> RuntimeServiceClient<Channel> {
    let path = socket.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect");
    RuntimeServiceClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(64 << 20)
}

/// `VmHWM` (peak RSS) and `VmRSS` of `pid` in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The targets of `/proc/PID/fd/*` by fd number.
fn fds(pid: i64) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.parse().ok()?;
                    let t = std::fs::read_link(e.path()).ok()?;
                    Some((n, t.display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// crid (the shared test wrapper, owning its temp dir) with a fake registry of test images.
struct Harness {
    crid: common::Crid,
    _registry: FakeRegistry,
    repo: String,
}

impl std::ops::Deref for Harness {
    type Target = common::Crid;
    fn deref(&self) -> &common::Crid {
        &self.crid
    }
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_under(|_| Vec::new()).await
    }

    /// Starts crid executed by the wrapper `wrapper(dir)` returns (see
    /// [`common::spawn_crid_under`]).
    async fn start_under(wrapper: impl FnOnce(&Path) -> Vec<String>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["net.d", "seccomp", "logs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("config.toml"),
            format!(
                "[cni]\nconf_dir = {:?}\n[runtime]\nseccomp_profile_root = {:?}\n[streaming]\naddress = \"127.0.0.1\"\nport = 0\n",
                d.join("net.d"),
                d.join("seccomp"),
            ),
        )
        .unwrap();
        let (registry, repo) = registry().await;
        let wrapper = wrapper(dir.path());
        Harness {
            crid: common::Crid::start_owned_under(dir, &wrapper).await,
            _registry: registry,
            repo,
        }
    }

    fn pid(&self) -> u32 {
        self.crid.pid().expect("crid runs")
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repo)
    }

    async fn pull(&self, tag: &str) {
        self.expect_pull(&self.image(tag)).await;
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        common::host_net_pod(name, &self.path().join("logs").join(name))
    }

    fn container(&self, tag: &str, name: &str, args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(common::spec(&self.image(tag))),
            command: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    /// Waits (bounded) until the container has exited.
    async fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        self.wait_state(id, cri::ContainerState::ContainerExited)
            .await
    }

    /// The daemon answers and is still the same process.
    async fn assert_healthy(&self) {
        let v = self
            .rt()
            .version(cri::VersionRequest::default())
            .await
            .unwrap_or_else(|e| panic!("crid stopped answering: {e}\n{}", self.log()))
            .into_inner();
        assert_eq!(v.runtime_name, "crid");
        assert!(
            self.crid
                .pid()
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
        );
    }

    /// Removes every container and pod through the API, then checks nothing is left.
    async fn finish(self) {
        common::remove_everything(&self.cri).await;
        assert!(common::mounts_under(self.path()).is_empty());
        self.crid.finish().await;
    }
}

/// Every RPC that names a pod, container or image answers an unknown id as the CRI says:
/// `Stop*`/`Remove*` (and `RemoveImage`) are idempotent `OK`, `ImageStatus` is `OK` without an
/// image, everything else is `NOT_FOUND`.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_get_not_found_or_idempotent_ok() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    let id = || "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string();
    let mut r = h.rt();
    let mut ok: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
    ok.push((
        "StopContainer",
        r.stop_container(cri::StopContainerRequest {
            container_id: id(),
            timeout: 0,
        })
        .await
        .map(|_| ()),
    ));
    ok.push((
        "RemoveContainer",
        r.remove_container(cri::RemoveContainerRequest { container_id: id() })
            .await
            .map(|_| ()),
    ));
    ok.push((
        "StopPodSandbox",
        r.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id(),
        })
        .await
        .map(|_| ()),
    ));
    ok.push((
        "RemovePodSandbox",
        r.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id(),
        })
        .await
        .map(|_| ()),
    ));
    let mut images = h.cri.images.clone();
    ok.push((
        "RemoveImage",
        images
            .remove_image(cri::RemoveImageRequest {
                image: Some(common::spec(&h.image("never-pulled"))),
            })
            .await
            .map(|_| ()),
    ));
    for (what, res) in ok {
        assert!(res.is_ok(), "{what} on an unknown id: {res:?}");
    }
    let status = images
        .image_status(cri::ImageStatusRequest {
            image: Some(common::spec(&h.image("never-pulled"))),
            verbose: true,
        })
        .await
        .expect("ImageStatus on an unknown image")
        .into_inner();
    assert!(status.image.is_none(), "{status:?}");

    let mut not_found: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
    macro_rules! nf {
        ($name:literal, $call:expr) => {
            not_found.push(($name, $call.await.map(|_| ())));
        };
    }
    nf!(
        "StartContainer",
        r.start_container(cri::StartContainerRequest { container_id: id() })
    );
    nf!(
        "ContainerStatus",
        r.container_status(cri::ContainerStatusRequest {
            container_id: id(),
            verbose: true
        })
    );
    nf!(
        "PodSandboxStatus",
        r.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id(),
            verbose: true
        })
    );
    nf!(
        "ExecSync",
        r.exec_sync(cri::ExecSyncRequest {
            container_id: id(),
            cmd: vec!["true".into()],
            timeout: 1
        })
    );
    nf!(
        "Exec",
        r.exec(cri::ExecRequest {
            container_id: id(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    );
    nf!(
        "Attach",
        r.attach(cri::AttachRequest {
            container_id: id(),
            stdout: true,
            ..Default::default()
        })
    );
    nf!(
        "PortForward",
        r.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: id(),
            port: vec![80]
        })
    );
    nf!(
        "UpdateContainerResources",
        r.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id(),
            linux: Some(cri::LinuxContainerResources::default()),
            ..Default::default()
        })
    );
    nf!(
        "ReopenContainerLog",
        r.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id() })
    );
    nf!(
        "ContainerStats",
        r.container_stats(cri::ContainerStatsRequest { container_id: id() })
    );
    nf!(
        "PodSandboxStats",
        r.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: id()
        })
    );
    // CreateContainer in a sandbox that does not exist.
    nf!(
        "CreateContainer",
        r.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id(),
            config: Some(h.container("ok", "orphan", &["true"])),
            sandbox_config: Some(h.pod_config("none")),
        })
    );
    for (what, res) in not_found {
        let e = res.expect_err(what);
        assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}");
    }
    h.assert_healthy().await;
    h.finish().await;
}

/// 100 MB of annotations (pod) or environment (container) is refused by the transport limit;
/// a request under that limit carrying more than Kubernetes allows (256 KiB of labels and
/// annotations, 1 MiB of environment) is INVALID_ARGUMENT. The daemon stays healthy, small,
/// and keeps nothing of them.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_are_refused_and_the_daemon_stays_healthy() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    h.pull("ok").await;
    let mut raw = unlimited_client(&h.path().join("crid.sock")).await;
    let big = |total: usize| -> std::collections::HashMap<String, String> {
        let value = "x".repeat(1 << 20);
        (0..total >> 20)
            .map(|i| (format!("k{i}"), value.clone()))
            .collect()
    };
    let mut pod = h.pod_config("huge");
    pod.annotations = big(100 << 20);
    let e = raw
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("100 MB of annotations");
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "100 MB of annotations: {e:?}"
    );
    h.assert_healthy().await;

    let target = h.run_host_pod("target").await;
    let mut c = h.container("ok", "env", &["true"]);
    c.envs = (0..100)
        .map(|i| cri::KeyValue {
            key: format!("E{i}"),
            value: "y".repeat(1 << 20).into(),
        })
        .collect();
    let e = raw
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: target.0.clone(),
            config: Some(c),
            sandbox_config: Some(target.1.clone()),
        })
        .await
        .expect_err("100 MB of env");
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "100 MB of env: {e:?}"
    );
    h.assert_healthy().await;

    // Under the 16 MiB message limit, but far over what Kubernetes itself allows.
    let mut pod = h.pod_config("big");
    pod.annotations = big(8 << 20);
    let e = raw
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("8 MiB of pod annotations");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut c = h.container("ok", "annotated", &["true"]);
    c.annotations = big(8 << 20);
    let e = h
        .create(&target, c)
        .await
        .expect_err("8 MiB of annotations");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut c = h.container("ok", "env", &["true"]);
    c.envs = (0..8)
        .map(|i| cri::KeyValue {
            key: format!("E{i}"),
            value: "y".repeat(1 << 20).into(),
        })
        .collect();
    let e = h.create(&target, c).await.expect_err("8 MiB of env");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Within the limits all is well.
    let mut c = h.container("ok", "env", &["sh", "-c", "test ${#BIG} = 100000"]);
    c.envs = vec![cri::KeyValue {
        key: "BIG".into(),
        value: "z".repeat(100_000).into(),
    }];
    let id = h.create_start(&target, c).await;
    assert_eq!(h.wait_exited(&id).await.exit_code, 0);

    let pods = h
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let (hwm, _) = memory(h.pid());
    eprintln!(
        "crid peak RSS after the oversized requests: {} MiB",
        hwm / MIB
    );
    // Decoding a refused message must not have kept (or copied) 100 MB around.
    assert!(hwm < 256 * MIB, "crid peaked at {} MiB", hwm / MIB);
    h.assert_healthy().await;
    h.finish().await;
}

/// Memory limits at the edges for runc containers: -1 means "no limit"; 1 byte (anything
/// below Docker's 6 MiB minimum) is refused at CreateContainer and UpdateContainerResources
/// with INVALID_ARGUMENT (runc's own init would not fit: it failed at start with INTERNAL
/// before); i64::MAX
/// (the largest a CRI int64 carries; 2^63 does not fit) is effectively unlimited and runs.
#[tokio::test(flavor = "multi_thread")]
async fn memory_limits_at_the_edges() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    h.pull("ok").await;
    let pod = h.run_host_pod("memory").await;
    let with_limit = |name: &str, limit: i64| {
        let mut c = h.container("ok", name, &[
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ]);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    for (name, limit) in [("minus-one", -1), ("max", i64::MAX)] {
        let id = h.create_start(&pod, with_limit(name, limit)).await;
        let s = h.wait_exited(&id).await;
        assert_eq!(s.exit_code, 0, "{name}: {s:?}");
        let log = std::fs::read_to_string(h.path().join("logs/memory").join(format!("{name}.log")))
            .unwrap_or_default();
        assert!(log.contains(" F "), "{name}: {log}");
        // Unlimited: "max" (cgroup v2) or the page-rounded i64::MAX (v1).
        let value = log.trim_end().rsplit(' ').next().unwrap_or_default();
        assert!(
            value == "max" || value.parse::<u64>().is_ok_and(|v| v > 1 << 62),
            "{name}: {log}"
        );
    }
    for limit in [1, 4095, (6 << 20) - 1] {
        let e = h
            .create(&pod, with_limit("tiny", limit))
            .await
            .expect_err("a limit no container fits in");
        assert_eq!(e.code(), Code::InvalidArgument, "{limit}: {e:?}");
        assert!(e.message().contains("memory"), "{e:?}");
    }
    // UpdateContainerResources checks the same way.
    let id = h
        .create_start(&pod, h.container("ok", "sleeper", &["sleep", "600"]))
        .await;
    let e = h
        .rt()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("update to 1 byte");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let (s, _) = h.container_status(&id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    h.stop_and_remove_container(&id).await;
    h.assert_healthy().await;
    h.finish().await;
}

/// Image `User` values out of range (2^31, 2^32, a group of 2^32) and log paths leaving the
/// pod's log directory (absolute, `..` after a component) are INVALID_ARGUMENT at
/// CreateContainer and leave nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn image_users_and_log_paths_out_of_bounds_are_invalid() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    for tag in ["ok", "uid-2-31", "uid-2-32", "gid-2-32"] {
        h.pull(tag).await;
    }
    let pod = h.run_host_pod("bounds").await;
    for tag in ["uid-2-31", "uid-2-32", "gid-2-32"] {
        let e = h
            .create(&pod, h.container(tag, tag, &["true"]))
            .await
            .expect_err(tag);
        assert_eq!(e.code(), Code::InvalidArgument, "{tag}: {e:?}");
        assert!(e.message().contains("range"), "{tag}: {e:?}");
    }
    let outside = h.path().join("escaped.log");
    for log_path in [
        outside.display().to_string(),
        "a/../../escaped.log".into(),
        "../bounds-other/x.log".into(),
        "./../escaped.log".into(),
    ] {
        let mut c = h.container("ok", "log", &["true"]);
        c.log_path = log_path.clone();
        let e = h.create(&pod, c).await.expect_err(&log_path);
        assert_eq!(e.code(), Code::InvalidArgument, "{log_path}: {e:?}");
    }
    assert!(!outside.exists());
    // AppArmor: a named profile on a host that does not enforce AppArmor is refused (never
    // silently unconfined); with AppArmor, runc would be given the profile.
    let aa_enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    if !aa_enabled {
        for (name, deprecated) in [("aa-field", false), ("aa-string", true)] {
            let mut c = h.container("ok", name, &["true"]);
            let mut sc = cri::LinuxContainerSecurityContext::default();
            if deprecated {
                #[allow(deprecated)]
                {
                    sc.apparmor_profile = "localhost/k8s-custom".into();
                }
            } else {
                sc.apparmor = Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "k8s-custom".into(),
                });
            }
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            });
            let e = h.create(&pod, c).await.expect_err(name);
            assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
            assert!(e.message().contains("AppArmor"), "{name}: {e:?}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(h.path().join("root/containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // The same image with an in-range user works, also with AppArmor's RuntimeDefault (a
    // no-op without AppArmor, crid's default profile with it).
    let mut c = h.container("ok", "fine", &["true"]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = h.create_start(&pod, c).await;
    assert_eq!(h.wait_exited(&id).await.exit_code, 0);
    assert!(h.path().join("logs/bounds/fine.log").exists());
    h.finish().await;
}

/// `ExecSync` of a command printing 1 GiB: crid keeps at most its 16 MiB output cap, answers
/// OK with the output truncated to the cap and the command's exit code, and its memory stays
/// bounded; the container is unharmed.
#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_printing_a_gibibyte_is_bounded() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    h.pull("ok").await;
    let pod = h.run_host_pod("exec").await;
    let id = h
        .create_start(&pod, h.container("ok", "sleeper", &["sleep", "600"]))
        .await;
    let (before, _) = memory(h.pid());
    let r = h
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "head -c 1073741824 /dev/zero; echo done >&2; exit 7".into(),
            ],
            timeout: 120,
        })
        .await;
    let (after, _) = memory(h.pid());
    let r = r
        .unwrap_or_else(|e| panic!("ExecSync of 1 GiB: {e:?}\n{}", h.log()))
        .into_inner();
    eprintln!(
        "ExecSync of 1 GiB: {} bytes of stdout, exit {}",
        r.stdout.len(),
        r.exit_code
    );
    assert!(
        r.stdout.len() as u64 <= 16 * MIB,
        "{} bytes",
        r.stdout.len()
    );
    assert!(r.stdout.len() as u64 >= MIB, "{} bytes", r.stdout.len());
    assert!(r.stdout.iter().all(|b| *b == 0));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.exit_code, 7, "stderr {stderr:?}");
    assert_eq!(stderr, "done\n");
    eprintln!(
        "crid peak RSS {} MiB before, {} MiB after",
        before / MIB,
        after / MIB
    );
    assert!(
        after < before + 128 * MIB,
        "crid's peak RSS grew from {} to {} MiB",
        before / MIB,
        after / MIB
    );
    let again = h
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo still here".into()],
            timeout: 10,
        })
        .await
        .expect("exec after the flood")
        .into_inner();
    assert_eq!(again.stdout, b"still here\n");
    h.stop_and_remove_container(&id).await;
    h.assert_healthy().await;
    h.finish().await;
}

/// A container writing to stdout as fast as it can, in lines and in one endless line: its
/// monitor's memory stays small (lines are split at 16 KiB), the log holds what was written,
/// crid's memory does not follow the log, and the container stops on request.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_flooding_stdout_keeps_monitor_and_daemon_small() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    h.pull("ok").await;
    let pod = h.run_host_pod("flood").await;
    let (crid_before, _) = memory(h.pid());
    for (name, script) in [
        ("lines", "yes flooding-the-log-with-lines"),
        ("endless", "cat /dev/zero"),
    ] {
        let id = h
            .create_start(&pod, h.container("ok", name, &["sh", "-c", script]))
            .await;
        let log = h.path().join("logs/flood").join(format!("{name}.log"));
        // Until 256 MiB are logged (bounded: at most two minutes of polling).
        let mut size = 0;
        for _ in 0..1200 {
            size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            if size >= 256 * MIB {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(size >= 256 * MIB, "{name}: only {size} bytes logged");
        let pid_file = h
            .path()
            .join("state/containers")
            .join(&id)
            .join("monitor.pid");
        let monitor: u32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .parse()
            .unwrap();
        let (monitor_hwm, _) = memory(monitor);
        eprintln!(
            "{name}: {size} bytes logged, monitor peak RSS {} KiB",
            monitor_hwm >> 10
        );
        assert!(monitor_hwm > 0, "monitor {monitor} not found");
        assert!(
            monitor_hwm < 16 * MIB,
            "{name}: the monitor peaked at {} KiB",
            monitor_hwm >> 10
        );
        // Each record is bounded: no line of the CRI log is longer than 16 KiB + its prefix.
        let mut f = std::fs::File::open(&log).unwrap();
        let mut head = vec![0u8; 4 * MIB as usize];
        let n = std::io::Read::read(&mut f, &mut head).unwrap();
        let longest = head[..n]
            .split(|b| *b == b'\n')
            .rev()
            .skip(1)
            .map(<[u8]>::len)
            .max()
            .unwrap_or(0);
        assert!(
            longest <= 16 * 1024 + 64,
            "{name}: a {longest} byte log line"
        );
        if name == "endless" {
            let text = String::from_utf8_lossy(&head[..n.min(200)]).into_owned();
            assert!(text.contains(" stdout P "), "{text:?}");
        }
        h.stop_and_remove_container(&id).await;
    }
    let (crid_after, _) = memory(h.pid());
    eprintln!(
        "crid peak RSS {} MiB before the floods, {} MiB after",
        crid_before / MIB,
        crid_after / MIB
    );
    assert!(
        crid_after < crid_before + 64 * MIB,
        "crid's peak RSS grew from {} to {} MiB while containers logged 512 MiB",
        crid_before / MIB,
        crid_after / MIB
    );
    h.assert_healthy().await;
    h.finish().await;
}

/// The init process runc starts for a container holds stdin, stdout and stderr and nothing
/// else: no descriptor of crid or of its monitor leaks into the container. The monitor holds
/// nothing of crid's either (its socket, log, image store). `Status` verbose info names the
/// runc and hypervisor binaries with their versions.
#[tokio::test(flavor = "multi_thread")]
async fn container_init_holds_only_stdio_and_status_names_the_binaries() {
    if !can_run() {
        return;
    }
    let h = Harness::start().await;
    h.pull("ok").await;
    let pod = h.run_host_pod("fds").await;
    for (name, tty) in [("pipes", false), ("tty", true)] {
        let mut c = h.container("ok", name, &["sleep", "600"]);
        c.tty = tty;
        c.stdin = tty;
        let id = h.create_start(&pod, c).await;
        let (_, info) = h.container_status(&id).await;
        let pid = info["pid"].as_i64().expect("pid in verbose info");
        // runc signals its init to exec the command and returns; until the exec, the pid is
        // still `runc init` with the Go runtime's own descriptors.
        for _ in 0..100 {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = fds(pid);
        let numbers: Vec<u32> = held.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            vec![0, 1, 2],
            "{name}: container init holds {held:?}"
        );
        for (n, target) in &held {
            let ok = target == "/dev/null"
                || target.starts_with("pipe:")
                || target.starts_with("/dev/pts/")
                || target == "/dev/console";
            assert!(ok, "{name}: fd {n} of the container is {target}");
        }
        let monitor: u32 = std::fs::read_to_string(
            h.path()
                .join("state/containers")
                .join(&id)
                .join("monitor.pid"),
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        let crid_fds = fds(i64::from(h.pid()));
        let crid_sockets: Vec<&String> = crid_fds
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with("socket:"))
            .collect();
        let root = h.path().join("root").display().to_string();
        let crid_log = h.path().join("crid.log").display().to_string();
        for (n, target) in fds(i64::from(monitor)) {
            assert!(
                !crid_sockets.contains(&&target),
                "{name}: monitor fd {n} is crid's {target}"
            );
            assert!(
                target != crid_log && !target.starts_with(&format!("{root}/images")),
                "{name}: monitor fd {n} is {target}"
            );
        }
        h.stop_and_remove_container(&id).await;
    }

    let status = h
        .rt()
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let binaries: Value = serde_json::from_str(
        status
            .info
            .get("binaries")
            .expect("binaries in Status info"),
    )
    .unwrap();
    let runc = common::which("runc").unwrap();
    assert_eq!(
        binaries["runc"]["path"].as_str(),
        Some(runc.to_str().unwrap()),
        "{binaries}"
    );
    let version = binaries["runc"]["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("runc version "), "{binaries}");
    for hv in ["qemu-system-x86_64", "firecracker", "cloud-hypervisor"] {
        let entry = &binaries[hv];
        match common::which(hv) {
            Some(p) => {
                assert_eq!(
                    entry["path"].as_str(),
                    Some(p.to_str().unwrap()),
                    "{binaries}"
                );
                assert!(
                    entry["version"].as_str().is_some_and(|v| !v.is_empty()),
                    "{binaries}"
                );
            }
            None => assert!(
                entry["error"].as_str().is_some_and(|e| e.contains(hv)),
                "{binaries}"
            ),
        }
    }
    if common::which("qemu-system-x86_64").is_some() {
        let v = binaries["qemu-system-x86_64"]["version"].as_str().unwrap();
        assert!(v.contains("QEMU"), "{v}");
    }
    h.finish().await;
}

/// `NAME=value` entries of `/proc/PID/environ` (the environment the process was executed with).
fn environ(pid: i64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|e| !e.is_empty())
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The variables systemd hands to its service, which no child of crid may inherit.
fn systemd_variables(env: &[String]) -> Vec<&String> {
    env.iter()
        .filter(|e| {
            ["LISTEN_", "NOTIFY_SOCKET=", "WATCHDOG_"]
                .iter()
                .any(|p| e.starts_with(p))
        })
        .collect()
}

/// Whether descriptor `fd` of `pid` is close-on-exec (`flags` in fdinfo is octal).
fn close_on_exec(pid: i64, fd: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|f| f & libc::O_CLOEXEC as u32 != 0)
}

/// Started the way `crid.socket` starts it (`systemd-socket-activate -l SOCKET`, with a notify
/// socket and a watchdog interval in the environment), crid still notifies readiness and pings
/// the watchdog, while its monitors, a runc container's init and a unikernel's VMM hold neither
/// the activated socket nor any other descriptor of crid's, and none of them has `LISTEN_*`,
/// `NOTIFY_SOCKET` or `WATCHDOG_*` in its environment. The monitor holds only what it needs:
/// stdio on /dev/null and its log, the container's output pipes, its signalfd and the CRI log.
#[tokio::test(flavor = "multi_thread")]
async fn under_socket_activation_children_inherit_no_descriptor_or_variable() {
    if !can_run() {
        return;
    }
    if common::which("systemd-socket-activate").is_none() {
        skip("systemd-socket-activate is not installed (package systemd)");
        return;
    }
    // The unikernel part: the test guest is built with gcc and pushed to the test registry.
    let guest_registry = match std::env::var("CRID_TEST_REGISTRY") {
        Ok(r)
            if ["gcc", "qemu-system-x86_64"]
                .iter()
                .all(|b| common::which(b).is_some()) =>
        {
            Some(r)
        }
        _ => {
            skip("the VMM part needs gcc, qemu and CRID_TEST_REGISTRY");
            None
        }
    };
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let h = Harness::start_under(|dir| {
        vec![
            "systemd-socket-activate".into(),
            "-l".into(),
            dir.join("crid.sock").display().to_string(),
            "-E".into(),
            format!("NOTIFY_SOCKET={}", notify_path.display()),
            "-E".into(),
            "WATCHDOG_USEC=1000000".into(),
        ]
    })
    .await;

    // READY=1, then watchdog pings, though the variables are gone from crid's environment.
    let mut seen = String::new();
    for _ in 0..20 {
        if seen.contains("READY=1") && seen.contains("WATCHDOG=1") {
            break;
        }
        let mut buf = [0u8; 256];
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({seen:?}): {e}\n{}", h.log()));
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        seen.contains("READY=1") && seen.contains("WATCHDOG=1"),
        "{seen:?}"
    );

    // crid serves on the activated socket (fd 3), which children must not inherit.
    let crid_pid = i64::from(h.pid());
    let crid_fds = fds(crid_pid);
    let activated = crid_fds
        .iter()
        .find(|(n, _)| *n == 3)
        .map(|(_, t)| t.clone())
        .expect("crid holds fd 3");
    assert!(activated.starts_with("socket:"), "fd 3 is {activated}");
    assert!(
        close_on_exec(crid_pid, 3),
        "the activated socket is inherited by children"
    );
    let crid_sockets: Vec<String> = crid_fds
        .iter()
        .map(|(_, t)| t.clone())
        .filter(|t| t.starts_with("socket:"))
        .collect();
    let crid_log = h.path().join("crid.log").display().to_string();
    let images = h.path().join("root/images").display().to_string();
    // Nothing of crid's: none of its sockets, its log or its image store.
    let assert_nothing_of_crids = |what: &str, pid: i64| {
        for (n, target) in fds(pid) {
            assert!(
                !crid_sockets.contains(&target)
                    && target != crid_log
                    && !target.starts_with(&images),
                "{what} (pid {pid}) holds crid's {target} as fd {n}: {:?}",
                fds(pid)
            );
        }
        let env = environ(pid);
        let leaked = systemd_variables(&env);
        assert!(
            leaked.is_empty(),
            "{what} (pid {pid}) has {leaked:?} in its environment"
        );
    };
    let monitor_of = |id: &str| -> i64 {
        std::fs::read_to_string(
            h.path()
                .join("state/containers")
                .join(id)
                .join("monitor.pid"),
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };

    // A runc container.
    h.pull("ok").await;
    let pod = h.run_host_pod("activated").await;
    let id = h
        .create_start(&pod, h.container("ok", "sleeper", &["sleep", "600"]))
        .await;
    let (_, info) = h.container_status(&id).await;
    let init = info["pid"].as_i64().expect("pid in verbose info");
    // StartContainer can return before the OCI runtime's init has executed the container's
    // process (it still holds its sync descriptors until then): wait for `sleep` to run.
    for _ in 0..100 {
        if std::fs::read(format!("/proc/{init}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let init_fds: Vec<u32> = fds(init).iter().map(|(n, _)| *n).collect();
    assert_eq!(
        init_fds,
        vec![0, 1, 2],
        "container init holds {:?}",
        fds(init)
    );
    assert_nothing_of_crids("the container's init", init);
    let monitor = monitor_of(&id);
    assert_nothing_of_crids("the monitor", monitor);
    let state_dir = h.path().join("state").display().to_string();
    let logs = h.path().join("logs").display().to_string();
    for (n, target) in fds(monitor) {
        let needed = target == "/dev/null"
            || target.starts_with("pipe:")
            || target == "anon_inode:[signalfd]"
            || target.starts_with(&state_dir)
            || target.starts_with(&logs);
        assert!(
            needed,
            "the monitor holds fd {n} = {target}: {:?}",
            fds(monitor)
        );
    }
    let monitor_env = environ(monitor);
    assert!(
        monitor_env.iter().all(|e| e.starts_with("PATH=")),
        "the monitor's environment is {monitor_env:?}"
    );

    // A pod-wide PID namespace: its holder (an init forked by crid-monitor) holds stdio on
    // /dev/null and nothing else.
    let mut shared = h.pod_config("activated-pidns");
    if let Some(ns) = shared
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
    let shared_id = h.run_pod_under(&shared, "").await;
    let mut in_pod = h.container("ok", "in-pod", &["sleep", "600"]);
    in_pod.linux = None;
    let in_pod = h.create_start(&(shared_id.clone(), shared), in_pod).await;
    let holders: Vec<i64> = common::processes_under(h.path(), None)
        .iter()
        .filter(|p| p.contains("--pid-namespace"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert!(!holders.is_empty(), "no PID namespace holder\n{}", h.log());
    for holder in holders {
        assert_nothing_of_crids("the PID namespace holder", holder);
        let held = fds(holder);
        assert!(
            held.iter().all(|(n, t)| *n <= 2 && t == "/dev/null"),
            "the PID namespace holder holds {held:?}"
        );
    }
    let (_, info) = h.container_status(&in_pod).await;
    assert_nothing_of_crids(
        "a container in the pod's PID namespace",
        info["pid"].as_i64().unwrap(),
    );
    h.stop_and_remove_container(&in_pod).await;

    // A unikernel: the VMM, which a guest escape reaches first, holds nothing of crid's.
    if let Some(reg) = guest_registry {
        let image = common::push_freestanding_guest(&reg, h.path(), "activated");
        h.expect_pull(&image).await;
        let pod = h.run_host_pod_with("activated-vm", "urunc").await;
        let vm = h
            .create_start(
                &pod,
                cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "guest".into(),
                        attempt: 0,
                    }),
                    image: Some(common::spec(&image)),
                    log_path: "guest.log".into(),
                    ..Default::default()
                },
            )
            .await;
        let (_, info) = h.container_status(&vm).await;
        let vmm = info["pid"].as_i64().expect("pid in verbose info");
        // The monitor forks, then the child joins the cgroup and the namespace and execs the VMM:
        // wait for the exec.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_link(format!("/proc/{vmm}/exe"))
            .is_ok_and(|e| e.to_string_lossy().contains("qemu"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no VMM at pid {vmm}\n{}",
                h.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("VMM fds: {:?}\nVMM env: {:?}", fds(vmm), environ(vmm));
        assert_nothing_of_crids("the VMM", vmm);
        assert_nothing_of_crids("the VMM's monitor", monitor_of(&vm));
        for (n, target) in fds(vmm).into_iter().filter(|(n, _)| *n <= 2) {
            assert!(
                target == "/dev/null" || target.starts_with("pipe:"),
                "the VMM's fd {n} is {target}"
            );
        }
        h.stop_and_remove_container(&vm).await;
    }
    h.stop_and_remove_container(&id).await;
    h.finish().await;
}

/// What the seccomp probe printed: errno (0: worked) per call.
fn probe_results(log: &str) -> std::collections::BTreeMap<String, i32> {
    log.lines()
        .filter_map(|l| {
            // CRI log lines: TIME STREAM TAG MESSAGE; the probe's own output is bare.
            let msg = l.splitn(4, ' ').nth(3).unwrap_or(l);
            let mut w = msg.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// `RuntimeDefault` is an allow-list: `io_uring_setup` (allowed by the deny-list crid had
/// before, refused by containerd's and Docker's current profiles) fails with EPERM, and so does
/// `unshare(CLONE_NEWUSER)`; the same probe under `Unconfined` gets what the host gives.
#[tokio::test(flavor = "multi_thread")]
async fn runtime_default_seccomp_refuses_io_uring_and_user_namespaces() {
    if !can_run() {
        return;
    }
    let Some(probe) = seccomp_probe() else {
        skip("gcc is not installed (it builds the seccomp probe)");
        return;
    };
    // The host's answers, for the Unconfined container.
    let dir = tempfile::tempdir().unwrap();
    let host_probe = dir.path().join("probe");
    std::fs::write(&host_probe, probe).unwrap();
    std::fs::set_permissions(
        &host_probe,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let host = probe_results(&String::from_utf8_lossy(
        &std::process::Command::new(&host_probe)
            .output()
            .unwrap()
            .stdout,
    ));
    assert_eq!(host.len(), 2, "{host:?}");

    let h = Harness::start().await;
    h.pull("seccomp").await;
    let pod = h.run_host_pod("seccomp").await;
    use cri::security_profile::ProfileType;
    for (name, profile) in [
        ("default", ProfileType::RuntimeDefault),
        ("unconfined", ProfileType::Unconfined),
    ] {
        let mut c = h.container("seccomp", name, &["/bin/seccomp-probe"]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: profile as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = h.create_start(&pod, c).await;
        let status = h.wait_exited(&id).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        let log = std::fs::read_to_string(&status.log_path).unwrap();
        let got = probe_results(&log);
        match profile {
            ProfileType::RuntimeDefault => {
                assert_eq!(got.get("io_uring_setup"), Some(&libc::EPERM), "{log}");
                assert_eq!(got.get("unshare_newuser"), Some(&libc::EPERM), "{log}");
            }
            _ => assert_eq!(
                got.get("io_uring_setup"),
                host.get("io_uring_setup"),
                "{log}"
            ),
        }
        h.rt()
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    h.finish().await;
}
