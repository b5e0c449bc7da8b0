//! Prepared monitors: a detached monitor started before any container needs it, with its
//! crid-vmm already running in prepared mode (KVM's VM, the guest's memory, the irqchip and
//! the boot vCPU built; see the `vmm` crate's `handover` module). `StartContainer` hands it a
//! container instead of starting two processes (`crid-monitor`, which forks the detached
//! monitor, which starts the VMM), each of which would wait for a CPU and pay the loader.
//!
//! `crid-monitor --prepare-vmm VMM --memory MIB --pool DIR` has a unix socket to crid on stdin
//! and stdout. The protocol:
//! 1. The monitor forks the detached half (the first process exits, so it is never crid's
//!    child), becomes a supervisor like any monitor, and starts `VMM --prepared DIR --memory
//!    MIB` with its output on pipes and stdin on a socket of its own. Once the VMM says its VM
//!    is built, the monitor prints a [`Ready`] line with the VMM's pid (or the error), passing
//!    its end of the VMM's socket along (`SCM_RIGHTS`) and keeping no copy: from then on crid
//!    talks to the VMM itself.
//! 2. At the hand-over crid first writes the guest's command line to the VMM (the crid-vmm
//!    command line it would otherwise run, with `--netns` for the pod's network namespace,
//!    which the VMM enters itself), together with the start gate: one end of a new socket
//!    pair, whose other end crid keeps. The VMM sets the guest up, confines itself and waits
//!    on the gate, while crid writes one JSON [`Handover`] line to the monitor: the container's
//!    [`MonitorSpec`] and the file for the monitor's own errors. The two run side by side: no
//!    process wakes another on the way to the guest's set-up.
//! 3. The monitor moves into the container's state directory (how crid recognises it after a
//!    restart, its command line not naming the container), writes its pid file, opens the CRI
//!    log and prints a second [`Ready`] line; then it is the container's monitor like any
//!    other.
//! 4. crid opens the gate (`G`, [`StartGate::start`]) once the monitor has the container: at
//!    `StartContainer` when it handed the container over at `CreateContainer`, at once
//!    otherwise. It goes straight to the VMM, waking no other process. Closing crid's end
//!    instead (the container removed, the monitor failed to take it, crid gone) ends the VMM
//!    with status 0 before the guest ran, so a guest never runs without its monitor.
//!
//! End of file from crid before step 2 (crid discarded the entry, stopped or died) ends the
//! monitor and its VMM (whose socket crid held): a prepared entry never outlives the crid that
//! prepared it. A VMM that dies while it waits ends its monitor too; a monitor that dies
//! leaves its VMM to crid, which discards the entry when it finds the monitor gone.
//!
//! `crid-monitor --prepare-launch FILE` prepares a VMM whose command line is fixed when it
//! starts (QEMU, started paused: see `vm::qemu_pool`): FILE holds the [`Launch`] it runs at
//! once (its program and arguments, and the network namespace it joins), and the monitor
//! reports its pid as soon as it runs; crid checks on the VMM's own control socket that it is
//! ready. At step 3 nothing goes to the VMM (crid sets the guest up through its RAM and
//! control socket); with [`Handover::start_gate`] the monitor keeps crid's socket and waits on
//! it before it supervises: crid resumes the VMM at `StartContainer` and writes `G`, and an
//! end of file instead (the container removed, crid gone) kills the VMM, its guest never run.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{
    Launch, Monitor, MonitorSpec, Ready, become_supervisor, child_env, close_inherited_on_exec,
    reap, report, report_line, take_container,
};

/// What the VMM writes on its socket once its VM is built (`crid_vmm::handover::READY`).
const VMM_READY: u8 = b'R';

/// What starts a guest waiting on its start gate (`crid_vmm::handover::START`).
const VMM_START: u8 = b'G';

/// The longest line crid or the monitor writes (a [`Handover`] holds a command line of at most
/// what execve takes).
const MAX_LINE: u64 = 2 << 20;

/// What crid sends a prepared monitor: its container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Handover {
    pub spec: MonitorSpec,
    /// Where the monitor's own errors go from now on (the container's `monitor.log`).
    pub stderr: PathBuf,
    /// A prepared launch: the monitor keeps crid's socket as the start gate and supervises
    /// the VMM only when crid writes on it (see [`StartGate`]). A prepared crid-vmm gets its
    /// gate from crid with its command line instead.
    #[serde(default)]
    pub start_gate: bool,
}

// ---------------------------------------------------------------------------------------------
// crid's side

/// A prepared monitor waiting for a container: crid's end of its socket, and of its crid-vmm's.
/// Dropping it discards the monitor and its VMM (they end on the end of file).
#[derive(Debug)]
pub struct PreparedMonitor {
    /// The prepared VMM.
    pub vmm_pid: i32,
    socket: UnixStream,
    /// A prepared crid-vmm (not a prepared launch): crid hands it the guest itself.
    vmm: Option<PreparedVmm>,
}

/// A prepared crid-vmm: its program (the hand-over runs no other) and its socket, which its
/// monitor passed to crid (the VMM's standard input).
#[derive(Debug)]
struct PreparedVmm {
    program: PathBuf,
    socket: UnixStream,
}

