//! Unikernel containers end to end through the CRI: the real crid binary on a temp socket; the
//! freestanding test guest (sandbox/tests/guests/freestanding) packed with
//! `crid unikernel pack --push` into the test registry at `CRID_TEST_REGISTRY`, pulled,
//! recognised as a unikernel, and run by QEMU (KVM when usable) under the container monitor.
//! Checks: the guest's serial output in the CRI log, CRI args/env on its command line, its
//! chosen exit code as the container's, the accelerator in verbose status, ExecSync →
//! UNIMPLEMENTED, StopContainer on a guest that never exits, and nothing left after removal.
//! Needs root, gcc, qemu and the registry; skipped with a reason otherwise (failing under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Crid, log_text};
use conformance::kubelet::KubeletContainer;
use proto::cri;
use tonic::Code;

fn missing(reason: &str) -> bool {
    common::skip("unikernel", reason);
    false
}

fn ready() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        missing("needs root");
        return None;
    }
    for bin in ["gcc", "qemu-system-x86_64", "nsenter"] {
        if !common::on_path(bin) {
            missing(&format!("{bin} is not installed"));
            return None;
        }
    }
    match std::env::var("CRID_TEST_REGISTRY") {
        Ok(r) => Some(r),
        Err(_) => {
            missing("CRID_TEST_REGISTRY is not set (scripts/test.sh starts a registry)");
            None
        }
    }
}

/// [`ready`] for tests that put their guests in a CNI pod network.
fn ready_with_cni() -> Option<String> {
    let reg = ready()?;
    if !Path::new("/usr/lib/cni/bridge").exists() {
        missing("the CNI plugins are not installed in /usr/lib/cni");
        return None;
    }
    Some(reg)
}

/// [`ready_with_cni`] for tests of the QEMU pool, which needs a usable KVM.
fn ready_for_qemu_pool() -> Option<String> {
    let reg = ready_with_cni()?;
    if !sandbox::vm::accel::probe_host().usable {
        missing("no usable KVM (the QEMU pool needs it)");
        return None;
    }
    Some(reg)
}

/// Builds the guest and pushes it as a unikernel image with `crid unikernel pack`.
fn push_guest(reg: &str, dir: &Path, guest: &str, hypervisor: &str) -> String {
    let tag = format!("{guest}-{hypervisor}");
    let kernel = dir.join("guest.elf");
    common::push_guest_as(reg, &kernel, guest, hypervisor, "exit=3 from-image", &tag)
}

/// crid on a temp dir with this file's config (seccomp profiles from `<dir>/seccomp`, metrics
/// on a free loopback port), and the metrics endpoint's address.
async fn start() -> (Crid, String) {
    start_configured("", "").await
}

/// [`start`] with more `[cni]` and `[vm]` settings.
async fn start_configured(cni: &str, vm: &str) -> (Crid, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    for sub in ["net.d", "seccomp", "logs"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(
        d.join("config.toml"),
        format!(
            "[cni]\nconf_dir = {:?}\n{cni}\n[runtime]\nseccomp_profile_root = {:?}\n\
             unikernel_autodetect_handlers = [\"runc\"]\n[metrics]\naddress = \"{metrics}\"\n\
             [vm]\n{vm}\n",
            d.join("net.d"),
            d.join("seccomp")
        ),
    )
    .unwrap();
    (Crid::start_owned(dir).await, metrics)
}

impl Crid {
    /// Creates and starts a guest container of `image` with CRI `args` and `GREETING=hi`.
    async fn create_start_guest(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        name: &str,
        image: &str,
        args: &[&str],
    ) -> String {
        self.create_start(pod, guest_config(name, image, args))
            .await
    }
}

#[tokio::test]
async fn unikernel_container_lifecycle_through_the_cri() {
    let Some(reg) = ready() else { return };
    let work = tempfile::tempdir().unwrap();
    let image = push_guest(&reg, work.path(), "unikraft", "qemu");
    // The same kernel labelled for Firecracker, which this host lacks.
    let fc_image = push_guest(&reg, work.path(), "linux", "firecracker");
    let (crid, metrics) = start().await;
    for i in [&image, &fc_image] {
        crid.expect_pull(i).await;
    }

    // The RuntimeClass rule: under the default handler a unikernel image is refused, naming
    // the handlers that run VMs; nothing is left of the attempt.
    let plain = crid.run_host_pod("plain").await;
    let err = crid
        .create(&plain, common::container_config(&image, "plain", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("\"urunc\" or \"unikernel\""),
        "{err}"
    );
    let _ = crid
        .rt()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: plain.0.clone(),
        })
        .await;

    // ... unless the operator enabled detection for the pod's handler (here `runc`).
    let detect = crid.run_host_pod_with("detect", "runc").await;
    let id = crid
        .create_start(
            &detect,
            common::container_config(&image, "detect", &["exit=4"]),
        )
        .await;
    let st = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 4, "{}", log_text(crid.path()));
    crid.remove_container(&id).await;
    let _ = crid
        .rt()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: detect.0.clone(),
        })
        .await;

    // A host-network pod: the guest runs without a network here (vm_linux covers the tap).
    let log_dir = crid.path().join("logs/uk");
    let pod = crid.run_host_pod_with("uk", "urunc").await;
    let pod_id = pod.0.clone();

    // A hypervisor that is not installed: FAILED_PRECONDITION naming it, at CreateContainer.
    if sandbox::vm::launch::VmSettings::default()
        .binary("firecracker")
        .is_err()
    {
        let err = crid
            .create(
                &pod,
                cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "fc".into(),
                        attempt: 0,
                    }),
                    image: Some(common::spec(&fc_image)),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert!(err.message().contains("firecracker"), "{err}");
    }

    // CRI args replace the image's command line; the guest exits with the code it was given.
    // This guest (PVH, no devices) is on microvm: where QEMU's microvm build is installed it
    // runs there, and its code comes back through the exit port (a UART at 0xf4 on a pipe to
    // the monitor) instead of isa-debug-exit, which the build lacks.
    let a = crid
        .create_start_guest(&pod, "args", &image, &["exit=5", "from-cri"])
        .await;
    let s = crid
        .wait_state(&a, cri::ContainerState::ContainerExited)
        .await;
    let log = std::fs::read_to_string(log_dir.join("args.log")).unwrap_or_default();
    assert_eq!(s.exit_code, 5, "log:\n{log}\n{}", log_text(crid.path()));
    assert_eq!(s.reason, "Error");
    assert!(log.contains("crid-test-guest: booted"), "{log}");
    assert!(
        log.contains("cmdline: guest.elf env.vars=[ \"GREETING=hi\" ] -- exit=5 from-cri"),
        "{log}"
    );
    let (_, info) = crid.container_status(&a).await;
    let argv = &info["runtimeSpec"]["unikernel"]["argv"];
    let build = sandbox::vm::launch::VmSettings::default().qemu_microvm();
    let want = build.as_ref().map_or(sandbox::vm::qemu::BINARY, |_| {
        sandbox::vm::qemu::MICROVM_BINARY
    });
    assert!(
        argv[0]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!("/{want}"))),
        "{argv}"
    );
    if build.is_some() {
        let argv = argv.to_string();
        assert!(argv.contains("isa-serial,iobase=0xf4") && !argv.contains("isa-debug-exit"));
    }
    let accel = &info["runtimeSpec"]["unikernel"]["accel"]["accelerator"];
    assert!(accel == "kvm" || accel == "tcg", "verbose info: {info}");
    if sandbox::vm::accel::probe_host().usable {
        assert_eq!(
            accel, "kvm",
            "a usable /dev/kvm must run this guest under KVM"
        );
    }

    // No args: the image's command line (packed as its Cmd) runs.
    let b = crid
        .create_start_guest(&pod, "image-cmd", &image, &[])
        .await;
    let s = crid
        .wait_state(&b, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 3, "{}", log_text(crid.path()));

    // The three starts (detected, args, image cmd) fed the VM start histogram (VMM by name).
    let text = common::scrape(&metrics).await;
    let qemu = [("vmm", "qemu")];
    assert_eq!(
        common::metric(&text, "crid_vm_boot_duration_seconds_count", &qemu),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        common::metric(
            &text,
            "crid_vm_boot_duration_seconds_bucket",
            &[("vmm", "qemu"), ("le", "+Inf")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        common::metric(
            &text,
            "crid_grpc_requests_total",
            &[("method", "StartContainer"), ("code", "Ok")]
        ),
        Some(3.0),
        "{text}"
    );

    // A guest that never exits, with CRI limits: running, no exec, stopped after the timeout.
    let c = crid
        .create_start(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "stay".into(),
                    attempt: 0,
                }),
                image: Some(common::spec(&image)),
                args: vec!["stay".into()],
                log_path: "stay.log".into(),
                linux: Some(cri::LinuxContainerConfig {
                    resources: Some(cri::LinuxContainerResources {
                        memory_limit_in_bytes: 64 << 20,
                        cpu_quota: 50_000,
                        cpu_period: 100_000,
                        cpu_shares: 256,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    crid.wait_state(&c, cri::ContainerState::ContainerRunning)
        .await;
    // Once the guest prints, QEMU has dropped its privileges ("just before starting the VM").
    let stay_log = log_dir.join("stay.log");
    log_containing(&crid, &stay_log, "crid-test-guest: booted", 60).await;
    let (_, info) = crid.container_status(&c).await;
    let vmm = info["pid"].as_i64().expect("pid in verbose info");
    let cmdline = std::fs::read(format!("/proc/{vmm}/cmdline")).unwrap();
    assert!(
        cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"/qemu-system-x86_64")
                || a.ends_with(b"/qemu-system-x86_64-microvm")),
        "the container's pid is not the VMM: {}",
        String::from_utf8_lossy(&cmdline)
    );
    // The VMM is in the container's cgroup, which carries the CRI limits and the device list.
    let rel = info["runtimeSpec"]["unikernel"]["request"]["cgroup"]
        .as_str()
        .expect("cgroup in verbose info")
        .to_string();
    let cg = |ctl: &str, file: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(ctl).join(&rel).join(file))
            .unwrap_or_else(|e| panic!("{ctl}/{rel}/{file}: {e}"))
    };
    for ctl in ["memory", "cpu", "cpuacct", "pids", "devices"] {
        let procs = cg(ctl, "cgroup.procs");
        assert!(
            procs.lines().any(|l| l.trim() == vmm.to_string()),
            "VMM {vmm} not in {ctl}/{rel}: {procs:?}"
        );
    }
    // Guest RAM = the limit; the cgroup adds the VMM's overhead.
    let overhead = sandbox::vm::launch::DEFAULT_VMM_MEMORY_OVERHEAD_MIB;
    assert_eq!(
        cg("memory", "memory.limit_in_bytes").trim(),
        ((64 + overhead) << 20).to_string()
    );
    assert!(
        cmdline
            .split(|b| *b == 0)
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == b"-m" && w[1] == b"64"),
        "guest memory is not the limit"
    );
    assert_eq!(cg("cpu", "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(cg("cpu", "cpu.shares").trim(), "256");
    // UpdateContainerResources on the running guest: its VMM's cgroup gets the new CPU and
    // memory limits and ContainerStatus reports them; RAM and vCPUs stay as booted.
    let update = |memory: i64, quota: i64, shares: i64| {
        let mut rt = crid.rt();
        let container_id = c.clone();
        async move {
            rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id,
                linux: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: memory,
                    cpu_quota: quota,
                    cpu_period: 100_000,
                    cpu_shares: shares,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
        }
    };
    update(96 << 20, 80_000, 512)
        .await
        .unwrap_or_else(|e| panic!("update: {e}\n{}", log_text(crid.path())));
    assert_eq!(cg("cpu", "cpu.cfs_quota_us").trim(), "80000");
    assert_eq!(cg("cpu", "cpu.shares").trim(), "512");
    assert_eq!(
        cg("memory", "memory.limit_in_bytes").trim(),
        ((96 + overhead) << 20).to_string()
    );
    let reported = |s: &cri::ContainerStatus| {
        let r = s.resources.clone().unwrap().linux.unwrap();
        (r.memory_limit_in_bytes, r.cpu_quota, r.cpu_shares)
    };
    let (s, _) = crid.container_status(&c).await;
    assert_eq!(reported(&s), (96 << 20, 80_000, 512));
    // Less RAM than it booted with, or a second vCPU, needs a new guest.
    for (memory, quota) in [(32 << 20, 80_000), (96 << 20, 150_000)] {
        let err = update(memory, quota, 512).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    }
    let (s, _) = crid.container_status(&c).await;
    assert_eq!(reported(&s), (96 << 20, 80_000, 512));
    assert_eq!(cg("cpu", "cpu.cfs_quota_us").trim(), "80000");
    let devices = cg("devices", "devices.list");
    let mut devices: Vec<&str> = devices.lines().collect();
    devices.sort_unstable();
    assert_eq!(
        devices,
        [
            "c 10:200 rw",
            "c 10:232 rw",
            "c 1:3 rw",
            "c 1:5 rw",
            "c 1:7 rw",
            "c 1:8 rw",
            "c 1:9 rw"
        ]
    );
    // Non-root, no capabilities, under seccomp, chrooted.
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let uids: Vec<u32> = field("Uid")
        .split(' ')
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(
        uids.len() == 4 && uids.iter().all(|u| *u != 0),
        "VMM runs as root: {status}"
    );
    assert!(field("Gid").split(' ').all(|g| g != "0"), "{status}");
    assert_eq!(field("Seccomp"), "2", "{status}");
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
    assert_eq!(field("CapEff"), "0000000000000000", "{status}");
    let root = std::fs::read_link(format!("/proc/{vmm}/root")).unwrap();
    assert!(root.ends_with("vm/chroot"), "VMM root is {root:?}");
    // Only allow-listed descriptors: KVM and its anonymous inodes, pipes and sockets (serial,
    // QMP), /dev/null and the container's own files; nothing of crid's (store, its socket).
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{vmm}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(e.path()) {
            fds.push(target.display().to_string());
        }
    }
    let own = crid
        .path()
        .join("root/containers")
        .join(&c)
        .display()
        .to_string();
    let allowed = |t: &str| {
        t == "/dev/kvm"
            || t == "/dev/null"
            || t == "/dev/net/tun"
            || t.starts_with("anon_inode:")
            || t.starts_with("pipe:")
            || t.starts_with("socket:")
            || t.starts_with(&own)
    };
    let stray: Vec<&String> = fds.iter().filter(|t| !allowed(t)).collect();
    assert!(stray.is_empty(), "the VMM holds {stray:?} (all: {fds:?})");
    assert!(
        fds.iter()
            .any(|t| t == "/dev/kvm" || t.starts_with("anon_inode:kvm")),
        "{fds:?}"
    );
    let err = crid
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["sh".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err}");
    crid.stop_container(&c, 2).await;
    let s = crid
        .wait_state(&c, cri::ContainerState::ContainerExited)
        .await;
    assert_ne!(s.finished_at, 0);
    // The guest ignores the power button (it has no ACPI): killed after the timeout.
    assert_eq!(s.exit_code, 137, "{s:?}");
    for ctl in ["memory", "cpu", "devices"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctl).join(&rel);
        assert!(!dir.exists(), "{} outlived the VMM", dir.display());
    }

    // Killed at once (timeout 0, as kubelet's force delete): the cgroup goes too.
    let d = crid
        .create_start_guest(&pod, "kill", &image, &["stay"])
        .await;
    let kill_log = log_dir.join("kill.log");
    log_containing(&crid, &kill_log, "crid-test-guest: booted", 60).await;
    crid.stop_container(&d, 0).await;
    let s = crid
        .wait_state(&d, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 137, "{s:?}");

    let mut cgroups = Vec::new();
    for id in [&a, &b, &c, &d] {
        let (_, info) = crid.container_status(id).await;
        let rel = info["runtimeSpec"]["unikernel"]["request"]["cgroup"]
            .as_str()
            .expect("cgroup in verbose info")
            .to_string();
        cgroups.push(Path::new("/sys/fs/cgroup/memory").join(rel));
        crid.remove_container(id).await;
    }
    let left: Vec<&PathBuf> = cgroups.iter().filter(|c| c.exists()).collect();
    assert!(left.is_empty(), "VMM cgroups left: {left:?}");
    let left: Vec<PathBuf> = std::fs::read_dir(crid.path().join("root/containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "containers left: {left:?}");
    // No VMM of this crid survives.
    let state = crid.path().display().to_string();
    let vmms: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(&state))
        .collect();
    assert!(vmms.is_empty(), "VMMs left: {vmms:?}");
    crid.cri.discard_pod(&pod_id).await;
}

