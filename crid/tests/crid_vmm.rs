//! crid's own VMM end to end through the CRI: the freestanding test guest packed for the
//! `crid` hypervisor, and the same kernel packed for `qemu`, which `vm.crid_vmm_for = ["qemu"]`
//! moves onto crid-vmm. crid finds `crid-vmm` next to its own executable (`target/debug`).
//! Checks: the serial output in the CRI log, the guest's exit code as the container's, the VMM
//! as the container's process (unprivileged, seccomp, chroot, in the container's cgroup),
//! nothing left (process, cgroup, container directory) after stop and remove, and an image's
//! block file as the guest's virtio-blk disk (its writes in the container's private copy only).
//! Needs root, gcc, nsenter, /dev/kvm and the registry; skipped with a reason otherwise
//! (failing under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Crid, log_text};
use proto::cri;

/// `target/debug/crid-vmm`, built when missing (scripts/test.sh builds the workspace first).
fn vmm_binary() -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_crid"))
        .parent()
        .unwrap()
        .join("crid-vmm");
    if !path.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "crid-vmm"])
            .status()
            .unwrap();
        assert!(st.success(), "building crid-vmm failed");
    }
    path
}

fn ready() -> Option<String> {
    let reg = common::registry_for("crid-vmm", &["gcc", "nsenter"])?;
    if !sandbox::vm::accel::probe_host().usable {
        common::skip("crid-vmm", "/dev/kvm is not usable");
        return None;
    }
    Some(reg)
}

/// Waits (bounded) until the container's log holds `text`.
async fn wait_log(log: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            Instant::now() < deadline,
            "{} never showed {text:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// crid with crid-vmm also running the images labelled for `hypervisor`, `images` pulled, and
/// a host-network pod `pod` under `urunc`; returns crid, the pod and the pod's log directory.
async fn start_for(
    hypervisor: &str,
    images: &[&str],
    pod: &str,
) -> (Crid, (String, cri::PodSandboxConfig), PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &format!("[vm]\ncrid_vmm_for = [\"{hypervisor}\"]\n"),
    );
    let crid = Crid::start_owned(dir).await;
    for image in images {
        crid.expect_pull(image).await;
    }
    let sandbox = crid.run_host_pod_with(pod, "urunc").await;
    let logs = crid.path().join("logs").join(pod);
    (crid, sandbox, logs)
}

/// A guest container of `image` with CRI `args`, 32 MiB and the log `NAME.log`.
fn guest(image: &str, name: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..common::guest_config(image, name, args)
    }
}

#[tokio::test]
async fn freestanding_guest_on_crid_vmm_through_the_cri() {
    let Some(reg) = ready() else { return };
    let vmm = vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let kernel = work.path().join("guest.elf");
    let own = common::push_guest_as(
        &reg,
        &kernel,
        "unikraft",
        "crid",
        "exit=3 from-image",
        "crid",
    );
    let for_qemu = common::push_guest_as(
        &reg,
        &kernel,
        "unikraft",
        "qemu",
        "exit=4 from-image",
        "crid-qemu",
    );

    let (crid, pod, logs) = start_for("qemu", &[&own, &for_qemu], "vmm").await;

    // The guest's output is the CRI log; its exit code is the container's.
    let a = crid
        .create_start(&pod, guest(&own, "args", &["exit=5", "from-cri"]))
        .await;
    let s = crid
        .wait_state(&a, cri::ContainerState::ContainerExited)
        .await;
    let log = std::fs::read_to_string(logs.join("args.log")).unwrap_or_default();
    assert_eq!(s.exit_code, 5, "log:\n{log}\n{}", log_text(crid.path()));
    assert!(log.contains("stdout F crid-test-guest: booted"), "{log}");
    assert!(log.contains("-- exit=5 from-cri"), "{log}");
    let (_, info) = crid.container_status(&a).await;
    assert_eq!(
        info["runtimeSpec"]["unikernel"]["request"]["info"]["hypervisor"],
        "crid"
    );

    // An image for QEMU runs on crid-vmm under vm.crid_vmm_for, with its image command line.
    let q = crid.create_start(&pod, guest(&for_qemu, "qemu", &[])).await;
    let s = crid
        .wait_state(&q, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 4, "{}", log_text(crid.path()));
    let (_, info) = crid.container_status(&q).await;
    assert_eq!(
        info["runtimeSpec"]["unikernel"]["request"]["info"]["hypervisor"], "crid",
        "vm.crid_vmm_for did not move the qemu image: {info}"
    );

    // A guest that halts: the VMM is the container's process, confined, in its cgroup.
    let c = crid
        .create_start(&pod, guest(&own, "stay", &["stay"]))
        .await;
    wait_log(&logs.join("stay.log"), "crid-test-guest: halting").await;
    let (_, info) = crid.container_status(&c).await;
    let pid = info["pid"].as_i64().expect("pid in verbose info");
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default().to_vec();
    assert_eq!(
        Path::new(&String::from_utf8_lossy(&argv0).to_string()),
        vmm.as_path(),
        "the container's process is not crid-vmm next to crid"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(field("Uid").split(' ').all(|u| u != "0"), "{status}");
    assert!(field("Gid").split(' ').all(|g| g != "0"), "{status}");
    assert_eq!(field("Seccomp"), "2", "{status}");
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
    assert_eq!(field("CapEff"), "0000000000000000", "{status}");
    let rel = assert_chrooted_in_its_cgroup(pid, &info);
    eprintln!(
        "crid-vmm VmRSS with a halted 32 MiB guest: {} ",
        field("VmRSS")
    );

    crid.stop_container(&c, 2).await;
    let s = crid
        .wait_state(&c, cri::ContainerState::ContainerExited)
        .await;
    // The stop signal (SIGTERM) ends crid-vmm at once.
    assert_eq!(s.exit_code, 143, "{s:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "crid-vmm outlived its stop"
    );

    for id in [&a, &q, &c] {
        crid.remove_container(id).await;
    }
    for ctl in ["memory", "cpu", "devices"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctl).join(&rel);
        assert!(!dir.exists(), "{} outlived the VMM", dir.display());
    }
    // The pool's waiting entry (prepared for these guests' size once one started) is crid's
    // own until crid ends: it is looked for after that.
    let state = crid.path().display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("crid-vmm") && c.contains(&state) && !c.contains("--prepare"))
        .collect();
    assert!(left.is_empty(), "VMMs left: {left:?}");
    let path = crid.path().to_owned();
    crid.finish().await;
    expect_no_process_under(&path).await;
}

