//! Boots the freestanding test guest (sandbox/tests/guests/freestanding) on the crid-vmm
//! binary under KVM: what it prints, the exit code it chooses, the confinement the VMM runs
//! under (unprivileged uid/gid, empty chroot, seccomp, only its own descriptors), and its
//! virtio-blk disk (read, written, read-only).
//!
//! Needs gcc and a usable /dev/kvm; in CI (CI=true) their absence fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_crid-vmm");

fn skip(reason: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
    true
}

/// Builds the guest into a fresh temp dir; `None` when the host cannot run the test.
fn guest() -> Option<(tempfile::TempDir, PathBuf)> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        skip("/dev/kvm is not usable");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox/tests/guests/freestanding/build.sh");
    match Command::new("sh").arg(&script).arg(&kernel).status() {
        Ok(s) if s.success() => Some((dir, kernel)),
        other => {
            skip(&format!("cannot build the test guest: {other:?}"));
            None
        }
    }
}

fn vmm(kernel: &Path, cmdline: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(VMM);
    c.arg("--kernel")
        .arg(kernel)
        .args(["--cmdline", cmdline, "--memory", "32"])
        .args(extra);
    c
}

#[test]
fn guest_output_and_exit_code_as_nobody_in_an_empty_chroot() {
    let Some((dir, kernel)) = guest() else { return };
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = vmm(
        &kernel,
        "exit=3 hello",
        &["--user", "65534:65534", "--chroot", root.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("crid-test-guest: booted"), "{stdout}");
    assert!(stdout.contains("cmdline: exit=3 hello"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let zero = vmm(&kernel, "exit=0", &[]).output().unwrap();
    assert_eq!(zero.status.code(), Some(0));
}

/// A VMM that a failed assertion must not leave running: killed and reaped when dropped.
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns the VMM with its stdout piped and reads the guest's serial output until the guest
/// says it is halting, the output ends or 20 s pass; returns the child and what it printed.
fn spawn_until_halting(vmm: Command) -> (Running, String) {
    spawn_until(vmm, "halting")
}

/// [`spawn_until_halting`] until the output holds `marker`. The pipe is read on a thread of
/// its own, which keeps reading until the VMM ends (a write the guest makes later must not
/// meet a closed pipe), so that output that never comes fails the test instead of hanging it.
fn spawn_until(mut vmm: Command, marker: &str) -> (Running, String) {
    let mut child = Running(
        vmm.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(marker) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(bytes) => seen.extend_from_slice(&bytes),
            Err(_) => break,
        }
    }
    (child, String::from_utf8_lossy(&seen).into_owned())
}

/// The VMM sends the guest's output a line at a time, and a line without its newline all the
/// same: as the guest ends, and (a prompt) while the guest waits, halted.
#[test]
fn a_line_without_its_newline_still_goes_out() {
    let Some((_dir, kernel)) = guest() else {
        return;
    };
    let out = vmm(&kernel, "prompt=1 exit=4", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("crid-test-guest: exiting\ncrid-test-guest: last words"),
        "{stdout:?}"
    );
    let (mut child, seen) = spawn_until(vmm(&kernel, "prompt=1", &[]), "prompt> ");
    assert!(seen.ends_with("crid-test-guest: prompt> "), "{seen:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // A prompt of one character on a line of its own: no partial line waits in the VMM when
    // the guest writes it (its last exit, reading the line status, sent the line before), and
    // KVM may have queued the write instead of leaving KVM_RUN.
    let (mut child, seen) = spawn_until(vmm(&kernel, "prompt=2", &[]), "prompt\n>");
    assert!(seen.ends_with("crid-test-guest: prompt\n>"), "{seen:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn halted_guest_runs_confined_until_killed() {
    let Some((_dir, kernel)) = guest() else {
        return;
    };
    let (mut child, seen) = spawn_until_halting(vmm(&kernel, "stay", &["--user", "65534:65534"]));
    assert!(seen.contains("crid-test-guest: halting"), "{seen}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap()
    };
    assert_eq!(field("Uid:"), "65534");
    assert_eq!(field("Gid:"), "65534");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "filter mode on the main thread");
    // One vCPU, no NIC: the main thread runs the vCPU, no thread is started (a new thread
    // waits to be scheduled behind the running ones on a busy host). KVM's own workers
    // (`kvm-nx-lpage-recovery` on recent kernels) are tasks of the process too.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .filter(|comm| !comm.starts_with("kvm-"))
        .collect();
    assert_eq!(
        threads,
        ["crid-vmm\n"],
        "the boot vCPU runs on the main thread"
    );
    for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let s = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(
            s.contains("Seccomp:\t2"),
            "a thread without the filter:\n{s}"
        );
    }
    // Its own descriptors only: stdio, /dev/kvm's VM and vCPU, the serial irqfd.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert!(
        fds.iter().all(|f| f.starts_with("anon_inode:")
            || f.starts_with("pipe:")
            || f.starts_with("/dev/")),
        "{fds:?}"
    );
    eprintln!(
        "crid-vmm RSS with a halted 32 MiB guest: {} kB",
        field("VmRSS:")
    );
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
}

/// A disk of 16 sectors with a marker at the start of sector 0 and zeros elsewhere.
fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let mut bytes = vec![0u8; 16 * 512];
    bytes[..22].copy_from_slice(b"crid-disk-marker-42 ok");
    std::fs::write(&path, &bytes).unwrap();
    path
}

