//! Operator features end to end: `crid install` into a temp root (and `systemd-analyze verify`
//! on the installed units), the offline CLI (`crid pods/ps/images/inspect`) reading what a
//! real daemon wrote, and the Prometheus endpoint.

mod common;

use std::process::Command;

use common::{Crid, Net, crid_cli, free_port, plain_http_registry, scrape, write_config};
use conformance::fixtures::fake_registry::{Content, FakeRegistry, small_image};
use serde_json::Value;

#[test]
fn install_puts_everything_in_place_and_the_units_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dest");
    let run = |root: &std::path::Path| {
        common::run_ok(
            Command::new(env!("CARGO_BIN_EXE_crid"))
                .args(["install", "--prefix", "/usr/local", "--dest-root"])
                .arg(root),
        );
    };
    run(&root);
    let bin = root.join("usr/local/bin/crid");
    let units = root.join("usr/local/lib/systemd/system");
    for f in [
        bin.clone(),
        units.join("crid.service"),
        units.join("crid.socket"),
        root.join("etc/crid/config.toml"),
        root.join("etc/cni/net.d/10-crid-bridge.conflist"),
        root.join("etc/crid/certs.d/registry.example.com:5000/hosts.toml.example"),
    ] {
        assert!(f.is_file(), "{} missing", f.display());
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // The installed binary works and its config is the documented default.
    let out = Command::new(&bin)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(root.join("etc/crid/config.toml")).unwrap()
    );
    let service = std::fs::read_to_string(units.join("crid.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/crid --config /etc/crid/config.toml"));
    assert!(service.contains("Type=notify") && service.contains("KillMode=process"));
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("etc/cni/net.d/10-crid-bridge.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "bridge");

    // A second install keeps edited configuration and replaces the units.
    std::fs::write(root.join("etc/crid/config.toml"), "root = \"/srv/crid\"\n").unwrap();
    std::fs::write(units.join("crid.socket"), "garbage").unwrap();
    run(&root);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/crid/config.toml")).unwrap(),
        "root = \"/srv/crid\"\n"
    );
    assert!(
        std::fs::read_to_string(units.join("crid.socket"))
            .unwrap()
            .contains("ListenStream=/run/crid/crid.sock")
    );

    // systemd-analyze verify, with ExecStart pointing at the staged binary (verify checks it
    // is executable on this host).
    let Some(analyze) = common::which("systemd-analyze") else {
        eprintln!("systemd-analyze not installed; units not verified");
        return;
    };
    let check = tmp.path().join("verify");
    std::fs::create_dir_all(&check).unwrap();
    std::fs::write(
        check.join("crid.service"),
        service.replace("/usr/local/bin/crid", &bin.display().to_string()),
    )
    .unwrap();
    std::fs::copy(units.join("crid.socket"), check.join("crid.socket")).unwrap();
    let out = Command::new(analyze)
        .current_dir(&check)
        .args(["verify", "./crid.socket", "./crid.service"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_cli_and_metrics_see_what_the_daemon_made() {
    if !common::can_run_pods() {
        return;
    }
    let mut content = Content::default();
    content.add_image("ops/hello", "v1", &small_image("ops cli"));
    let reg = FakeRegistry::start(content).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    write_config(dir, &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"));
    plain_http_registry(dir, &reg.host());
    let net = Net::new(1, dir);
    std::fs::write(dir.join("net.d/10-test.conflist"), net.conflist()).unwrap();

    let mut crid = Crid::start(dir).await;
    let image = format!("{}/ops/hello:v1", reg.host());
    let image_id = crid.pull(&image).await.expect("pull");
    let pod = crid.run_pod("cli").await.expect("run pod");
    let missing = crid
        .cri
        .runtime
        .clone()
        .pod_sandbox_status(proto::cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nonexistent".into(),
            verbose: false,
        })
        .await;
    assert!(missing.is_err());

    // Metrics: RPCs by method and code, pull bytes, pods by state and handler, and the
    // process metrics of the crate's collector.
    let text = scrape(&format!("127.0.0.1:{port}")).await;
    let rpcs = |method, code| {
        common::metric(
            &text,
            "crid_grpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(rpcs("RunPodSandbox", "Ok"), Some(1.0), "{text}");
    assert_eq!(rpcs("PodSandboxStatus", "NotFound"), Some(1.0), "{text}");
    assert_eq!(
        common::metric(
            &text,
            "crid_grpc_request_duration_seconds_bucket",
            &[("method", "PullImage"), ("code", "Ok"), ("le", "+Inf")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        common::metric(
            &text,
            "crid_image_pull_duration_seconds_count",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert!(common::metric(&text, "crid_image_pull_bytes_total", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(
        common::metric(&text, "crid_pods", &[("state", "ready"), ("handler", "")]),
        Some(1.0),
        "{text}"
    );
    // write_config turns prepared pod networks off.
    assert_eq!(
        common::metric(&text, "crid_prepared_pod_networks", &[]),
        Some(0.0),
        "{text}"
    );
    let crid_pid = crid.pid().expect("crid runs");
    let rss = common::metric(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0);
    assert!(
        rss > 1e6 && rss < 1e9,
        "process_resident_memory_bytes {rss} (VmRSS {} KiB)",
        common::status_kib(crid_pid, "VmRSS")
    );
    let fds = common::metric(&text, "process_open_fds", &[]).unwrap_or(0.0);
    assert!(fds >= 3.0, "process_open_fds {fds}: {text}");
    assert!(
        common::metric(&text, "process_cpu_seconds_total", &[]).is_some(),
        "{text}"
    );

    // The CLI reads the records, with the daemon running and after it is gone.
    for round in 0..2 {
        let pods: Value = serde_json::from_str(&crid_cli(dir, &["pods", "--json"])).unwrap();
        assert_eq!(pods.as_array().unwrap().len(), 1, "round {round}");
        assert_eq!(pods[0]["id"], pod.as_str());
        assert_eq!(pods[0]["state"], "Ready");
        let table = crid_cli(dir, &["pods"]);
        assert!(
            table.contains(&pod[..13]) && table.contains("cli"),
            "{table}"
        );

        let images: Value = serde_json::from_str(&crid_cli(dir, &["images", "--json"])).unwrap();
        assert_eq!(images.as_array().unwrap().len(), 1);
        assert_eq!(images[0]["id"], image_id.as_str());
        assert!(crid_cli(dir, &["images"]).contains("ops/hello"));

        let containers: Value =
            serde_json::from_str(&crid_cli(dir, &["ps", "-a", "--json"])).unwrap();
        assert!(containers.as_array().unwrap().is_empty());

        let i: Value = serde_json::from_str(&crid_cli(dir, &["inspect", &pod[..12]])).unwrap();
        assert_eq!(i["kind"], "pod");
        assert_eq!(i["record"]["id"], pod.as_str());
        assert_eq!(i["pinned"]["netns"], true);
        let i: Value = serde_json::from_str(&crid_cli(dir, &["inspect", &image])).unwrap();
        assert_eq!(i["kind"], "image");
        assert_eq!(i["record"]["id"], image_id.as_str());
        crid.stop();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_crid"))
        .args(common::crid_args(dir))
        .args(["inspect", "ffffffffffff"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let crid = Crid::start(dir).await;
    crid.stop_and_remove_pod(&pod).await;
    assert!(net.reservations().is_empty());
    drop(crid);
}