/// The image's block file: a marker at the start of sector 0, zeros elsewhere (16 sectors).
fn disk_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let mut bytes = vec![0u8; 16 * 512];
    let marker = b"crid-disk-marker from the image";
    bytes[..marker.len()].copy_from_slice(marker);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Builds the freestanding guest into `dir` and pushes it as a unikraft image for
/// `hypervisor` with the image command line `cmdline` and `disk` as its block device, tagged
/// `tag`.
fn push_disk_guest(
    reg: &str,
    dir: &Path,
    disk: &Path,
    hypervisor: &str,
    cmdline: &str,
    tag: &str,
) -> String {
    common::push_guest_with(
        reg,
        &dir.join("guest.elf"),
        "unikraft",
        hypervisor,
        cmdline,
        tag,
        &["--block", disk.to_str().unwrap()],
    )
}

/// The container's request as crid recorded it (verbose status): its block file in the image's
/// layers and its run directory.
async fn block_paths(crid: &Crid, id: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (_, info) = crid.container_status(id).await;
    let req = &info["runtimeSpec"]["unikernel"]["request"];
    assert_eq!(req["info"]["hypervisor"], "crid", "{info}");
    let layer = req["layer_dirs"]
        .as_array()
        .expect("layer_dirs in verbose info")
        .iter()
        .filter_map(|d| d.as_str())
        .map(|d| Path::new(d).join("unikernel/disk.img"))
        .find(|p| p.exists())
        .expect("the block file in the image's layers");
    let run_dir = Path::new(req["run_dir"].as_str().expect("run_dir")).to_path_buf();
    (layer, run_dir)
}

const WRITTEN: &[u8] = b"crid-test-guest wrote sector 1";

#[tokio::test]
async fn guest_disk_on_crid_vmm_through_the_cri() {
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let (disk, original) = disk_image(work.path());
    let own = push_disk_guest(&reg, work.path(), &disk, "crid", "stay", "crid-blk");
    let for_fc = push_disk_guest(
        &reg,
        work.path(),
        &disk,
        "firecracker",
        "exit=6",
        "crid-fc-blk",
    );

    let (crid, pod, logs) = start_for("firecracker", &[&own, &for_fc], "vmm-blk").await;

    // The guest reads the image's marker and writes sector 1 of its disk, which is the
    // container's private copy: the copy has the write, the image's layer file does not.
    let c = crid.create_start(&pod, guest(&own, "disk", &[])).await;
    let log = logs.join("disk.log");
    wait_log(&log, "crid-test-guest: disk: write read back").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("crid-test-guest: disk marker: crid-disk-marker from the image"),
        "{text}"
    );
    let (layer_file, run_dir) = block_paths(&crid, &c).await;
    assert_eq!(std::fs::read(&layer_file).unwrap(), original);
    let copy = std::fs::read(run_dir.join("block.img")).unwrap();
    assert_eq!(&copy[512..512 + WRITTEN.len()], WRITTEN);
    assert_eq!(copy[..512], original[..512]);
    crid.stop_container(&c, 2).await;
    let s = crid
        .wait_state(&c, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 143, "{s:?}");
    assert!(
        !run_dir.join("block.img").exists(),
        "the disk copy outlived the guest"
    );

    // A Firecracker image with a block device runs on crid-vmm under vm.crid_vmm_for.
    let f = crid.create_start(&pod, guest(&for_fc, "fc", &[])).await;
    let s = crid
        .wait_state(&f, cri::ContainerState::ContainerExited)
        .await;
    let text = std::fs::read_to_string(logs.join("fc.log")).unwrap_or_default();
    assert_eq!(s.exit_code, 6, "log:\n{text}\n{}", log_text(crid.path()));
    assert!(
        text.contains("crid-test-guest: disk marker: crid-disk-marker from the image"),
        "{text}"
    );
    assert!(
        text.contains("crid-test-guest: disk: write read back"),
        "{text}"
    );
    let (layer_file, _) = block_paths(&crid, &f).await;
    assert_eq!(std::fs::read(&layer_file).unwrap(), original);
    for id in [&c, &f] {
        crid.remove_container(id).await;
    }
    crid.finish().await;
}