/// Builds the linux guest (Debian's cloud kernel + busybox initrd) into `dir/linux`.
fn build_linux_guest(dir: &Path) -> Option<PathBuf> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox/tests/guests/linux/build.sh");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crid-linux-guest");
    let out = dir.join("linux");
    let st = Command::new("sh")
        .arg(&script)
        .arg(&out)
        .arg(&cache)
        .status()
        .unwrap();
    if !st.success() {
        missing("cannot build the linux guest (apt-get download linux-image-cloud-amd64)");
        return None;
    }
    Some(out)
}

/// Builds the linux guest (Debian's cloud kernel + busybox initrd) and pushes it.
fn push_linux_guest(reg: &str, dir: &Path) -> Option<String> {
    let out = build_linux_guest(dir)?;
    // The image's workload, in its own root file system next to the kernel and initrd.
    let entry = dir.join("hello.sh");
    std::fs::write(
        &entry,
        "#!/bin/sh\necho \"entrypoint ran from the image rootfs: $*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let options = [
        "--add".to_owned(),
        format!("{}:/app/hello.sh", entry.display()),
        "--entrypoint".to_owned(),
        "/app/hello.sh".to_owned(),
    ];
    Some(push_linux_image(reg, &out, "linux", &options))
}

/// Packs the linux guest built in `out` (its kernel and initrd, `FROM_IMAGE=from-image` in the
/// image's environment) with more `crid unikernel pack` options (the image's files, its
/// entrypoint) and pushes it to `reg` tagged `<tag>-<pid>`.
fn push_linux_image(reg: &str, out: &Path, tag: &str, options: &[String]) -> String {
    let reference = format!("{reg}/crid-tests/unikernel:{tag}-{}", std::process::id());
    let _push = common::one_push_at_a_time();
    let res = Command::new(env!("CARGO_BIN_EXE_crid"))
        .args([
            "unikernel",
            "pack",
            "--type",
            "linux",
            "--hypervisor",
            "qemu",
        ])
        .arg("--kernel")
        .arg(out.join("vmlinuz"))
        .arg("--initrd")
        .arg(out.join("initrd.gz"))
        .args(["--env", "FROM_IMAGE=from-image"])
        .args(options)
        .args(["-t", tag, "--push"])
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "pack --push failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    reference
}

/// Packs the linux guest as an image whose guest mounts its container's root file system
/// (urunc's `mountRootfs=true`) and pushes it. The image's own files: busybox, the entrypoint
/// `/app/serve.sh` (serves HTTP with busybox httpd until `/tmp/quit` appears, then exits 3) and
/// two CGI scripts: `page` (reads the mounted ConfigMap file at each request, tries to write to
/// it and to the emptyDir, shows the environment) and `exit` (writes the termination message
/// and asks the entrypoint to end).
fn push_shared_root_guest(reg: &str, dir: &Path) -> Option<String> {
    let out = build_linux_guest(dir)?;
    let files = dir.join("shared-root-files");
    std::fs::create_dir_all(&files).unwrap();
    let scripts = [
        (
            "serve.sh",
            "/app/serve.sh",
            "#!/bin/busybox sh\nbb=/bin/busybox\n\
             echo \"serve: entrypoint ran from the shared rootfs as $($bb id -u):$($bb id -g) in $($bb pwd): $*\"\n\
             $bb mkdir -p /tmp && $bb rm -f /tmp/quit\n\
             $bb httpd -f -p 8080 -h /www &\n\
             while [ ! -e /tmp/quit ]; do $bb sleep 0.2; done\n\
             $bb kill $!\necho \"serve: quitting\"\nexit 3\n",
        ),
        (
            "page",
            "/www/cgi-bin/page",
            "#!/bin/busybox sh\nbb=/bin/busybox\n\
             if $bb touch /etc/app/probe 2>/dev/null; then ro=writable; else ro=refused; fi\n\
             if echo from-guest > /cache/probe; then rw=writable; else rw=refused; fi\n\
             echo 'Content-Type: text/plain'\necho ''\n\
             echo \"shared root: config=[$($bb cat /etc/app/greeting)] ro=[$ro] rw=[$rw]\" \
             \"greeting=[$GREETING] from_image=[$FROM_IMAGE] token=[$($bb cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)]\"\n",
        ),
        (
            "exit",
            "/www/cgi-bin/exit",
            "#!/bin/busybox sh\n\
             echo 'the guest wrote its termination message' > /dev/termination-log\n\
             : > /tmp/quit\necho 'Content-Type: text/plain'\necho ''\necho bye\n",
        ),
    ];
    let mut options: Vec<String> = [
        "--mount-rootfs",
        "--env",
        "PATH=/bin",
        "--add",
        "/bin/busybox:/bin/busybox",
        "--entrypoint",
        "/app/serve.sh",
    ]
    .map(String::from)
    .into();
    for (name, dest, text) in scripts {
        let path = files.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        options.extend(["--add".to_owned(), format!("{}:{dest}", path.display())]);
    }
    Some(push_linux_image(reg, &out, "linux-shared", &options))
}

