//! The streaming backend of the daemon: exec through the container's OCI runtime (`runc exec` or
//! `crun exec`: pipes, or a pseudo-terminal of crid's that the runtime proxies to the
//! container's), port forwarding into the pod's pinned
//! network namespace. Attach follows the container's CRI log, which the monitor writes, for
//! output, and sends stdin and terminal resizes to the monitor's attach socket (see
//! `sandbox::monitor`), so attaching works across crid restarts.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use sandbox::container::{ContainerManager, ContainerState};
use sandbox::pod::PodManager;
use tokio::io::{AsyncRead, AsyncWrite};

use super::StreamError;
use super::backend::{
    AttachSpec, BoxFuture, ExecSpec, Exit, Resize, Session, StreamBackend, piped_session,
    pty_session,
};

pub struct RuntimeBackend {
    pub pods: Arc<PodManager>,
    pub containers: Arc<ContainerManager>,
    /// Where exec process files and console sockets are made.
    pub work_dir: PathBuf,
}

fn io_error(what: &str, e: std::io::Error) -> StreamError {
    StreamError::Backend(format!("{what}: {e}"))
}

impl RuntimeBackend {
    /// The OCI runtime of a running runc-backend container.
    fn running_runc_container(&self, id: &str) -> Result<sandbox::runc::Runc, StreamError> {
        let r = self.containers.get(id)?;
        if r.state != ContainerState::Running {
            return Err(StreamError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        self.containers.oci_runtime_of(id)?.ok_or_else(|| {
            StreamError::Unimplemented(format!(
                "streaming into container {id} (not an OCI runtime container)"
            ))
        })
    }
}

fn runc_command(runc: &sandbox::runc::Runc) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&runc.binary);
    cmd.env_clear()
        .envs(sandbox::monitor::child_env())
        .arg("--root")
        .arg(&runc.root);
    if runc.systemd_cgroup {
        cmd.arg("--systemd-cgroup");
    }
    cmd.kill_on_drop(false);
    cmd
}

fn random_tag() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Resizes the terminal runc reads its size from, then tells runc (SIGWINCH) to copy the
/// size to the container's terminal.
struct RuncResize {
    master: std::os::fd::OwnedFd,
    runc_pid: Option<u32>,
}

impl Resize for RuncResize {
    fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        sandbox::monitor::set_window_size(&self.master, width, height)?;
        if let Some(pid) = self.runc_pid {
            super::sys::signal_winch(pid)?;
        }
        Ok(())
    }
}

/// Removes the per-exec files when the session ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn exit_of(mut child: tokio::process::Child, cleanup: Cleanup) -> BoxFuture<Exit> {
    Box::pin(async move {
        let _cleanup = cleanup;
        match child.wait().await {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                Exit::Code(
                    s.code()
                        .or_else(|| s.signal().map(|n| 128 + n))
                        .unwrap_or(255),
                )
            }
            Err(e) => Exit::Error(format!("runc exec: {e}")),
        }
    })
}

#[tonic::async_trait]
impl StreamBackend for RuntimeBackend {
    async fn check_exec(&self, spec: &ExecSpec) -> Result<(), StreamError> {
        self.running_runc_container(&spec.container_id).map(drop)
    }

