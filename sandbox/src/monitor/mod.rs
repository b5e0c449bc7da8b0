//! The per-container monitor: a small detached process (`crid monitor --spec FILE`) that owns a
//! container's stdio, writes the CRI log, reaps the container's init process as a subreaper and
//! records its exit to disk, so containers outlive crid restarts.
//!
//! What it supervises is abstract ([`Launch`]): `runc run --detach` (create and start in one
//! runc process; or `runc create`, leaving the start to crid's `runc start`) or any argv (a VMM,
//! for unikernel pods), run at once.
//!
//! The protocol with crid:
//! 1. crid writes a [`MonitorSpec`] as JSON and runs `crid-monitor --spec FILE` (or `crid
//!    monitor --spec FILE`) with stdout on a pipe. That process forks (the small binary) or
//!    re-executes itself with `--detached` (crid) and exits at once, so the real monitor is
//!    re-parented to init and never is crid's child (no zombie, no fork in crid).
//! 2. The detached monitor calls `setsid`, becomes a child subreaper, writes its pid to
//!    `pid_file`, launches, and prints one JSON [`Ready`] line on stdout, then closes stdout.
//! 3. When the supervised process exits, the monitor drains its output, writes an
//!    [`ExitRecord`] to `exit_file` (temp file + rename) and exits.
//!
//! A prepared monitor ([`prepared`]) starts before its container with its crid-vmm and gets
//! the spec over a socket instead, then goes on from step 3.
//!
//! `SIGUSR1` makes it reopen the log file (kubelet's log rotation). No async runtime, no threads:
//! one `poll` loop over the output pipes, a signalfd and the attach socket.
//!
//! Attach ([`StdinSpec`]): the monitor keeps the container's stdin (a pipe, or the pty master
//! for containers with a terminal) and listens on a unix socket. A client connects and sends
//! one mode byte:
//! - [`ATTACH_STDIN`]: every following byte goes to the container's stdin. With `once`
//!   (CRI `stdin_once`), the end of the first such connection closes the container's stdin (for
//!   a terminal, which cannot be closed separately, an end-of-file character is typed instead).
//! - [`ATTACH_RESIZE`]: a sequence of 4-byte frames, width then height as big-endian `u16`,
//!   each applied to the terminal with `TIOCSWINSZ` (the kernel sends SIGWINCH).
//! - [`ATTACH_OUTPUT`]: the monitor sends the container's output from then on as it reads it,
//!   one frame per read: the stream (`1` stdout, `2` stderr), the length as a big-endian `u32`,
//!   then the bytes (not split into lines: a prompt without a newline arrives at once). This is
//!   how attach works for a container without a CRI log. A client that cannot take a frame at
//!   once is dropped: the container never waits for a reader.
//!
//! Connections from several clients may overlap; their bytes are interleaved per read.

pub mod log;
pub mod pidns;
pub mod prepared;
pub mod seccomp;
pub(crate) mod sys;
pub mod userns;

pub use self::sys::{close_inherited_on_exec, join_before_exec, set_window_size};

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use self::log::{LineSplitter, LogFile, Stream};
use self::seccomp::QemuSandbox;

/// How long output is still collected after the supervised process exited (other processes
/// may hold the pipes, e.g. in a pod-wide PID namespace).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What the monitor starts and watches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Launch {
    /// `runc run --detach` (or `runc create` without `start`); the container's init is the
    /// supervised process.
    Runc {
        runc: PathBuf,
        /// runc's `--root`.
        root: PathBuf,
        systemd_cgroup: bool,
        bundle: PathBuf,
        /// runc's `--pid-file`.
        container_pid_file: PathBuf,
        /// runc's `--log` (JSON); its errors explain a failed create.
        runc_log: PathBuf,
        /// For containers with a terminal: where runc sends the pty master (the monitor
        /// listens there and logs what the terminal prints as stdout).
        #[serde(default)]
        console_socket: Option<PathBuf>,
        /// Start the container too (`runc run --detach`): one runc process instead of
        /// `runc create` here and `runc start` from crid.
        #[serde(default)]
        start: bool,
    },
    /// Any program, started at once; it is the supervised process.
    Command {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
        /// A network namespace (a pin) the program runs in: joined between fork and exec,
        /// with no `nsenter` process (a VMM in its pod's network).
        #[serde(default)]
        netns: Option<PathBuf>,
        /// `cgroup.procs` files the program joins between fork and exec (through
        /// [`open_cgroup_join`]), so everything it allocates is charged to its cgroup from the
        /// first page, with no shell in between.
        #[serde(default)]
        cgroup_procs: Vec<PathBuf>,
        /// The descriptor number at which the program gets the write end of a pipe, its exit
        /// port: the first byte written there, N, ends the program (SIGKILL) and is recorded
        /// as the exit status `(N << 1) | 1`, the one QEMU's isa-debug-exit gives (a guest's
        /// exit code on a QEMU build without that device, see `vm::qemu`).
        #[serde(default)]
        exit_port: Option<i32>,
        /// QEMU's `-sandbox` filter, installed before exec, for a QEMU build without seccomp.
        #[serde(default)]
        seccomp: Option<QemuSandbox>,
    },
}