/// Why a hand-over did not start the container.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The prepared monitor had ended before it took the container: nothing of the
    /// container's was started, so the caller starts it the usual way.
    #[error("the prepared monitor is gone: {0}")]
    Gone(std::io::Error),
    /// The monitor took the container and did not report in time, or not readably.
    #[error("the prepared monitor did not report: {0}")]
    Failed(std::io::Error),
}

/// Starts a prepared monitor (`monitor`, the small `crid-monitor` binary) with `vmm` prepared
/// for `memory_mib` MiB guests, its errors appended to `stderr`, and waits (at most `timeout`)
/// until the VMM's VM is built. Blocking: call from a blocking task.
pub fn spawn(
    monitor: &Path,
    vmm: &Path,
    memory_mib: u64,
    pool: &Path,
    stderr: &Path,
    timeout: Duration,
) -> std::io::Result<PreparedMonitor> {
    let memory = memory_mib.to_string();
    let args: [&std::ffi::OsStr; 6] = [
        "--prepare-vmm".as_ref(),
        vmm.as_os_str(),
        "--memory".as_ref(),
        memory.as_ref(),
        "--pool".as_ref(),
        pool.as_os_str(),
    ];
    spawn_with(monitor, &args, stderr, timeout, Some(vmm))
}

/// Starts a prepared monitor that runs the [`Launch`] in `launch_file` at once (a VMM whose
/// command line is fixed at its start; see the module documentation) and waits (at most
/// `timeout`) until it runs. Blocking.
pub fn spawn_launch(
    monitor: &Path,
    launch_file: &Path,
    stderr: &Path,
    timeout: Duration,
) -> std::io::Result<PreparedMonitor> {
    let args: [&std::ffi::OsStr; 2] = ["--prepare-launch".as_ref(), launch_file.as_os_str()];
    spawn_with(monitor, &args, stderr, timeout, None)
}

/// Starts the monitor and reads its first [`Ready`] line; with `vmm` (a prepared crid-vmm),
/// the VMM's socket comes with it.
fn spawn_with(
    monitor: &Path,
    args: &[&std::ffi::OsStr],
    stderr: &Path,
    timeout: Duration,
    vmm: Option<&Path>,
) -> std::io::Result<PreparedMonitor> {
    let (ours, theirs) = UnixStream::pair()?;
    let stderr = File::options().create(true).append(true).open(stderr)?;
    let mut first = Command::new(monitor)
        .args(args)
        .env_clear()
        .envs(child_env())
        .stdin(Stdio::from(OwnedFd::from(theirs.try_clone()?)))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(stderr)
        .spawn()?;
    // The first process exits as soon as the detached one runs.
    let status = first.wait()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "the prepared monitor failed to start ({status})"
        )));
    }
    ours.set_read_timeout(Some(timeout))?;
    let (ready, passed) = read_ready_passing(&ours)?;
    let vmm = match (vmm, passed) {
        (Some(program), Some(fd)) => Some(PreparedVmm {
            program: program.to_owned(),
            socket: UnixStream::from(fd),
        }),
        (None, _) => None,
        (Some(_), None) if ready.as_ref().is_some_and(|r| r.pid.is_some()) => {
            return Err(std::io::Error::other(
                "the prepared monitor did not pass its VMM's socket",
            ));
        }
        (Some(_), None) => None,
    };
    match ready {
        Some(Ready { pid: Some(pid), .. }) => Ok(PreparedMonitor {
            vmm_pid: pid,
            socket: ours,
            vmm,
        }),
        Some(Ready { error, .. }) => {
            Err(std::io::Error::other(error.unwrap_or_else(|| {
                "the prepared monitor gave no pid".into()
            })))
        }
        None => Err(std::io::Error::other(
            "the prepared monitor ended before its VMM was ready",
        )),
    }
}

/// A guest set up and confined by its VMM, waiting for its start: crid's end of the socket the
/// VMM (a crid-vmm) or its monitor (a prepared launch) holds as its start gate. Dropping it
/// without [`StartGate::start`] ends the VMM, the guest never run.
#[derive(Debug)]
pub struct StartGate {
    socket: UnixStream,
    /// A paused QEMU's control connection, resumed (`cont`) before the gate opens.
    resume: Option<crate::vm::qmp::Session>,
}