    async fn check_attach(&self, spec: &AttachSpec) -> Result<(), StreamError> {
        let id = spec.container_id.as_str();
        let r = self.containers.get(id)?;
        if r.state != ContainerState::Running {
            return Err(StreamError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if spec.stdin && !r.config.stdin {
            return Err(StreamError::FailedPrecondition(format!(
                "container {id} was not created with stdin"
            )));
        }
        if spec.stdin && !self.containers.supports_exec(id)? {
            return Err(StreamError::Unimplemented(format!(
                "attaching stdin to container {id} (not a runc container)"
            )));
        }
        // Output comes from the CRI log, or from the monitor for a container without one.
        let socket = self.containers.attach_socket_of(id)?;
        if r.log_path.is_none() && socket.is_none() {
            return Err(StreamError::FailedPrecondition(format!(
                "container {id} has neither a log nor a monitor to attach to"
            )));
        }
        Ok(())
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Session, StreamError> {
        let id = spec.container_id.as_str();
        let runc = self.running_runc_container(id)?;
        let oci = self
            .containers
            .spec_json(id)
            .ok_or_else(|| StreamError::Backend(format!("the OCI spec of {id} is missing")))?;
        let mut process = oci["process"].clone();
        process["args"] = serde_json::json!(spec.cmd);
        process["terminal"] = serde_json::json!(spec.tty);
        std::fs::create_dir_all(&self.work_dir)
            .map_err(|e| io_error("cannot create the exec directory", e))?;
        let tag = random_tag();
        let process_path = self.work_dir.join(format!("exec-{tag}.json"));
        std::fs::write(&process_path, process.to_string())
            .map_err(|e| io_error("cannot write the exec process", e))?;
        let cleanup = Cleanup(vec![process_path.clone()]);

        let mut cmd = runc_command(&runc);
        cmd.arg("exec").arg("--process").arg(&process_path);
        if spec.tty {
            // runc only takes a console socket when it detaches, which would lose the exit
            // code; instead runc gets a terminal of ours as its stdio, proxies it to the
            // terminal it makes in the container, and mirrors its size on SIGWINCH.
            let (master, slave) =
                super::sys::openpty().map_err(|e| io_error("cannot open a terminal", e))?;
            cmd.arg("--tty").arg(id);
            let dup = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| io_error("cannot duplicate the terminal", e))
            };
            cmd.stdin(dup(&slave)?)
                .stdout(dup(&slave)?)
                .stderr(Stdio::from(slave));
            let child = cmd
                .spawn()
                .map_err(|e| io_error("cannot run runc exec", e))?;
            // The command held the only other copies of the slave; runc has them now.
            drop(cmd);
            let runc_pid = child.id();
            let resize_fd = master
                .try_clone()
                .map_err(|e| io_error("cannot duplicate the terminal", e))?;
            let mut session = pty_session(master, spec.stdin, exit_of(child, cleanup))
                .map_err(|e| io_error("cannot use the terminal", e))?;
            session.resize = Some(Box::new(RuncResize {
                master: resize_fd,
                runc_pid,
            }));
            return Ok(session);
        }
        cmd.arg(id);
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(spec.stdin))
            .stdout(pipe(spec.stdout))
            .stderr(pipe(spec.stderr));
        let child = cmd
            .spawn()
            .map_err(|e| io_error("cannot run runc exec", e))?;
        Ok(piped_session(child, |child| exit_of(child, cleanup)))
    }

    async fn attach(&self, spec: AttachSpec) -> Result<Session, StreamError> {
        self.check_attach(&spec).await?;
        let id = spec.container_id.clone();
        let record = self.containers.get(&id)?;
        let socket = self.containers.attach_socket_of(&id)?;
        let stdin = match (&socket, spec.stdin) {
            (Some(path), true) => Some(
                connect_attach(path, sandbox::monitor::ATTACH_STDIN)
                    .await
                    .map_err(|e| io_error("cannot reach the container's stdin", e))?,
            ),
            _ => None,
        };
        let resize = match (&socket, spec.tty && record.config.tty) {
            (Some(path), true) => connect_attach(path, sandbox::monitor::ATTACH_RESIZE)
                .await
                .ok()
                .and_then(|s| s.into_std().ok())
                .map(|s| Box::new(MonitorResize(std::sync::Mutex::new(s))) as Box<dyn Resize>),
            _ => None,
        };
        // The monitor owns the container's output and writes it to the CRI log; attaching
        // follows that log from its current end, so it also works across crid restarts. A
        // container without a log has its output sent by the monitor itself.
        let (out_w, out_r) = tokio::io::duplex(64 * 1024);
        let (err_w, err_r) = tokio::io::duplex(64 * 1024);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let out_w = spec.stdout.then_some(out_w);
        let err_w = spec.stderr.then_some(err_w);
        match (record.log_path, &socket) {
            (Some(log), _) => {
                let containers = self.containers.clone();
                tokio::spawn(async move {
                    follow_log(&log, &containers, &id, out_w, err_w, &done_tx).await;
                    let _ = done_tx.send(());
                });
            }
            (None, Some(path)) => {
                let output = connect_attach(path, sandbox::monitor::ATTACH_OUTPUT)
                    .await
                    .map_err(|e| io_error("cannot reach the container's output", e))?;
                tokio::spawn(async move {
                    let mut done_tx = done_tx;
                    tokio::select! {
                        () = forward_output(output, out_w, err_w) => {}
                        () = done_tx.closed() => {}
                    }
                    let _ = done_tx.send(());
                });
            }
            (None, None) => {
                return Err(StreamError::FailedPrecondition(format!(
                    "container {id} has neither a log nor a monitor to attach to"
                )));
            }
        }
        Ok(Session {
            stdin: stdin.map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>),
            stdout: spec
                .stdout
                .then(|| Box::pin(out_r) as Pin<Box<dyn AsyncRead + Send>>),
            stderr: spec
                .stderr
                .then(|| Box::pin(err_r) as Pin<Box<dyn AsyncRead + Send>>),
            resize,
            exit: Box::pin(async move {
                let _ = done_rx.await;
                Exit::Code(0)
            }),
        })
    }

    async fn pod_netns(&self, pod_id: &str) -> Result<PathBuf, StreamError> {
        let pod = self.pods.get(pod_id)?;
        if pod.state != sandbox::pod::PodState::Ready {
            return Err(StreamError::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        // No namespace of its own means the host's (host-network pods).
        Ok(pod
            .paths
            .netns
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net")))
    }
}

/// Connects to a monitor's attach socket in `mode` (`sandbox::monitor::ATTACH_*`).
async fn connect_attach(
    path: &std::path::Path,
    mode: u8,
) -> std::io::Result<tokio::net::UnixStream> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(&[mode]).await?;
    Ok(s)
}

/// Sends window sizes to the monitor, which applies them to the container's terminal.
struct MonitorResize(std::sync::Mutex<std::os::unix::net::UnixStream>);

impl Resize for MonitorResize {
    fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        use std::io::Write;
        let mut frame = [0u8; 4];
        frame[..2].copy_from_slice(&width.to_be_bytes());
        frame[2..].copy_from_slice(&height.to_be_bytes());
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Four bytes to a socket the monitor drains: this does not block for long.
        s.set_nonblocking(false)?;
        s.write_all(&frame)
    }
}

