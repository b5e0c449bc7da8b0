//! NRI, the Node Resource Interface of containerd and CRI-O, on the runtime's side: the
//! socket external plugins connect to ([`Adaptation`]), their registration, configuration and
//! synchronization with the current pods and containers, lifecycle events fanned out to them
//! in index order, the adjustments they make to containers being created, and the container
//! updates they ask for. The messages ([`api`]) and the multiplexed ttrpc transport
//! ([`transport`], also usable by a plugin) are written here; what pods and containers are is
//! the caller's business: it converts its records to [`api`] messages and applies what comes
//! back.

pub mod adaptation;
pub mod adjust;
pub mod api;
pub mod transport;

use std::path::PathBuf;

pub use adaptation::{Adaptation, RuntimeState, Settings, SyncState};

#[derive(Debug, thiserror::Error)]
pub enum NriError {
    /// The NRI socket cannot be set up.
    #[error("NRI socket {path:?}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A connection did not register as a plugin.
    #[error("NRI plugin registration: {0}")]
    Registration(String),
    /// A plugin failed a call or refused an event.
    #[error("NRI plugin {plugin}: {reason}")]
    Plugin { plugin: String, reason: String },
}
