//! Containers end to end: the real crid binary on a temp socket, real runc, a busybox image
//! built from Debian's busybox-static and pushed with skopeo to the test registry at
//! `CRID_TEST_REGISTRY`. Pods use the host network so no CNI set-up is needed. Needs root,
//! runc, skopeo and the registry; skipped with a reason otherwise (and failing under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Crid, log_text};
use conformance::stream_client::{self, StreamOpts, Transport};
use proto::cri;
use sha2::Digest;
use tonic::Code;

fn missing(reason: &str) -> Option<String> {
    common::skip("container", reason);
    None
}

/// The image reference to use, or `None` (skip) when the host cannot run the tests.
fn image() -> Option<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    let r = IMAGE.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root".into());
        }
        for bin in ["runc", "skopeo", "busybox"] {
            if !common::on_path(bin) {
                return Err(format!("{bin} is not installed"));
            }
        }
        let Ok(reg) = std::env::var("CRID_TEST_REGISTRY") else {
            return Err("CRID_TEST_REGISTRY is not set (scripts/test.sh starts a registry)".into());
        };
        push_busybox(&reg)
    });
    match r {
        Ok(i) => Some(i.clone()),
        Err(e) => missing(e),
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Builds a one-layer busybox image (busybox-static, its applets as symlinks, passwd/group
/// with `nobody` and `www-data`) as an OCI layout and pushes it with skopeo.
fn push_busybox(reg: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let busybox = common::which("busybox").ok_or("busybox not found")?;
    let applets = Command::new(&busybox)
        .arg("--list")
        .output()
        .map_err(|e| e.to_string())?;
    let mut layer = tar::Builder::new(Vec::new());
    let dirh = |name: &str, mode: u32, b: &mut tar::Builder<Vec<u8>>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    for d in [
        "bin", "etc", "proc", "sys", "dev", "root", "home", "var", "usr",
    ] {
        dirh(d, 0o755, &mut layer);
    }
    dirh("tmp", 0o1777, &mut layer);
    let bytes = std::fs::read(&busybox).map_err(|e| e.to_string())?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bytes.len() as u64);
    layer
        .append_data(&mut h, "bin/busybox", &bytes[..])
        .map_err(|e| e.to_string())?;
    for a in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if a == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        layer
            .append_link(&mut h, format!("bin/{a}"), "busybox")
            .map_err(|e| e.to_string())?;
    }
    for (name, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        ),
        (
            "etc/group",
            "root:x:0:\nwww-data:x:33:\nstaff:x:50:nobody\nnogroup:x:65534:\n",
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(text.len() as u64);
        layer
            .append_data(&mut h, name, text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let layers = [layer.into_inner().map_err(|e| e.to_string())?];
    let tag = format!("containers-{}", std::process::id());
    // busybox with `sh` as its command, and a pause image whose command sleeps forever.
    for (repo, cmd) in [
        ("busybox", vec!["sh"]),
        ("pause", vec!["sleep", "2147483647"]),
    ] {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
        });
        let reference = format!("{reg}/crid-tests/{repo}:{tag}");
        push_layout(&dir.path().join("oci"), &layers, config, &reference)?;
    }
    Ok(format!("{reg}/crid-tests/busybox:{tag}"))
}

/// Writes an OCI layout at `oci` of one image, the uncompressed `layers` with the image config
/// `config` (its `rootfs` added here), and copies it to `reference` with skopeo.
fn push_layout(
    oci: &Path,
    layers: &[Vec<u8>],
    mut config: serde_json::Value,
    reference: &str,
) -> Result<(), String> {
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let blob = |b: &[u8]| -> (String, usize) {
        let h = sha256(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        (format!("sha256:{h}"), b.len())
    };
    let descs: Vec<(String, usize)> = layers.iter().map(|l| blob(l)).collect();
    config["rootfs"] = serde_json::json!({
        "type": "layers", "diff_ids": descs.iter().map(|d| &d.0).collect::<Vec<_>>()
    });
    let (cd, cs) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s
        })).collect::<Vec<_>>()
    });
    let (md, ms) = blob(manifest.to_string().as_bytes());
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| e.to_string())?;
    std::fs::write(
        oci.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]})
        .to_string(),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}", oci.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The pause image pushed next to busybox.
