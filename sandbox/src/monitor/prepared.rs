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
//!    is built, the monitor prints a [`Ready`] line with the VMM's pid (or the error).
//! 2. crid writes one JSON [`Handover`] line: the container's [`MonitorSpec`], whose launch is
//!    the crid-vmm command line crid would otherwise run, and the file for the monitor's own
//!    errors.
//! 3. The monitor passes the command line to the VMM (with `--netns` for the pod's network
//!    namespace, which the VMM enters itself), so that the VMM sets the guest up meanwhile,
//!    moves into the container's state directory (how crid recognises it after a restart, its
//!    command line not naming the container), writes its pid file, opens the CRI log and
//!    prints a second [`Ready`] line; then it is the container's monitor like any other.
//! 4. With [`Handover::start_gate`] (crid hands the container over at `CreateContainer`) the
//!    monitor passes its socket to crid along with the command line (`SCM_RIGHTS`) and keeps
//!    no copy: the VMM sets the guest up, confines itself and waits on it until crid writes
//!    `G` at `StartContainer` ([`StartGate::start`]), straight to the VMM, waking no other
//!    process. Closing crid's end instead (the container removed, crid gone) ends the VMM
//!    with status 0 before the guest ran.
//!
//! End of file from crid before step 2 (crid discarded the entry, stopped or died) ends the
//! monitor and its VMM: a prepared entry never outlives the crid that prepared it. A VMM that
//! dies while it waits ends its monitor too.
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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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
    /// The VMM gets crid's socket as its start gate and runs the guest only when crid writes
    /// on it (see [`StartGate`]).
    #[serde(default)]
    pub start_gate: bool,
}

// ---------------------------------------------------------------------------------------------
// crid's side

/// A prepared monitor waiting for a container: crid's end of its socket. Dropping it discards
/// the monitor and its VMM (they end on the end of file).
#[derive(Debug)]
pub struct PreparedMonitor {
    /// The prepared VMM.
    pub vmm_pid: i32,
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
    spawn_with(monitor, &args, stderr, timeout)
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
    spawn_with(monitor, &args, stderr, timeout)
}

fn spawn_with(
    monitor: &Path,
    args: &[&std::ffi::OsStr],
    stderr: &Path,
    timeout: Duration,
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
    match read_ready(&ours)? {
        Some(Ready { pid: Some(pid), .. }) => Ok(PreparedMonitor {
            vmm_pid: pid,
            socket: ours,
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
    /// Whether the monitor still waits (it has not closed its socket).
    pub fn alive(&self) -> bool {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// [`PreparedMonitor::hand_over`] with [`Handover::start_gate`] set: the guest is set up
    /// and waits for [`StartGate::start`]. Blocking.
    pub fn hand_over_gated(
        self,
        handover: &Handover,
        timeout: Duration,
    ) -> Result<(Ready, StartGate), HandoverError> {
        let handover = Handover {
            start_gate: true,
            ..handover.clone()
        };
        let ready = self.send(&handover, timeout)?;
        Ok((
            ready,
            StartGate {
                socket: self.socket,
                resume: None,
            },
        ))
    }

    /// Hands the monitor its container and returns its report (at most `timeout`). Blocking.
    pub fn hand_over(self, handover: &Handover, timeout: Duration) -> Result<Ready, HandoverError> {
        self.send(handover, timeout)
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
    if line.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(line.trim_ascii())
        .map(Some)
        .map_err(|e| {
            std::io::Error::other(format!(
                "prepared monitor reported {:?}: {e}",
                String::from_utf8_lossy(&line)
            ))
        })
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

/// A prepared monitor before its container: the VMM, its output pipes, its socket and the
/// monitor's signals.
struct Waiting {
    vmm: Pid,
    /// The prepared crid-vmm's path, which the handed-over command line must start with;
    /// `None` for a launch run as it was prepared.
    vmm_path: Option<PathBuf>,
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
        let (mut cmd, program, socket, vmm_path) = match prepare {
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
                (cmd, vmm.clone(), Some(ours), Some(vmm.clone()))
            }
            Prepare::Launch(file) => {
                let (cmd, program) = launch_command(file)?;
                (cmd, program, None, None)
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
            vmm_path,
            socket,
            stdout: File::from(out_r),
            stderr: File::from(err_r),
            signals,
        };
        let ready = if waiting.socket.is_some() {
            waiting.wait_for_vmm()
        } else {
            Ok(())
        };
        match ready {
            Ok(()) => {
                report_line(&Ready {
                    pid: Some(pid),
                    error: None,
                });
                Ok(waiting)
            }
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

    /// Becomes the monitor of the handed-over container: a crid-vmm gets the guest's command
    /// line, then the monitor takes its state directory, pid file, log and errors. With a
    /// launch and [`Handover::start_gate`], also crid's socket, to wait on before it
    /// supervises ([`wait_for_start`]).
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

    /// The VMM gets its command line first, so that it sets the guest up while the monitor
    /// takes the container; its output waits in the pipes until the log is open. Should
    /// taking it fail, [`Waiting::take`] kills the VMM.
    fn take_inner(
        &mut self,
        handover: &Handover,
    ) -> Result<(super::log::LogFile, Option<File>), String> {
        let spec = &handover.spec;
        let gate = match &self.vmm_path {
            Some(vmm) => {
                let args = vmm_args(spec, vmm)?;
                let socket = self.socket.take().ok_or("no VMM socket")?;
                send_args(&socket, &encode_args(&args), handover.start_gate)
                    .map_err(|e| format!("handing the guest to the VMM: {e}"))?;
                None
            }
            // [`report`] replaces stdin with /dev/null: the gate is a copy.
            None if handover.start_gate => Some(File::from(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| format!("keeping crid's socket: {e}"))?,
            )),
            None => None,
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

/// Writes the VMM's hand-over message and ends it; with `start_gate`, crid's socket (this
/// process's stdin) goes with its first bytes, and the monitor's copies of it are closed by
/// [`report`] right after.
fn send_args(socket: &UnixStream, message: &[u8], start_gate: bool) -> std::io::Result<()> {
    let mut rest = message;
    if start_gate {
        let stdin = std::io::stdin();
        let fds = [stdin.as_fd().as_raw_fd()];
        let sent = sendmsg::<()>(
            socket.as_raw_fd(),
            &[std::io::IoSlice::new(rest)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(std::io::Error::from)?;
        rest = &rest[sent..];
    }
    let mut writer = socket;
    writer.write_all(rest)?;
    socket.shutdown(std::net::Shutdown::Write)
}

/// The VMM's part of a handed-over launch: the crid-vmm command line after the program (which
/// must be the prepared VMM's), then `--netns` for the pod's network namespace. A launch the
/// prepared VMM cannot run is an error.
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
        return Err("a prepared monitor runs only its prepared VMM".into());
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
            "a prepared monitor runs {} as it was prepared, not {program}",
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