/// A guest of [`push_shared_root_guest`] serving its page in a kubelet-shaped pod under the
/// urunc handler, on a CNI bridge of its own.
struct SharedRootGuest {
    pod: conformance::kubelet::KubeletPod,
    pod_id: String,
    image: String,
    ip: std::net::Ipv4Addr,
    /// The container and its CRI log.
    id: String,
    log: PathBuf,
    /// The host's side of the container's ConfigMap (`/etc/app`), emptyDir (`/cache`) and
    /// `/dev/termination-log`.
    config_dir: PathBuf,
    cache_dir: PathBuf,
    term_log: PathBuf,
    _bridge: Bridge,
    crid: Crid,
    _work: tempfile::TempDir,
}

impl SharedRootGuest {
    /// Starts the guest (`serve`, `GREETING=hi there`, port 8080, the ConfigMap `config` with
    /// `greeting=version-1` at `/etc/app`, the emptyDir `cache` at `/cache`, and what `more`
    /// adds) in the pod `name` with `annotations`, on the bridge `10.<octet>`; checks the page
    /// it serves (the ConfigMap, the emptyDir written, both environments, the service-account
    /// token) and its entrypoint's log line. Returns it and the page; `None` when the test
    /// cannot run here (skipped).
    async fn start(
        name: &str,
        annotations: &[(&str, &str)],
        octet: u8,
        more: impl FnOnce(KubeletContainer) -> KubeletContainer,
    ) -> Option<(Self, String)> {
        let reg = ready_with_cni()?;
        let work = tempfile::tempdir().unwrap();
        let image = push_shared_root_guest(&reg, work.path())?;
        let (crid, _) = start().await;
        let (bridge, _) = bridge_network(&crid, octet);
        crid.expect_pull(&image).await;
        let mut pod =
            conformance::kubelet::KubeletPod::new(&crid.path().join("kubelet"), name, "default")
                .unwrap();
        pod.annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = pod.sandbox_config();
        let pod_id = crid.run_pod_under(&config, "urunc").await;
        let ip = pod_ip(&crid, &pod_id).await;
        let container = pod
            .container("app", &image)
            .args(&["serve"])
            .env("GREETING", "hi there")
            .port("http", 8080)
            .config_map("config", "/etc/app", &[("greeting", "version-1")])
            .empty_dir("cache", "/cache");
        let request = more(container).build().unwrap();
        let host_of = |path: &str| {
            PathBuf::from(
                &request
                    .mounts
                    .iter()
                    .find(|m| m.container_path == path)
                    .unwrap()
                    .host_path,
            )
        };
        let (config_dir, cache_dir, term_log) = (
            host_of("/etc/app"),
            host_of("/cache"),
            host_of("/dev/termination-log"),
        );
        let id = crid.create_start(&(pod_id.clone(), config), request).await;
        let log = pod.log_directory.join("app/0.log");
        let body = shared_root_page(&crid, &id, ip, &log).await;
        for want in [
            "config=[version-1]",
            "rw=[writable]",
            "greeting=[hi there]",
            "from_image=[from-image]",
            "token=[default]",
        ] {
            assert!(body.contains(want), "{want} missing from {body:?}");
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("serve: entrypoint ran from the shared rootfs as 0:0 in /: serve"),
            "{text}"
        );
        let guest = SharedRootGuest {
            pod,
            pod_id,
            image,
            ip,
            id,
            log,
            config_dir,
            cache_dir,
            term_log,
            _bridge: bridge,
            crid,
            _work: work,
        };
        Some((guest, body))
    }