/// A `linux` image with `mountRootfs=true` for crid-vmm boots from a block root: its
/// container's root file system (the image's files, the CRI mounts, `/etc/crid`) copied into an
/// ext4 image that crid-vmm gives the guest as its virtio-blk disk. Linux does not boot on this
/// host's KVM (PVM), so the freestanding guest, packed as a `linux` image with an initrd, plays
/// the guest with its polling driver: the disk it reads is the built file system (the ext4
/// magic at byte 1080), its write lands in the container's image, its command line names the
/// root and carries no argv; the mount is noted `block`, the ConfigMap's file is in the image,
/// and the image goes when the guest ends. Untrusted content: the volume's link to a host file
/// and its device node are a link and a node in the image, never their content; a tree larger
/// than a block root holds (a sparse 5 GiB file) fails StartContainer with RESOURCE_EXHAUSTED
/// before anything is written, and leaves nothing mounted or on disk.
#[tokio::test]
async fn linux_block_root_on_crid_vmm_is_the_built_file_system() {
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let initrd = work.path().join("initrd.img");
    std::fs::write(&initrd, b"not read by the freestanding guest").unwrap();
    let config_map = work.path().join("config");
    std::fs::create_dir_all(&config_map).unwrap();
    std::fs::write(config_map.join("greeting"), "hello from the host").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", config_map.join("shadow")).unwrap();
    nix::sys::stat::mknod(
        &config_map.join("mem"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 1),
    )
    .unwrap();
    let image = common::push_guest_with(
        &reg,
        &work.path().join("guest.elf"),
        "linux",
        "crid",
        "stay",
        "crid-blkroot",
        &["--initrd", initrd.to_str().unwrap(), "--mount-rootfs"],
    );
    let (crid, pod, logs) = start_for("firecracker", &[&image], "vmm-blkroot").await;
    let mut config = guest(&image, "root", &["stay-here"]);
    config.mounts = vec![cri::Mount {
        container_path: "/etc/app".into(),
        host_path: config_map.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let c = crid.create_start(&pod, config).await;
    let log = logs.join("root.log");
    wait_log(&log, "crid-test-guest: disk: write read back").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("crid-test-guest: disk: bytes 1080-1081: ef53")
            && text.contains("crid.root=block:vda")
            && !text.contains("stay-here"),
        "{text}"
    );
    let (_, info) = crid.container_status(&c).await;
    let notes = &info["runtimeSpec"]["unikernel"]["mount_notes"];
    assert_eq!(notes[0]["delivery"], "block", "{info}");
    let run_dir = PathBuf::from(
        info["runtimeSpec"]["unikernel"]["request"]["run_dir"]
            .as_str()
            .expect("run_dir"),
    );
    let root_image = run_dir.join("rootfs.ext4");
    let bytes = std::fs::read(&root_image).unwrap();
    assert_eq!(&bytes[512..512 + WRITTEN.len()], WRITTEN);
    assert_eq!(&bytes[1080..1082], &[0x53, 0xef]);
    if let Some(debugfs) = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        let run = |request: &str| {
            let out = Command::new(debugfs)
                .args(["-R", request])
                .arg(&root_image)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(run("cat /etc/app/greeting"), "hello from the host");
        let link = run("stat /etc/app/shadow");
        assert!(
            link.contains("Type: symlink") && link.contains("\"/etc/shadow\""),
            "{link}"
        );
        let node = run("stat /etc/app/mem");
        assert!(node.contains("Type: character special"), "{node}");
    }
    crid.stop_container(&c, 2).await;
    let s = crid
        .wait_state(&c, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 143, "{s:?}");
    assert!(!root_image.exists(), "the root image outlived the guest");
    crid.remove_container(&c).await;

    // A tree past the limit: refused before anything is written.
    let huge = work.path().join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    std::fs::File::create(huge.join("sparse"))
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    let mut config = guest(&image, "huge", &[]);
    config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: huge.display().to_string(),
        ..Default::default()
    }];
    let h = crid.create(&pod, config).await.unwrap();
    let err = crid
        .rt()
        .start_container(cri::StartContainerRequest {
            container_id: h.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("block root"), "{err}");
    let container_dir = crid.path().join("root/containers").join(&h);
    assert!(!container_dir.join("vm/rootfs.ext4").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.lines().any(|l| l.contains(&h)), "still mounted");
    crid.remove_container(&h).await;
    assert!(!container_dir.exists());
    crid.finish().await;
}