/// Everything a monitor needs, written by crid as JSON next to the container's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorSpec {
    pub id: String,
    pub launch: Launch,
    /// CRI log file; `None` discards the output.
    pub log_path: Option<PathBuf>,
    pub exit_file: PathBuf,
    /// Where the exit record goes when `exit_file` cannot be written (a full disk under
    /// crid's root): a file in the state directory, which is on tmpfs.
    #[serde(default)]
    pub exit_fallback: Option<PathBuf>,
    /// The monitor's own pid.
    pub pid_file: PathBuf,
    /// Memory cgroup directory, read at exit to tell whether the OOM killer struck
    /// (`memory.oom_control` on cgroup v1, `memory.events` on v2).
    pub oom_cgroup: Option<PathBuf>,
    /// Keep the container's stdin (or terminal) open and serve it on an attach socket.
    #[serde(default)]
    pub stdin: Option<StdinSpec>,
}

/// The attach socket of a monitor (see the module documentation for its protocol).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StdinSpec {
    /// The unix socket (its path must be shorter than 108 bytes).
    pub socket: PathBuf,
    /// Whether the container was configured with stdin (else only resizes are served).
    pub stdin: bool,
    /// CRI `stdin_once`: close the container's stdin when the first attach ends.
    pub once: bool,
}

/// First byte of an attach connection whose bytes go to the container's stdin.
pub const ATTACH_STDIN: u8 = b'i';
/// First byte of an attach connection carrying window sizes (`u16` BE width, height).
pub const ATTACH_RESIZE: u8 = b'r';
/// First byte of an attach connection that receives the container's output as frames.
pub const ATTACH_OUTPUT: u8 = b'o';
/// Bytes of an [`ATTACH_OUTPUT`] frame before the data: stream, `u32` length.
pub const OUTPUT_HEADER: usize = 5;
/// What the terminal reads as end of file (VEOF, ^D) when `stdin_once` ends a tty attach.
const TTY_EOF: u8 = 0x04;

/// The line the monitor prints once launched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    /// The supervised process, when the launch worked.
    pub pid: Option<i32>,
    pub error: Option<String>,
}

/// Written when the supervised process exited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal number.
    pub exit_code: i32,
    /// Unix time in nanoseconds.
    pub finished_at_ns: i64,
    pub oom_killed: bool,
}

impl ExitRecord {
    /// Reads an exit file; `None` when it does not exist (yet) or is unreadable.
    pub fn load(path: &Path) -> Option<ExitRecord> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Writes `data` to `path` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    let done = written.and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// The search path children get when this process has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment a child of crid or of a monitor starts with (after `env_clear`):
/// `PATH`, this process's or the default, and nothing else. No variable of the daemon's, such
/// as systemd's `NOTIFY_SOCKET` and `LISTEN_*` or an operator's proxy settings, reaches a
/// monitor, runc or a VMM.
pub fn child_env() -> [(&'static str, OsString); 1] {
    [(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
    )]
}

// ---------------------------------------------------------------------------------------------
// crid's side

/// Starts a monitor for `spec` (written to `spec_path`) with the crid binary `exe`, waits for
/// its [`Ready`] line (at most `timeout`) and returns it. Blocking: call from a blocking task.
pub fn spawn(
    exe: &Path,
    spec: &MonitorSpec,
    spec_path: &Path,
    stderr_path: &Path,
    timeout: Duration,
) -> std::io::Result<Ready> {
    let json = serde_json::to_vec(spec).map_err(std::io::Error::other)?;
    write_replace(spec_path, &json)?;
    let args = [OsStr::new("--spec"), spec_path.as_os_str()];
    let buf = spawn_detached(exe, &args, stderr_path, 64 * 1024, timeout, "monitor")?;
    serde_json::from_slice::<Ready>(buf.trim_ascii()).map_err(|e| {
        std::io::Error::other(format!(
            "monitor reported {:?}: {e}; see {}",
            String::from_utf8_lossy(&buf),
            stderr_path.display()
        ))
    })
}

/// The command that starts a monitor, with nothing of crid's environment but [`child_env`]:
/// straight to the small monitor binary when it sits next to `exe` (loading the big
/// executable only to re-exec the small one costs a process start on every StartContainer),
/// else `exe monitor`.
pub(crate) fn monitor_command(exe: &Path) -> Command {
    let small = exe.with_file_name(MONITOR_BINARY);
    let mut command = if small.is_file() {
        Command::new(small)
    } else {
        let mut c = Command::new(exe);
        c.arg("monitor");
        c
    };
    command.env_clear().envs(child_env());
    command
}

/// Runs the monitor binary next to `exe` (or `exe monitor`) with `args`, waits for the first
/// process, which exits as soon as the detached one runs, and returns what the detached process
/// printed on stdout (at most `limit` bytes, read within `timeout`). `what` names the process
/// in errors. Blocking: call from a blocking task.
pub(crate) fn spawn_detached(
    exe: &Path,
    args: &[&OsStr],
    stderr_path: &Path,
    limit: u64,
    timeout: Duration,
    what: &str,
) -> std::io::Result<Vec<u8>> {
    let stderr = File::options()
        .create(true)
        .append(true)
        .open(stderr_path)?;
    let mut child = monitor_command(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let stdout = child.stdout.take();
    let status = child.wait()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "{what} failed to start ({status}); see {}",
            stderr_path.display()
        )));
    }
    let Some(stdout) = stdout else {
        return Err(std::io::Error::other(format!("{what} stdout missing")));
    };
    // The detached process holds the pipe's only write end once the first one has exited.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = stdout.take(limit).read_to_end(&mut buf).map(|_| buf);
        let _ = tx.send(r);
    });
    rx.recv_timeout(timeout)
        .map_err(|_| std::io::Error::other(format!("{what} did not report in time")))?
}