const WRITTEN: &[u8] = b"crid-test-guest wrote sector 1";

/// Checks that the VMM exited 0 and that the guest's serial output (its stdout) has each of
/// `lines`; fails with both streams otherwise.
fn expect_clean_exit(out: &std::process::Output, lines: &[&str]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in lines {
        assert!(stdout.contains(line), "{line:?} missing from {stdout}");
    }
}

#[test]
fn guest_reads_and_writes_its_disk_as_nobody_in_an_empty_chroot() {
    let Some((dir, kernel)) = guest() else { return };
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let disk = disk(dir.path());
    let out = vmm(
        &kernel,
        "exit=0",
        &[
            "--disk",
            disk.to_str().unwrap(),
            "--user",
            "65534:65534",
            "--chroot",
            root.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    expect_clean_exit(
        &out,
        &[
            "crid-test-guest: disk: 16 sectors",
            "crid-test-guest: disk marker: crid-disk-marker-42 ok",
            "crid-test-guest: disk: write read back",
        ],
    );
    // The guest's sector 1 is in the file; the rest is as it was.
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(&bytes[512..512 + WRITTEN.len()], WRITTEN);
    assert!(bytes[512 + WRITTEN.len()..].iter().all(|b| *b == 0));
    assert_eq!(bytes.len(), 16 * 512);
}

#[test]
fn read_only_disk_refuses_the_guests_write() {
    let Some((dir, kernel)) = guest() else { return };
    let disk = disk(dir.path());
    let before = std::fs::read(&disk).unwrap();
    let out = vmm(
        &kernel,
        "exit=0",
        &["--disk", disk.to_str().unwrap(), "--disk-read-only"],
    )
    .output()
    .unwrap();
    expect_clean_exit(
        &out,
        &[
            "crid-test-guest: disk marker: crid-disk-marker-42 ok",
            "crid-test-guest: disk: write refused, status 1",
        ],
    );
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

#[test]
fn inherited_disk_descriptor() {
    let Some((dir, kernel)) = guest() else { return };
    let disk = disk(dir.path());
    // The shell opens the disk read-write on descriptor 3 and execs the VMM with it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {VMM} --kernel {} --cmdline exit=0 --memory 32 --disk-fd 3 3<>{}",
            kernel.display(),
            disk.display()
        ))
        .output()
        .unwrap();
    expect_clean_exit(&out, &["crid-test-guest: disk: write read back"]);
    assert_eq!(
        &std::fs::read(&disk).unwrap()[512..512 + WRITTEN.len()],
        WRITTEN
    );
    // The same descriptor cannot be both the tap and the disk.
    let both = vmm(&kernel, "exit=0", &["--tap-fd", "3", "--disk-fd", "3"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(1));
    // Read-only needs a disk.
    let ro = vmm(&kernel, "exit=0", &["--disk-read-only"])
        .output()
        .unwrap();
    assert_eq!(ro.status.code(), Some(2), "a usage error");
}

#[test]
fn missing_disk_fails_with_a_message() {
    let Some((dir, kernel)) = guest() else { return };
    let out = vmm(
        &kernel,
        "exit=0",
        &["--disk", dir.path().join("absent").to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the disk"), "{err}");
}

#[test]
fn unbootable_kernel_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("bad");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let out = vmm(&kernel, "", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("crid-vmm: "), "{err}");
}

#[test]
fn ignored_sigterm_is_restored_so_a_stop_ends_the_vmm() {
    let Some((_dir, kernel)) = guest() else {
        return;
    };
    // `trap '' TERM` makes the shell's exec'd child inherit SIGTERM as ignored, as a supervisor
    // that ignores it would.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' TERM; exec {VMM} --kernel {} --cmdline stay --memory 32",
            kernel.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    assert!(stdout.read(&mut buf).unwrap() > 0, "no guest output");
    send_signal(child.id(), libc::SIGTERM);
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
}

fn send_signal(pid: u32, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// `--cgroup-procs`: the VMM is in the cgroup by the time the guest runs, every thread of it
/// (a v1 hierarchy is joined through `tasks`, which moves only the writing thread, so this
/// fails if that happened on any thread but the only one); a file it cannot write fails the
/// start with a message. Needs root and a cgroup hierarchy it can create in: v1 `pids` and the
/// cgroup2 one where the host has them (a hybrid host has both, each joined its own way).
#[test]
fn joins_its_cgroup_before_the_guest_runs() {
    let Some((dir, kernel)) = guest() else { return };
    let roots: Vec<&Path> = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .map(Path::new)
    .filter(|r| r.join("cgroup.procs").exists())
    .take(2)
    .collect();
    if roots.is_empty() || !is_root() {
        eprintln!("skipped: needs root and a cgroup hierarchy");
        return;
    }
    let name = format!("crid-vmm-test-{}", std::process::id());
    let mut args = Vec::new();
    for root in &roots {
        let cg = root.join(&name);
        std::fs::create_dir(&cg).unwrap();
        args.push("--cgroup-procs".to_owned());
        args.push(cg.join("cgroup.procs").to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, seen) = spawn_until_halting(vmm(&kernel, "stay", &args));
    let threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|t| {
            let t = t.unwrap().path();
            let cgroups = std::fs::read_to_string(t.join("cgroup")).unwrap_or_default();
            (t.display().to_string(), cgroups)
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    for root in &roots {
        let _ = std::fs::remove_dir(root.join(&name));
    }
    assert!(seen.contains("crid-test-guest: halting"), "{seen}");
    // Every task of the process: the main thread (which runs the vCPU) and KVM's own workers.
    assert!(!threads.is_empty(), "{threads:?}");
    for (thread, cgroups) in &threads {
        let joined = cgroups.lines().filter(|l| l.ends_with(&format!("/{name}")));
        assert_eq!(joined.count(), roots.len(), "{thread}: {cgroups}");
    }

    let missing = dir.path().join("no-such-cgroup/cgroup.procs");
    let out = vmm(
        &kernel,
        "exit=0",
        &["--cgroup-procs", missing.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("joining the cgroup"), "{stderr}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|v| v.split_whitespace().nth(1) == Some("0"))
    })
}

/// KVM's set-up order (seen by `strace`, which CI installs): the memory slot is registered
/// before the in-kernel irqchip and PIT are created. Registering it first saved 4–10 ms of
/// SRCU grace-period wait per start on the hosts measured (see `vm::build_vm`), so a change of
/// order is a regression even though the guest still boots.
#[test]
fn registers_guest_memory_before_the_irqchip() {
    let Some((dir, kernel)) = guest() else { return };
    let trace = dir.path().join("ioctls");
    let status = Command::new("strace")
        .arg("-o")
        .arg(&trace)
        .args(["-e", "trace=ioctl", "--"])
        .arg(VMM)
        .arg("--kernel")
        .arg(&kernel)
        .args(["--cmdline", "exit=0", "--memory", "32"])
        .stdout(Stdio::null())
        .status();
    match status {
        Ok(s) => assert!(s.success(), "{s:?}"),
        Err(e) => {
            skip(&format!("strace: {e}"));
            return;
        }
    }
    let ioctls = std::fs::read_to_string(&trace).unwrap();
    let at = |name: &str| {
        ioctls
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in {ioctls}"))
    };
    assert!(
        at("KVM_SET_USER_MEMORY_REGION") < at("KVM_CREATE_IRQCHIP"),
        "{ioctls}"
    );
    assert!(at("KVM_CREATE_IRQCHIP") < at("KVM_CREATE_PIT2"), "{ioctls}");
}

/// Spawns `crid-vmm --prepared` with stdin on a socket and waits for its ready byte; returns
/// the child and the test's end of the socket.
fn spawn_prepared(memory: &str) -> (std::process::Child, std::os::unix::net::UnixStream) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let child = Command::new(VMM)
        .args(["--prepared", "/tmp/pool-label", "--memory", memory])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut ready = [0u8];
    (&ours).read_exact(&mut ready).unwrap();
    assert_eq!(ready[0], crid_vmm::handover::READY);
    (child, ours)
}

/// Sends a hand-over: each argument NUL-terminated, then the end of the socket's writes.
fn hand_over(socket: std::os::unix::net::UnixStream, args: &[&str]) {
    use std::io::Write;
    let mut message = Vec::new();
    for a in args {
        message.extend_from_slice(a.as_bytes());
        message.push(0);
    }
    (&socket).write_all(&message).unwrap();
    socket.shutdown(std::net::Shutdown::Write).unwrap();
}

/// `--prepared`: the VM is built before the guest is known; the guest's command line arrives
/// on the socket and the guest boots on that VM, confined as usual, with /dev/null for stdin.
/// A size other than the prepared one is refused with a message; a socket closed without a
/// message ends the VMM quietly.
#[test]
fn prepared_vm_boots_the_guest_handed_over() {
    let Some((dir, kernel)) = guest() else { return };
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (child, socket) = spawn_prepared("32");
    let kernel_arg = kernel.to_str().unwrap();
    hand_over(
        socket,
        &[
            "--kernel",
            kernel_arg,
            "--cmdline",
            "exit=6 handed",
            "--memory",
            "32",
            "--user",
            "65534:65534",
            "--chroot",
            root.to_str().unwrap(),
        ],
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cmdline: exit=6 handed"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(6),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (child, socket) = spawn_prepared("32");
    hand_over(socket, &["--kernel", kernel_arg, "--memory", "64"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prepared for 32 MiB"), "{stderr}");

    let (child, socket) = spawn_prepared("32");
    drop(socket);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}