/// A QEMU image that declares virtio-mmio drivers (`crid unikernel pack --virtio mmio`) runs on
/// crid-vmm under `vm.crid_vmm_for = ["qemu"]` with its block device, which a QEMU image with
/// PCI drivers would not.
#[tokio::test]
async fn qemu_image_declaring_virtio_mmio_runs_on_crid_vmm_with_its_disk() {
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let (disk, original) = disk_image(work.path());
    let image = common::push_guest_with(
        &reg,
        &work.path().join("guest.elf"),
        "unikraft",
        "qemu",
        "exit=6",
        "qemu-mmio-blk",
        &["--block", disk.to_str().unwrap(), "--virtio", "mmio"],
    );
    let (crid, pod, logs) = start_for("qemu", &[&image], "vmm-mmio").await;
    let id = crid.create_start(&pod, guest(&image, "mmio", &[])).await;
    let s = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let text = std::fs::read_to_string(logs.join("mmio.log")).unwrap_or_default();
    assert_eq!(s.exit_code, 6, "log:\n{text}\n{}", log_text(crid.path()));
    assert!(
        text.contains("crid-test-guest: disk marker: crid-disk-marker from the image")
            && text.contains("crid-test-guest: disk: write read back"),
        "{text}"
    );
    // On crid-vmm (block_paths checks the hypervisor), the image's layer file untouched.
    let (layer_file, _) = block_paths(&crid, &id).await;
    assert_eq!(std::fs::read(&layer_file).unwrap(), original);
    crid.remove_container(&id).await;
    crid.finish().await;
}

#[tokio::test]
async fn guest_on_crid_vmm_answers_on_the_pod_ip() {
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    // With a disk too: the NIC in the first virtio-mmio window, the disk in the second.
    let (disk, _) = disk_image(work.path());
    let image = push_disk_guest(&reg, work.path(), &disk, "crid", "stay", "crid-net");

    let dir = tempfile::tempdir().unwrap();
    common::write_config(dir.path(), "");
    let net = common::Net::new(40, dir.path());
    std::fs::write(dir.path().join("net.d/10-vmm.conflist"), net.conflist()).unwrap();
    let crid = Crid::start_owned(dir).await;
    crid.expect_pull(&image).await;
    let config = common::pod_config("vmm-net", crid.path());
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let pod = (pod_id.clone(), config);
    let (pod_status, _) = crid.pod_status(&pod_id).await;
    let ip = pod_status.network.map(|n| n.ip).unwrap_or_default();
    assert!(ip.starts_with(&net.prefix), "pod IP {ip:?}");

    let id = crid.create_start(&pod, guest(&image, "net", &[])).await;
    let log = crid.path().join("logs/vmm-net/net.log");
    wait_log(&log, "crid-test-guest: net up").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!(" {ip}\n")), "{text}");
    assert!(
        text.contains("crid-test-guest: disk marker: crid-disk-marker from the image")
            && text.contains("crid-test-guest: disk: write read back"),
        "{text}"
    );
    // The guest answers on the pod IP: ARP, then UDP echoed by the guest itself.
    let echo = common::udp_echo(&ip, b"hello crid-vmm", 20);
    assert_eq!(
        echo.as_deref(),
        Some(&b"hello crid-vmm"[..]),
        "no echo from {ip}\nlog:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let (_, info) = crid.container_status(&id).await;
    let netns = info["runtimeSpec"]["unikernel"]["request"]["netns"]
        .as_str()
        .expect("netns in verbose info")
        .to_string();
    let links = || {
        let out = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(links().contains("crtap"), "the guest's tap is missing");
    crid.stop_container(&id, 2).await;
    let s = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 143, "{s:?}");
    assert!(!links().contains("crtap"), "the tap outlived the guest");
    assert!(
        common::udp_echo(&ip, b"anyone?", 2).is_none(),
        "still answering"
    );
    crid.finish().await;
}

/// `Status` verbose: how many crid-vmm guests are prepared (`null` without a pool).
async fn prepared_count(crid: &Crid) -> Option<u64> {
    crid.vm_status().await["cridVmmPrepared"].as_u64()
}