/// Opens the file through which a forked child joins the cgroup whose `cgroup.procs` is
/// `procs` by writing `0` (itself) before its exec ([`join_before_exec`]): on a cgroup v1
/// hierarchy the `tasks` file next to it, which moves only the writing thread — the child's
/// only one — and so takes no threadgroup lock and never waits for the RCU grace period a
/// `cgroup.procs` migration can wait for (milliseconds on the hosts measured); on cgroup2,
/// which has no `tasks` file, `cgroup.procs` itself.
pub fn open_cgroup_join(procs: &Path) -> std::io::Result<File> {
    let tasks = procs.with_file_name("tasks");
    let file = if procs.file_name().is_some_and(|n| n == "cgroup.procs") && tasks.exists() {
        tasks
    } else {
        procs.to_path_buf()
    };
    File::options().write(true).open(file)
}

/// Replaces `path` with `data` atomically for readers (temp file, then rename) without
/// waiting for the disk: for files in the volatile state directory, and records that only
/// need to survive crid restarts (a power loss takes the containers with it; start-up
/// reconciles the records it finds).
pub fn write_replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let done = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// A live monitor process, pinned by a pidfd so pid reuse cannot fool us.
#[derive(Debug)]
pub struct MonitorHandle {
    pub pid: i32,
    pidfd: OwnedFd,
}

impl MonitorHandle {
    /// Attaches to the monitor of container `id` whose pid is in `pid_file`; `None` when no
    /// such monitor runs any more.
    pub fn attach(pid_file: &Path, id: &str) -> Option<MonitorHandle> {
        let pid = read_pid(pid_file)?;
        let pidfd = sys::pidfd_open(pid).ok()?;
        // With the pidfd open, the pid cannot be reused: check it is really our monitor.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let mut args = cmdline.split('\0');
        let first = args.next().unwrap_or_default();
        // A prepared monitor (see [`prepared`]) got its container after it started: its
        // command line does not name it, but it works in the container's state directory.
        let is_monitor = (first.ends_with(MONITOR_BINARY) || args.any(|a| a == "monitor"))
            && (cmdline.contains(id)
                || std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| {
                    pid_file
                        .parent()
                        .and_then(|d| std::fs::canonicalize(d).ok())
                        .is_some_and(|dir| dir == cwd)
                }));
        // A zombie has an empty cmdline; it has exited.
        if !is_monitor {
            return None;
        }
        Some(MonitorHandle { pid, pidfd })
    }

    /// Whether the monitor still runs.
    pub fn alive(&self) -> bool {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Waits until the monitor exits.
    pub async fn exited(self) -> std::io::Result<()> {
        let fd = sys::async_pidfd(self.pidfd)?;
        let _guard = fd.readable().await?;
        Ok(())
    }

    /// Asks the monitor to reopen its log file.
    pub fn reopen_log(&self) -> std::io::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGUSR1)
            .map_err(std::io::Error::from)
    }
}

// ---------------------------------------------------------------------------------------------
// The monitor process