fn pause_image() -> String {
    image()
        .map(|i| i.replace("/crid-tests/busybox:", "/crid-tests/pause:"))
        .unwrap_or_default()
}

/// crid on `dir` with this file's config: host-network pods, seccomp profiles from
/// `<dir>/seccomp`, the pause image pushed next to busybox, streaming on loopback.
async fn start(dir: tempfile::TempDir) -> Crid {
    let d = dir.path();
    std::fs::create_dir_all(d.join("net.d")).unwrap();
    std::fs::create_dir_all(d.join("seccomp")).unwrap();
    std::fs::create_dir_all(d.join("logs")).unwrap();
    let config = format!(
        "[cni]\nconf_dir = {:?}\n[runtime]\nseccomp_profile_root = {:?}\n[images]\npause_image = {:?}\n[streaming]\naddress = \"127.0.0.1\"\nport = 0\n",
        d.join("net.d"),
        d.join("seccomp"),
        pause_image(),
    );
    std::fs::write(d.join("config.toml"), config).unwrap();
    Crid::start_owned(dir).await
}

/// [`common::container_config`] in the node's network namespace, logging to `<name>/0.log`.
fn container(image: &str, name: &str, args: &[&str]) -> cri::ContainerConfig {
    let mut c = common::container_config(image, name, args);
    c.log_path = format!("{name}/0.log");
    security(&mut c)
        .namespace_options
        .get_or_insert_with(Default::default)
        .network = cri::NamespaceMode::Node as i32;
    c
}

