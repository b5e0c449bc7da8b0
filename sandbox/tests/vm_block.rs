//! A guest's block device is a copy-on-write overlay, not a copy: the `linux` test guest
//! (tests/guests/linux) gets the image's raw block file through `vm::launch::prepare`, reads it,
//! writes a marker and powers off. The base file in the "image store" is byte for byte what it
//! was, the per-container qcow2 overlay is small and holds the guest's write, and release
//! removes it (and the VMM's cgroup and chroot directory).
//!
//! Needs root, apt (to fetch linux-image-cloud-amd64 once), qemu and qemu-img. On a PVM host
//! the guest runs under TCG.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType};
use sandbox::vm::{
    accel::probe_host,
    launch::{VmRequest, VmSettings, prepare, release},
};

mod common;
use common::skip_or_fail;

const BASE_MIB: u64 = 64;
const BASE_HEADER: &[u8] = b"crid-base-block-content\n";

fn build_guest(layer: &Path) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/linux/build.sh");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crid-linux-guest");
    match Command::new("sh")
        .arg(&script)
        .arg(layer.join("unikernel"))
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

#[test]
fn guest_writes_land_in_a_small_overlay_and_the_base_is_unchanged() {
    if !nix::unistd::geteuid().is_root() {
        skip_or_fail("needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer0");
    if !build_guest(&layer) {
        return;
    }
    // The image's block file: a header, then zeros up to 64 MiB (sparse).
    let base = layer.join("unikernel/disk.img");
    {
        let f = std::fs::File::create(&base).unwrap();
        std::io::Write::write_all(&mut &f, BASE_HEADER).unwrap();
        f.set_len(BASE_MIB << 20).unwrap();
    }
    let before = std::fs::read(&base).unwrap();
    let id = "b10ckguest0123456789";
    let cgroup = PathBuf::from(format!("crid-test-vmblock-{}", std::process::id()));
    let req = VmRequest {
        container_id: id.into(),
        info: UnikernelInfo {
            cmdline: "/init".into(),
            initrd: Some("/unikernel/initrd.gz".into()),
            block: Some("/unikernel/disk.img".into()),
            ..UnikernelInfo::new(
                UnikernelType::Linux,
                HypervisorKind::Qemu,
                "/unikernel/vmlinuz",
                UnikernelSource::ManifestAnnotations,
            )
        },
        layer_dirs: vec![layer.clone()],
        netns: None,
        iface: "eth0".into(),
        memory_limit_bytes: 256 << 20,
        cpu_quota: 0,
        cpu_period: 0,
        args: vec!["write-block".into(), "poweroff".into()],
        env: vec![],
        run_dir: dir.path().join("run"),
        cgroup: Some(cgroup.clone()),
        cpu_shares: 0,
        control_socket: None,
        mounts: vec![],
        ports: vec![],
        dns: vec![],
        shared_root: None,
    };
    let prepared = match prepare(&req, &VmSettings::default(), &probe_host()) {
        Ok(p) => p,
        Err(e) => {
            skip_or_fail(&format!("cannot prepare the guest: {e}"));
            return;
        }
    };
    let overlay = req.run_dir.join("block.qcow2");
    assert!(
        prepared
            .plan
            .args
            .iter()
            .any(|a| a == &format!("file={},format=qcow2,if=none,id=blk0", overlay.display())),
        "{:?}",
        prepared.plan.args
    );
    assert!(
        !req.run_dir.join("block.img").exists(),
        "the block file was copied"
    );

    let mut child = Command::new(&prepared.argv[0])
        .args(&prepared.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = reader.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("the guest never powered off:\n{log}"));
    assert_eq!(
        prepared.plan.guest_exit_code(status),
        0,
        "{status:?}\n{log}"
    );
    assert!(
        log.contains("crid-linux-guest: block starts with [crid-base-block-content"),
        "the guest did not see the image's block content:\n{log}"
    );
    assert!(log.contains("crid-linux-guest: wrote block"), "{log}");

    // The base in the image's layer is unchanged; the overlay is small and holds the write.
    assert!(std::fs::read(&base).unwrap() == before, "the base changed");
    let overlay_bytes = std::fs::metadata(&overlay).unwrap().len();
    assert!(
        overlay_bytes < 2 << 20,
        "overlay of a {BASE_MIB} MiB base is {overlay_bytes} bytes"
    );
    let raw = dir.path().join("flat.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let flat = std::fs::read(&raw).unwrap();
    assert!(flat.starts_with(BASE_HEADER), "backing content lost");
    assert!(
        flat[512..].starts_with(b"crid-guest-wrote-this-block"),
        "the guest's write is not in the overlay"
    );

    release(&req).unwrap();
    assert!(!overlay.exists(), "the overlay outlived release");
    assert!(!req.run_dir.join("chroot").exists());
    assert!(
        !Path::new("/sys/fs/cgroup/memory").join(&cgroup).exists(),
        "the VMM's cgroup outlived release"
    );
}
