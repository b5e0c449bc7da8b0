//! The VMM's cgroup on the real host: created with the limits and device list, joined between
//! fork and exec as the monitor starts the VMM, and removed by `release` — which kills a process still left in
//! it (a VMM whose kill has not landed) rather than leaking the cgroup. Needs root and cgroup v1.

use std::path::{Path, PathBuf};
use std::process::Command;

use imagestore::{HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType};
use sandbox::monitor::{join_before_exec, open_cgroup_join};
use sandbox::vm::cgroup::{Devices, Limits, VmCgroup};
use sandbox::vm::launch::{VmRequest, release};

mod common;
use common::skip_or_fail;

/// Removes the test's cgroup (after killing what is in it) if the test fails midway.
struct Cleanup(VmCgroup);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in self.0.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for _ in 0..50 {
            if self.0.remove() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn release_kills_what_is_left_and_removes_the_cgroup() {
    if !nix::unistd::geteuid().is_root()
        || !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
    {
        skip_or_fail("needs root and the cgroup v1 memory controller");
        return;
    }
    let rel = PathBuf::from(format!("crid-test-vmcgroup-{}", std::process::id()));
    let cg = VmCgroup::new(rel.clone());
    cg.create(&Limits {
        memory_bytes: Some(64 << 20),
        cpu_quota: 20_000,
        cpu_period: 100_000,
        cpu_shares: 128,
        devices: Devices::CridVmm,
    })
    .unwrap();
    let _cleanup = Cleanup(cg.clone());
    let dir = |c: &str| Path::new("/sys/fs/cgroup").join(c).join(&rel);
    let read = |c: &str, f: &str| std::fs::read_to_string(dir(c).join(f)).unwrap();
    assert_eq!(read("memory", "memory.limit_in_bytes").trim(), "67108864");
    assert_eq!(read("cpu", "cpu.cfs_quota_us").trim(), "20000");
    assert_eq!(read("cpu", "cpu.shares").trim(), "128");
    // crid-vmm's devices only, each rule taken from its own write on one open file.
    assert_eq!(
        read("devices", "devices.list").lines().collect::<Vec<_>>(),
        ["c 10:232 rw", "c 10:200 rw"]
    );

    // A stand-in VMM that never exits, placed in the cgroup before its exec as the monitor
    // places one (through each v1 hierarchy's `tasks`): the whole process is there.
    let procs = cg
        .procs_files()
        .iter()
        .map(|p| open_cgroup_join(p).unwrap())
        .collect();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("600");
    join_before_exec(&mut cmd, None, procs);
    let mut child = cmd.spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    for c in ["memory", "cpu", "pids", "devices"] {
        assert!(
            read(c, "cgroup.procs")
                .lines()
                .any(|l| l.trim() == pid.to_string()),
            "{c}"
        );
    }

    let req = VmRequest {
        container_id: "cgroupt3st".into(),
        info: UnikernelInfo::new(
            UnikernelType::Unikraft,
            HypervisorKind::Qemu,
            "/unikernel/kernel",
            UnikernelSource::ManifestAnnotations,
        ),
        layer_dirs: vec![],
        netns: None,
        iface: "eth0".into(),
        memory_limit_bytes: 0,
        cpu_quota: 0,
        cpu_period: 0,
        args: vec![],
        env: vec![],
        run_dir: tempfile::tempdir().unwrap().path().join("run"),
        cgroup: Some(rel.clone()),
        cpu_shares: 0,
        control_socket: None,
        mounts: vec![],
        ports: vec![],
        dns: vec![],
        shared_root: None,
    };
    release(&req).unwrap();
    // Reap it: killed by release, not by us.
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    for c in ["memory", "cpu", "cpuacct", "pids", "devices", "blkio"] {
        assert!(!dir(c).exists(), "{c} cgroup left");
    }
}