/// Longest output frame accepted.
const MAX_OUTPUT_FRAME: usize = 1 << 20;

/// Copies the monitor's output frames (`sandbox::monitor::ATTACH_OUTPUT`) to `stdout` and
/// `stderr` until the monitor ends the stream (the container ended) or the reader leaves.
async fn forward_output(
    mut from: tokio::net::UnixStream,
    mut stdout: Option<tokio::io::DuplexStream>,
    mut stderr: Option<tokio::io::DuplexStream>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut header = [0u8; sandbox::monitor::OUTPUT_HEADER];
    let mut data = Vec::new();
    while from.read_exact(&mut header).await.is_ok() {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        // The monitor reads at most 32 KiB at once; anything longer is not a frame.
        if len > MAX_OUTPUT_FRAME {
            return;
        }
        data.resize(len, 0);
        if from.read_exact(&mut data).await.is_err() {
            return;
        }
        let target = match header[0] {
            1 => &mut stdout,
            2 => &mut stderr,
            _ => return,
        };
        if let Some(w) = target {
            if w.write_all(&data).await.is_err() {
                // The client left.
                return;
            }
        }
    }
}

/// How often an attached log is checked for new output and the container for its end.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies what the container writes to its CRI log (`<time> <stream> <P|F> <content>` lines)
/// from now on to `stdout`/`stderr`, until the container stops running or the reader leaves.
async fn follow_log(
    path: &std::path::Path,
    containers: &ContainerManager,
    id: &str,
    mut stdout: Option<tokio::io::DuplexStream>,
    mut stderr: Option<tokio::io::DuplexStream>,
    session: &tokio::sync::oneshot::Sender<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    let open = |path: std::path::PathBuf| async move { tokio::fs::File::open(path).await.ok() };
    let mut file = open(path.to_owned()).await;
    let mut pos = match &mut file {
        Some(f) => f.seek(std::io::SeekFrom::End(0)).await.unwrap_or(0),
        None => 0,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let running = containers
            .get(id)
            .map(|r| r.state == ContainerState::Running)
            .unwrap_or(false);
        // Rotation (kubelet renames the log and asks for a reopen) or truncation: start over.
        let len = tokio::fs::metadata(path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if len < pos || file.is_none() {
            file = open(path.to_owned()).await;
            pos = 0;
            pending.clear();
        }
        if let Some(f) = &mut file {
            loop {
                match f.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pos += n as u64;
                        pending.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let mut parts = line[..line.len() - 1].splitn(4, |b| *b == b' ');
            let (_time, stream, tag) = (parts.next(), parts.next(), parts.next());
            let content = parts.next().unwrap_or_default();
            let target = match stream {
                Some(b"stdout") => &mut stdout,
                Some(b"stderr") => &mut stderr,
                _ => continue,
            };
            if let Some(w) = target {
                let mut data = content.to_vec();
                if tag != Some(b"P") {
                    data.push(b'\n');
                }
                if w.write_all(&data).await.is_err() {
                    // The client left.
                    return;
                }
            }
        }
        // The session is gone (client left) or the container ended.
        if !running || session.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}