impl StartGate {
    /// Lets the guest run: a paused QEMU is resumed, then one byte goes to the VMM, which
    /// waits for nothing else (or to the monitor of a launch, which then supervises it). An
    /// error when the VMM is gone (it failed while setting the guest up; its monitor records
    /// that exit).
    pub fn start(self) -> std::io::Result<()> {
        if let Some(mut qmp) = self.resume {
            qmp.execute("cont")
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        (&self.socket).write_all(&[VMM_START])
    }

    /// The gate of a QEMU that `qmp` resumes.
    pub fn resuming(self, qmp: crate::vm::qmp::Session) -> StartGate {
        StartGate {
            resume: Some(qmp),
            ..self
        }
    }
}

impl PreparedMonitor {
    /// Whether the monitor and its crid-vmm still wait (neither has closed its socket).
    pub fn alive(&self) -> bool {
        let mut fds = vec![PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        if let Some(vmm) = &self.vmm {
            fds.push(PollFd::new(vmm.socket.as_fd(), PollFlags::POLLIN));
        }
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Hands over the container with [`Handover::start_gate`] set: a crid-vmm gets the guest's
    /// command line and its gate from crid, then the monitor takes the container; a prepared
    /// launch's monitor takes it and keeps crid's socket as the gate. The guest is set up and
    /// waits for [`StartGate::start`]. Blocking.
    pub fn hand_over_gated(
        self,
        handover: &Handover,
        timeout: Duration,
    ) -> Result<(Ready, StartGate), HandoverError> {
        let gate = self.start_vmm(&handover.spec, timeout)?;
        let handover = Handover {
            start_gate: gate.is_none(),
            ..handover.clone()
        };
        let ready = match self.send(&handover, timeout) {
            // The VMM already has the guest's command line: it joins the pod's cgroup and
            // network namespace and opens its tap. The caller starts another VMM on that tap
            // when the monitor is gone, so this one must end first (it does on the closed gate).
            Err(HandoverError::Gone(e)) if gate.is_some() => {
                drop(gate);
                return Err(self.vmm_ended(e, timeout));
            }
            result => result?,
        };
        Ok((
            ready,
            StartGate {
                socket: gate.unwrap_or(self.socket),
                resume: None,
            },
        ))
    }

    /// Hands a prepared crid-vmm's monitor its container and returns its report (at most
    /// `timeout`); the guest runs once the monitor has taken it. Blocking.
    pub fn hand_over(self, handover: &Handover, timeout: Duration) -> Result<Ready, HandoverError> {
        let (ready, gate) = self.hand_over_gated(handover, timeout)?;
        if ready.pid.is_some() {
            gate.start().map_err(HandoverError::Failed)?;
        }
        Ok(ready)
    }

    /// Writes a crid-vmm the guest's command line (see [`vmm_args`]) with the VMM's end of a
    /// new start gate, and returns crid's end; `None` for a prepared launch. A VMM that is gone
    /// had not started anything: [`HandoverError::Gone`]. One that did not read it within
    /// `timeout` is alive and may hold part of it, which it could act on once the entry is
    /// dropped (its gate closed, it ends before any guest runs): [`HandoverError::Failed`],
    /// so that no other VMM is started on the guest's tap meanwhile.
    fn start_vmm(
        &self,
        spec: &MonitorSpec,
        timeout: Duration,
    ) -> Result<Option<UnixStream>, HandoverError> {
        let Some(vmm) = &self.vmm else {
            return Ok(None);
        };
        let args = vmm_args(spec, &vmm.program)
            .map_err(|e| HandoverError::Failed(std::io::Error::other(e)))?;
        let (ours, theirs) = UnixStream::pair().map_err(HandoverError::Failed)?;
        match send_args(&vmm.socket, &encode_args(&args), theirs.as_fd(), timeout) {
            Ok(()) => Ok(Some(ours)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(HandoverError::Failed(e)),
            Err(e) => Err(HandoverError::Gone(e)),
        }
    }

    /// After the monitor went (`why`) and the VMM's gate was closed: [`HandoverError::Gone`]
    /// once the VMM has ended too (end of file on its socket, within `timeout`), so that
    /// nothing of the container runs; [`HandoverError::Failed`] if it has not.
    fn vmm_ended(&self, why: std::io::Error, timeout: Duration) -> HandoverError {
        let Some(vmm) = &self.vmm else {
            return HandoverError::Gone(why);
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 256];
        // Bounded: each round either ends or reads bytes the VMM wrote, and the deadline
        // bounds how long a VMM that keeps writing is read.
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || vmm.socket.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match (&vmm.socket).read(&mut buf) {
                Ok(0) => return HandoverError::Gone(why),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        HandoverError::Failed(std::io::Error::other(format!(
            "{why}, and its crid-vmm, handed the guest, did not end"
        )))
    }

    fn send(&self, handover: &Handover, timeout: Duration) -> Result<Ready, HandoverError> {
        let mut line = serde_json::to_vec(handover)
            .map_err(|e| HandoverError::Gone(std::io::Error::other(e)))?;
        line.push(b'\n');
        (&self.socket)
            .write_all(&line)
            .map_err(HandoverError::Gone)?;
        self.socket
            .set_read_timeout(Some(timeout))
            .map_err(HandoverError::Failed)?;
        match read_ready(&self.socket) {
            Ok(Some(ready)) => Ok(ready),
            Ok(None) => Err(HandoverError::Gone(std::io::Error::other(
                "it ended before it took the container",
            ))),
            Err(e) => Err(HandoverError::Failed(e)),
        }
    }
}

/// Reads one [`Ready`] line; `None` at end of file. Nothing follows a line before crid writes
/// again, so nothing buffered is lost.
fn read_ready(socket: &UnixStream) -> std::io::Result<Option<Ready>> {
    let mut line = Vec::new();
    BufReader::new(socket.take(MAX_LINE)).read_until(b'\n', &mut line)?;
    parse_ready(&line)
}

/// [`read_ready`] of a line that may come with a descriptor ([`report_passing`]).
fn read_ready_passing(socket: &UnixStream) -> std::io::Result<(Option<Ready>, Option<OwnedFd>)> {
    let mut first = [0u8; 4096];
    let (n, fd) = super::sys::recv_with_fd(socket, &mut first)?;
    let mut line = first[..n].to_vec();
    if n > 0 && !line.ends_with(b"\n") {
        BufReader::new(socket.take(MAX_LINE)).read_until(b'\n', &mut line)?;
    }
    Ok((parse_ready(&line)?, fd))
}

fn parse_ready(line: &[u8]) -> std::io::Result<Option<Ready>> {
    if line.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(line.trim_ascii())
        .map(Some)
        .map_err(|e| {
            std::io::Error::other(format!(
                "prepared monitor reported {:?}: {e}",
                String::from_utf8_lossy(line)
            ))
        })
}

/// Writes a crid-vmm's hand-over message (see `crid_vmm::handover`) and ends it, `gate` going
/// with its first bytes. A VMM that stops reading fails the write once `timeout` has passed
/// (`TimedOut`), however the message was split: a message larger than the socket's buffer
/// waits for the VMM to read, and crid's blocking thread must not wait for ever.
fn send_args(
    socket: &UnixStream,
    message: &[u8],
    gate: BorrowedFd<'_>,
    timeout: Duration,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let timed_out = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the VMM did not read its command line within {timeout:?}"),
            )
        } else {
            e
        }
    };
    // The socket's send timeout (SO_SNDTIMEO) bounds each blocking write, the deadline all.
    socket.set_write_timeout(Some(timeout))?;
    let mut sent = send_passing(socket.as_raw_fd(), message, gate).map_err(timed_out)?;
    while sent < message.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out(std::io::ErrorKind::WouldBlock.into()));
        }
        socket.set_write_timeout(Some(left))?;
        match (&*socket).write(&message[sent..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    socket.shutdown(std::net::Shutdown::Write)
}

/// What a prepared crid-vmm is handed of a launch: the crid-vmm command line after the program
/// (which must be the prepared VMM's), then `--netns` for the pod's network namespace. A
/// launch the prepared VMM cannot run is an error.
fn vmm_args(spec: &MonitorSpec, vmm: &Path) -> Result<Vec<String>, String> {
    let Launch::Command {
        argv,
        env,
        cwd,
        netns,
        cgroup_procs,
        exit_port,
        seccomp,
    } = &spec.launch
    else {
        return Err("a prepared crid-vmm runs only its own command line".into());
    };
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    if Path::new(program) != vmm
        || !env.is_empty()
        || cwd.is_some()
        || !cgroup_procs.is_empty()
        || exit_port.is_some()
        || seccomp.is_some()
    {
        return Err(format!(
            "a prepared crid-vmm runs {} as it was prepared, not {program}",
            vmm.display()
        ));
    }
    let mut args = args.to_vec();
    if let Some(ns) = netns {
        let ns = ns
            .to_str()
            .ok_or("the network namespace path is not UTF-8")?;
        args.extend(["--netns".to_owned(), ns.to_owned()]);
    }
    Ok(args)
}

/// The VMM's hand-over message: every argument followed by a NUL byte.
fn encode_args(args: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The monitor process

/// What a prepared monitor runs before it has a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepare {
    /// `VMM --prepared POOL --memory MIB` (crid-vmm), which says when its VM is built and
    /// takes the guest's command line at the hand-over.
    Vmm {
        vmm: PathBuf,
        memory_mib: u64,
        pool: PathBuf,
    },
    /// The [`Launch::Command`] in this file (JSON), run at once (a QEMU started paused).
    Launch(PathBuf),
}

/// Entry point of `crid-monitor --prepare-vmm VMM --memory MIB --pool DIR` and
/// `crid-monitor --prepare-launch FILE` (the small binary: it detaches by forking). Returns
/// the process exit code.
pub fn main(prepare: &Prepare) -> i32 {
    close_inherited_on_exec();
    match super::sys::fork_detached_child() {
        Ok(true) => {}
        Ok(false) => return 0,
        Err(e) => {
            eprintln!("crid monitor: cannot fork the detached monitor: {e}");
            return 1;
        }
    }
    let mut waiting = match Waiting::start(prepare) {
        Ok(w) => w,
        Err(e) => {
            report_line(&Ready {
                pid: None,
                error: Some(e),
            });
            return 1;
        }
    };
    let handover = match waiting.wait_for_container() {
        Ok(Some(h)) => h,
        Ok(None) => {
            waiting.discard();
            return 0;
        }
        Err(e) => {
            waiting.discard();
            report_line(&Ready {
                pid: None,
                error: Some(e),
            });
            return 1;
        }
    };
    let vmm_pid = waiting.vmm.as_raw();
    match waiting.take(&handover) {
        Ok((mut monitor, gate)) => {
            report(&Ready {
                pid: Some(vmm_pid),
                error: None,
            });
            if let Some(gate) = gate {
                wait_for_start(&gate, monitor.pid);
            }
            monitor.run(&handover.spec);
            0
        }
        Err(e) => {
            report(&Ready {
                pid: None,
                error: Some(e),
            });
            1
        }
    }
}

/// Waits until crid lets the guest run (`G` on `gate`, crid's socket) or the VMM ended; crid's
/// end of file instead (the container removed, crid gone) kills the VMM, its guest never run.
/// Signals wait (blocked) for the supervision that follows, which also records the exit.
fn wait_for_start(gate: &File, vmm: Pid) {
    let Ok(vmm_fd) = super::sys::pidfd_open(vmm.as_raw()) else {
        return; // already reaped: nothing to start
    };
    loop {
        let mut fds = [
            PollFd::new(gate.as_fd(), PollFlags::POLLIN),
            PollFd::new(vmm_fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            return;
        }
        if ready(&fds[0]) {
            let mut byte = [0u8];
            if !matches!((&*gate).read(&mut byte), Ok(1) if byte[0] == VMM_START) {
                let _ = nix::sys::signal::kill(vmm, Signal::SIGKILL);
            }
            return;
        }
    }
}

/// A prepared monitor before its container: the VMM, its output pipes, its socket (a
/// crid-vmm's, until it goes to crid) and the monitor's signals.
struct Waiting {
    vmm: Pid,
    socket: Option<UnixStream>,
    stdout: File,
    stderr: File,
    signals: SignalFd,
}

impl Waiting {
    /// Starts the VMM and reports: a crid-vmm once it has built its VM, a launch once it runs.
    fn start(prepare: &Prepare) -> Result<Waiting, String> {
        let signals = become_supervisor()?;
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (mut cmd, program, socket) = match prepare {
            Prepare::Vmm {
                vmm,
                memory_mib,
                pool,
            } => {
                let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
                let mut cmd = Command::new(vmm);
                cmd.arg("--prepared")
                    .arg(pool)
                    .arg("--memory")
                    .arg(memory_mib.to_string())
                    .stdin(Stdio::from(OwnedFd::from(theirs)));
                (cmd, vmm.clone(), Some(ours))
            }
            Prepare::Launch(file) => {
                let (cmd, program) = launch_command(file)?;
                (cmd, program, None)
            }
        };
        let child = cmd
            .env_clear()
            .envs(child_env())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
        let mut waiting = Waiting {
            vmm: Pid::from_raw(pid),
            socket,
            stdout: File::from(out_r),
            stderr: File::from(err_r),
            signals,
        };
        let built = if waiting.socket.is_some() {
            waiting.wait_for_vmm()
        } else {
            Ok(())
        };
        let ready = Ready {
            pid: Some(pid),
            error: None,
        };
        // A crid-vmm's socket goes to crid, which hands the VMM its guest itself.
        let reported = built.and_then(|()| match waiting.socket.take() {
            Some(socket) => report_passing(&ready, socket.as_fd())
                .map_err(|e| format!("cannot pass the VMM's socket: {e}")),
            None => {
                report_line(&ready);
                Ok(())
            }
        });
        match reported {
            Ok(()) => Ok(waiting),
            Err(e) => {
                waiting.discard();
                Err(e)
            }
        }
    }

    /// Waits for the VMM's ready byte; an error when it ended first (with what it printed) or
    /// crid went away.
    fn wait_for_vmm(&mut self) -> Result<(), String> {
        let socket = self.socket.take().ok_or("no VMM socket")?;
        let result = self.wait_for_ready_byte(&socket);
        self.socket = Some(socket);
        result
    }

    fn wait_for_ready_byte(&mut self, socket: &UnixStream) -> Result<(), String> {
        loop {
            let (vmm_ready, crid_ready, signalled) = self.poll(Some(socket))?;
            if vmm_ready {
                let mut byte = [0u8];
                let mut reader: &UnixStream = socket;
                return match reader.read(&mut byte) {
                    Ok(1) if byte[0] == VMM_READY => Ok(()),
                    _ => Err(format!("the prepared VMM failed: {}", self.vmm_errors())),
                };
            }
            if crid_ready {
                return Err("crid went away".into());
            }
            if signalled {
                let (ended, stop) = self.read_signals();
                if ended {
                    return Err(format!("the prepared VMM failed: {}", self.vmm_errors()));
                }
                if stop {
                    return Err("stopped before the VMM was ready".into());
                }
            }
        }
    }

    /// Waits for crid's [`Handover`]; `None` when crid closed the socket or a signal asked
    /// the monitor to end; an error when the VMM ended.
    fn wait_for_container(&mut self) -> Result<Option<Handover>, String> {
        loop {
            let (_, crid_ready, signalled) = self.poll(None)?;
            if crid_ready {
                let mut line = Vec::new();
                std::io::stdin()
                    .lock()
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| format!("reading the hand-over: {e}"))?;
                if line.is_empty() {
                    return Ok(None);
                }
                return serde_json::from_slice(line.trim_ascii())
                    .map(Some)
                    .map_err(|e| format!("bad hand-over: {e}"));
            }
            if signalled {
                let (ended, stop) = self.read_signals();
                if ended {
                    return Err(format!("the prepared VMM ended: {}", self.vmm_errors()));
                }
                if stop {
                    return Ok(None);
                }
            }
        }
    }

    /// Polls the VMM's socket (when given), stdin (crid) and the signalfd.
    fn poll(&self, socket: Option<&UnixStream>) -> Result<(bool, bool, bool), String> {
        let stdin = std::io::stdin();
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(s) = socket {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        Ok((ready(2), ready(1), ready(0)))
    }

    /// Reads the pending signals: whether the VMM was among the children reaped, and whether
    /// a stop signal asked the monitor to end.
    fn read_signals(&self) -> (bool, bool) {
        let (mut ended, mut stop) = (false, false);
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => ended |= reap(self.vmm).is_some(),
                Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => stop = true,
                _ => {}
            }
        }
        (ended, stop)
    }

    /// What the VMM printed on stderr (it failed before it had a guest).
    fn vmm_errors(&mut self) -> String {
        let _ = super::set_nonblocking(&self.stderr);
        let mut text = Vec::new();
        let _ = (&mut self.stderr).take(64 * 1024).read_to_end(&mut text);
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        if text.is_empty() {
            "no message".into()
        } else {
            text
        }
    }

    /// Ends the VMM and waits for it.
    fn discard(&mut self) {
        self.socket = None;
        let _ = nix::sys::signal::kill(self.vmm, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.vmm, None);
    }

    /// Becomes the monitor of the handed-over container: its state directory, pid file, log
    /// and errors (a crid-vmm has its guest from crid already). With [`Handover::start_gate`]
    /// (a launch), also crid's socket, to wait on before it supervises ([`wait_for_start`]).
    fn take(mut self, handover: &Handover) -> Result<(Monitor, Option<File>), String> {
        let result = self.take_inner(handover);
        if result.is_err() {
            self.discard();
        }
        result.map(|(log, gate)| {
            let monitor = Monitor {
                pid: self.vmm,
                stdout: Some(self.stdout),
                stderr: Some(self.stderr),
                signals: self.signals,
                log,
                attach: None,
                exit_port: None,
                port_status: None,
            };
            (monitor, gate)
        })
    }

    /// The VMM's output waits in the pipes until the log is open. Should taking the container
    /// fail, [`Waiting::take`] kills the VMM.
    fn take_inner(
        &mut self,
        handover: &Handover,
    ) -> Result<(super::log::LogFile, Option<File>), String> {
        let spec = &handover.spec;
        // [`report`] replaces stdin with /dev/null: the gate is a copy.
        let gate = if handover.start_gate {
            Some(File::from(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| format!("keeping crid's socket: {e}"))?,
            ))
        } else {
            None
        };
        redirect_stderr(&handover.stderr)?;
        let dir = spec
            .pid_file
            .parent()
            .ok_or("the pid file has no directory")?;
        std::env::set_current_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        take_container(spec).map(|log| (log, gate))
    }
}

