//! The network-serving `linux` guest end to end, as a unikernel container runs: Debian's cloud
//! kernel + a busybox initrd (tests/guests/linux) packed as image layers, prepared with
//! `vm::launch::prepare` in a pod-like netns, run with the planned argv; an HTTP request from
//! the host to the pod IP reaches the guest, whose page shows the CRI args and env. Release
//! leaves no tap behind.
//!
//! Needs root, apt (to fetch linux-image-cloud-amd64 once), qemu. On a PVM host the guest runs
//! under TCG (auto), which the test checks is the reported decision.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType};
use sandbox::vm::{
    Accelerator,
    accel::probe_host,
    launch::{VmRequest, VmSettings, prepare, release},
};

mod common;
use common::{in_ns, pod, skip_or_fail};

fn build_guest(layer: &Path) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/linux/build.sh");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crid-linux-guest");
    let out = layer.join("unikernel");
    match Command::new("sh")
        .arg(&script)
        .arg(&out)
        .arg(&cache)
        .status()
    {
        Ok(s) if s.success() => true,
        other => {
            skip_or_fail(&format!("cannot build the linux guest: {other:?}"));
            false
        }
    }
}

fn http_get(ip: std::net::Ipv4Addr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: guest\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn linux_guest_answers_http_on_the_pod_ip() {
    let octet = 20 + (std::process::id() % 200) as u8;
    let Some(p) = pod(octet) else { return };
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer0");
    if !build_guest(&layer) {
        return;
    }
    let id = "11inuxguest0123456789";
    let req = VmRequest {
        container_id: id.into(),
        info: UnikernelInfo {
            cmdline: "/init".into(),
            initrd: Some("/unikernel/initrd.gz".into()),
            ..UnikernelInfo::new(
                UnikernelType::Linux,
                HypervisorKind::Qemu,
                "/unikernel/vmlinuz",
                UnikernelSource::ManifestAnnotations,
            )
        },
        layer_dirs: vec![layer],
        netns: Some(p.ns.clone()),
        iface: "eth0".into(),
        memory_limit_bytes: 256 << 20,
        cpu_quota: 0,
        cpu_period: 0,
        args: vec!["serve".into(), "fast".into()],
        env: vec![("GREETING".into(), "hello pod".into())],
        run_dir: dir.path().join("run"),
        cgroup: None,
        cpu_shares: 0,
        control_socket: None,
        mounts: vec![],
        ports: vec![],
        dns: vec![],
        shared_root: None,
    };
    let host = probe_host();
    let prepared = match prepare(&req, &VmSettings::default(), &host) {
        Ok(p) => p,
        Err(e) => {
            skip_or_fail(&format!("cannot prepare the guest: {e}"));
            return;
        }
    };
    if host.pvm {
        assert_eq!(prepared.accel.accelerator, Accelerator::Tcg);
        assert!(
            prepared.accel.reason.contains("PVM"),
            "{}",
            prepared.accel.reason
        );
    }
    let net = prepared.net.clone().unwrap();
    assert_eq!(net.ip, std::net::Ipv4Addr::new(10, 213, octet, 2));

    // As the monitor starts it: the VMM joins the pod's network namespace before its exec.
    let mut cmd = Command::new(&prepared.argv[0]);
    let netns = std::fs::File::open(prepared.netns.as_ref().unwrap()).unwrap();
    sandbox::monitor::join_before_exec(&mut cmd, Some(netns.into()), vec![]);
    let mut child = cmd
        .args(&prepared.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut log = Vec::new();
    let mut listening = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                listening |= line.contains("crid-linux-guest: listening on 10.213.");
                log.push(line);
                if listening {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let mut answer = Err(std::io::Error::other("not tried"));
    if listening {
        for _ in 0..40 {
            answer = http_get(net.ip);
            if answer.as_ref().is_ok_and(|b| b.contains("200")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    release(&req).unwrap();
    let links = in_ns(&p.ns, &["ip", "-o", "link", "show"]);
    assert!(!links.contains("crtap"), "{links}");

    assert!(
        listening,
        "guest never listened; serial:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter()
            .any(|l| l.contains("crid-linux-guest: init serve fast")),
        "args did not reach init:\n{}",
        log.join("\n")
    );
    let body = answer.unwrap();
    assert!(
        body.contains("hello from crid linux guest: args=[serve fast] greeting=[hello pod]"),
        "{body}"
    );
}
