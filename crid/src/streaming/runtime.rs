//! The streaming backend of the daemon: exec through `runc exec` (pipes, or a pseudo-terminal
//! of crid's that runc proxies to the container's), port forwarding into the pod's pinned
//! network namespace.
//! Attach needs the monitor to expose the container's stdio, which it does not yet.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use sandbox::container::{Backend, ContainerManager, ContainerState};
use sandbox::pod::PodManager;
use tokio::io::{AsyncRead, AsyncWrite};

use super::StreamError;
use super::backend::{
    AttachSpec, BoxFuture, ExecSpec, Exit, Resize, Session, StreamBackend, pty_session,
};

pub struct RuntimeBackend {
    pub pods: Arc<PodManager>,
    pub containers: Arc<ContainerManager>,
    pub runc: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    pub systemd_cgroup: bool,
    /// Where exec process files and console sockets are made.
    pub work_dir: PathBuf,
}

fn sandbox_error(e: sandbox::SandboxError, id: &str) -> StreamError {
    match e.kind() {
        imagestore::ErrorKind::NotFound => StreamError::NotFound {
            what: "container",
            id: id.to_owned(),
        },
        imagestore::ErrorKind::FailedPrecondition => StreamError::FailedPrecondition(e.to_string()),
        imagestore::ErrorKind::InvalidArgument => StreamError::InvalidArgument(e.to_string()),
        imagestore::ErrorKind::Unimplemented => StreamError::Unimplemented(e.to_string()),
        _ => StreamError::Backend(e.to_string()),
    }
}

fn io_error(what: &str, e: std::io::Error) -> StreamError {
    StreamError::Backend(format!("{what}: {e}"))
}

impl RuntimeBackend {
    fn running_runc_container(&self, id: &str) -> Result<(), StreamError> {
        let r = self.containers.get(id).map_err(|e| sandbox_error(e, id))?;
        if r.state != ContainerState::Running {
            return Err(StreamError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if r.backend != Backend::Runc {
            return Err(StreamError::Unimplemented(format!(
                "streaming into container {id} (not a runc container)"
            )));
        }
        Ok(())
    }

    fn runc_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.runc);
        cmd.arg("--root").arg(&self.runc_root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.kill_on_drop(false);
        cmd
    }
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
        super::sys::set_window_size(&self.master, width, height)?;
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
        self.running_runc_container(&spec.container_id)
    }

    async fn check_attach(&self, spec: &AttachSpec) -> Result<(), StreamError> {
        self.containers
            .get(&spec.container_id)
            .map_err(|e| sandbox_error(e, &spec.container_id))?;
        Err(StreamError::Unimplemented(
            "attach (the container monitor does not expose the container's stdio yet)".into(),
        ))
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Session, StreamError> {
        let id = spec.container_id.as_str();
        self.running_runc_container(id)?;
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

        let mut cmd = self.runc_command();
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
        let mut child = cmd
            .spawn()
            .map_err(|e| io_error("cannot run runc exec", e))?;
        let stdin = child
            .stdin
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>);
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>);
        Ok(Session {
            stdin,
            stdout,
            stderr,
            resize: None,
            exit: exit_of(child, cleanup),
        })
    }

    async fn attach(&self, spec: AttachSpec) -> Result<Session, StreamError> {
        self.check_attach(&spec).await?;
        Err(StreamError::Unimplemented("attach".into()))
    }

    async fn pod_netns(&self, pod_id: &str) -> Result<PathBuf, StreamError> {
        let pod = self.pods.get(pod_id).map_err(|e| match e.kind() {
            imagestore::ErrorKind::NotFound => StreamError::NotFound {
                what: "pod sandbox",
                id: pod_id.to_owned(),
            },
            _ => StreamError::Backend(e.to_string()),
        })?;
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