/// The command of a prepared launch (see [`Prepare::Launch`]): a [`Launch::Command`] with a
/// program and its arguments, and perhaps a network namespace, joined between fork and exec;
/// nothing else (its cgroup is joined at the hand-over, by crid).
fn launch_command(file: &Path) -> Result<(Command, PathBuf), String> {
    let launch: Launch = std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let Launch::Command {
        argv,
        env,
        cwd: None,
        netns,
        cgroup_procs,
        exit_port: None,
        seccomp: None,
    } = launch
    else {
        return Err("a prepared launch is a plain command".into());
    };
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    if !env.is_empty() || !cgroup_procs.is_empty() {
        return Err("a prepared launch has no environment and joins no cgroup".into());
    }
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if let Some(ns) = netns {
        let ns = File::open(&ns).map_err(|e| format!("network namespace {}: {e}", ns.display()))?;
        super::sys::join_before_exec(&mut cmd, Some(OwnedFd::from(ns)), vec![]);
    }
    Ok((cmd, PathBuf::from(program)))
}

/// Writes the first bytes of `message` on the socket `fd` with `passed` (`SCM_RIGHTS`), and
/// returns how many went.
fn send_passing(fd: RawFd, message: &[u8], passed: BorrowedFd<'_>) -> std::io::Result<usize> {
    let fds = [passed.as_raw_fd()];
    sendmsg::<()>(
        fd,
        &[std::io::IoSlice::new(message)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)
}

/// [`report_line`] on crid's socket (standard output) with `passed` going along: the prepared
/// crid-vmm's socket.
fn report_passing(ready: &Ready, passed: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(ready).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let sent = send_passing(out.as_raw_fd(), &line, passed)?;
    out.write_all(&line[sent..])?;
    out.flush()
}

/// Appends the monitor's own errors to `path` from now on.
fn redirect_stderr(path: &Path) -> Result<(), String> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    nix::unistd::dup2(file.as_raw_fd(), 2).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(launch: Launch) -> MonitorSpec {
        MonitorSpec {
            id: "c1".into(),
            launch,
            log_path: None,
            exit_file: "/r/exit.json".into(),
            exit_fallback: None,
            pid_file: "/s/containers/c1/monitor.pid".into(),
            oom_cgroup: None,
            stdin: None,
        }
    }

    fn command(argv: &[&str], netns: Option<&str>) -> Launch {
        Launch::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            netns: netns.map(PathBuf::from),
            cgroup_procs: vec![],
            exit_port: None,
            seccomp: None,
        }
    }

    #[test]
    fn the_vmm_gets_the_launch_after_its_program_and_the_netns() {
        let vmm = Path::new("/bin/crid-vmm");
        let s = spec(command(
            &["/bin/crid-vmm", "--kernel", "/k", "--cmdline", ""],
            Some("/run/crid/netns/p"),
        ));
        let args = vmm_args(&s, vmm).unwrap();
        assert_eq!(
            args,
            [
                "--kernel",
                "/k",
                "--cmdline",
                "",
                "--netns",
                "/run/crid/netns/p"
            ]
        );
        assert_eq!(
            encode_args(&args),
            b"--kernel\0/k\0--cmdline\0\0--netns\0/run/crid/netns/p\0"
        );
        let s = spec(command(&["/bin/crid-vmm", "--kernel", "/k"], None));
        assert_eq!(vmm_args(&s, vmm).unwrap(), ["--kernel", "/k"]);
    }

    #[test]
    fn only_the_prepared_vmm_is_run() {
        let vmm = Path::new("/bin/crid-vmm");
        let other = spec(command(&["/bin/qemu", "-kernel", "/k"], None));
        assert!(vmm_args(&other, vmm).is_err());
        assert!(vmm_args(&spec(command(&[], None)), vmm).is_err());
        let mut joined = command(&["/bin/crid-vmm"], None);
        if let Launch::Command { cgroup_procs, .. } = &mut joined {
            cgroup_procs.push("/sys/fs/cgroup/x/cgroup.procs".into());
        }
        assert!(vmm_args(&spec(joined), vmm).is_err());
        let runc = Launch::Runc {
            runc: "/bin/runc".into(),
            root: "/r".into(),
            systemd_cgroup: false,
            bundle: "/b".into(),
            container_pid_file: "/p".into(),
            runc_log: "/l".into(),
            console_socket: None,
            start: true,
        };
        assert!(vmm_args(&spec(runc), vmm).is_err());
    }

    #[test]
    fn a_prepared_launch_is_a_plain_command_in_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("launch.json");
        let write = |launch: &Launch| std::fs::write(&file, serde_json::to_vec(launch).unwrap());
        let qemu = command(&["/bin/qemu", "-S", "-m", "32"], None);
        write(&qemu).unwrap();
        let (cmd, program) = launch_command(&file).unwrap();
        assert_eq!(program, Path::new("/bin/qemu"));
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["-S", "-m", "32"]);
        // Anything the monitor would do for it between fork and exec is refused: the cgroup
        // is joined at the hand-over, by crid.
        let mut joined = qemu.clone();
        if let Launch::Command { cgroup_procs, .. } = &mut joined {
            cgroup_procs.push("/sys/fs/cgroup/x/cgroup.procs".into());
        }
        write(&joined).unwrap();
        assert!(launch_command(&file).is_err());
        let mut port = qemu;
        if let Launch::Command { exit_port, .. } = &mut port {
            *exit_port = Some(3);
        }
        write(&port).unwrap();
        assert!(launch_command(&file).is_err());
        write(&command(&[], None)).unwrap();
        assert!(launch_command(&file).is_err());
        // A namespace that is not there.
        write(&command(&["/bin/qemu"], Some("/nonexistent/netns"))).unwrap();
        assert!(launch_command(&file).is_err());
    }

    #[test]
    fn a_ready_line_passes_the_vmms_socket_and_the_args_their_gate() {
        use crate::monitor::sys::recv_with_fd;
        // The monitor's report: a line and the VMM's socket (here one end of a pair).
        let (crid, monitor) = UnixStream::pair().unwrap();
        let (vmm_end, vmm) = UnixStream::pair().unwrap();
        let line = b"{\"pid\":7,\"error\":null}\n";
        let sent = send_passing(monitor.as_raw_fd(), line, vmm_end.as_fd()).unwrap();
        (&monitor).write_all(&line[sent..]).unwrap();
        drop(vmm_end);
        let (ready, fd) = read_ready_passing(&crid).unwrap();
        assert_eq!(ready.and_then(|r| r.pid), Some(7));
        let passed = UnixStream::from(fd.expect("the VMM's socket"));
        // crid hands the VMM its command line on it, the gate's end going with the first
        // bytes; end of file ends the message.
        let (gate, gate_vmm) = UnixStream::pair().unwrap();
        send_args(
            &passed,
            &encode_args(&["--kernel".into(), "/k".into()]),
            gate_vmm.as_fd(),
            Duration::from_secs(10),
        )
        .unwrap();
        drop(gate_vmm);
        let mut first = [0u8; 64];
        let (n, vmm_gate) = recv_with_fd(&vmm, &mut first).unwrap();
        let mut message = first[..n].to_vec();
        (&vmm).read_to_end(&mut message).unwrap();
        assert_eq!(message, b"--kernel\0/k\0");
        let vmm_gate = UnixStream::from(vmm_gate.expect("the start gate"));
        (&gate).write_all(&[VMM_START]).unwrap();
        let mut byte = [0u8];
        (&vmm_gate).read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], VMM_START);
        // A line without a descriptor reads as one with none.
        (&monitor).write_all(line).unwrap();
        let (ready, fd) = read_ready_passing(&crid).unwrap();
        assert!(ready.is_some() && fd.is_none());
    }

    #[test]
    fn a_vmm_that_stopped_reading_times_the_hand_over_out() {
        let (crid, vmm) = UnixStream::pair().unwrap();
        // Fill the socket's buffer: the VMM reads nothing.
        crid.set_nonblocking(true).unwrap();
        let chunk = [0u8; 4096];
        // Bounded: the buffer holds at most a few MiB.
        for _ in 0..100_000 {
            match (&crid).write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        crid.set_nonblocking(false).unwrap();
        let (_gate, gate_vmm) = UnixStream::pair().unwrap();
        let message = encode_args(&["--kernel".into(), "/k".into()]);
        let e = send_args(
            &crid,
            &message,
            gate_vmm.as_fd(),
            Duration::from_millis(100),
        )
        .expect_err("the VMM reads nothing");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        // The hand-over fails rather than starting another VMM: this one is still there.
        let program = PathBuf::from("/usr/lib/crid/crid-vmm");
        let (monitor, _monitor_end) = UnixStream::pair().unwrap();
        let prepared = PreparedMonitor {
            vmm_pid: 0,
            socket: monitor,
            vmm: Some(PreparedVmm {
                program: program.clone(),
                socket: crid,
            }),
        };
        let handover = Handover {
            spec: spec(command(&[program.to_str().unwrap()], None)),
            stderr: "/s/containers/c1/monitor.log".into(),
            start_gate: true,
        };
        let result = prepared.hand_over_gated(&handover, Duration::from_millis(100));
        assert!(
            matches!(result, Err(HandoverError::Failed(_))),
            "{result:?}"
        );
        drop(vmm);
    }

    /// Hands a guest over to a prepared crid-vmm whose monitor has ended, its VMM a fake on
    /// another thread that reads its command line and gate and, when `ends`, ends on the
    /// closed gate; the fake VMM's socket is returned when it does not end.
    fn handover_to_a_gone_monitor(ends: bool) -> (Result<(), HandoverError>, Option<UnixStream>) {
        use crate::monitor::sys::recv_with_fd;
        let (crid, monitor) = UnixStream::pair().unwrap();
        drop(monitor);
        let (crid_vmm, vmm) = UnixStream::pair().unwrap();
        let program = PathBuf::from("/usr/lib/crid/crid-vmm");
        let prepared = PreparedMonitor {
            vmm_pid: 0,
            socket: crid,
            vmm: Some(PreparedVmm {
                program: program.clone(),
                socket: crid_vmm,
            }),
        };
        let fake = std::thread::spawn(move || {
            let mut first = [0u8; 256];
            let (n, gate) = recv_with_fd(&vmm, &mut first).unwrap();
            let mut message = first[..n].to_vec();
            (&vmm).read_to_end(&mut message).unwrap();
            let gate = UnixStream::from(gate.expect("the start gate"));
            let mut byte = [0u8];
            assert_eq!(
                (&gate).read(&mut byte).unwrap(),
                0,
                "closed without a start"
            );
            (!ends).then_some(vmm)
        });
        let handover = Handover {
            spec: spec(command(
                &[program.to_str().unwrap(), "--kernel", "/k"],
                None,
            )),
            stderr: "/s/containers/c1/monitor.log".into(),
            start_gate: true,
        };
        let result = prepared
            .hand_over_gated(&handover, Duration::from_millis(300))
            .map(drop);
        (result, fake.join().unwrap())
    }

    #[test]
    fn a_monitor_gone_after_its_vmm_took_the_guest_is_gone_once_the_vmm_ended() {
        // The caller then starts the container on a new VMM: the old one, which had the
        // guest's tap, has ended.
        let (result, _) = handover_to_a_gone_monitor(true);
        assert!(matches!(result, Err(HandoverError::Gone(_))), "{result:?}");
    }

    #[test]
    fn a_monitor_gone_after_its_vmm_took_the_guest_fails_while_the_vmm_runs() {
        let (result, vmm) = handover_to_a_gone_monitor(false);
        assert!(vmm.is_some());
        match result {
            Err(HandoverError::Failed(e)) => assert!(e.to_string().contains("did not end"), "{e}"),
            other => panic!("a VMM that did not end must fail the hand-over: {other:?}"),
        }
    }

    #[test]
    fn ready_lines_are_read_one_at_a_time() {
        let (a, b) = UnixStream::pair().unwrap();
        (&b).write_all(b"{\"pid\":7,\"error\":null}\n").unwrap();
        assert_eq!(
            read_ready(&a).unwrap(),
            Some(Ready {
                pid: Some(7),
                error: None
            })
        );
        (&b).write_all(b"nonsense\n").unwrap();
        assert!(read_ready(&a).is_err());
        drop(b);
        assert_eq!(read_ready(&a).unwrap(), None);
    }
}
