//! crid's streaming server, what `Exec`, `Attach` and `PortForward` hand out URLs of (as
//! kubelet's CRI streaming server does): an HTTP server on a configurable address (loopback by
//! default) that serves each single-use URL once, upgrading to SPDY/3.1 or WebSocket and
//! speaking Kubernetes' remote command and port forward protocols. Processes, terminals and
//! namespaces come from a [`backend::StreamBackend`].

pub mod backend;
mod mux;
mod portforward;
mod remotecommand;
pub mod runtime;
mod server;
mod spdy;
mod sys;
mod token;
mod ws;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use backend::{AttachSpec, ExecSpec};
pub use server::{Server, ServerConfig};
pub use token::Request;

use imagestore::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not supported by this runtime")]
    Unimplemented(String),
    #[error("too many outstanding streaming requests (at most {cap})")]
    TooManyRequests { cap: usize },
    #[error("{0}")]
    Backend(String),
    /// What the container or pod manager refused, with its own kind.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("streaming state lock poisoned")]
    Poisoned,
}

impl StreamError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StreamError::NotFound { .. } => ErrorKind::NotFound,
            StreamError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            StreamError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            StreamError::Unimplemented(_) => ErrorKind::Unimplemented,
            StreamError::TooManyRequests { .. } => ErrorKind::ResourceExhausted,
            StreamError::Sandbox(e) => e.kind(),
            StreamError::Backend(_) | StreamError::Poisoned => ErrorKind::Internal,
        }
    }
}

/// When a connection last moved a frame, for the idle timeout.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Time left before `idle` is reached (at least a few milliseconds, so callers re-check).
    fn remaining(&self, idle: Duration) -> Duration {
        idle.saturating_sub(self.idle_for())
            .max(Duration::from_millis(5))
    }
}

/// Resolves once a connection's `closed` flag is set (or its sender is gone).
async fn wait_closed(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}