/// Entry point of `crid monitor`. Returns the process exit code.
pub fn main(spec_path: &Path, detached: bool) -> i32 {
    // runc and the VMM get stdio and nothing else of the monitor's (or of crid's, should one
    // of its descriptors have been left without the flag).
    close_inherited_on_exec();
    if !detached {
        // The small binary has one thread here and can detach by forking; anything else
        // (crid itself) starts the detached monitor as a new process.
        if running_as_small_binary() {
            match sys::fork_detached_child() {
                Ok(true) => {}
                Ok(false) => return 0,
                Err(e) => {
                    eprintln!("crid monitor: cannot fork the detached monitor: {e}");
                    return 1;
                }
            }
        } else {
            return respawn_detached();
        }
    }
    let spec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<MonitorSpec>(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            report(&Ready {
                pid: None,
                error: Some(format!(
                    "cannot read monitor spec {}: {e}",
                    spec_path.display()
                )),
            });
            return 1;
        }
    };
    match Monitor::start(&spec) {
        Ok(mut m) => {
            report(&Ready {
                pid: Some(m.pid.as_raw()),
                error: None,
            });
            m.run(&spec);
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

/// Name of the small monitor binary looked for next to the running executable.
pub const MONITOR_BINARY: &str = "crid-monitor";

fn running_as_small_binary() -> bool {
    std::env::current_exe().is_ok_and(|e| e.file_name().is_some_and(|n| n == MONITOR_BINARY))
}

/// Starts the detached monitor, not waiting for it: the small `crid-monitor` binary next to
/// this executable when there is one, else this same command line with `--detached`.
fn respawn_detached() -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("crid monitor: cannot find own executable: {e}");
            return 1;
        }
    };
    let small = exe.with_file_name(MONITOR_BINARY);
    let mut cmd = if small.is_file() && exe.file_name() != small.file_name() {
        let mut c = Command::new(small);
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        // Only `--spec FILE` is passed on; the subcommand name is crid's.
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--spec" {
                if let Some(v) = it.next() {
                    c.arg("--spec").arg(v);
                }
            }
        }
        c
    } else {
        let mut c = Command::new(exe);
        c.args(std::env::args_os().skip(1));
        c
    };
    cmd.arg("--detached").env_clear().envs(child_env());
    match cmd.stdin(Stdio::null()).spawn() {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("crid monitor: cannot start the detached monitor: {e}");
            1
        }
    }
}

/// Prints a [`Ready`] line on stdout and keeps it open (a prepared monitor's socket to crid).
fn report_line(ready: &Ready) {
    let mut line = serde_json::to_vec(ready).unwrap_or_default();
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line);
    let _ = out.flush();
}