    /// Asks the workload (`/cgi-bin/exit`) to write its termination message and exit 3, and
    /// waits until the container has exited with that code.
    async fn exit_3(&self) {
        let _ = http_get_path(self.ip, 8080, "/cgi-bin/exit");
        let status = self
            .crid
            .wait_state(&self.id, cri::ContainerState::ContainerExited)
            .await;
        assert_eq!(
            status.exit_code,
            3,
            "{status:?}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// A `linux` guest whose image sets `mountRootfs=true` mounts its container's root file system
/// (the image's layers with kubelet's mounts bound in) over virtiofs and runs the image's
/// entrypoint in it: a ConfigMap changed on the host after the start is read anew, the
/// read-only ConfigMap refuses writes, the emptyDir takes them (seen on the host), the image and
/// CRI environments apply, a write to `/dev/termination-log` lands in kubelet's file (which
/// kubelet reads for the termination message), the entrypoint's exit code is the container's,
/// and after RemoveContainer nothing stays mounted or running; a second guest stopped with
/// StopContainer powers off (exit 0) and leaves nothing either.
#[tokio::test]
async fn linux_guest_mounts_its_container_rootfs_over_virtiofs() {
    if !Path::new(sandbox::vm::virtiofs::DEFAULT_PATH).exists() {
        missing("virtiofsd (qemu-system-common) is not installed");
        return;
    }
    let Some((guest, body)) = SharedRootGuest::start("app-6c9d7f8b5-k2m4p", &[], 195, |c| {
        c.limits(1000, 256 << 20)
    })
    .await
    else {
        return;
    };
    let (crid, id, ip, log) = (
        &guest.crid,
        guest.id.as_str(),
        guest.ip,
        guest.log.as_path(),
    );
    assert!(body.contains("ro=[refused]"), "{body}");
    // The guest's write to the emptyDir is on the host.
    assert_eq!(
        std::fs::read_to_string(guest.cache_dir.join("probe")).unwrap(),
        "from-guest\n"
    );
    // The ConfigMap changes on the host (in place): the guest reads the new content.
    std::fs::write(guest.config_dir.join("greeting"), "version-2").unwrap();
    let body = shared_root_page(crid, id, ip, log).await;
    assert!(body.contains("config=[version-2]"), "{body}");
    let (status, info) = crid.container_status(id).await;
    let notes = info["runtimeSpec"]["unikernel"]["mount_notes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(notes.len(), 5, "{info}");
    assert!(notes.iter().all(|n| n["delivery"] == "virtiofs"), "{info}");
    // kubelet finds the termination log's host file in the status's mounts.
    assert!(
        status
            .mounts
            .iter()
            .any(|m| m.container_path == "/dev/termination-log"
                && Path::new(&m.host_path) == guest.term_log),
        "{:?}",
        status.mounts
    );

    // The workload writes its termination message and exits 3.
    guest.exit_3().await;
    assert_eq!(
        std::fs::read_to_string(&guest.term_log).unwrap(),
        "the guest wrote its termination message\n"
    );

    remove_leaving_nothing(crid, id).await;

    // StopContainer presses the ACPI power button: the guest's init stops the workload and
    // powers off (exit 0); again nothing stays mounted or running, virtiofsd's socket is gone.
    let request = guest
        .pod
        .container("app", &guest.image)
        .config_map("config", "/etc/app", &[("greeting", "version-1")])
        .port("http", 8080)
        .build()
        .unwrap();
    let id = crid
        .create_start(&(guest.pod_id.clone(), guest.pod.sandbox_config()), request)
        .await;
    shared_root_page(crid, &id, ip, log).await;
    crid.stop_container(&id, 60).await;
    let status = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.exit_code, 0, "{status:?}\n{text}");
    assert!(
        text.contains("crid-linux-guest: power button: shutting down"),
        "{text}"
    );
    remove_leaving_nothing(crid, &id).await;
    let sockets: Vec<_> = std::fs::read_dir(crid.path().join("state"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vfs-"))
        .map(|e| e.file_name())
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
    crid.cri.discard_pod(&guest.pod_id).await;
}

/// A `linux` guest whose image sets `mountRootfs=true` in a pod that says `useDMBlock=true`
/// (urunc's block root) boots its container's root file system from a block device: crid
/// copies the root (the image's layers with kubelet's mounts and `/etc/crid` in it) into an
/// ext4 image that QEMU gives the guest as its first virtio-blk drive (`crid.root=block:vda`),
/// and the guest's init mounts it and runs the image's entrypoint from it: the page shows the
/// mounted ConfigMap, the image and CRI environments and the service-account token, read from
/// the disk. It is a copy: the guest's writes to the emptyDir and `/dev/termination-log` stay
/// in the image (the host's files do not change), the mounts are noted `block`; the
/// entrypoint's exit code is the container's; after RemoveContainer nothing stays mounted,
/// running or on disk. The same path is the one Firecracker, Cloud Hypervisor and crid-vmm
/// guests take (their plans are unit tests; Linux boots here under QEMU's TCG only).
#[tokio::test]
async fn linux_guest_boots_its_container_rootfs_from_a_block_device() {
    let Some((guest, _)) = SharedRootGuest::start(
        "blk-5f7c9d8b6-r4t2z",
        &[("com.urunc.unikernel.useDMBlock", "true")],
        194,
        |c| c,
    )
    .await
    else {
        return;
    };
    let (crid, id) = (&guest.crid, guest.id.as_str());
    let text = std::fs::read_to_string(&guest.log).unwrap_or_default();
    assert!(
        text.contains("crid-linux-guest: block root /dev/vda mounted"),
        "{text}"
    );
    // The guest's write stays on its disk.
    assert!(!guest.cache_dir.join("probe").exists());
    let (_, info) = crid.container_status(id).await;
    let vm = &info["runtimeSpec"]["unikernel"];
    let notes = vm["mount_notes"].as_array().cloned().unwrap_or_default();
    assert_eq!(notes.len(), 5, "{info}");
    assert!(
        notes
            .iter()
            .all(|n| n["delivery"] == "block" && n["note"].as_str().unwrap().contains("not shared")),
        "{info}"
    );
    // The first drive is the container's ext4 image (the superblock's magic at byte 1080).
    let root_image = crid
        .path()
        .join("root/containers")
        .join(id)
        .join("vm/rootfs.ext4");
    let line = vm["guest_cmdline"].as_str().unwrap_or_default();
    assert!(
        line.contains("crid.root=block:vda") && !line.contains("GREETING"),
        "{line}"
    );
    let argv: Vec<String> = serde_json::from_value(vm["argv"].clone()).unwrap();
    let drive = argv
        .iter()
        .find(|a| a.starts_with("file="))
        .expect("a -drive");
    assert!(
        drive.starts_with(&format!("file={},format=raw,", root_image.display())),
        "{argv:?}"
    );
    let mut magic = [0u8; 2];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&root_image).unwrap(),
        &mut magic,
        1080,
    )
    .unwrap();
    assert_eq!(magic, [0x53, 0xef]);
    // Nothing of the tree it was copied from stays mounted while the guest runs.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(id)),
        "the container's tree is still mounted"
    );

    // The workload writes its termination message (on its disk only) and exits 3.
    guest.exit_3().await;
    assert_eq!(std::fs::read_to_string(&guest.term_log).unwrap(), "");
    assert!(!root_image.exists(), "the root image outlived the guest");
    remove_leaving_nothing(crid, id).await;
    crid.cri.discard_pod(&guest.pod_id).await;
}

/// A `unikraft` guest on QEMU whose pod says `mountRootfs=true` gets its container's root file
/// system (the image's layers with kubelet's mounts bound in) over QEMU's 9p, as urunc does:
/// the `-fsdev`/`virtio-9p-pci` pair on QEMU's command line next to `-chroot`/`-runas`, the
/// root on the guest's (`vfs.fstab`), the mounts noted as `9p`. The test guest's 9P2000.u
/// client (Unikraft's protocol, legacy virtio-9p PCI, the device tagged `fs0`) reads a file of
/// the image's layer and the ConfigMap's file (through kubelet's `..data` symbolic links),
/// creates a file and a directory in the emptyDir (owned by QEMU's uid on the host) and writes
/// `/dev/termination-log` (kubelet's file, 0666, reached on the host), and is refused where
/// QEMU's uid may not write: the read-only ConfigMap and the root-owned root directory. After
/// RemoveContainer nothing stays mounted or running.
#[tokio::test]
async fn unikraft_guest_gets_its_container_rootfs_over_9p() {
    use conformance::kubelet::KubeletPod;
    use std::os::unix::fs::MetadataExt;
    let Some(reg) = ready() else { return };
    let work = tempfile::tempdir().unwrap();
    let image_file = work.path().join("hello.txt");
    std::fs::write(&image_file, "hello from the image layer\n").unwrap();
    let freestanding = common::push_guest_with(
        &reg,
        &work.path().join("guest.elf"),
        "unikraft",
        "qemu",
        "exit=3 from-image",
        "unikraft-qemu-9p",
        &["--add", &format!("{}:/srv/hello.txt", image_file.display())],
    );
    let (crid, _) = start().await;
    crid.expect_pull(&freestanding).await;
    let mut pod = KubeletPod::new(
        &crid.path().join("kubelet"),
        "ninep-7d9c8b6f5-q2w3e",
        "default",
    )
    .unwrap();
    pod.host_network = true;
    pod.annotations = vec![("com.urunc.unikernel.mountRootfs".into(), "true".into())];
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let request = pod
        .container("app", &freestanding)
        .args(&[
            "stay",
            "9p.read=/srv/hello.txt",
            "9p.read=/etc/app/greeting",
            "9p.stat=/",
            "9p.write=/data/out.txt",
            "9p.mkdir=/data/cache",
            "9p.write=/dev/termination-log",
            "9p.write=/etc/app/greeting",
            "9p.write=/probe.txt",
        ])
        .config_map("config", "/etc/app", &[("greeting", "hello")])
        .empty_dir("scratch", "/data")
        .build()
        .unwrap();
    let id = crid.create_start(&(pod_id.clone(), config), request).await;
    let log = pod.log_directory.join("app/0.log");
    let text = log_containing(&crid, &log, "9p: done", 60).await;
    assert!(text.contains("vfs.fstab=[ \"fs0:/:9pfs:::\" ]"), "{text}");
    for line in [
        "9p: device tagged fs0 at I/O port",
        "9p: attached with 9P2000.u",
        "9p: read /srv/hello.txt: hello from the image layer",
        "9p: read /etc/app/greeting: hello",
        "9p: stat /: uid 0 gid 0 mode 755 dir",
        "9p: write (created) /data/out.txt: 35 bytes",
        "9p: mkdir /data/cache: created",
        "9p: write (truncated) /dev/termination-log: 35 bytes",
    ] {
        assert!(text.contains(line), "no {line:?} in: {text}");
    }
    // Refused: the read-only ConfigMap's file and a new file in the root-owned root.
    assert_eq!(text.matches("9p: write: error").count(), 2, "{text}");
    assert!(
        text.contains("9p: write: error Read-only file system (errno 30)"),
        "{text}"
    );
    assert!(
        text.contains("9p: write: error Permission denied (errno 13)"),
        "{text}"
    );
    let (status, info) = crid.container_status(&id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let vm = &info["runtimeSpec"]["unikernel"];
    let notes = vm["mount_notes"].as_array().cloned().unwrap_or_default();
    assert!(!notes.is_empty(), "{info}");
    assert!(notes.iter().all(|n| n["delivery"] == "9p"), "{info}");
    // kubelet's emptyDir and termination log are world-writable; its /etc/hosts, mounted
    // read-write, is root's 0644: the one mount noted as one the guest may not write.
    let unwritable: Vec<&str> = notes
        .iter()
        .filter(|n| n["note"].as_str().unwrap_or("").contains("may not write"))
        .filter_map(|n| n["containerPath"].as_str())
        .collect();
    assert_eq!(unwritable, ["/etc/hosts"], "{info}");
    let argv: Vec<String> = serde_json::from_value(vm["argv"].clone()).unwrap();
    let rootfs = crid.path().join("root/containers").join(&id).join("rootfs");
    let pair = |k: &str, v: &str| argv.windows(2).any(|w| w[0] == k && w[1] == v);
    assert!(
        pair(
            "-fsdev",
            &format!(
                "local,id=crid-9p,path={},security_model=none",
                rootfs.display()
            )
        ),
        "{argv:?}"
    );
    assert!(argv.iter().any(|a| a == "-chroot"));
    // crid's PCI firmware boots it (its -bios, not qboot), and configured the 9p device above.
    let shim = crid.path().join("root/vm/pci-shim.rom");
    assert_eq!(vm["firmware"]["kind"], "pci-shim", "{info}");
    assert!(pair("-bios", &shim.display().to_string()), "{argv:?}");
    assert!(!argv.iter().any(|a| a.contains("qboot")), "{argv:?}");
    let runas = common::arg_after(&argv, "-runas").expect("-runas");
    let qemu_uid: u32 = runas.split(':').next().unwrap().parse().unwrap();
    // The guest's writes are the host's files: the emptyDir's new file is QEMU's uid's, the
    // termination log (kubelet's, root's) has the guest's text; the ConfigMap is unchanged.
    let written = "written by crid-test-guest over 9p\n";
    let created = pod
        .dir
        .join("volumes/kubernetes.io~empty-dir/scratch/out.txt");
    assert_eq!(std::fs::read_to_string(&created).unwrap(), written);
    assert_eq!(std::fs::metadata(&created).unwrap().uid(), qemu_uid);
    let made = std::fs::metadata(created.with_file_name("cache")).unwrap();
    assert!(made.is_dir() && made.uid() == qemu_uid, "{made:?}");
    let termination_log = pod.dir.join("containers/app/5f3a9c1e");
    assert_eq!(std::fs::read_to_string(&termination_log).unwrap(), written);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/app/greeting")).unwrap(),
        "hello"
    );
    assert!(!rootfs.join("probe.txt").exists());
    crid.stop_container(&id, 0).await;
    remove_leaving_nothing(&crid, &id).await;
    crid.cri.discard_pod(&pod_id).await;
}

/// The text of a guest's log once it contains `needle`; fails with crid's log when it does not
/// within `secs` seconds.
async fn log_containing(crid: &Crid, log: &Path, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}: {text}\n{}",
            log.display(),
            log_text(crid.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls (bounded, 180 s) until the shared-root guest serves its page on `ip:8080`; fails when
/// the container exits first.
async fn shared_root_page(crid: &Crid, id: &str, ip: std::net::Ipv4Addr, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(b) = http_get_path(ip, 8080, "/cgi-bin/page") {
            if b.contains("shared root:") {
                return b;
            }
        }
        let (s, _) = crid.container_status(id).await;
        assert_ne!(
            s.state,
            cri::ContainerState::ContainerExited as i32,
            "the guest exited: {s:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "no page from {ip}:8080\n{}\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            log_text(crid.path())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes the container and checks that nothing of it stays mounted or running and that its
/// directory is gone.
async fn remove_leaving_nothing(crid: &Crid, id: &str) {
    crid.remove_container(id).await;
    let container_dir = crid.path().join("root/containers").join(id);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(id)).collect();
    assert!(left.is_empty(), "still mounted: {left:?}");
    assert!(
        common::processes_under(&container_dir, None).is_empty(),
        "{:?}",
        common::processes_under(&container_dir, None)
    );
    assert!(!container_dir.exists());
}

/// Deletes the test's bridge on drop.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Writes a CNI bridge network (its own bridge and /24, `10.<octet>.<pid>.0/24`) into `crid`'s
/// `net.d`; returns the bridge (deleted on drop) and the subnet's first three octets.
fn bridge_network(crid: &Crid, octet: u8) -> (Bridge, String) {
    let pid = std::process::id();
    let bridge = Bridge(format!("crvm{octet}-{}", pid % 10_000));
    let prefix = format!("10.{octet}.{}", pid % 250);
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("crid-vm-test-{octet}"),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge.0,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": crid.path().join("ipam"),
                    "ranges": [[{ "subnet": format!("{prefix}.0/24") }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            { "type": "loopback" }
        ]
    });
    std::fs::write(
        crid.path().join("net.d/10-vm.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    (bridge, prefix)
}

/// The pod's IPv4 address.
async fn pod_ip(crid: &Crid, pod_id: &str) -> std::net::Ipv4Addr {
    let (pod_status, _) = crid.pod_status(pod_id).await;
    pod_status
        .network
        .map(|n| n.ip)
        .unwrap_or_default()
        .parse()
        .expect("the pod has an IPv4 address")
}

/// Polls (bounded, 180 s) until the guest answers HTTP on `ip:8080` with a 200; fails when the
/// container exits first.
async fn wait_http(crid: &Crid, id: &str, ip: std::net::Ipv4Addr, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("crid-linux-guest: listening on") {
            if let Ok(b) = http_get(ip) {
                if b.contains("200") {
                    return b;
                }
            }
        }
        let (s, _) = crid.container_status(id).await;
        assert_ne!(
            s.state,
            cri::ContainerState::ContainerExited as i32,
            "the guest exited: {s:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "no answer from {ip}:8080\nlog:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A QEMU guest whose image declares virtio-mmio drivers (`crid unikernel pack --virtio mmio`)
/// in a pod network: QEMU's microvm gives it a virtio-mmio NIC announced on its command line,
/// and the test guest (virtio-mmio drivers only) answers UDP on the pod IP through it. A pod's
/// annotation declares it as well.
#[tokio::test]
async fn qemu_mmio_guest_answers_on_the_pod_ip() {
    let Some(reg) = ready_with_cni() else { return };
    let work = tempfile::tempdir().unwrap();
    let image = common::push_guest_with(
        &reg,
        &work.path().join("guest.elf"),
        "unikraft",
        "qemu",
        "stay",
        "mmio-qemu",
        &["--virtio", "mmio"],
    );
    let (crid, _) = start().await;
    let (_bridge, prefix) = bridge_network(&crid, 194);
    crid.expect_pull(&image).await;
    let config = common::pod_config("qemu-mmio", crid.path());
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let ip = pod_ip(&crid, &pod_id).await.to_string();
    assert!(ip.starts_with(&prefix), "pod IP {ip}");
    let id = crid
        .create_start_guest(&(pod_id, config), "net", &image, &[])
        .await;
    let log = crid.path().join("logs/qemu-mmio/net.log");
    let text = log_containing(&crid, &log, "crid-test-guest: net up", 60).await;
    assert!(text.contains("virtio_mmio.device="), "{text}");
    let (_, info) = crid.container_status(&id).await;
    let uk = &info["runtimeSpec"]["unikernel"];
    assert_eq!(uk["request"]["info"]["hypervisor"], "qemu", "{uk}");
    assert_eq!(uk["request"]["info"]["virtio"], "mmio", "{uk}");
    let echo = common::udp_echo(&ip, b"hello qemu microvm", 20);
    assert_eq!(
        echo.as_deref(),
        Some(&b"hello qemu microvm"[..]),
        "no echo from {ip}\nlog:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    crid.stop_container(&id, 2).await;
    crid.wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert!(
        common::udp_echo(&ip, b"anyone?", 2).is_none(),
        "still answering"
    );
    crid.remove_container(&id).await;

    // The same guest packed without the key, declared by its pod's annotation instead.
    let plain = push_guest(&reg, work.path(), "unikraft", "qemu");
    crid.expect_pull(&plain).await;
    let mut config = common::pod_config("qemu-mmio-ann", crid.path());
    config.annotations = [("io.crid.unikernel.virtio".to_owned(), "mmio".to_owned())].into();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let pod = (pod_id, config);
    let id = crid
        .create_start_guest(&pod, "net", &plain, &["stay"])
        .await;
    let log = crid.path().join("logs/qemu-mmio-ann/net.log");
    let text = log_containing(&crid, &log, "crid-test-guest: net up", 60).await;
    assert!(text.contains("virtio_mmio.device="), "{text}");
    let (_, info) = crid.container_status(&id).await;
    let uk = &info["runtimeSpec"]["unikernel"];
    assert_eq!(uk["request"]["info"]["virtio"], "mmio", "{uk}");
    assert_eq!(
        uk["annotation_keys"]["io.crid.unikernel.virtio"], "mmio (pod annotation)",
        "{uk}"
    );
    crid.stop_container(&id, 2).await;
    crid.remove_container(&id).await;
    // With its NIC, the guest's exit code comes back as the container's (through the exit
    // port where QEMU's microvm build runs it).
    let id = crid
        .create_start_guest(&pod, "exit", &plain, &["exit=6"])
        .await;
    let st = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let log = crid.path().join("logs/qemu-mmio-ann/exit.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st.exit_code, 6, "{text}\n{}", log_text(crid.path()));
    assert!(text.contains("virtio_mmio.device="), "{text}");
    crid.remove_container(&id).await;
    crid.finish().await;
}

/// Both test guests in pod networks with the requests kubelet sends (mounts of `/etc/hosts`,
/// `/dev/termination-log`, the service-account token, a ConfigMap and an emptyDir; service
/// environment variables; limits; security context; the io.kubernetes.* annotations): both
/// start. The `linux` guest gets the mounts and its environment in its initrd and answers with
/// the ConfigMap's file, an image `Env` variable, a CRI env variable and the pod's DNS; the
/// freestanding guest (a unikraft-type kernel without initrd) runs with the mounts skipped and
/// noted in its verbose status.
#[tokio::test]
async fn kubelet_shaped_guests_start_in_a_pod_network() {
    use conformance::kubelet::KubeletPod;
    let Some(reg) = ready_with_cni() else { return };
    let work = tempfile::tempdir().unwrap();
    let Some(linux) = push_linux_guest(&reg, work.path()) else {
        return;
    };
    let freestanding = push_guest(&reg, work.path(), "unikraft", "qemu");
    let (crid, _) = start().await;
    let (_bridge, _) = bridge_network(&crid, 198);
    crid.expect_pull(&linux).await;
    crid.expect_pull(&freestanding).await;
    let kubelet = crid.path().join("kubelet");

    // The freestanding guest: mounts skipped (noted), kubelet's envs on its command line.
    let pod = KubeletPod::new(&kubelet, "hello-7f9c8d6b5-x2x9z", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let request = common::kubelet_guest(&pod, "hello", &freestanding, &["stay"])
        .limits(500, 128 << 20)
        .build()
        .unwrap();
    let uk = crid.create_start(&(pod_id.clone(), config), request).await;
    let log = pod.log_directory.join("hello/0.log");
    let mut text = log_containing(&crid, &log, "crid-test-guest: booted", 60).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("-- stay") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    assert!(
        text.contains("\"KUBERNETES_SERVICE_HOST=10.96.0.1\"") && text.contains("\"GREETING=hi\""),
        "{text}"
    );
    // Routed (it declares 8080), with the pod's DNS server as its resolver.
    assert!(
        text.contains("netdev.ip=169.254.77.6/30:169.254.77.5:10.96.0.10"),
        "{text}"
    );
    let (_, info) = crid.container_status(&uk).await;
    // Its virtio-net-pci NIC on pc: crid's PCI firmware, not SeaBIOS.
    assert_eq!(
        info["runtimeSpec"]["unikernel"]["firmware"]["kind"], "pci-shim",
        "{info}"
    );
    let notes = info["runtimeSpec"]["unikernel"]["mount_notes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let skipped: Vec<&str> = notes
        .iter()
        .filter(|n| n["delivery"] == "skipped")
        .filter_map(|n| n["containerPath"].as_str())
        .collect();
    assert_eq!(
        skipped,
        [
            "/etc/app",
            "/cache",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/etc/hosts",
            "/dev/termination-log"
        ],
        "{info}"
    );
    crid.stop_container(&uk, 0).await;

    // The linux guest: mounts and environment through its initrd.
    let pod = KubeletPod::new(&kubelet, "web-5d8f7c9b4-q7w2e", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let ip = pod_ip(&crid, &pod_id).await;
    // An argument longer than a kernel command line (2 KiB): the guest reads its argv from
    // /etc/crid/args in its initrd.
    let long = "x".repeat(2100);
    let request = pod
        .container("web", &linux)
        .args(&["serve", &long])
        .env("GREETING", "hi there")
        .port("http", 8080)
        .config_map("config", "/etc/app", &[("greeting", "from-configmap")])
        .empty_dir("cache", "/cache")
        .limits(1000, 256 << 20)
        .build()
        .unwrap();
    let web = crid.create_start(&(pod_id.clone(), config), request).await;
    let body = wait_http(&crid, &web, ip, &pod.log_directory.join("web/0.log")).await;
    for want in [
        format!("args=[serve {long}]"),
        "greeting=[hi there]".into(),
        "from_image=[from-image]".into(),
        "config=[from-configmap]".into(),
        "resolv=[1]".into(),
        format!("entry=[entrypoint ran from the image rootfs: serve {long}]"),
    ] {
        assert!(body.contains(&want), "{want} missing from {body:?}");
    }
    let (_, info) = crid.container_status(&web).await;
    let cmdline = info["runtimeSpec"]["unikernel"]["guest_cmdline"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cmdline.contains("console=ttyS0") && !cmdline.contains(&long),
        "{info}"
    );
    let notes = info["runtimeSpec"]["unikernel"]["mount_notes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(notes.len(), 5, "{info}");
    assert!(notes.iter().all(|n| n["delivery"] == "initrd"), "{info}");
    crid.stop_container(&web, 0).await;
    for id in [&uk, &web] {
        crid.remove_container(id).await;
    }
    let pods = crid
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    for p in pods {
        crid.cri.discard_pod(&p.id).await;
    }
}

/// urunc's keys as annotations, with the kubelet-shaped pod: the pod's `metadata.annotations`
/// say `unikernelVersion` 0.17.0 and `mountRootfs` false, the container's own annotation says
/// 0.15.0, which wins: the freestanding guest (a unikraft-type kernel) gets Unikraft's old
/// command-line form (`netdev.ipv4_addr=`, no `env.vars`) instead of the image's current one,
/// and verbose status shows each key's value and where it came from. A pod whose annotation
/// holds a bad value gets `INVALID_ARGUMENT` naming the key at `CreateContainer`.
#[tokio::test]
async fn urunc_keys_in_pod_and_container_annotations_reach_the_guest() {
    use conformance::kubelet::KubeletPod;
    let Some(reg) = ready_with_cni() else { return };
    let work = tempfile::tempdir().unwrap();
    let freestanding = push_guest(&reg, work.path(), "unikraft", "qemu");
    let (crid, _) = start().await;
    let (_bridge, prefix) = bridge_network(&crid, 195);
    crid.expect_pull(&freestanding).await;
    let kubelet = crid.path().join("kubelet");
    let version = "com.urunc.unikernel.unikernelVersion";

    let mut pod = KubeletPod::new(&kubelet, "tuned-6b7c9d8f5-k4m2p", "default").unwrap();
    pod.annotations = vec![
        (version.into(), "0.17.0".into()),
        ("com.urunc.unikernel.mountRootfs".into(), "false".into()),
        ("com.urunc.unikernel.someFutureKey".into(), "ignored".into()),
    ];
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let request = pod
        .container("tuned", &freestanding)
        .args(&["stay"])
        .env("GREETING", "hi")
        .annotation(version, "0.15.0")
        .build()
        .unwrap();
    let id = crid.create_start(&(pod_id.clone(), config), request).await;
    let log = pod.log_directory.join("tuned/0.log");
    // The guest prints its command line, which ends with its argv.
    let text = log_containing(&crid, &log, "-- stay", 60).await;
    // The old form: the address in three keys, and no environment (Unikraft < 0.16.1 has none).
    assert!(
        text.contains(&format!("netdev.ipv4_addr={prefix}.")),
        "{text}"
    );
    assert!(
        !text.contains("netdev.ip=") && !text.contains("GREETING=hi"),
        "{text}"
    );
    let (_, info) = crid.container_status(&id).await;
    let vm = &info["runtimeSpec"]["unikernel"];
    assert_eq!(vm["request"]["info"]["version"], "0.15.0", "{info}");
    assert_eq!(vm["request"]["info"]["mount_rootfs"], false, "{info}");
    assert_eq!(
        vm["annotation_keys"],
        serde_json::json!({
            "com.urunc.unikernel.mountRootfs": "false (pod annotation)",
            "com.urunc.unikernel.unikernelVersion": "0.15.0 (container annotation)",
        }),
        "{info}"
    );
    assert!(
        vm["guest_cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("netdev.ipv4_addr=")),
        "{info}"
    );
    crid.stop_container(&id, 0).await;
    crid.remove_container(&id).await;

    // A bad value in a pod annotation: refused at CreateContainer, naming the key.
    let mut bad = KubeletPod::new(&kubelet, "bad-5f6d7c8b9-z9x8c", "default").unwrap();
    bad.host_network = true;
    bad.annotations = vec![("com.urunc.unikernel.mountRootfs".into(), "maybe".into())];
    let bad_config = bad.sandbox_config();
    let bad_id = crid.run_pod_under(&bad_config, "urunc").await;
    let err = crid
        .rt()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: bad_id.clone(),
            config: Some(bad.container("bad", &freestanding).build().unwrap()),
            sandbox_config: Some(bad_config),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .contains("pod annotation com.urunc.unikernel.mountRootfs"),
        "{err}"
    );
    for p in [pod_id, bad_id] {
        crid.stop_and_remove_pod(&p).await;
    }
}

/// The pod Knative builds: the user container (here the `linux` guest serving on 8080, its
/// port declared) and a runc sidecar playing queue-proxy, which listens on 8012 and forwards
/// to `127.0.0.1:8080`. A request from the node to `podIP:8012` is answered by the guest
/// through the sidecar; the sidecar reaches the guest on loopback and on the pod IP, and still
/// reaches the node (its `eth0` is untouched: routed mode).
#[tokio::test]
async fn knative_shaped_pod_sidecar_proxies_to_the_guest() {
    use conformance::kubelet::KubeletPod;
    let Some(reg) = ready_with_cni() else { return };
    let work = tempfile::tempdir().unwrap();
    let Some(linux) = push_linux_guest(&reg, work.path()) else {
        return;
    };
    let (crid, _) = start().await;
    let (_bridge, prefix) = bridge_network(&crid, 197);
    crid.expect_pull(&linux).await;
    let busybox = format!("{reg}/busybox:latest");
    crid.expect_pull(&busybox).await;
    let pod = KubeletPod::new(
        &crid.path().join("kubelet"),
        "hello-00001-deployment-5c8d7-abcde",
        "default",
    )
    .unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let ip = pod_ip(&crid, &pod_id).await;
    let sandbox = (pod_id.clone(), config);
    // Knative's order: the user container, then queue-proxy.
    let user = pod
        .container("user-container", &linux)
        .args(&["serve"])
        .env("GREETING", "knative")
        .port("user-port", 8080)
        .build()
        .unwrap();
    let guest = crid.create_start(&sandbox, user).await;
    let proxy = pod
        .container("queue-proxy", &busybox)
        .command(&["nc", "-ll", "-p", "8012", "-e", "nc", "127.0.0.1", "8080"])
        .port("http-queueadm", 8022)
        .port("queue-port", 8012)
        .build()
        .unwrap();
    let sidecar = crid.create_start(&sandbox, proxy).await;
    let body = wait_http(
        &crid,
        &guest,
        ip,
        &pod.log_directory.join("user-container/0.log"),
    )
    .await;
    assert!(body.contains("greeting=[knative]"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let via_proxy = loop {
        match http_get_port(ip, 8012) {
            Ok(b) if b.contains("hello from crid linux guest") => break b,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer through the sidecar on {ip}:8012: {other:?}\n{}",
                    log_text(crid.path())
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert!(via_proxy.contains("greeting=[knative]"), "{via_proxy}");

    let exec = |cmd: String| {
        let mut rt = crid.rt();
        let id = sidecar.clone();
        async move {
            let r = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["sh".into(), "-c".into(), cmd],
                    timeout: 20,
                })
                .await
                .unwrap_or_else(|e| panic!("exec in the sidecar: {e}"))
                .into_inner();
            format!(
                "{}{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            )
        }
    };
    let get = |addr: String| {
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr}; echo rc=$?")
    };
    for addr in ["127.0.0.1 8080".to_owned(), format!("{ip} 8080")] {
        let out = exec(get(addr.clone())).await;
        assert!(
            out.contains("hello from crid linux guest") && out.contains("rc=0"),
            "the sidecar did not reach the guest on {addr}: {out}"
        );
    }
    // The sidecar's own traffic leaves the pod (eth0 is as CNI made it).
    let node = std::net::TcpListener::bind((format!("{prefix}.1").as_str(), 0)).unwrap();
    let port = node.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        node.accept().map(|(mut c, _)| {
            use std::io::Write;
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the node\n");
        })
    });
    let out = exec(get(format!("{prefix}.1 {port}"))).await;
    assert!(
        out.contains("from the node") && out.contains("rc=0"),
        "{out}"
    );
    accept.join().unwrap().unwrap();

    for id in [&sidecar, &guest] {
        crid.stop_container(id, 0).await;
        crid.remove_container(id).await;
    }
    crid.cri.discard_pod(&pod_id).await;
}

#[tokio::test]
async fn linux_guest_in_a_cni_pod_answers_http_on_the_pod_ip() {
    let Some(reg) = ready_with_cni() else { return };
    let work = tempfile::tempdir().unwrap();
    let Some(image) = push_linux_guest(&reg, work.path()) else {
        return;
    };
    let (crid, _) = start().await;
    let (_bridge, prefix) = bridge_network(&crid, 199);
    crid.expect_pull(&image).await;
    let log_dir = crid.path().join("logs/web");
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-web".into(),
            namespace: "test".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod_id = crid.run_pod_under(&pod_config, "urunc").await;
    let (pod_status, _) = crid.pod_status(&pod_id).await;
    let pod_ip: std::net::Ipv4Addr = pod_status
        .network
        .map(|n| n.ip)
        .unwrap_or_default()
        .parse()
        .expect("the pod has an IPv4 address");
    let pod = (pod_id.clone(), pod_config);
    let id = crid
        .create_start_guest(&pod, "web", &image, &["serve", "fast"])
        .await;

    // Wait (bounded) for the guest to listen, then ask it over the pod IP.
    let deadline = Instant::now() + Duration::from_secs(180);
    let log_path = log_dir.join("web.log");
    let mut body = String::new();
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("crid-linux-guest: listening on") {
            if let Ok(b) = http_get(pod_ip) {
                if b.contains("200") {
                    body = b;
                    break;
                }
            }
        }
        let (s, _) = crid.container_status(&id).await;
        assert_ne!(
            s.state,
            cri::ContainerState::ContainerExited as i32,
            "the guest exited: {s:?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        body.contains("hello from crid linux guest: args=[serve fast] greeting=[hi]"),
        "no answer from {pod_ip}:8080: {body:?}\nlog:\n{log}"
    );

    // A second unikernel in the pod: refused with a clear error; the first keeps serving.
    let err = crid
        .create(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "web2".into(),
                    attempt: 0,
                }),
                image: Some(common::spec(&image)),
                log_path: "web2.log".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("one unikernel") && err.message().contains(&id),
        "{err}"
    );
    let listed = crid
        .rt()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let again = http_get(pod_ip).unwrap_or_else(|e| panic!("the first guest stopped serving: {e}"));
    assert!(again.contains("hello from crid linux guest"), "{again}");
    let (s, _) = crid.container_status(&id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);

    // A runc sidecar in the pod sees what README documents: the guest on the pod IP (routed
    // into the tap from 169.254.77.2), loopback among runc containers, and nothing outside the
    // pod (replies arriving on eth0 go to the guest). The guest keeps serving.
    let busybox = format!("{reg}/busybox:latest");
    crid.expect_pull(&busybox).await;
    let sidecar = crid
        .create_start(
            &pod,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sidecar".into(),
                    attempt: 0,
                }),
                image: Some(common::spec(&busybox)),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "sidecar.log".into(),
                ..Default::default()
            },
        )
        .await;
    let exec = |cmd: String| {
        let mut rt = crid.rt();
        let id = sidecar.clone();
        async move {
            rt.exec_sync(cri::ExecSyncRequest {
                container_id: id,
                cmd: vec!["sh".into(), "-c".into(), cmd],
                timeout: 20,
            })
            .await
            .unwrap_or_else(|e| panic!("exec in the sidecar: {e}"))
            .into_inner()
        }
    };
    // busybox-static's wget crashes (static glibc); nc speaks HTTP/1.0 by hand.
    let get = |addr: String| {
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr}; echo rc=$?")
    };
    let to_guest = exec(get(format!("{pod_ip} 8080"))).await;
    let out = String::from_utf8_lossy(&to_guest.stdout).into_owned();
    let err = String::from_utf8_lossy(&to_guest.stderr).into_owned();
    assert!(
        out.contains("hello from crid linux guest") && out.contains("rc=0"),
        "the sidecar did not reach the guest: {out} {err}\n{}",
        log_text(crid.path())
    );
    let lo = exec(format!(
        "mkdir -p /tmp/w && echo hi > /tmp/w/index.html && httpd -p 127.0.0.1:9000 -h /tmp/w \\
         && sleep 1 && {}",
        get("127.0.0.1 9000".into())
    ))
    .await;
    let out = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(
        out.contains("200 OK") && out.contains("rc=0"),
        "loopback in the pod: {out} {}",
        String::from_utf8_lossy(&lo.stderr)
    );
    // Nor does it reach the node: a listener on the bridge's address stays unreached, since the
    // replies (ARP included) arriving on eth0 go to the guest.
    let node = std::net::TcpListener::bind((format!("{prefix}.1").as_str(), 0)).unwrap();
    let port = node.local_addr().unwrap().port();
    let out_of_pod = exec(get(format!("{prefix}.1 {port}"))).await;
    let out = String::from_utf8_lossy(&out_of_pod.stdout).into_owned();
    assert!(
        !out.contains("rc=0"),
        "the sidecar reached the node: {out} {}",
        String::from_utf8_lossy(&out_of_pod.stderr)
    );
    node.set_nonblocking(true).unwrap();
    assert!(
        node.accept().is_err(),
        "a connection from the sidecar arrived"
    );
    let again = http_get(pod_ip).unwrap_or_else(|e| panic!("the guest stopped serving: {e}"));
    assert!(again.contains("hello from crid linux guest"), "{again}");
    crid.stop_container(&sidecar, 0).await;
    crid.remove_container(&sidecar).await;

    let (_, info) = crid.container_status(&id).await;
    let netns = info["runtimeSpec"]["unikernel"]["request"]["netns"]
        .as_str()
        .expect("netns in verbose info")
        .to_string();
    let links = |ns: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["ip", "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        links(&netns).contains("crtap"),
        "the guest's tap is missing"
    );

    // Graceful stop: the power button reaches the guest's acpid, which powers off; a kill
    // (after the long timeout) would end in 137 and without the guest's message.
    crid.stop_container(&id, 120).await;
    let s = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("crid-linux-guest: power button: shutting down"),
        "the guest was not asked to shut down:\n{log}"
    );
    assert_eq!(s.exit_code, 0, "{s:?}\n{log}");
    assert_eq!(s.reason, "Completed");
    assert!(
        !links(&netns).contains("crtap"),
        "the tap outlived the guest"
    );
    crid.remove_container(&id).await;
    crid.cri.discard_pod(&pod_id).await;
}

fn http_get(ip: std::net::Ipv4Addr) -> std::io::Result<String> {
    http_get_port(ip, 8080)
}

fn http_get_port(ip: std::net::Ipv4Addr, port: u16) -> std::io::Result<String> {
    http_get_path(ip, port, "/index.html")
}

fn http_get_path(ip: std::net::Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The calls an `strace -f -o FILE` trace holds, one string per call: a call split by another
/// process's line (`<unfinished ...>` ... `<... NAME resumed>`) is joined again. Each string
/// starts with the call's name.
fn strace_calls(trace: &str) -> Vec<String> {
    let mut pending: std::collections::HashMap<&str, String> = Default::default();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid, head.trim_end().to_owned());
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let tail = tail.split_once("resumed>").map_or("", |(_, t)| t);
            if let Some(head) = pending.remove(pid) {
                calls.push(format!("{head}{tail}"));
            }
        } else if !rest.starts_with("+++") && !rest.starts_with("---") {
            calls.push(rest.to_owned());
        }
    }
    calls
}

/// The return value at the end of a complete call (`... = 123`), if it succeeded.
fn strace_result(call: &str) -> Option<i64> {
    call.rsplit_once(" = ")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .filter(|r| *r >= 0)
}

/// Issue 15's "one process per unikernel start": with strace attached to the running daemon
/// (every thread, following children), CreateContainer + StartContainer of the freestanding
/// guest in a CNI pod network, until its first serial byte, then its exit and RemoveContainer,
/// execs only the container's monitor and the VMM: the network (tap, tc redirects, sidecar
/// path) is set up and torn down in-process and the monitor's child joins the cgroup and the
/// namespace itself, with no `ip`, `tc`, `sh` or `nsenter`. New processes (clones without
/// CLONE_THREAD, forks): the monitor's two (crid starts it, it forks its detached self) and the
/// VMM.
#[tokio::test]
async fn a_guest_in_a_pod_network_starts_one_process_besides_its_monitor() {
    count_the_processes_of_a_guest_start(196, None).await;
}

/// The same count for a routed guest (its container declares a port, as in a Knative pod):
/// the NAT table is made and deleted over netlink, with no `nft` process.
#[tokio::test]
async fn a_routed_guest_starts_one_process_besides_its_monitor() {
    count_the_processes_of_a_guest_start(
        195,
        Some(r#"[{"name":"http","containerPort":8080,"protocol":"TCP"}]"#),
    )
    .await;
}

/// Counts the execs and new processes of a guest's start and removal, with strace attached
/// to crid, on a CNI bridge network `10.<octet>.x.0/24`; `ports` is the container's
/// `io.kubernetes.container.ports` annotation (routed mode) if any.
async fn count_the_processes_of_a_guest_start(octet: u8, ports: Option<&str>) {
    let Some(reg) = ready_with_cni() else { return };
    if !common::on_path("strace") {
        missing("strace is not installed (scripts/deps.sh)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let image = push_guest(&reg, work.path(), "unikraft", "qemu");
    // No pod networks or QEMUs made ahead of need: their refill (CNI plugins, a monitor and
    // QEMU) would run meanwhile. The QEMU pool's start is the prepared QEMU test's.
    let (crid, _) = start_configured("prepared_networks = 0", "qemu_pool = 0").await;
    let (_bridge, _) = bridge_network(&crid, octet);
    crid.expect_pull(&image).await;
    let log_dir = crid.path().join("logs/counted");
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "counted".into(),
            uid: "uid-counted".into(),
            namespace: "test".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    };
    let pod_id = crid.run_pod_under(&pod_config, "urunc").await;
    let pod = (pod_id, pod_config);

    let daemon = crid.pid().expect("crid runs");
    let trace_file = crid.path().join("start.strace");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-s",
            "256",
            "-e",
            "trace=execve,clone,clone3,fork,vfork",
            "-o",
        ])
        .arg(&trace_file)
        .args(["-p", &daemon.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Attached once every thread of the daemon has strace as its tracer (bounded).
    let tracer = format!("TracerPid:\t{}", strace.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{daemon}/task"))
            .unwrap()
            .flatten()
            .map(|t| t.path().join("status"))
            .collect();
        if tasks
            .iter()
            .all(|s| std::fs::read_to_string(s).is_ok_and(|t| t.contains(&tracer)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "strace did not attach to crid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "guest".into(),
            attempt: 0,
        }),
        image: Some(common::spec(&image)),
        log_path: "guest.log".into(),
        annotations: ports
            .map(|p| [("io.kubernetes.container.ports".to_owned(), p.to_owned())].into())
            .unwrap_or_default(),
        ..Default::default()
    };
    let id = crid.create_start(&pod, config).await;
    let log = log_dir.join("guest.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
        assert!(
            Instant::now() < deadline,
            "no serial output from the guest\n{}",
            log_text(crid.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The guest exits after printing; its tap, redirects and cgroup are released, then the
    // container is removed: no process for that either.
    crid.wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    if ports.is_some() {
        // The guest's command line (it prints it) has the routed mode's private address.
        let serial = std::fs::read_to_string(&log).unwrap();
        assert!(serial.contains("netdev.ip=169.254.77.6/30"), "{serial}");
    }
    crid.remove_container(&id).await;
    // Detach (strace lets the tracees go on SIGINT), bounded.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(strace.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while strace.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = strace.kill();
            let _ = strace.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let calls = strace_calls(&trace);
    let execs: Vec<String> = calls
        .iter()
        .filter(|c| c.starts_with("execve(") && strace_result(c) == Some(0))
        .filter_map(|c| c.split('"').nth(1))
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
        .collect();
    let processes = calls
        .iter()
        .filter(|c| {
            ["clone(", "clone3(", "fork(", "vfork("]
                .iter()
                .any(|s| c.starts_with(s))
        })
        .filter(|c| !c.contains("CLONE_THREAD"))
        .filter(|c| strace_result(c).is_some_and(|pid| pid > 0))
        .count();
    eprintln!("execs: {execs:?}; new processes: {processes}");
    let others: Vec<&String> = execs
        .iter()
        .filter(|e| *e != "crid-monitor" && *e != "crid")
        .collect();
    assert_eq!(others, ["qemu-system-x86_64"], "execs: {execs:?}\n{trace}");
    assert_eq!(processes, 3, "execs: {execs:?}\n{trace}");
    crid.finish().await;
}

/// `Status` verbose: how many QEMUs are prepared (`null` without a pool) and how many guests
/// are armed.
async fn qemu_pool_counts(crid: &Crid) -> (Option<u64>, Option<u64>) {
    let vm = crid.vm_status().await;
    (vm["qemuPrepared"].as_u64(), vm["cridVmmArmed"].as_u64())
}

/// Waits (bounded) until the QEMU pool has `prepared` entries waiting and `armed` guests.
async fn wait_qemu_pool(crid: &Crid, prepared: u64, armed: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = qemu_pool_counts(crid).await;
        if counts == (Some(prepared), Some(armed)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the QEMU pool stayed at {counts:?}\n{}",
            crid.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pids of the prepared (paused: `-S`) QEMUs of this crid.
fn prepared_qemus(crid: &Crid) -> Vec<u32> {
    common::processes_under(crid.path(), None)
        .iter()
        .filter(|p| p.contains("qemu-system-x86_64") && p.contains(" -S "))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect()
}

/// A PCI guest in a pod network handed a QEMU that crid started ahead and paused
/// (`vm.qemu_pool`, default 1): the first such guest starts the usual way and fills the pool;
/// the next is handed the waiting QEMU at `CreateContainer` (its kernel written into the
/// QEMU's RAM, its tap moved into the pod, QEMU moved into its cgroup) and resumed at
/// `StartContainer`: its serial output, with the command line it got in the boot block, is in
/// the CRI log, its tap is the pod's, and its exit code is the container's. One removed before its start leaves no process, tap,
/// cgroup or socket behind.
#[tokio::test]
async fn a_pci_guest_in_a_pod_network_starts_on_a_prepared_qemu() {
    let Some(reg) = ready_for_qemu_pool() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let image = push_guest(&reg, work.path(), "unikraft", "qemu");
    let (crid, _) = start().await;
    let (_bridge, _) = bridge_network(&crid, 196);
    crid.expect_pull(&image).await;
    let links = |ns: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["ip", "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // The first guest of the pool's size starts the usual way and fills the pool.
    let config = common::pod_config("qpool-first", crid.path());
    let pod = (crid.run_pod_under(&config, "urunc").await, config);
    let first = crid
        .create_start_guest(&pod, "net", &image, &["stay"])
        .await;
    let log = crid.path().join("logs/qpool-first/net.log");
    log_containing(&crid, &log, "crid-test-guest: halting", 60).await;
    let (_, info) = crid.container_status(&first).await;
    assert!(
        !common::guest_argv(&info).contains(&"-S".to_owned()),
        "{info}"
    );
    wait_qemu_pool(&crid, 1, 0).await;
    crid.stop_container(&first, 0).await;
    crid.remove_container(&first).await;

    // The next is handed the prepared QEMU when it is created, and runs once started.
    let config = common::pod_config("qpool-next", crid.path());
    let pod = (crid.run_pod_under(&config, "urunc").await, config);
    let ip = pod_ip(&crid, &pod.0).await.to_string();
    let paused = prepared_qemus(&crid);
    assert_eq!(
        paused.len(),
        1,
        "{:?}",
        common::processes_under(crid.path(), None)
    );
    let id = crid
        .create(&pod, guest_config("net", &image, &["stay"]))
        .await
        .unwrap();
    wait_qemu_pool(&crid, 0, 1).await;
    crid.start_container(&id).await;
    let log = crid.path().join("logs/qpool-next/net.log");
    let text = log_containing(&crid, &log, "crid-test-guest: halting", 60).await;
    // The command line, with the pod's address, came in the boot block.
    assert!(
        text.contains(&format!("netdev.ip={ip}/")) && text.contains("-- stay"),
        "{text}"
    );
    let (status, info) = crid.container_status(&id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let a = common::guest_argv(&info);
    assert!(a.contains(&"-S".to_owned()), "not the prepared QEMU: {a:?}");
    assert!(a.iter().any(|x| x.contains("memory-backend-file")), "{a:?}");
    // The same QEMU runs the guest (the pool may hold the next one already).
    assert!(prepared_qemus(&crid).contains(&paused[0]));
    let netns = info["runtimeSpec"]["unikernel"]["request"]["netns"]
        .as_str()
        .expect("netns in verbose info")
        .to_string();
    assert!(
        links(&netns).contains(&format!("crtap{}", &id[..10])),
        "the prepared QEMU's tap is not the pod's: {}",
        links(&netns)
    );
    // It is in the container's cgroup, all threads.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", paused[0])).unwrap();
    assert!(
        cgroup.contains(&id[..12]) || cgroup.contains(&id),
        "{cgroup}"
    );
    crid.stop_container(&id, 2).await;
    let st = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    crid.remove_container(&id).await;

    // Its exit code is the container's.
    wait_qemu_pool(&crid, 1, 0).await;
    let config = common::pod_config("qpool-exit", crid.path());
    let pod = (crid.run_pod_under(&config, "urunc").await, config);
    let id = crid
        .create_start_guest(&pod, "exit", &image, &["exit=7"])
        .await;
    let st = crid
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    let log = crid.path().join("logs/qpool-exit/exit.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st.exit_code, 7, "{text}\n{}", log_text(crid.path()));
    assert!(text.contains("crid-test-guest: booted"), "{text}");
    let (_, info) = crid.container_status(&id).await;
    assert!(
        common::guest_argv(&info).contains(&"-S".to_owned()),
        "{info}"
    );
    crid.remove_container(&id).await;

    // Removed before its start: the paused QEMU ends, and its tap, cgroup and QMP socket go.
    wait_qemu_pool(&crid, 1, 0).await;
    let config = common::pod_config("qpool-gone", crid.path());
    let pod = (crid.run_pod_under(&config, "urunc").await, config);
    let paused = prepared_qemus(&crid);
    assert_eq!(paused.len(), 1);
    let id = crid
        .create(&pod, guest_config("gone", &image, &[]))
        .await
        .unwrap();
    wait_qemu_pool(&crid, 0, 1).await;
    let (_, info) = crid.container_status(&id).await;
    let netns = info["runtimeSpec"]["unikernel"]["request"]["netns"]
        .as_str()
        .expect("netns in verbose info")
        .to_string();
    let qmp = info["runtimeSpec"]["unikernel"]["request"]["control_socket"]
        .as_str()
        .map(PathBuf::from);
    crid.remove_container(&id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{}", paused[0])).exists() {
        assert!(
            Instant::now() < deadline,
            "the paused QEMU outlived its container"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!links(&netns).contains("crtap"), "{}", links(&netns));
    if let Some(qmp) = qmp {
        assert!(!qmp.exists(), "{qmp:?} left");
    }
    let cgroups = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v2 = cgroups.contains(" - cgroup2 ") && !cgroups.contains(" - cgroup ");
    let dir = if v2 {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    };
    let found = Command::new("find")
        .args([dir, "-name", &format!("*{}*", &id[..12])])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&found.stdout).trim().is_empty(),
        "cgroup left: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    crid.finish().await;
}

/// A prepared QEMU whose monitor and crid were both killed (the monitor first, stopped so that
/// it cannot end its QEMU on crid's end of file) is left paused, nothing of either running to
/// end it; the next crid ends it at its start.
#[tokio::test]
async fn a_prepared_qemu_left_by_a_killed_crid_and_monitor_is_ended_at_the_next_start() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(reg) = ready_for_qemu_pool() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let image = push_guest(&reg, work.path(), "unikraft", "qemu");
    let (mut crid, _) = start().await;
    let (_bridge, _) = bridge_network(&crid, 192);
    crid.expect_pull(&image).await;
    // The first guest fills the pool.
    let config = common::pod_config("qleft", crid.path());
    let pod = (crid.run_pod_under(&config, "urunc").await, config);
    let first = crid
        .create_start_guest(&pod, "net", &image, &["stay"])
        .await;
    wait_qemu_pool(&crid, 1, 0).await;
    crid.stop_container(&first, 0).await;
    crid.remove_container(&first).await;
    let paused = prepared_qemus(&crid);
    assert_eq!(
        paused.len(),
        1,
        "{:?}",
        common::processes_under(crid.path(), None)
    );
    let qemu = paused[0];
    let monitor = common::parent_of(qemu);
    let signal = |pid: u32, sig| kill(Pid::from_raw(pid as i32), sig).unwrap();
    signal(monitor, Signal::SIGSTOP);
    crid.sigkill();
    signal(monitor, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{monitor}")).exists() {
        assert!(Instant::now() < deadline, "the monitor outlived SIGKILL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stat = std::fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap_or_default();
    assert!(
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.starts_with(" Z")),
        "the QEMU ended without its monitor: {stat:?}"
    );

    let crid = Crid::start_owned(crid.into_dir()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{qemu}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the QEMU a killed crid and monitor left still runs\n{}",
            crid.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crid.finish().await;
}

/// The pods kubelet builds carry a memory limit, from which crid sizes the guest: a PCI guest
/// in a kubelet-shaped pod (long names, mounts, service environment, limits of 500m and
/// 128 MiB, security context, annotations, a declared port) starts the usual way with 128 MiB
/// (the default size being 256 MiB) and makes the pool start a paused QEMU of that size; the
/// next pod's same request is handed it at `CreateContainer` and runs on it with its 128 MiB.
#[tokio::test]
async fn a_kubelet_pod_with_a_memory_limit_starts_on_a_prepared_qemu_of_its_size() {
    use conformance::kubelet::KubeletPod;
    let Some(reg) = ready_for_qemu_pool() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let image = push_guest(&reg, work.path(), "unikraft", "qemu");
    let (crid, _) = start().await;
    let (_bridge, _) = bridge_network(&crid, 193);
    crid.expect_pull(&image).await;
    let kubelet = crid.path().join("kubelet");
    let request = |pod: &KubeletPod| {
        common::kubelet_guest(pod, "app", &image, &["stay"])
            .limits(500, 128 << 20)
            .build()
            .unwrap()
    };
    let memory = |argv: &[String]| common::arg_after(argv, "-m");

    // The first such pod starts the usual way; the pool then starts a QEMU of its size.
    let pod = KubeletPod::new(&kubelet, "hello-7f9c8d6b5-x2x9z", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let first = crid.create_start(&(pod_id, config), request(&pod)).await;
    log_containing(
        &crid,
        &pod.log_directory.join("app/0.log"),
        "crid-test-guest: halting",
        60,
    )
    .await;
    let (_, info) = crid.container_status(&first).await;
    let a = common::guest_argv(&info);
    assert!(!a.contains(&"-S".to_owned()), "{a:?}");
    assert_eq!(memory(&a).as_deref(), Some("128"), "{a:?}");
    wait_qemu_pool(&crid, 1, 0).await;
    let vm = crid.vm_status().await;
    assert_eq!(vm["qemuPreparedMiB"], serde_json::json!([128]));
    assert_eq!(vm["qemuNotPrepared"], serde_json::json!([]), "{vm}");
    let paused = prepared_qemus(&crid);
    assert_eq!(paused.len(), 1);
    let paused_argv: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", paused[0]))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        memory(&paused_argv).as_deref(),
        Some("128"),
        "{paused_argv:?}"
    );
    crid.stop_container(&first, 0).await;
    crid.remove_container(&first).await;

    // The next pod's same request is handed that QEMU when created, and runs once started.
    let pod = KubeletPod::new(&kubelet, "hello-7f9c8d6b5-b8k2w", "default").unwrap();
    let config = pod.sandbox_config();
    let pod_id = crid.run_pod_under(&config, "urunc").await;
    let id = crid
        .create(&(pod_id, config), request(&pod))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", crid.log()));
    wait_qemu_pool(&crid, 0, 1).await;
    crid.start_container(&id).await;
    let text = log_containing(
        &crid,
        &pod.log_directory.join("app/0.log"),
        "crid-test-guest: halting",
        60,
    )
    .await;
    assert!(
        text.contains("\"KUBERNETES_SERVICE_HOST=10.96.0.1\"") && text.contains("-- stay"),
        "{text}"
    );
    let (_, info) = crid.container_status(&id).await;
    let a = common::guest_argv(&info);
    assert!(a.contains(&"-S".to_owned()), "not the prepared QEMU: {a:?}");
    assert_eq!(memory(&a).as_deref(), Some("128"), "{a:?}");
    assert!(prepared_qemus(&crid).contains(&paused[0]));
    assert_eq!(info["pid"].as_i64(), Some(i64::from(paused[0])), "{info}");
    crid.stop_container(&id, 0).await;
    crid.remove_container(&id).await;
    crid.finish().await;
}

/// A guest container of `image` with CRI `args`, `GREETING=hi` and the log `NAME.log`.
fn guest_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        envs: vec![cri::KeyValue {
            key: "GREETING".into(),
            value: "hi".into(),
        }],
        ..common::guest_config(image, name, args)
    }
}
