//! Faults with the real crid binary: a full disk under crid's root (a loop-mounted small
//! ext4) during PullImage, CreateContainer, RunPodSandbox and container logging →
//! RESOURCE_EXHAUSTED, nothing half-made listed, and everything working again once space is
//! freed; a CNI plugin that prints its result and then crashes; QEMU killed right after
//! StartContainer; a registry connection cut in the middle of a layer.
//! (Failing, hanging and DEL-failing plugins are in pods.rs; a crid killed mid-pull is in
//! recovery.rs.) Needs root, runc, busybox, mkfs.ext4 and the test registry
//! (`CRID_TEST_REGISTRY`); skipped with a reason otherwise (failing under CI=true).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Crid, Net, RegistryProxy, mounts_under, noise, plain_http_registry, write_config};
use conformance::fixtures::build::{Compression, Format, ImageSpec, Layer, TarBuilder, image};
use proto::cri;
use tonic::Code;

/// The test registry, when this host can run these tests.
fn ready() -> Option<String> {
    common::registry_for("fault", &["runc", "mkfs.ext4"])
}

/// A small ext4 file system in a file, loop-mounted; everything below it is unmounted, then
/// it, on drop.
struct LoopFs {
    mountpoint: PathBuf,
    filler: PathBuf,
}

impl LoopFs {
    /// `mib` MiB with `inodes` inodes and no blocks reserved for root (crid runs as root).
    fn mount(image: &Path, mountpoint: &Path, mib: u64, inodes: u32) -> LoopFs {
        std::fs::create_dir_all(mountpoint).unwrap();
        common::run_ok(Command::new("truncate").arg(format!("-s{mib}M")).arg(image));
        common::run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-N", &inodes.to_string()])
                .arg(image),
        );
        common::run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(image)
                .arg(mountpoint),
        );
        LoopFs {
            mountpoint: mountpoint.to_owned(),
            filler: mountpoint.join("filler"),
        }
    }

    /// Free bytes for an unprivileged writer and free inodes.
    fn free(&self) -> (u64, u64) {
        let s = nix::sys::statvfs::statvfs(&self.mountpoint).unwrap();
        (
            s.blocks_available() as u64 * s.fragment_size() as u64,
            s.files_available() as u64,
        )
    }

    /// Fills the file system until `leave` bytes are free; with `leave == 0` also every data
    /// block and every inode (so even creating an empty file fails with ENOSPC).
    fn fill(&self, leave: u64) {
        use std::io::Write;
        std::fs::create_dir_all(&self.filler).unwrap();
        let n = std::fs::read_dir(&self.filler).unwrap().count();
        let mut f = std::fs::File::create(self.filler.join(format!("data-{n}"))).unwrap();
        if leave == 0 {
            // Every inode first (while directories can still grow), then every block.
            for i in 0..1_000_000 {
                if std::fs::File::create(self.filler.join(format!("i{n}-{i}"))).is_err() {
                    break;
                }
            }
        }
        let chunk = vec![0u8; 1 << 20];
        // Bounded: the file system has at most a few thousand such chunks.
        for _ in 0..1_000_000 {
            let (avail, _) = self.free();
            if avail <= leave {
                break;
            }
            let len = if avail > leave + (1 << 20) {
                1 << 20
            } else {
                4096
            };
            if f.write_all(&chunk[..len]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        if leave > 0 {
            return;
        }
        let (b, i) = self.free();
        assert!(b < 8192 && i == 0, "not full: {b} bytes, {i} inodes free");
    }

    /// Removes all filler.
    fn release(&self) {
        std::fs::remove_dir_all(&self.filler).unwrap();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        common::unmount_all(&self.mountpoint);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

/// Pushes an image of one incompressible `size`-byte file to `reg` as `repo:tag`.
fn push_noise_image(reg: &str, repo: &str, tag: &str, size: usize, seed: u64) -> String {
    let mut t = TarBuilder::new();
    t.file("noise", 0o644, &noise(size, seed));
    let built = image(&ImageSpec::new(
        Format::Oci,
        vec![Layer::new(&t.finish(), Compression::Gzip, Format::Oci)],
        serde_json::json!({"Cmd": ["/noise"]}),
    ));
    conformance::fixtures::push::push_with_client(reg, repo, tag, &built).expect("push");
    format!("{reg}/{repo}:{tag}")
}

async fn create(
    crid: &Crid,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    crid.create(&(pod.to_owned(), pod_config.clone()), config)
        .await
}

async fn status(crid: &Crid, id: &str) -> cri::ContainerStatus {
    crid.cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("status {id}: {e}\n{}", crid.log()))
        .into_inner()
        .status
        .expect("status")
}

async fn wait_state(crid: &Crid, id: &str, state: cri::ContainerState) -> cri::ContainerStatus {
    for _ in 0..600 {
        let s = status(crid, id).await;
        if s.state == state as i32 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "container {id} never reached {state:?}: {:?}\n{}",
        status(crid, id).await,
        crid.log()
    );
}

async fn reopen_log(crid: &Crid, id: &str) -> Result<(), tonic::Status> {
    crid.cri
        .runtime
        .clone()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

/// Lines of a CRI log file.
fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The directories in crid's root where a failed operation must leave nothing.
fn leftovers(crid: &Crid) -> Vec<String> {
    let mut v = Vec::new();
    for d in ["ingest", "tmp"] {
        v.extend(
            crid.store_entries(d)
                .into_iter()
                .map(|e| format!("{d}/{e}")),
        );
    }
    v
}

fn assert_exhausted(e: &tonic::Status, what: &str, crid: &Crid) {
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "{what} on a full disk: {e}\n{}",
        crid.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_recovers_when_freed() {
    let Some(reg) = ready() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir, "");
    plain_http_registry(dir, &reg);
    let big = push_noise_image(
        &reg,
        "crid-tests/faults-big",
        &format!("v{}", std::process::id()),
        6 << 20,
        11,
    );
    let busybox = format!("{reg}/busybox:latest");
    let layered = format!("{reg}/layered:v1");
    // crid's root on a 48 MiB file system; the pod logs live there too.
    let fs = LoopFs::mount(&dir.join("disk.img"), &dir.join("root"), 48, 4096);
    let logs = dir.join("root/pod-logs");
    let _leftovers = common::Leftovers(dir.to_owned());
    let mut crid = Crid::start(dir).await;

    crid.pull(&busybox)
        .await
        .unwrap_or_else(|e| panic!("pull busybox: {e}\n{}", crid.log()));
    let pod_config = common::host_net_pod("disk", &logs);
    let pod = crid
        .try_run_pod(&pod_config, "")
        .await
        .unwrap_or_else(|e| panic!("run pod: {e}\n{}", crid.log()));
    let logger = create(
        &crid,
        &pod,
        &pod_config,
        common::container_config(
            &busybox,
            "logger",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 100000 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done",
            ],
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("create logger: {e}\n{}", crid.log()));
    crid.start_container(&logger).await;
    wait_state(&crid, &logger, cri::ContainerState::ContainerRunning).await;
    let victim = create(
        &crid,
        &pod,
        &pod_config,
        common::container_config(&busybox, "victim", &["sleep", "1000"]),
    )
    .await
    .unwrap_or_else(|e| panic!("create victim: {e}\n{}", crid.log()));
    crid.start_container(&victim).await;
    wait_state(&crid, &victim, cri::ContainerState::ContainerRunning).await;
    let late = create(
        &crid,
        &pod,
        &pod_config,
        common::container_config(&busybox, "late", &["sh", "-c", "echo late-ran"]),
    )
    .await
    .unwrap_or_else(|e| panic!("create late: {e}\n{}", crid.log()));
    // A pod whose logs are on another disk: only the container's rootfs is on the full one.
    let outside_config = common::host_net_pod("outside", &dir.join("logs"));
    let outside = crid
        .try_run_pod(&outside_config, "")
        .await
        .unwrap_or_else(|e| panic!("run pod: {e}\n{}", crid.log()));
    let late2 = create(
        &crid,
        &outside,
        &outside_config,
        common::container_config(&busybox, "late2", &["sh", "-c", "echo late2-ran"]),
    )
    .await
    .unwrap_or_else(|e| panic!("create late2: {e}\n{}", crid.log()));
    let images_before = crid.images().await.len();

    // Pull with too little space for the layer's download, then with room for the download
    // but not for its unpacked copy.
    for leave in [2u64 << 20, 9 << 20] {
        fs.fill(leave);
        let (free_before, _) = fs.free();
        // Two pulls share one download: both get its code.
        let (a, b) = tokio::join!(crid.pull(&big), crid.pull(&big));
        let e = a.unwrap_err();
        assert_exhausted(&e, &format!("pull with {leave} bytes free"), &crid);
        assert_exhausted(&b.unwrap_err(), "the second pull", &crid);
        assert_eq!(crid.images().await.len(), images_before, "{e}");
        // Garbage collection after the failure may still be collecting what was downloaded.
        for _ in 0..100 {
            if leftovers(&crid).is_empty() && fs.free().0 + (256 << 10) >= free_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(leftovers(&crid).is_empty(), "{:?}", leftovers(&crid));
        let (free_after, _) = fs.free();
        assert!(
            free_after + (256 << 10) >= free_before,
            "the failed pull kept {} bytes",
            free_before - free_after
        );
        fs.release();
    }

    // Completely full: no blocks, no inodes.
    fs.fill(0);
    let e = crid.pull(&layered).await.unwrap_err();
    assert_exhausted(&e, "pull", &crid);
    assert_eq!(crid.images().await.len(), images_before);
    let e = create(
        &crid,
        &pod,
        &pod_config,
        common::container_config(&busybox, "second", &["sleep", "100"]),
    )
    .await
    .unwrap_err();
    assert_exhausted(&e, "CreateContainer", &crid);
    let mut ids: Vec<String> = crid.containers().await.into_iter().map(|c| c.id).collect();
    ids.sort();
    let mut expected = vec![logger.clone(), victim.clone(), late.clone(), late2.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let e = crid
        .try_run_pod(&common::host_net_pod("disk2", &logs), "")
        .await
        .unwrap_err();
    assert_exhausted(&e, "RunPodSandbox", &crid);
    assert_eq!(crid.pods().await.len(), 2);
    // Logging: kubelet's rotation (rename, then reopen) cannot get a new file.
    let log = logs.join("logger.log");
    std::fs::rename(&log, logs.join("logger.log.1")).unwrap();
    let e = reopen_log(&crid, &logger).await.unwrap_err();
    assert_exhausted(&e, "ReopenContainerLog", &crid);
    // The container keeps running while its output has nowhere to go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&crid, &logger).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "{}",
        crid.log()
    );

    let e = crid
        .cri
        .runtime
        .clone()
        .start_container(cri::StartContainerRequest {
            container_id: late.clone(),
        })
        .await
        .unwrap_err();
    assert_exhausted(&e, "StartContainer", &crid);
    assert_eq!(
        status(&crid, &late).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    // Its logs fit, but runc cannot create the mount targets in its rootfs.
    let e = crid
        .cri
        .runtime
        .clone()
        .start_container(cri::StartContainerRequest {
            container_id: late2.clone(),
        })
        .await
        .unwrap_err();
    assert_exhausted(&e, "StartContainer (rootfs)", &crid);
    assert_eq!(status(&crid, &late2).await.reason, "StartError");
    // A container that ends while the disk is full still has its exit reported.
    crid.cri
        .runtime
        .clone()
        .stop_container(cri::StopContainerRequest {
            container_id: victim.clone(),
            timeout: 1,
        })
        .await
        .unwrap_or_else(|e| panic!("stop on a full disk: {e}\n{}", crid.log()));
    let s = wait_state(&crid, &victim, cri::ContainerState::ContainerExited).await;
    assert!(
        s.exit_code == 137 || s.exit_code == 143,
        "exit code of a stopped sleep: {s:?}"
    );

    // crid restarts on the full disk and finds everything as it was.
    crid.stop();
    crid = Crid::start(dir).await;
    assert_eq!(
        status(&crid, &logger).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "{}",
        crid.log()
    );
    assert_eq!(status(&crid, &victim).await.exit_code, s.exit_code);
    assert_eq!(crid.images().await.len(), images_before);
    assert_eq!(crid.pods().await.len(), 2);

    // Space is back: everything works again.
    fs.release();
    reopen_log(&crid, &logger)
        .await
        .unwrap_or_else(|e| panic!("reopen after freeing: {e}\n{}", crid.log()));
    let mut grew = false;
    for _ in 0..100 {
        if log_lines(&log) > 3 {
            grew = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(grew, "the log gets no new lines after freeing space");
    // The monitor said once that the log could not be written, not once per lost line.
    let monitor_log = std::fs::read_to_string(
        dir.join("state/containers")
            .join(&logger)
            .join("monitor.log"),
    )
    .unwrap_or_default();
    let reports = monitor_log
        .lines()
        .filter(|l| l.contains("writing the container log"))
        .count();
    assert!(
        (1..=4).contains(&reports),
        "{reports} reports in the monitor's log:\n{monitor_log}"
    );
    crid.pull(&layered)
        .await
        .unwrap_or_else(|e| panic!("pull after freeing: {e}\n{}", crid.log()));
    crid.pull(&big)
        .await
        .unwrap_or_else(|e| panic!("pull big after freeing: {e}\n{}", crid.log()));
    let second = create(
        &crid,
        &pod,
        &pod_config,
        common::container_config(&busybox, "second", &["sh", "-c", "echo second-ran"]),
    )
    .await
    .unwrap_or_else(|e| panic!("create after freeing: {e}\n{}", crid.log()));
    crid.start_container(&second).await;
    let s = wait_state(&crid, &second, cri::ContainerState::ContainerExited).await;
    assert_eq!(s.exit_code, 0, "{}", crid.log());
    crid.start_container(&late).await;
    let s = wait_state(&crid, &late, cri::ContainerState::ContainerExited).await;
    assert_eq!(s.exit_code, 0, "{}", crid.log());
    assert!(
        std::fs::read_to_string(logs.join("late.log"))
            .unwrap_or_default()
            .contains("late-ran")
    );
    let pod2 = crid
        .try_run_pod(&common::host_net_pod("disk2", &logs), "")
        .await
        .unwrap_or_else(|e| panic!("run pod after freeing: {e}\n{}", crid.log()));

    for id in [&logger, &second, &victim, &late, &late2] {
        crid.stop_and_remove_container(id).await;
    }
    for p in [&pod, &pod2, &outside] {
        crid.stop_and_remove_pod(p).await;
    }
    assert!(
        !crid.log().contains("panicked"),
        "crid panicked:\n{}",
        crid.log()
    );
    drop(crid);
    drop(fs);
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_prints_its_result_and_then_crashes_fails_the_pod_and_leaves_nothing() {
    if !common::can_run_pods_for("fault") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir, "");
    let net = Net::new(11, dir);
    let _leftovers = common::Leftovers(dir.to_owned());
    // Chained after bridge: prints the previous result, as a successful ADD would, then dies
    // (SIGKILL, or a plain non-zero exit); DEL works.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, death) in [("crashkill", "kill -KILL $$"), ("crashexit", "exit 3")] {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nconf=$(cat)\ncase \"$CNI_COMMAND\" in\n\
                 ADD) printf '%s' \"$conf\" | jq -c .prevResult; {death} ;;\n\
                 DEL) ;;\n\
                 VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}' ;;\n\
                 esac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let crid = Crid::start(dir).await;
    for plugin in ["crashkill", "crashexit"] {
        std::fs::write(
            dir.join("net.d/10-test.conflist"),
            net.conflist_with(&[serde_json::json!({"type": plugin})]),
        )
        .unwrap();
        let e = crid.run_pod("crashy").await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e}\n{}", crid.log());
        assert!(e.message().contains(plugin), "{e}");
        assert!(crid.pods().await.is_empty());
        assert!(net.reservations().is_empty(), "{:?}", net.reservations());
        assert!(net.veths().is_empty(), "{:?}", net.veths());
        assert!(common::pins(dir).is_empty(), "{:?}", common::pins(dir));
        assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
    }
    // The name was released: the same pod starts on a working network.
    std::fs::write(dir.join("net.d/10-test.conflist"), net.conflist()).unwrap();
    let id = crid
        .run_pod("crashy")
        .await
        .unwrap_or_else(|e| panic!("retry: {e}\n{}", crid.log()));
    assert_eq!(net.reservations().len(), 1);
    crid.stop_and_remove_pod(&id).await;
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    assert!(common::pins(dir).is_empty(), "{:?}", common::pins(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_connection_cut_mid_layer_fails_the_pull_cleanly_and_a_retry_works() {
    let Some(reg) = common::registry_for("fault", &[]) else {
        return;
    };
    let tag = format!("v{}", std::process::id());
    let mut t = TarBuilder::new();
    t.file("noise", 0o644, &noise(2 << 20, 5));
    let layer = Layer::new(&t.finish(), Compression::Gzip, Format::Oci);
    let digest = layer.blob.digest.clone();
    let built = image(&ImageSpec::new(
        Format::Oci,
        vec![layer],
        serde_json::json!({"Cmd": ["/noise"]}),
    ));
    conformance::fixtures::push::push_with_client(&reg, "crid-tests/faults-cut", &tag, &built)
        .expect("push");
    let proxy = RegistryProxy::start(&reg).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir, "");
    plain_http_registry(dir, &proxy.addr);
    let reference = format!("{}/crid-tests/faults-cut:{tag}", proxy.addr);
    let crid = Crid::start(dir).await;

    // Every connection that fetches the layer is cut after 300 KiB of the response.
    proxy.cut(Some((&digest, 300 << 10)));
    let e = crid.pull(&reference).await.unwrap_err();
    assert!(proxy.cuts() > 0, "the pull never reached the layer: {e}");
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Aborted),
        "{e}\n{}",
        crid.log()
    );
    assert!(e.message().contains(&proxy.addr), "{e}");
    eprintln!("cut pull: {:?}: {}", e.code(), e.message());
    assert!(crid.images().await.is_empty());
    for _ in 0..100 {
        if leftovers(&crid).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leftovers(&crid).is_empty(), "{:?}", leftovers(&crid));
    let hex = digest.trim_start_matches("sha256:").to_owned();
    assert!(!crid.store_entries("blobs/sha256").contains(&hex));

    // The registry behaves again: the same pull works.
    proxy.cut(None);
    let id = crid
        .pull(&reference)
        .await
        .unwrap_or_else(|e| panic!("retry: {e}\n{}", crid.log()));
    assert_eq!(Some(id.as_str()), built.config().map(|c| c.digest.as_str()));
    assert!(crid.store_entries("blobs/sha256").contains(&hex));
    assert!(proxy.gets(&digest) >= 2, "{:?}", proxy.requests());
}

/// The pid of the QEMU running for `dir`'s crid.
fn qemu_pid(dir: &Path) -> Option<i32> {
    common::processes_under(dir, None).iter().find_map(|p| {
        let (pid, cmd) = p.split_once(": ")?;
        cmd.contains("qemu-system").then(|| pid.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hypervisor_killed_mid_boot_is_an_exited_container_with_a_reason() {
    let Some(reg) = common::registry_for("fault", &["runc", "gcc", "qemu-system-x86_64"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No prepared QEMU: the test kills the guest's QEMU, found by its command line, and then
    // expects none running (a prepared one would be both).
    write_config(dir, "[vm]\nqemu_pool = 0\n");
    plain_http_registry(dir, &reg);
    let guest = common::push_freestanding_guest(&reg, dir, "faults");
    // A CNI pod: the guest takes over eth0 through a tap, which the crash must release.
    let net = Net::new(14, dir);
    let _leftovers = common::Leftovers(dir.to_owned());
    std::fs::write(dir.join("net.d/10-test.conflist"), net.conflist()).unwrap();
    let crid = Crid::start(dir).await;
    crid.pull(&guest)
        .await
        .unwrap_or_else(|e| panic!("pull {guest}: {e}\n{}", crid.log()));
    let pod_config = common::pod_config("vm", dir);
    let pod = crid
        .try_run_pod(&pod_config, "urunc")
        .await
        .unwrap_or_else(|e| panic!("run pod: {e}\n{}", crid.log()));
    let config = common::container_config(&guest, "guest", &[]);
    let id = create(&crid, &pod, &pod_config, config)
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", crid.log()));
    crid.start_container(&id).await;
    // As soon as the VMM shows up (the monitor may still be between fork and exec).
    let mut pid = None;
    for _ in 0..100 {
        pid = qemu_pid(dir);
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = pid.unwrap_or_else(|| panic!("no QEMU running\n{}", crid.log()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_state(&crid, &id, cri::ContainerState::ContainerExited).await;
    assert_ne!(s.exit_code, 0, "{s:?}");
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert_eq!(s.reason, "Error", "{s:?}");
    assert!(
        s.message.contains("hypervisor") && s.message.contains("SIGKILL"),
        "{s:?}"
    );
    // The daemon carries on: the container is removable and another guest starts.
    crid.stop_and_remove_container(&id).await;
    // The crashed guest's tap is gone: the pod takes a new guest (one per pod).
    let config = common::container_config(&guest, "again", &["exit=4"]);
    let again = create(&crid, &pod, &pod_config, config)
        .await
        .unwrap_or_else(|e| panic!("create again: {e}\n{}", crid.log()));
    crid.start_container(&again).await;
    let s = wait_state(&crid, &again, cri::ContainerState::ContainerExited).await;
    assert_eq!(s.exit_code, 4, "{s:?}\n{}", crid.log());
    crid.stop_and_remove_container(&again).await;
    crid.stop_and_remove_pod(&pod).await;
    assert!(qemu_pid(dir).is_none());
    assert!(common::pins(dir).is_empty(), "{:?}", common::pins(dir));
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    assert!(net.veths().is_empty(), "{:?}", net.veths());
}