/// Prints the ready line and detaches stdout (and stdin) from crid.
fn report(ready: &Ready) {
    report_line(ready);
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

struct Monitor {
    pid: Pid,
    /// The read end of the program's exit port (see [`Launch::Command`]), non-blocking.
    exit_port: Option<File>,
    /// The exit status chosen through the exit port, recorded instead of the program's own.
    port_status: Option<i32>,
    stdout: Option<File>,
    stderr: Option<File>,
    signals: SignalFd,
    log: LogFile,
    attach: Option<Attach>,
}

/// The container's stdin and the clients attached to it.
struct Attach {
    listener: std::os::unix::net::UnixListener,
    socket: PathBuf,
    /// Where stdin bytes go (a pipe, or a dup of the pty master); non-blocking.
    stdin: Option<File>,
    /// The pty master, for resizes.
    terminal: Option<File>,
    tty: bool,
    once: bool,
    /// Bytes read from clients, not yet written to `stdin`.
    pending: Vec<u8>,
    /// Close `stdin` once `pending` is written.
    close_after_flush: bool,
    /// Whether a stdin client has connected before (for `once`).
    had_stdin_client: bool,
    clients: Vec<Client>,
}

struct Client {
    stream: std::os::unix::net::UnixStream,
    /// The mode byte, once received.
    mode: Option<u8>,
    /// The first stdin client (its end closes stdin with `once`).
    first: bool,
    /// A partial resize frame.
    partial: Vec<u8>,
}

const MAX_CLIENTS: usize = 16;

impl Attach {
    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.clients.push(Client {
                stream,
                mode: None,
                first: false,
                partial: Vec::new(),
            });
        }
    }

    /// Reads what client `i` sent; false when it is gone.
    fn read_client(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let Some(c) = self.clients.get_mut(i) else {
            return false;
        };
        let n = match c.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                return true;
            }
            Err(_) => return false,
        };
        let mut data = &buf[..n];
        if c.mode.is_none() {
            let Some((&mode, rest)) = data.split_first() else {
                return true;
            };
            match mode {
                ATTACH_STDIN if self.stdin.is_some() => {
                    c.first = !self.had_stdin_client;
                    self.had_stdin_client = true;
                }
                ATTACH_RESIZE if self.terminal.is_some() => {}
                ATTACH_OUTPUT => {}
                _ => return false,
            }
            c.mode = Some(mode);
            data = rest;
        }
        match c.mode {
            // Output clients only listen.
            Some(ATTACH_OUTPUT) => {}
            Some(ATTACH_STDIN) => {
                if self.stdin.is_some() && !self.close_after_flush {
                    self.pending.extend_from_slice(data);
                }
            }
            Some(ATTACH_RESIZE) => {
                c.partial.extend_from_slice(data);
                let frames = c.partial.len() / 4;
                for f in c.partial.chunks_exact(4) {
                    let width = u16::from_be_bytes([f[0], f[1]]);
                    let height = u16::from_be_bytes([f[2], f[3]]);
                    if let Some(t) = &self.terminal {
                        if let Err(e) = sys::set_window_size(t, width, height) {
                            eprintln!("crid monitor: resizing the terminal: {e}");
                        }
                    }
                }
                c.partial.drain(..frames * 4);
            }
            _ => return false,
        }
        true
    }

    /// Sends what the container just wrote to every output client ([`ATTACH_OUTPUT`]); one
    /// that cannot take the whole frame now (too slow, or gone) is dropped.
    fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() || !self.clients.iter().any(|c| c.mode == Some(ATTACH_OUTPUT)) {
            return;
        }
        let Ok(len) = u32::try_from(data.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(OUTPUT_HEADER + data.len());
        frame.push(match stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(data);
        // Highest index first: dropping a client swaps the last one into its place.
        for i in (0..self.clients.len()).rev() {
            let c = &mut self.clients[i];
            if c.mode == Some(ATTACH_OUTPUT)
                && !matches!(c.stream.write(&frame), Ok(n) if n == frame.len())
            {
                self.drop_client(i);
            }
        }
    }

    /// Drops client `i`; the end of the first stdin client closes stdin with `once`.
    fn drop_client(&mut self, i: usize) {
        let c = self.clients.swap_remove(i);
        if c.first && self.once && self.stdin.is_some() {
            if self.tty {
                self.pending.push(TTY_EOF);
            }
            self.close_after_flush = true;
        }
    }

    /// Writes pending bytes to the container's stdin without blocking.
    fn flush(&mut self) {
        let Some(f) = self.stdin.as_mut() else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match f.write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The container closed its stdin.
                    self.pending.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.close_after_flush {
            self.stdin = None;
        }
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn set_nonblocking(fd: &impl AsFd) -> Result<(), String> {
    use nix::fcntl::{FcntlArg, fcntl};
    let flags = fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| e.to_string())?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Makes this process a supervisor: its own session, a child subreaper (so it reaps whatever
/// its child leaves), and the signals it handles blocked and read from the returned signalfd.
fn become_supervisor() -> Result<SignalFd, String> {
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("cannot become a subreaper: {e}"))?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Writes the monitor's pid file and opens the CRI log, once it knows its container.
fn take_container(spec: &MonitorSpec) -> Result<LogFile, String> {
    write_replace(&spec.pid_file, std::process::id().to_string().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", spec.pid_file.display()))?;
    LogFile::open(spec.log_path.as_deref()).map_err(|e| {
        format!(
            "cannot open log file {}: {e}",
            spec.log_path.as_deref().unwrap_or(Path::new("")).display()
        )
    })
}

impl Monitor {
    fn start(spec: &MonitorSpec) -> Result<Monitor, String> {
        let signals = become_supervisor()?;
        let log = take_container(spec)?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
        // The container's stdin: a pipe whose write end the monitor keeps (terminals get
        // their input through the pty master instead).
        let tty_launch = matches!(
            &spec.launch,
            Launch::Runc {
                console_socket: Some(_),
                ..
            }
        );
        let (stdin_r, stdin_w) = match &spec.stdin {
            Some(s) if s.stdin && !tty_launch => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
                (Some(r), Some(File::from(w)))
            }
            _ => (None, None),
        };
        let stdin_stdio = || match &stdin_r {
            Some(r) => r.try_clone().map(Stdio::from).map_err(|e| e.to_string()),
            None => Ok(Stdio::null()),
        };
        let listener = match &spec.stdin {
            Some(s) => {
                let _ = std::fs::remove_file(&s.socket);
                let l = std::os::unix::net::UnixListener::bind(&s.socket)
                    .map_err(|e| format!("attach socket {}: {e}", s.socket.display()))?;
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Some(l)
            }
            None => None,
        };
        let mut tty: Option<File> = None;
        let mut exit_port = None;
        let pid = match &spec.launch {
            Launch::Runc {
                runc,
                root,
                systemd_cgroup,
                bundle,
                container_pid_file,
                runc_log,
                console_socket,
                start,
            } => {
                let console = match console_socket {
                    Some(path) => {
                        let _ = std::fs::remove_file(path);
                        Some((
                            std::os::unix::net::UnixListener::bind(path)
                                .map_err(|e| format!("console socket {}: {e}", path.display()))?,
                            path,
                        ))
                    }
                    None => None,
                };
                let mut cmd = Command::new(runc);
                cmd.env_clear().envs(child_env()).arg("--root").arg(root);
                if *systemd_cgroup {
                    cmd.arg("--systemd-cgroup");
                }
                cmd.arg("--log")
                    .arg(runc_log)
                    .arg("--log-format")
                    .arg("json");
                if *start {
                    cmd.arg("run").arg("--detach");
                } else {
                    cmd.arg("create");
                }
                cmd.arg("--bundle")
                    .arg(bundle)
                    .arg("--pid-file")
                    .arg(container_pid_file);
                if let Some((_, path)) = &console {
                    cmd.arg("--console-socket").arg(path);
                }
                cmd.arg(&spec.id)
                    .stdin(stdin_stdio()?)
                    .stdout(Stdio::from(out_w))
                    .stderr(Stdio::from(err_w));
                let status = cmd
                    .status()
                    .map_err(|e| format!("cannot run {}: {e}", runc.display()))?;
                if !status.success() {
                    let op = if *start { "run" } else { "create" };
                    return Err(format!(
                        "runc {op} failed ({status}): {}",
                        runc_errors(runc_log)
                    ));
                }
                if let Some((listener, path)) = console {
                    // runc has sent the pty master; the terminal is the only output.
                    let master =
                        sys::receive_fd(&listener).map_err(|e| format!("no pty from runc: {e}"))?;
                    let _ = std::fs::remove_file(path);
                    tty = Some(File::from(master));
                }
                read_pid(container_pid_file).ok_or_else(|| {
                    format!("runc wrote no pid to {}", container_pid_file.display())
                })?
            }
            Launch::Command {
                argv,
                env,
                cwd,
                netns,
                cgroup_procs,
                exit_port: port_fd,
                seccomp,
            } => {
                let Some((prog, args)) = argv.split_first() else {
                    return Err("empty command".into());
                };
                let mut cmd = Command::new(prog);
                // Opened here (close-on-exec), used by the child between fork and exec.
                let netns = netns
                    .as_ref()
                    .map(|p| {
                        File::open(p).map_err(|e| format!("network namespace {}: {e}", p.display()))
                    })
                    .transpose()?;
                let procs = cgroup_procs
                    .iter()
                    .map(|p| {
                        open_cgroup_join(p)
                            .map_err(|e| format!("cannot join cgroup {}: {e}", p.display()))
                    })
                    .collect::<Result<Vec<File>, String>>()?;
                if netns.is_some() || !procs.is_empty() {
                    sys::join_before_exec(&mut cmd, netns.map(OwnedFd::from), procs);
                }
                let filters = seccomp
                    .map(|s| s.filters())
                    .transpose()
                    .map_err(|e| format!("seccomp filter: {e}"))?
                    .unwrap_or_default();
                let port = port_fd
                    .map(|fd| {
                        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                            .map_err(|e| format!("exit port: {e}"))?;
                        set_nonblocking(&r)?;
                        exit_port = Some(File::from(r));
                        Ok::<_, String>((w, fd))
                    })
                    .transpose()?;
                if port.is_some() || !filters.is_empty() {
                    sys::confine_before_exec(&mut cmd, port, filters);
                }
                cmd.args(args)
                    .env_clear()
                    .envs(child_env())
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(stdin_stdio()?)
                    .stdout(Stdio::from(out_w))
                    .stderr(Stdio::from(err_w));
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                let child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
                i32::try_from(child.id()).map_err(|e| e.to_string())?
            }
        };
        // Only the container holds the read end now.
        drop(stdin_r);
        let attach = match (listener, &spec.stdin) {
            (Some(listener), Some(s)) => {
                let terminal = match &tty {
                    Some(m) => Some(m.try_clone().map_err(|e| e.to_string())?),
                    None => None,
                };
                let stdin = match (&terminal, stdin_w) {
                    _ if !s.stdin => None,
                    (Some(t), _) => Some(t.try_clone().map_err(|e| e.to_string())?),
                    (None, w) => w,
                };
                // Shared with the master's reader (same open file): pump copes.
                if let Some(f) = &stdin {
                    set_nonblocking(f)?;
                }
                Some(Attach {
                    listener,
                    socket: s.socket.clone(),
                    stdin,
                    tty: terminal.is_some(),
                    terminal,
                    once: s.once,
                    pending: Vec::new(),
                    close_after_flush: false,
                    had_stdin_client: false,
                    clients: Vec::new(),
                })
            }
            _ => None,
        };
        let (stdout, stderr) = match tty {
            Some(master) => (Some(master), None),
            None => (Some(File::from(out_r)), Some(File::from(err_r))),
        };
        Ok(Monitor {
            pid: Pid::from_raw(pid),
            exit_port,
            port_status: None,
            stdout,
            stderr,
            signals,
            log,
            attach,
        })
    }

    /// Copies output to the log until the process exited and its output ended, on short time
    /// slices (see [`sys::short_slices`]): it wakes for a few microseconds of work, a line to
    /// write, which should not wait until a guest's vCPU or the container has used up its
    /// slice (a kernel without them keeps the default). Only now: at a prepared guest's
    /// hand-over the monitor's own work would preempt the VMM's set-up of the guest.
    fn run(&mut self, spec: &MonitorSpec) {
        let _ = sys::short_slices();
        let mut out_split = LineSplitter::new(Stream::Stdout);
        let mut err_split = LineSplitter::new(Stream::Stderr);
        let mut buf = vec![0u8; 32 * 1024];
        let mut exit: Option<(i32, Instant)> = None;
        loop {
            if let Some((_, at)) = exit {
                if (self.stdout.is_none() && self.stderr.is_none())
                    || at.elapsed() >= DRAIN_AFTER_EXIT
                {
                    break;
                }
            }
            let timeout = match exit {
                Some((_, at)) => PollTimeout::try_from(
                    DRAIN_AFTER_EXIT.saturating_sub(at.elapsed()).as_millis() as i32 + 1,
                )
                .unwrap_or(PollTimeout::ZERO),
                None => PollTimeout::NONE,
            };
            let mut attach_ready = AttachReady::default();
            let port_ready;
            let (out_ready, err_ready, sig_ready) = {
                let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                let mut listen_idx = None;
                let mut stdin_idx = None;
                let mut client_idx = Vec::new();
                // Once the container exited, attach clients are no longer served.
                if let Some(a) = self.attach.as_ref().filter(|_| exit.is_none()) {
                    fds.push(PollFd::new(a.listener.as_fd(), PollFlags::POLLIN));
                    listen_idx = Some(fds.len() - 1);
                    if let Some(f) = a.stdin.as_ref().filter(|_| !a.pending.is_empty()) {
                        fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                        stdin_idx = Some(fds.len() - 1);
                    }
                    for (i, c) in a.clients.iter().enumerate() {
                        // Stdin clients wait while earlier input is not written yet.
                        if c.mode == Some(ATTACH_STDIN) && !a.pending.is_empty() {
                            continue;
                        }
                        fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
                        client_idx.push((i, fds.len() - 1));
                    }
                }
                let out_idx = self.stdout.as_ref().map(|f| {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let err_idx = self.stderr.as_ref().map(|f| {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let port_idx = self.exit_port.as_ref().map(|f| {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("crid monitor: poll: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                attach_ready.listener = ready(listen_idx);
                attach_ready.stdin = ready(stdin_idx);
                attach_ready.clients = client_idx
                    .into_iter()
                    .filter(|(_, f)| ready(Some(*f)))
                    .map(|(i, _)| i)
                    .collect();
                port_ready = ready(port_idx);
                (ready(out_idx), ready(err_idx), ready(Some(0)))
            };
            if port_ready {
                self.read_exit_port(exit.is_none());
            }
            if let Some(a) = self.attach.as_mut() {
                // Highest index first: dropping a client swaps the last one into its place.
                for &i in attach_ready.clients.iter().rev() {
                    if !a.read_client(i, &mut buf) {
                        a.drop_client(i);
                    }
                }
                if attach_ready.listener {
                    a.accept();
                }
                if attach_ready.stdin || !a.pending.is_empty() || a.close_after_flush {
                    a.flush();
                }
            }
            let log = &mut self.log;
            let mut emit = |s: Stream, p: bool, c: &[u8]| log.write_record(s, p, c);
            for (ready, pipe, split, stream) in [
                (out_ready, &mut self.stdout, &mut out_split, Stream::Stdout),
                (err_ready, &mut self.stderr, &mut err_split, Stream::Stderr),
            ] {
                if ready {
                    let n = pump(pipe, &mut buf, split, &mut emit);
                    if let Some(a) = self.attach.as_mut() {
                        a.broadcast(stream, &buf[..n]);
                    }
                }
            }
            if sig_ready {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => {
                            if let Some(code) = reap(self.pid) {
                                exit.get_or_insert((code, Instant::now()));
                            }
                        }
                        Ok(Signal::SIGUSR1) => {
                            if let Err(e) = self.log.reopen() {
                                eprintln!("crid monitor: reopening the log: {e}");
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let log = &mut self.log;
        let mut emit = |s: Stream, p: bool, c: &[u8]| log.write_record(s, p, c);
        out_split.finish(&mut emit);
        err_split.finish(&mut emit);
        // A byte the program wrote just before it exited.
        self.read_exit_port(false);
        let code = self.port_status.or(exit.map(|(c, _)| c)).unwrap_or(255);
        let (secs, nanos) = log::now();
        let record = ExitRecord {
            exit_code: code,
            finished_at_ns: secs * 1_000_000_000 + i64::from(nanos),
            oom_killed: spec.oom_cgroup.as_deref().is_some_and(oom_killed),
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        if let Err(e) = write_atomic(&spec.exit_file, &json) {
            eprintln!(
                "crid monitor: cannot write {}: {e}",
                spec.exit_file.display()
            );
            if let Some(fallback) = &spec.exit_fallback {
                if let Err(e) = write_atomic(fallback, &json) {
                    eprintln!("crid monitor: cannot write {}: {e}", fallback.display());
                }
            }
        }
    }

    /// Reads the exit port: its first byte, N, chooses the exit status `(N << 1) | 1` and,
    /// with `kill`, ends the program, which has nothing left to do. Later bytes are ignored;
    /// at the end of the stream the port is closed.
    fn read_exit_port(&mut self, kill: bool) {
        let Some(port) = self.exit_port.as_mut() else {
            return;
        };
        let mut byte = [0u8; 64];
        match port.read(&mut byte) {
            Ok(0) => self.exit_port = None,
            Ok(_) => {
                if self.port_status.is_none() {
                    self.port_status = Some((i32::from(byte[0]) << 1) | 1);
                    if kill {
                        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
                    }
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.exit_port = None,
        }
    }
}

/// Which attach descriptors `poll` found ready.
#[derive(Default)]
struct AttachReady {
    listener: bool,
    stdin: bool,
    /// Indexes into `Attach::clients`, ascending.
    clients: Vec<usize>,
}

/// Reads what is available from one pipe; closes it at end of stream.
/// Reads once from `pipe` into `buf` and logs it; returns how many bytes it read.
fn pump(
    pipe: &mut Option<File>,
    buf: &mut [u8],
    split: &mut LineSplitter,
    emit: &mut dyn FnMut(Stream, bool, &[u8]),
) -> usize {
    let Some(f) = pipe.as_mut() else { return 0 };
    match f.read(buf) {
        Ok(0) => *pipe = None,
        Ok(n) => {
            split.push(&buf[..n], emit);
            return n;
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::Interrupted
                || e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => *pipe = None,
    }
    0
}

/// Reaps every exited child; returns the exit code of `pid` if it was among them.
fn reap(pid: Pid) -> Option<i32> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) => {
                if p == pid {
                    found = Some(code);
                }
            }
            Ok(WaitStatus::Signaled(p, sig, _)) => {
                if p == pid {
                    found = Some(128 + sig as i32);
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

/// Whether the OOM killer killed a process of the cgroup at `dir`.
pub fn oom_killed(dir: &Path) -> bool {
    ["memory.oom_control", "memory.events"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f)).is_ok_and(|text| {
            text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

/// The error messages in runc's JSON log.
pub fn runc_errors(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect();
    if msgs.is_empty() {
        text.lines().last().unwrap_or("no error logged").to_owned()
    } else {
        msgs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 hierarchy is joined through `tasks` (the thread alone, no threadgroup lock), a
    /// cgroup2 one through `cgroup.procs`.
    #[test]
    fn a_child_joins_v1_through_tasks_and_cgroup2_through_procs() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let v2 = dir.path().join("v2");
        for d in [&v1, &v2] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(v1.join("tasks"), "").unwrap();
        open_cgroup_join(&v1.join("cgroup.procs"))
            .unwrap()
            .write_all(b"0")
            .unwrap();
        open_cgroup_join(&v2.join("cgroup.procs"))
            .unwrap()
            .write_all(b"0")
            .unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(v1.join("tasks")), "0");
        assert_eq!(read(v1.join("cgroup.procs")), "");
        assert_eq!(read(v2.join("cgroup.procs")), "0");
        assert!(open_cgroup_join(&dir.path().join("none/cgroup.procs")).is_err());
    }

    #[test]
    fn oom_counters_are_read() {
        let d = tempfile::tempdir().unwrap();
        assert!(!oom_killed(d.path()));
        std::fs::write(
            d.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert!(!oom_killed(d.path()));
        std::fs::write(d.path().join("memory.events"), "low 0\noom 1\noom_kill 2\n").unwrap();
        assert!(oom_killed(d.path()));
    }

    #[test]
    fn runc_log_errors_are_extracted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.json");
        std::fs::write(
            &p,
            "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
        )
        .unwrap();
        assert_eq!(runc_errors(&p), "exec: \"nope\": not found");
    }

    #[test]
    fn exit_records_roundtrip_atomically() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit.json");
        assert!(ExitRecord::load(&p).is_none());
        let r = ExitRecord {
            exit_code: 42,
            finished_at_ns: 7,
            oom_killed: false,
        };
        write_atomic(&p, &serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(ExitRecord::load(&p), Some(r));
        assert!(!d.path().join("exit.json.tmp").exists());
    }
}