/// The prepared crid-vmm processes of this crid (`crid-vmm --prepared <state>/vmm-pool`) and
/// their monitors.
fn prepared_processes(crid: &Crid) -> Vec<u32> {
    common::processes_under(crid.path(), None)
        .iter()
        .filter(|p| p.contains("--prepared") || p.contains("--prepare-vmm"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect()
}

/// The prepared VMM's pid once the pool holds one (bounded wait); `guests` are VMMs handed
/// a guest already (their command line still says `--prepared`).
async fn wait_prepared(crid: &Crid, guests: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while prepared_count(crid).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the pool was never filled\n{}",
            crid.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let vmms: Vec<u32> = common::processes_under(crid.path(), None)
        .iter()
        .filter(|p| p.contains("crid-vmm --prepared"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .filter(|p| !guests.contains(p))
        .collect();
    assert_eq!(
        vmms.len(),
        1,
        "{:?}",
        common::processes_under(crid.path(), None)
    );
    vmms[0]
}

/// Waits (bounded) until none of `pids` runs.
async fn wait_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "{what} still run: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `vm.crid_vmm_pool`: the first guest of the default size fills the pool; the next one is
/// handed the prepared VMM (its pid is the container's), in a pod network (the VMM enters the
/// pod's namespace itself and answers on the pod IP), confined and in its cgroup as a VMM
/// started for it, holding nothing of crid's; the pool is refilled; a crid killed with an entry
/// waiting takes the entry with it while the guest keeps running, and the restarted crid
/// re-attaches to the guest's monitor (found by its directory, its command line naming no
/// container) and stops it: no process, tap or cgroup is left.
#[tokio::test]
async fn prepared_crid_vmm_is_handed_the_next_guest() {
    let Some(reg) = ready() else { return };
    let vmm = vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let (disk, _) = disk_image(work.path());
    let image = push_disk_guest(&reg, work.path(), &disk, "crid", "stay", "crid-pool");

    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        "[vm]\ncrid_vmm_pool = 1\ndefault_memory_mib = 32\n",
    );
    let net = common::Net::new(41, dir.path());
    std::fs::write(dir.path().join("net.d/10-vmm.conflist"), net.conflist()).unwrap();
    let mut crid = Crid::start_owned(dir).await;
    crid.expect_pull(&image).await;
    assert_eq!(
        prepared_count(&crid).await,
        Some(0),
        "filled before any guest"
    );

    // The first guest starts the usual way and fills the pool; its exit code is the container's.
    let host = crid.run_host_pod_with("pool-host", "urunc").await;
    let first = crid
        .create_start(&host, guest(&image, "first", &["exit=5"]))
        .await;
    let s = crid
        .wait_state(&first, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 5, "{}", crid.log());
    let prepared = wait_prepared(&crid, &[]).await;
    // The waiting monitor passed its end of the VMM's socket to crid, which hands the VMM its
    // guest itself: the monitor's one socket is crid's (its standard input and output).
    let waiting = common::parent_of(prepared);
    let other_sockets: Vec<String> = std::fs::read_dir(format!("/proc/{waiting}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| !matches!(e.file_name().to_str(), Some("0" | "1")))
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.starts_with("socket:"))
        .collect();
    assert!(
        other_sockets.is_empty(),
        "the waiting monitor holds {other_sockets:?}"
    );

    // The next one, in a pod network, is handed that VMM.
    let config = common::pod_config("pool-net", crid.path());
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let (pod_status, _) = crid.pod_status(&pod_id).await;
    let ip = pod_status.network.map(|n| n.ip).unwrap_or_default();
    let id = crid
        .create_start(&(pod_id.clone(), config), guest(&image, "net", &[]))
        .await;
    let (_, info) = crid.container_status(&id).await;
    let pid = info["pid"].as_i64().expect("pid in verbose info") as u32;
    assert_eq!(pid, prepared, "the guest did not get the prepared VMM");
    let log = crid.path().join("logs/pool-net/net.log");
    wait_log(&log, "crid-test-guest: net up").await;
    let echo = common::udp_echo(&ip, b"hello pool", 20);
    assert_eq!(
        echo.as_deref(),
        Some(&b"hello pool"[..]),
        "no echo from {ip}\nlog:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for (key, want) in [
        ("Seccomp:", "2"),
        ("NoNewPrivs:", "1"),
        ("CapEff:", "0000000000000000"),
    ] {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default();
        assert!(line.ends_with(want), "{line}\n{status}");
    }
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u != "0"), "{uid}");
    let rel = assert_chrooted_in_its_cgroup(pid, &info);
    // Standard input is /dev/null (not the hand-over socket), the output pipes to its monitor;
    // the environment is PATH alone.
    let fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                target.display().to_string(),
            )
        })
        .collect();
    let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    for (fd, target) in &fds {
        let ok = match fd.as_str() {
            "0" => target == "/dev/null",
            "1" | "2" => target.starts_with("pipe:"),
            // KVM's descriptors, eventfds, the tap, the container's disk copy and the serial
            // port's copy of stdout.
            _ => {
                target.starts_with("anon_inode:")
                    || target == "/dev/net/tun"
                    || target.ends_with("/vm/block.img")
                    || Path::new(target) == stdout
            }
        };
        assert!(ok, "the prepared VMM's fd {fd} is {target}: {fds:?}");
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<_> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        vars.iter().all(|v| v.starts_with("PATH=")),
        "the prepared VMM's environment: {vars:?}"
    );
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(argv0.starts_with(vmm.to_str().unwrap().as_bytes()));
    // Its monitor let go of crid's socket once it had the container: stdin and stdout are
    // /dev/null, no descriptor is a socket, and its environment is PATH alone.
    let monitor = common::parent_of(pid);
    // Supervising, the monitor runs on short time slices (its wake-ups to write the log preempt
    // the guest's vCPU); the VMM, which runs the guest, on the default.
    let slice = |pid: u32| {
        let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap();
        sched
            .lines()
            .find(|l| l.starts_with("se.slice"))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let (Some(monitor), Some(vmm)) = (slice(monitor), slice(pid)) {
        assert_eq!(monitor, 100_000, "the monitor's slice");
        assert!(vmm > monitor, "the VMM's slice: {vmm}");
    }
    let monitor_fds: Vec<String> = std::fs::read_dir(format!("/proc/{monitor}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .unwrap_or_default()
                .display()
                .to_string()
        })
        .collect();
    assert!(
        monitor_fds.iter().all(|t| !t.starts_with("socket:")),
        "the prepared monitor holds {monitor_fds:?}"
    );
    for fd in [0, 1] {
        let target = std::fs::read_link(format!("/proc/{monitor}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "the monitor's fd {fd}");
    }
    let environ = std::fs::read(format!("/proc/{monitor}/environ")).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .all(|v| v.starts_with(b"PATH=")),
        "the prepared monitor's environment: {:?}",
        String::from_utf8_lossy(&environ)
    );

    // Refilled, with another VMM.
    let next = wait_prepared(&crid, &[pid]).await;
    assert_ne!(next, prepared);

    // crid dies with an entry waiting: the entry (the VMM and its monitor) ends, the guest
    // runs on. The VMM ends by itself, on the end of crid's socket, even with its monitor
    // stopped (then killed too): unlike a prepared QEMU, no crid-vmm is left paused when both
    // die, so the next crid has none to end.
    let monitor = common::parent_of(next);
    let signal = |pid: u32, sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap()
    };
    signal(monitor, nix::sys::signal::Signal::SIGSTOP);
    crid.sigkill();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Its stopped parent cannot reap it: a zombie.
    while !std::fs::read_to_string(format!("/proc/{next}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .is_none_or(|(_, rest)| rest.starts_with(" Z"))
    {
        assert!(Instant::now() < deadline, "the prepared VMM outlived crid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(monitor, nix::sys::signal::Signal::SIGKILL);
    wait_gone(&[next, monitor], "the prepared monitor and VMM").await;
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the guest died with crid"
    );
    let crid = Crid::start_owned(crid.into_dir()).await;
    let s = crid
        .wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    assert_eq!(s.state(), cri::ContainerState::ContainerRunning);
    assert_eq!(prepared_count(&crid).await, Some(0));
    let netns = info["runtimeSpec"]["unikernel"]["request"]["netns"]
        .as_str()
        .expect("netns in verbose info")
        .to_string();
    crid.stop_container(&id, 2).await;
    let s = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 143, "{s:?}");
    wait_gone(&[pid], "the guest's VMM").await;
    let links = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-o", "link", "show"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("crtap"),
        "the tap outlived the guest"
    );
    crid.remove_container(&id).await;
    for ctl in ["memory", "cpu", "devices"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctl).join(&rel);
        assert!(!dir.exists(), "{} outlived the VMM", dir.display());
    }
    let path = crid.path().to_owned();
    crid.finish().await;
    expect_no_process_under(&path).await;
}