fn security(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The log's records as (stream, tag, text), checking each timestamp's format.
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (t, s, tag) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            assert!(rfc3339_nano(t), "bad timestamp in {l:?}");
            assert!(matches!(s, "stdout" | "stderr"), "bad stream in {l:?}");
            assert!(matches!(tag, "F" | "P"), "bad tag in {l:?}");
            (
                s.to_owned(),
                tag.to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `2006-01-02T15:04:05.999999999Z07:00`: fraction of 1 to 9 digits or none, then a zone.
fn rfc3339_nano(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) || frac.as_bytes()[n - 1] == b'0' {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z" || (rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')))
}

fn log_path(crid: &Crid, pod: &str, name: &str) -> PathBuf {
    crid.path().join("logs").join(pod).join(name).join("0.log")
}

/// What container `name` of pod `pod` logged, line by line (stdout and stderr).
fn logged(crid: &Crid, pod: &str, name: &str) -> Vec<String> {
    log_records(&log_path(crid, pod, name))
        .into_iter()
        .map(|r| r.2)
        .collect()
}

/// [`logged`] with each line's runs of white space folded to one space.
fn logged_words(crid: &Crid, pod: &str, name: &str) -> Vec<String> {
    logged(crid, pod, name)
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_exit_codes_env_user_and_workdir() {
    let Some(image) = image() else { return };
    let crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let pod = crid.run_host_pod("logs").await;

    let long = "x".repeat(40 * 1024);
    let script =
        format!("echo hello world; echo oops >&2; printf '{long}\\n'; printf tail; exit 42");
    let failing = crid
        .create_start(&pod, container(&image, "echo", &["sh", "-c", &script]))
        .await;
    let s = crid
        .wait_state(&failing, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!((s.exit_code, s.reason.as_str()), (42, "Error"));
    assert!(s.finished_at >= s.started_at && s.started_at > 0);
    let records = log_records(&log_path(&crid, "logs", "echo"));
    let full: Vec<_> = records.iter().filter(|r| r.0 == "stdout").collect();
    assert_eq!(
        full[0],
        &("stdout".into(), "F".into(), "hello world".into())
    );
    assert!(records.contains(&("stderr".into(), "F".into(), "oops".into())));
    // 40 KiB: two 16 KiB partial records and the rest as a full one.
    assert_eq!(full[1].1, "P");
    assert_eq!(full[2].1, "P");
    assert_eq!(full[3].1, "F");
    assert_eq!(
        full[1].2.len() + full[2].2.len() + full[3].2.len(),
        long.len()
    );
    assert_eq!(full[4], &("stdout".into(), "F".into(), "tail".into()));
    assert_eq!(
        s.log_path,
        log_path(&crid, "logs", "echo").display().to_string()
    );

    let mut c = container(&image, "env", &[]);
    c.command = vec![];
    c.args = vec![
        "sh".into(),
        "-c".into(),
        "echo $FOO; pwd; id -u; id -g; id -G".into(),
    ];
    c.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: "bar baz".into(),
    }];
    c.working_dir = "/tmp".into();
    security(&mut c).run_as_username = "nobody".into();
    let s = crid.run_to_exit(&pod, c).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let out = logged(&crid, "logs", "env");
    assert_eq!(out, vec!["bar baz", "/tmp", "65534", "65534", "65534 50"]);

    // A terminal: runc hands the pty to the monitor, which logs it as stdout.
    let mut c = container(&image, "tty", &["sh", "-c", "tty; echo on-tty"]);
    c.tty = true;
    let s = crid.run_to_exit(&pod, c).await;
    assert_eq!(s.exit_code, 0);
    let out: Vec<String> = log_records(&log_path(&crid, "logs", "tty"))
        .into_iter()
        .map(|r| format!("{} {}", r.0, r.2.trim_end_matches('\r')))
        .collect();
    assert_eq!(out, vec!["stdout /dev/pts/0", "stdout on-tty"]);

    let mut c = container(&image, "uid", &["sh", "-c", "id -u; id -g"]);
    security(&mut c).run_as_user = Some(cri::Int64Value { value: 1234 });
    security(&mut c).run_as_group = Some(cri::Int64Value { value: 5678 });
    crid.run_to_exit(&pod, c).await;
    let out = logged(&crid, "logs", "uid");
    assert_eq!(out, vec!["1234", "5678"]);
    crid.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_readonly_rootfs_capabilities_and_seccomp() {
    let Some(image) = image() else { return };
    let crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let pod = crid.run_host_pod("sec").await;
    let host = crid.path().join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from host").unwrap();

    let mut c = container(
        &image,
        "mounts",
        &[
            "sh",
            "-c",
            "cat /rw/in; echo; echo written > /rw/out; echo x > /ro/f && echo ro-writable; touch /rootfs-file && echo rootfs-writable; echo end",
        ],
    );
    for (path, ro) in [("/rw", false), ("/ro", true)] {
        c.mounts.push(cri::Mount {
            container_path: path.into(),
            host_path: host.display().to_string(),
            readonly: ro,
            ..Default::default()
        });
    }
    security(&mut c).readonly_rootfs = true;
    let s = crid.run_to_exit(&pod, c).await;
    assert_eq!(s.exit_code, 0);
    let out: Vec<String> = log_records(&log_path(&crid, "sec", "mounts"))
        .into_iter()
        .filter(|r| r.0 == "stdout")
        .map(|r| r.2)
        .collect();
    assert_eq!(out, vec!["from host", "end"]);
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "written\n"
    );
    assert!(!host.join("f").exists());
    assert_eq!(s.mounts.len(), 2);

    let status_line = "grep -E '^(CapEff|Seccomp):' /proc/self/status";
    let mut c = container(&image, "caps", &["sh", "-c", status_line]);
    let sc = security(&mut c);
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    sc.seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    crid.run_to_exit(&pod, c).await;
    let text = logged_words(&crid, "sec", "caps");
    assert_eq!(text, vec!["CapEff: 0000000000001000", "Seccomp: 2"]);

    let mut c = container(&image, "unconfined", &["sh", "-c", status_line]);
    security(&mut c).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Unconfined as i32,
        ..Default::default()
    });
    crid.run_to_exit(&pod, c).await;
    let text = logged_words(&crid, "sec", "unconfined");
    // The default set: chown dac_override fowner fsetid kill setgid setuid setpcap
    // net_bind_service net_raw sys_chroot mknod audit_write setfcap.
    assert_eq!(text, vec!["CapEff: 00000000a80425fb", "Seccomp: 0"]);

    // A Localhost profile under the root that refuses mkdir with EPERM.
    std::fs::write(
        crid.path().join("seccomp/no-mkdir.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let mut c = container(
        &image,
        "localhost",
        &["sh", "-c", "mkdir /tmp/d || echo refused"],
    );
    security(&mut c).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: crid
            .path()
            .join("seccomp/no-mkdir.json")
            .display()
            .to_string(),
    });
    crid.run_to_exit(&pod, c).await;
    let out: Vec<String> = log_records(&log_path(&crid, "sec", "localhost"))
        .into_iter()
        .filter(|r| r.0 == "stdout")
        .map(|r| r.2)
        .collect();
    assert_eq!(out, vec!["refused"]);
    crid.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_kills_a_hog_with_oomkilled() {
    let Some(image) = image() else { return };
    let crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let pod = crid.run_host_pod("oom").await;
    // The shell doubles a string until the 32 MiB limit stops it.
    let mut c = container(
        &image,
        "hog",
        &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"],
    );
    c.linux.get_or_insert_with(Default::default).resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let s = crid.run_to_exit(&pod, c).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    crid.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_stats_update_reopen_stop_and_events() {
    let Some(image) = image() else { return };
    let crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let mut events = crid
        .rt()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let pod = crid.run_host_pod("exec").await;
    let c = container(
        &image,
        "ticker",
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 3' TERM; while true; do echo tick; sleep 0.2; done",
        ],
    );
    let id = crid.create_start(&pod, c).await;
    let (s, info) = crid.container_status(&id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    let pid = info["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sh");

    // The monitor is the small crid-monitor binary and stays small (a few hundred KiB in a
    // release build; the bound leaves room for debug builds).
    let monitor_pid = std::fs::read_to_string(
        crid.path()
            .join("state/containers")
            .join(&id)
            .join("monitor.pid"),
    )
    .unwrap();
    let monitor_pid = monitor_pid.trim();
    let cmdline = std::fs::read(format!("/proc/{monitor_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .next()
            .unwrap()
            .ends_with("crid-monitor"),
        "{cmdline:?}"
    );
    let rollup = std::fs::read_to_string(format!("/proc/{monitor_pid}/smaps_rollup")).unwrap();
    let pss_kib: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("monitor PSS: {pss_kib} KiB");
    assert!(pss_kib < 3 * 1024, "monitor PSS {pss_kib} KiB");
    let out = crid
        .exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
        .await
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let big = crid
        .exec_sync(&id, &["sh", "-c", "head -c 20000000 /dev/zero"], 30)
        .await
        .unwrap();
    // Capped so that the response fits kubelet's 16 MiB message limit.
    assert!(big.stdout.len() > 15 * 1024 * 1024 && big.stdout.len() < 16 * 1024 * 1024);
    assert!(big.stdout.iter().all(|b| *b == 0));
    let e = crid.exec_sync(&id, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // Stats: CPU and memory are non-zero.
    let st = crid
        .rt()
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(st.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(st.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let all = crid
        .rt()
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);
    let pst = crid
        .rt()
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(pst.linux.unwrap().containers.len(), 1);

    // UpdateContainerResources reaches the cgroup.
    crid.rt()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let cg = info["cgroupsPath"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();
    let limit_file = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup").join(&cg).join("memory.max")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(&cg)
            .join("memory.limit_in_bytes")
    };
    assert_eq!(
        std::fs::read_to_string(&limit_file).unwrap().trim(),
        (96u64 << 20).to_string()
    );

    // Log rotation: rename, reopen, new lines land in a new file.
    let log = log_path(&crid, "exec", "ticker");
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    crid.rt()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_records(&log).iter().any(|r| r.2 == "tick") {
        assert!(Instant::now() < deadline, "no new log after reopen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop: SIGTERM runs the trap; the exit code is the script's.
    crid.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let (s, _) = crid.container_status(&id).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 3)
    );
    assert!(log_records(&log).iter().any(|r| r.2 == "bye"));
    // Idempotent stop and remove; a second remove of a gone container is fine too.
    for _ in 0..2 {
        crid.rt()
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .unwrap();
    }
    for _ in 0..2 {
        crid.rt()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let e = crid
        .rt()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if e.container_id == id {
            kinds.push(e.container_event_type);
            // What kubelet's evented PLEG reads: the pod and its containers.
            assert_eq!(
                e.pod_sandbox_status.as_ref().map(|p| p.id.as_str()),
                Some(pod.0.as_str())
            );
            assert_eq!(e.containers_statuses[0].id, id);
        }
    }
    use cri::ContainerEventType as E;
    assert_eq!(
        kinds,
        vec![
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32,
            E::ContainerDeletedEvent as i32
        ]
    );
    crid.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_crid_sigkill() {
    let Some(image) = image() else { return };
    let mut crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let pod = crid.run_host_pod("restart").await;
    let long = crid
        .create_start(&pod, container(&image, "long", &["sleep", "1000"]))
        .await;
    let flag = crid.path().join("vol");
    std::fs::create_dir_all(&flag).unwrap();
    // Exits once the test says so (while crid is down).
    let mut c = container(
        &image,
        "short",
        &[
            "sh",
            "-c",
            "echo started; while [ ! -e /v/go ]; do sleep 0.1; done; echo done; exit 7",
        ],
    );
    c.mounts.push(cri::Mount {
        container_path: "/v".into(),
        host_path: flag.display().to_string(),
        ..Default::default()
    });
    let short = crid.create_start(&pod, c).await;
    let (_, info) = crid.container_status(&long).await;
    let pid = info["pid"].as_i64().unwrap();

    crid.sigkill();
    let dir = crid.into_dir();
    std::fs::write(flag.join("go"), "").unwrap();
    let exit_file = dir
        .path()
        .join("root/containers")
        .join(&short)
        .join("exit.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exit_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the short container did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let crid = start(dir).await;
    let (s, info) = crid.container_status(&long).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(info["pid"].as_i64().unwrap(), pid);
    let s = crid
        .wait_state(&short, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));
    let out = logged(&crid, "restart", "short");
    assert_eq!(out, vec!["started", "done"]);
    // The re-attached container still stops normally.
    crid.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: long.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let (s, _) = crid.container_status(&long).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    crid.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_arguments_and_leave_nothing() {
    let Some(image) = image() else { return };
    let crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let pod = crid.run_host_pod("bad").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("p.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
    )
    .unwrap();
    let base = container(&image, "bad", &["true"]);
    let mount = |host: &str, ctr: &str| {
        let mut c = base.clone();
        c.mounts.push(cri::Mount {
            container_path: ctr.into(),
            host_path: host.into(),
            ..Default::default()
        });
        c
    };
    let mut cases = vec![
        ("relative host path", mount("tmp", "/x")),
        ("dot-dot host path", mount("/tmp/../etc", "/x")),
        ("/proc", mount("/tmp", "/proc")),
        ("under /proc", mount("/tmp", "/proc/sys/kernel")),
    ];
    let mut c = base.clone();
    security(&mut c).capabilities = Some(cri::Capability {
        add_capabilities: vec!["CAP_MAKE_COFFEE".into()],
        ..Default::default()
    });
    cases.push(("unknown capability", c));
    let mut c = base.clone();
    security(&mut c).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: outside.path().join("p.json").display().to_string(),
    });
    cases.push(("seccomp outside the root", c));
    let mut c = base.clone();
    c.log_path = "../../escape.log".into();
    cases.push(("log path escape", c));
    let mut c = base.clone();
    security(&mut c).run_as_user = Some(cri::Int64Value { value: 1 << 31 });
    cases.push(("uid above 2^31-1", c));
    let mut c = base.clone();
    c.metadata = None;
    cases.push(("no metadata", c));
    for (what, c) in cases {
        let e = crid.create(&pod, c).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    let list = crid.containers().await;
    assert!(list.is_empty());
    let left: Vec<_> = std::fs::read_dir(crid.path().join("root/containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(!crid.path().join("escape.log").exists());

    // A container name is reserved once per pod; unknown ids are NOT_FOUND.
    let id = crid.create(&pod, base.clone()).await.unwrap();
    let e = crid.create(&pod, base.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = crid
        .rt()
        .start_container(cri::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    crid.start_container(&id).await;
    crid.wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let e = crid
        .rt()
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let filtered = crid
        .rt()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited as i32,
                }),
                pod_sandbox_id: pod.0.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(filtered.len(), 1);

    // A command the image lacks: StartContainer fails and says why; the container is exited.
    let missing = crid
        .create(&pod, container(&image, "missing", &["/no/such/binary"]))
        .await
        .unwrap();
    let e = crid
        .rt()
        .start_container(cri::StartContainerRequest {
            container_id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("/no/such/binary"), "{e:?}");
    let (s, _) = crid.container_status(&missing).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.reason, "StartError");
    crid.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_wide_pid_namespace_through_the_holder() {
    let Some(image) = image() else { return };
    let crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let mut pod = crid.run_host_pod("pidns").await;
    // The same pod, again with a pod-wide PID namespace.
    crid.stop_and_remove_pod(&pod.0).await;
    let pod_ns = |c: &mut Option<cri::NamespaceOption>| {
        if let Some(o) = c.as_mut() {
            o.pid = cri::NamespaceMode::Pod as i32;
        }
    };
    pod_ns(
        &mut pod
            .1
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options,
    );
    pod.0 = crid.run_pod_under(&pod.1, "").await;
    // The holder runs from RunPodSandbox on, before any container: no runc, no image.
    let holder_root = crid.path().join("state/pidns-root");
    assert_eq!(common::pids_under(&holder_root, None).len(), 1);
    let mut a = container(&image, "sleeper", &["sleep", "1000"]);
    pod_ns(&mut security(&mut a).namespace_options);
    let a = crid.create_start(&pod, a).await;
    let mut b = container(&image, "ps", &["ps", "-o", "pid,args"]);
    pod_ns(&mut security(&mut b).namespace_options);
    crid.run_to_exit(&pod, b).await;
    let out = logged_words(&crid, "pidns", "ps");
    assert!(
        out.iter()
            .any(|l| l.starts_with("1 ") && l.contains("--pid-namespace")),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l.ends_with("sleep 1000")), "{out:?}");
    // The holder is not listed.
    let listed = crid.containers().await;
    assert_eq!(listed.len(), 2);
    // Stopping the pod stops its containers (the holder last); removing it removes them all.
    crid.rt()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    let (s, _) = crid.container_status(&a).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    // SIGKILLed and reaped by init, which may take a moment.
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        common::pids_under(&holder_root, None).is_empty()
    });
    assert!(gone, "the PID namespace holder outlived StopPodSandbox");
    crid.rt()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(crid.path().join("root/containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    crid.finish().await;
}

/// Attaches to `id` with stdin (and a terminal when `tty`) and returns the session.
async fn attach(crid: &Crid, id: &str, tty: bool, transport: Transport) -> stream_client::Session {
    let url = crid
        .rt()
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap_or_else(|e| panic!("attach {id}: {e}\n{}", log_text(crid.path())))
        .into_inner()
        .url;
    stream_client::connect(&url, transport, StreamOpts::new(tty, true))
        .await
        .unwrap_or_else(|e| panic!("attach session {id}: {e:#}\n{}", log_text(crid.path())))
}

/// Types `input` until `needle` shows up on stdout (typing again covers output the log
/// follower may not have started to follow yet, and a resize still on its way).
async fn type_until(s: &mut stream_client::Session, input: &str, needle: &str) {
    let mut last = None;
    for _ in 0..5 {
        s.write_stdin(input.as_bytes()).await.unwrap();
        match s.read_stdout_until(needle, Duration::from_secs(5)).await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("{needle:?} never came back for {input:?}: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_types_into_sh_and_cat_across_a_crid_sigkill() {
    let Some(image) = image() else { return };
    let mut crid = start(tempfile::tempdir().unwrap()).await;
    crid.expect_pull(&image).await;
    let pod = crid.run_host_pod("attach").await;
    let mut c = container(&image, "sh", &["sh"]);
    c.stdin = true;
    c.tty = true;
    let sh = crid.create_start(&pod, c).await;
    let mut c = container(&image, "cat", &["cat"]);
    c.stdin = true;
    let cat = crid.create_start(&pod, c).await;
    let mut c = container(&image, "once", &["cat"]);
    c.stdin = true;
    c.stdin_once = true;
    let once = crid.create_start(&pod, c).await;
    // Without stdin in its config, a container cannot be attached with stdin.
    let plain = crid
        .create_start(&pod, container(&image, "plain", &["sleep", "1000"]))
        .await;
    let e = crid
        .rt()
        .attach(cri::AttachRequest {
            container_id: plain.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    for (round, transports) in [
        (1, [Transport::SPDY_V4, Transport::WS_V5]),
        (2, [Transport::WS_V5, Transport::SPDY_V4]),
    ] {
        // The shell's terminal echoes the command; only its output starts a line.
        let mut s = attach(&crid, &sh, true, transports[0]).await;
        type_until(&mut s, "echo hello-attach\n", "\nhello-attach").await;
        let (w, h) = (90 + round, 30 + round);
        s.resize(w, h).await.unwrap();
        type_until(&mut s, "stty size\n", &format!("{h} {w}")).await;
        drop(s);
        let mut s = attach(&crid, &cat, false, transports[1]).await;
        type_until(
            &mut s,
            &format!("hello-cat-{round}\n"),
            &format!("hello-cat-{round}"),
        )
        .await;
        drop(s);
        if round == 1 {
            // The monitors own the containers' stdio: a new crid attaches again.
            crid.sigkill();
            let dir = crid.into_dir();
            crid = start(dir).await;
        }
    }
    // Both stay running after their clients left.
    for id in [&sh, &cat] {
        let (s, _) = crid.container_status(id).await;
        assert_eq!(
            s.state,
            cri::ContainerState::ContainerRunning as i32,
            "{id}"
        );
    }

    // stdin_once: the end of the first attach closes stdin, so `cat` ends.
    let mut s = attach(&crid, &once, false, Transport::WS_V5).await;
    type_until(&mut s, "hello-once\n", "hello-once").await;
    s.close_stdin().await.unwrap();
    drop(s);
    let st = crid
        .wait_state(&once, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 0);
    crid.finish().await;
}

/// Pushes a two-layer image of plain files to `reg` and returns its reference. Layer 1 holds
/// `data/{a,b,sub/file}`; layer 2 deletes `data/b` (a whiteout) and adds `data/c`: mounted
/// right, the image shows `a`, `c` and `sub/file`, never `b`.
fn push_data_image(reg: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let layer = |files: &[(&str, &str)]| -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            match name.strip_suffix('/') {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, d, std::io::empty()).unwrap();
                }
                None => {
                    h.set_mode(0o644);
                    h.set_size(text.len() as u64);
                    b.append_data(&mut h, name, text.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    };
    let layers = [
        layer(&[
            ("data/", ""),
            ("data/a", "a"),
            ("data/b", "b"),
            ("data/sub/", ""),
            ("data/sub/file", "f"),
        ]),
        layer(&[("data/", ""), ("data/.wh.b", ""), ("data/c", "c")]),
    ];
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}});
    let reference = format!("{reg}/crid-tests/data:containers-{}", std::process::id());
    push_layout(&dir.path().join("oci"), &layers, config, &reference)?;
    Ok(reference)
}

/// An image volume mount of `image` at `path`, as kubelet sends it.
fn image_volume(path: &str, image: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(common::spec(image)),
        image_sub_path: sub_path.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_mount_read_only_with_sub_paths_and_lease_their_image() {
    let Some(img) = image() else { return };
    let reg = std::env::var("CRID_TEST_REGISTRY").unwrap();
    let data = push_data_image(&reg).expect("push the data image");
    let crid = start(tempfile::tempdir().unwrap()).await;
    let img_id = crid.expect_pull(&img).await;
    let data_id = crid.expect_pull(&data).await;
    let pod = crid.run_host_pod("volumes").await;

    let mut c = container(&img, "reader", &["sleep", "1000"]);
    c.mounts = vec![
        image_volume("/data", &data_id, ""),
        image_volume("/sub", &data, "data/sub"),
        image_volume("/bb", &img, ""),
    ];
    let id = crid.create_start(&pod, c).await;
    let run = |cmd: &'static [&'static str]| {
        let crid = &crid;
        let id = id.clone();
        async move {
            let r = crid.exec_sync(&id, cmd, 10).await.expect("exec");
            (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
        }
    };
    // Both layers, in order: the upper one's whiteout hides `b`.
    assert_eq!(
        run(&["cat", "/data/data/a", "/data/data/c"]).await,
        (0, "ac".into())
    );
    assert_ne!(run(&["ls", "/data/data/b"]).await.0, 0, "a whiteout shows");
    assert_eq!(run(&["cat", "/sub/file"]).await, (0, "f".into()));
    assert_ne!(
        run(&["ls", "/sub/data"]).await.0,
        0,
        "the sub path was ignored"
    );
    // Read-only, but executable (critest checks both).
    assert_ne!(
        run(&["touch", "/data/new"]).await.0,
        0,
        "an image volume is writable"
    );
    assert_ne!(
        run(&["mkdir", "/bb/new"]).await.0,
        0,
        "an image volume is writable"
    );
    assert_eq!(
        run(&["/bb/bin/busybox", "true"]).await.0,
        0,
        "noexec image volume"
    );

    let (status, _) = crid.container_status(&id).await;
    let sub = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/sub")
        .expect("the /sub mount in the status");
    let spec = sub.image.as_ref().expect("the mount's image");
    assert_eq!(
        (spec.image.as_str(), spec.image_ref.as_str()),
        (data.as_str(), data_id.as_str())
    );
    assert_eq!(sub.image_sub_path, "data/sub");
    assert!(sub.readonly && sub.host_path.is_empty(), "{sub:?}");
    let bb = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/bb")
        .unwrap();
    assert_eq!(bb.image.as_ref().unwrap().image_ref, img_id);

    // Removing an image a volume uses succeeds (as in containerd): it is no longer listed,
    // but its content stays while the container exists.
    crid.remove_image(&data).await;
    assert!(
        !crid.images().await.iter().any(|i| i.id == data_id),
        "still listed"
    );
    assert_eq!(run(&["cat", "/sub/file"]).await, (0, "f".into()));
    let layers = crid.store_entries("layers/sha256").len();

    // Refused requests, each with the code kubelet expects and nothing left behind.
    let create = |name: &str, m: cri::Mount| {
        let mut c = container(&img, name, &["sleep", "1000"]);
        c.mounts = vec![m];
        crid.create(&pod, c)
    };
    let writable = cri::Mount {
        readonly: false,
        ..image_volume("/v", &img, "")
    };
    let cases = [
        ("writable", writable, Code::InvalidArgument),
        (
            "missing-sub",
            image_volume("/v", &img, "nope"),
            Code::InvalidArgument,
        ),
        (
            "file-sub",
            image_volume("/v", &img, "etc/passwd"),
            Code::InvalidArgument,
        ),
        (
            "up-sub",
            image_volume("/v", &img, "etc/../.."),
            Code::InvalidArgument,
        ),
        (
            "abs-sub",
            image_volume("/v", &img, "/etc"),
            Code::InvalidArgument,
        ),
        ("gone-image", image_volume("/v", &data, ""), Code::NotFound),
    ];
    for (name, m, code) in cases {
        let e = create(name, m).await.expect_err(name);
        assert_eq!(e.code(), code, "{name}: {e:?}");
        assert!(
            e.message().starts_with("ImageVolumeMountFailed"),
            "{name}: kubelet's reason is missing: {e:?}"
        );
    }

    // Removing the container unmounts its volumes and drops the leases: the removed image's
    // layers are collected.
    crid.rt()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove the container");
    let left = common::mounts_under(crid.path());
    assert!(!left.iter().any(|m| m.contains("/volumes/")), "{left:?}");
    assert!(
        crid.store_entries("layers/sha256").len() < layers,
        "the removed volume image's layers were kept"
    );
    crid.finish().await;
}
