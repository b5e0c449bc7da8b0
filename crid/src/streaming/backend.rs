//! What the streaming server needs from the rest of crid: a running process's stdio for exec and
//! attach, and a pod's network namespace for port forwarding.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use super::StreamError;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An exec request as the CRI gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An attach request as the CRI gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// How a process's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// The session failed (could not start, lost its process, ...).
    Error(String),
}

/// Changes the window size of a session's terminal.
pub trait Resize: Send + Sync {
    fn resize(&self, width: u16, height: u16) -> io::Result<()>;
}

/// A terminal master whose window size can be set.
pub struct PtyResize(pub OwnedFd);

impl Resize for PtyResize {
    fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        sandbox::monitor::set_window_size(&self.0, width, height)
    }
}

/// The live stdio of an exec'd process or an attached container. Absent streams were not
/// requested (or, with a TTY, stderr is merged into stdout).
pub struct Session {
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub resize: Option<Box<dyn Resize>>,
    /// Resolves when the process ends (exec) or the attachment ends (attach).
    pub exit: BoxFuture<Exit>,
}

/// A session over a child spawned with piped (or null) stdio: its pipes become the session's
/// streams, and `exit` turns what is left of the child into the session's exit future.
pub fn piped_session(
    mut child: tokio::process::Child,
    exit: impl FnOnce(tokio::process::Child) -> BoxFuture<Exit>,
) -> Session {
    Session {
        stdin: child
            .stdin
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>),
        stdout: child
            .stdout
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>),
        stderr: child
            .stderr
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>),
        resize: None,
        exit: exit(child),
    }
}

/// Wraps a pseudo-terminal master as a session's stdin/stdout and resize handle.
pub fn pty_session(master: OwnedFd, stdin: bool, exit: BoxFuture<Exit>) -> io::Result<Session> {
    super::sys::set_nonblocking(&master)?;
    let reader = master.try_clone()?;
    let resize = master.try_clone()?;
    let stdin: Option<Pin<Box<dyn AsyncWrite + Send>>> = if stdin {
        Some(Box::pin(
            tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(master)?,
        ))
    } else {
        None
    };
    Ok(Session {
        stdin,
        stdout: Some(Box::pin(PtyReader(
            tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(reader)?,
        ))),
        stderr: None,
        resize: Some(Box::new(PtyResize(resize))),
        exit,
    })
}

/// A terminal master reader that reports the hang-up (EIO once every slave is closed) as EOF.
struct PtyReader(tokio::net::unix::pipe::Receiver);

impl AsyncRead for PtyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// The runtime side of the streaming server.
#[tonic::async_trait]
pub trait StreamBackend: Send + Sync {
    /// Checked when the CRI request arrives, before a URL is handed out.
    async fn check_exec(&self, spec: &ExecSpec) -> Result<(), StreamError>;
    async fn check_attach(&self, spec: &AttachSpec) -> Result<(), StreamError>;
    /// Starts the command; its stdio become the session.
    async fn exec(&self, spec: ExecSpec) -> Result<Session, StreamError>;
    /// Connects to the container's own stdio.
    async fn attach(&self, spec: AttachSpec) -> Result<Session, StreamError>;
    /// The network namespace (a bind-mounted nsfs file or /proc/PID/ns/net) of a pod.
    async fn pod_netns(&self, pod_id: &str) -> Result<PathBuf, StreamError>;
}

/// Test backend: runs commands on the host (the "container id" is ignored) and forwards ports
/// into the namespace of `netns` (e.g. `/proc/self/ns/net`).
#[cfg(test)]
pub mod host {
    use std::process::Stdio;

    use super::*;

    pub struct HostBackend {
        pub netns: PathBuf,
    }

    fn spawn_error(e: io::Error) -> StreamError {
        StreamError::Backend(format!("cannot start command: {e}"))
    }

    fn exit_of(mut child: tokio::process::Child) -> BoxFuture<Exit> {
        Box::pin(async move {
            match child.wait().await {
                Ok(s) => match s.code() {
                    Some(c) => Exit::Code(c),
                    None => Exit::Code(
                        128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0),
                    ),
                },
                Err(e) => Exit::Error(e.to_string()),
            }
        })
    }

    #[tonic::async_trait]
    impl StreamBackend for HostBackend {
        async fn check_exec(&self, spec: &ExecSpec) -> Result<(), StreamError> {
            if spec.container_id == "missing" {
                return Err(StreamError::NotFound {
                    what: "container",
                    id: spec.container_id.clone(),
                });
            }
            Ok(())
        }
        async fn check_attach(&self, _spec: &AttachSpec) -> Result<(), StreamError> {
            Ok(())
        }
        async fn exec(&self, spec: ExecSpec) -> Result<Session, StreamError> {
            let (prog, args) = spec
                .cmd
                .split_first()
                .ok_or_else(|| StreamError::InvalidArgument("empty command".into()))?;
            let mut cmd = tokio::process::Command::new(prog);
            cmd.args(args).kill_on_drop(true);
            if spec.tty {
                let (master, slave) = super::super::sys::openpty().map_err(spawn_error)?;
                cmd.stdin(Stdio::from(slave.try_clone().map_err(spawn_error)?))
                    .stdout(Stdio::from(slave.try_clone().map_err(spawn_error)?))
                    .stderr(Stdio::from(slave));
                let child = cmd.spawn().map_err(spawn_error)?;
                // The command's copies of the slave are the only ones left open.
                drop(cmd);
                return pty_session(master, spec.stdin, exit_of(child)).map_err(spawn_error);
            }
            let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(pipe(spec.stdin))
                .stdout(pipe(spec.stdout))
                .stderr(pipe(spec.stderr));
            let child = cmd.spawn().map_err(spawn_error)?;
            Ok(piped_session(child, exit_of))
        }
        async fn attach(&self, spec: AttachSpec) -> Result<Session, StreamError> {
            // "Attaching" to a fresh shell is enough to exercise the protocol.
            self.exec(ExecSpec {
                container_id: spec.container_id,
                cmd: vec!["sh".into()],
                tty: spec.tty,
                stdin: spec.stdin,
                stdout: spec.stdout,
                stderr: spec.stderr,
            })
            .await
        }
        async fn pod_netns(&self, pod_id: &str) -> Result<PathBuf, StreamError> {
            match pod_id {
                "missing" => Err(StreamError::NotFound {
                    what: "pod sandbox",
                    id: pod_id.to_owned(),
                }),
                "stopped" => Err(StreamError::FailedPrecondition(format!(
                    "pod sandbox {pod_id} is not ready"
                ))),
                "broken" => Err(StreamError::Backend("cannot read the pod record".into())),
                _ => Ok(self.netns.clone()),
            }
        }
    }
}