/// `Status` verbose: how many created crid-vmm guests are armed.
async fn armed_count(crid: &Crid) -> Option<u64> {
    crid.vm_status().await["cridVmmArmed"].as_u64()
}

/// crid with `vm.crid_vmm_pool = pool` and 32 MiB guests by default, the freestanding guest
/// pushed for crid-vmm as `tag` with the command line `cmdline`, and pulled; returns crid and
/// the image.
async fn start_pooled(
    reg: &str,
    work: &Path,
    cmdline: &str,
    tag: &str,
    pool: u32,
) -> (Crid, String) {
    let image = common::push_guest_as(
        reg,
        &work.join("guest.elf"),
        "unikraft",
        "crid",
        cmdline,
        tag,
    );
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &format!("[vm]\ncrid_vmm_pool = {pool}\ndefault_memory_mib = 32\n"),
    );
    let crid = Crid::start_owned(dir).await;
    crid.expect_pull(&image).await;
    (crid, image)
}

/// Waits (bounded) until no process runs under `path` any more: what a stopped crid leaves
/// (monitors, VMMs) must end with it.
async fn expect_no_process_under(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = common::processes_under(path, None);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left after crid stopped: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the VMM `pid` runs under its seccomp filter: it has set its guest up
/// and confined itself.
async fn wait_confined(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "crid-vmm {pid} never confined itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A crid-vmm guest of the pool's size is handed its prepared VMM at `CreateContainer`: before
/// `StartContainer` the VMM is in the container's cgroup and chroot, confined, and the guest
/// has not run (its log is empty); the start runs it. A created guest removed unstarted, or
/// whose crid dies, ends with its monitor and leaves no cgroup.
#[tokio::test]
async fn prepared_crid_vmm_is_armed_at_create_and_started_by_one_byte() {
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let (mut crid, image) = start_pooled(&reg, work.path(), "", "crid-armed", 1).await;
    let pod = crid.run_host_pod_with("armed", "urunc").await;
    let first = crid
        .create_start(&pod, guest(&image, "first", &["exit=0"]))
        .await;
    crid.wait_state(&first, cri::ContainerState::ContainerExited)
        .await;
    let prepared = wait_prepared(&crid, &[]).await;

    let id = crid
        .create(&pod, guest(&image, "armed", &[]))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", crid.log()));
    wait_confined(prepared).await;
    assert_eq!(armed_count(&crid).await, Some(1));
    let (status, info) = crid.container_status(&id).await;
    assert_eq!(status.state(), cri::ContainerState::ContainerCreated);
    let rel = assert_chrooted_in_its_cgroup(prepared, &info);
    let log = crid.path().join("logs/armed/armed.log");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read_to_string(&log).ok().as_deref(),
        Some(""),
        "the guest ran before its start"
    );
    crid.start_container(&id).await;
    wait_log(&log, "crid-test-guest: booted").await;
    let (_, info) = crid.container_status(&id).await;
    assert_eq!(info["pid"].as_i64(), Some(i64::from(prepared)));
    assert_eq!(armed_count(&crid).await, Some(0));
    // The gate is closed once used: the VMM holds no socket.
    let sockets: Vec<_> = std::fs::read_dir(format!("/proc/{prepared}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .collect();
    assert!(sockets.is_empty(), "the started VMM holds {sockets:?}");

    // Removed before it started: its VMM and monitor end, its cgroup goes, the guest never ran.
    let next = wait_prepared(&crid, &[prepared]).await;
    let dropped = crid
        .create(&pod, guest(&image, "dropped", &[]))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", crid.log()));
    wait_confined(next).await;
    let (_, info) = crid.container_status(&dropped).await;
    let dropped_rel = assert_chrooted_in_its_cgroup(next, &info);
    let monitor = common::parent_of(next);
    crid.remove_container(&dropped).await;
    wait_gone(&[next, monitor], "the unstarted guest's VMM and monitor").await;
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(&dropped_rel)
            .exists(),
        "the unstarted guest's cgroup is left"
    );
    assert_eq!(armed_count(&crid).await, Some(0));

    // crid dies with a guest armed: the guest's VMM and monitor end with it; the restarted crid
    // reports the container exited.
    let last = wait_prepared(&crid, &[prepared]).await;
    let orphan = crid
        .create(&pod, guest(&image, "orphan", &[]))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", crid.log()));
    wait_confined(last).await;
    let monitor = common::parent_of(last);
    crid.sigkill();
    wait_gone(&[last, monitor], "the armed guest of a dead crid").await;
    let crid = Crid::start_owned(crid.into_dir()).await;
    let s = crid
        .wait_state(&orphan, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.state(), cri::ContainerState::ContainerExited);
    assert!(
        !std::fs::read_to_string(crid.path().join("logs/armed/orphan.log"))
            .unwrap_or_default()
            .contains("booted"),
        "the orphaned guest ran"
    );
    crid.stop_container(&id, 0).await;
    crid.remove_container(&id).await;
    crid.remove_container(&orphan).await;
    assert!(
        !Path::new("/sys/fs/cgroup/memory").join(&rel).exists(),
        "the started guest's cgroup is left"
    );
    let path = crid.path().to_owned();
    crid.finish().await;
    expect_no_process_under(&path).await;
}

/// `vm.crid_vmm_pool = 0`: guests of the default size start the usual way and nothing is
/// prepared.
#[tokio::test]
async fn no_crid_vmm_is_prepared_with_the_pool_off() {
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let (crid, image) = start_pooled(&reg, work.path(), "exit=0", "crid-nopool", 0).await;
    let pod = crid.run_host_pod_with("nopool", "urunc").await;
    for name in ["one", "two"] {
        let id = crid.create_start(&pod, guest(&image, name, &[])).await;
        let s = crid
            .wait_state(&id, cri::ContainerState::ContainerExited)
            .await;
        assert_eq!(s.exit_code, 0, "{}", crid.log());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(prepared_count(&crid).await, None);
    assert!(prepared_processes(&crid).is_empty());
    crid.finish().await;
}

/// The VMM `pid` runs in its empty chroot and in the container's memory cgroup (from
/// ContainerStatus verbose `info`); returns that cgroup's path below the controller.
fn assert_chrooted_in_its_cgroup(pid: impl std::fmt::Display, info: &serde_json::Value) -> String {
    let pid = pid.to_string();
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert!(root.ends_with("vm/chroot"), "VMM root is {root:?}");
    let rel = info["runtimeSpec"]["unikernel"]["request"]["cgroup"]
        .as_str()
        .expect("cgroup in verbose info");
    let procs = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("cgroup.procs"),
    )
    .unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid),
        "crid-vmm {pid} not in its cgroup: {procs:?}"
    );
    rel.to_string()
}

/// The command line of process `pid`, its arguments joined with spaces.
fn cmdline_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// The pods kubelet builds carry a memory limit, from which crid sizes the guest: with the
/// pool on and the default guest size left at 256 MiB, a kubelet-shaped `CreateContainer`
/// (long names, mounts, service environment, limits of 500m and 64 MiB, security context,
/// annotations) in a pod network starts the usual way and makes the pool prepare a VMM of
/// 64 MiB; the next pod's same request is handed that VMM at `CreateContainer` and runs on it
/// with the 64 MiB its limit asked for, and so does one whose CPU limit asks for two vCPUs.
#[tokio::test]
async fn a_kubelet_pod_with_a_memory_limit_gets_a_prepared_crid_vmm_of_its_size() {
    use conformance::kubelet::KubeletPod;
    let Some(reg) = ready() else { return };
    vmm_binary();
    let work = tempfile::tempdir().unwrap();
    let image = common::push_guest_as(
        &reg,
        &work.path().join("guest.elf"),
        "unikraft",
        "crid",
        "",
        "crid-kubelet",
    );
    let dir = tempfile::tempdir().unwrap();
    common::write_config(dir.path(), "[vm]\ncrid_vmm_pool = 1\n");
    let net = common::Net::new(43, dir.path());
    std::fs::write(dir.path().join("net.d/10-vmm.conflist"), net.conflist()).unwrap();
    let crid = Crid::start_owned(dir).await;
    crid.expect_pull(&image).await;
    let kubelet = crid.path().join("kubelet");
    let request = |pod: &KubeletPod, code: &str, cpu_millis: i64| {
        common::kubelet_guest(pod, "app", &image, &[code])
            .limits(cpu_millis, 64 << 20)
            .build()
            .unwrap()
    };
    let arg =
        |info: &serde_json::Value, name: &str| common::arg_after(&common::guest_argv(info), name);
    let memory_arg = |info: &serde_json::Value| arg(info, "--memory");

    // The first such pod starts the usual way; the pool then prepares a VMM of its size.
    let pod = KubeletPod::new(&kubelet, "hello-7f9c8d6b5-x2x9z", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let first = crid
        .create_start(&(pod_id, config), request(&pod, "exit=5", 500))
        .await;
    let s = crid
        .wait_state(&first, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 5, "{}", crid.log());
    let (_, info) = crid.container_status(&first).await;
    assert_eq!(memory_arg(&info).as_deref(), Some("64"), "{info}");
    let prepared = wait_prepared(&crid, &[]).await;
    assert_eq!(
        crid.vm_status().await["cridVmmPreparedMiB"],
        serde_json::json!([64])
    );
    let prepared_argv = cmdline_of(prepared);
    assert!(
        prepared_argv.contains(" --memory 64"),
        "prepared for another size: {prepared_argv}"
    );

    // The next pod's same request is handed it when created, and runs on it once started.
    let pod = KubeletPod::new(&kubelet, "hello-7f9c8d6b5-b8k2w", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let id = crid
        .create(&(pod_id, config), request(&pod, "exit=7", 500))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", crid.log()));
    wait_confined(prepared).await;
    assert_eq!(armed_count(&crid).await, Some(1), "not armed at create");
    let (_, info) = crid.container_status(&id).await;
    assert_chrooted_in_its_cgroup(prepared, &info);
    crid.start_container(&id).await;
    let s = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let (_, info) = crid.container_status(&id).await;
    assert_eq!(info["pid"].as_i64(), Some(i64::from(prepared)), "{info}");
    assert_eq!(memory_arg(&info).as_deref(), Some("64"), "{info}");
    let log = pod.log_directory.join("app/0.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(s.exit_code, 7, "{text}\n{}", crid.log());
    assert!(
        text.contains("crid-test-guest: booted") && text.contains("KUBERNETES_SERVICE_HOST"),
        "{text}"
    );

    // A CPU limit of two CPUs gives two vCPUs (where the host has them): no part of an entry,
    // the VMM makes the second at the hand-over, so the refilled entry of 64 MiB serves it.
    let next = wait_prepared(&crid, &[]).await;
    let pod = KubeletPod::new(&kubelet, "hello-7f9c8d6b5-p4n7c", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let two = crid
        .create_start(&(pod_id, config), request(&pod, "exit=9", 2000))
        .await;
    let s = crid
        .wait_state(&two, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 9, "{}", crid.log());
    let (_, info) = crid.container_status(&two).await;
    assert_eq!(info["pid"].as_i64(), Some(i64::from(next)), "{info}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    assert_eq!(arg(&info, "--vcpus"), Some(cpus.to_string()), "{info}");
    for id in [first, id, two] {
        crid.remove_container(&id).await;
    }
    let path = crid.path().to_owned();
    crid.finish().await;
    expect_no_process_under(&path).await;
}
