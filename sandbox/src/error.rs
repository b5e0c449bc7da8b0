//! The one error type of the sandbox crate and its mapping onto [`ErrorKind`].

use std::path::PathBuf;

use imagestore::ErrorKind;

/// Errors of pods, containers and their backends.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file named by an image (kernel, initrd, block image) is missing, escapes the image's
    /// rootfs or is not a regular file.
    #[error("unikernel file {path:?} in the image: {reason}")]
    ImageFile { path: PathBuf, reason: String },
    /// The monitor binary a hypervisor needs is not installed.
    #[error("hypervisor binary {binary:?} not found (looked in {searched})")]
    MissingBinary { binary: String, searched: String },
    /// The guest or hypervisor cannot run with this configuration.
    #[error("unsupported unikernel configuration: {reason}")]
    UnsupportedGuest { reason: String },
    /// A required accelerator is not usable on this host.
    #[error("accelerator {accelerator} is not usable: {reason}")]
    Accelerator { accelerator: String, reason: String },
    /// Setting up or tearing down a guest's network failed.
    #[error("guest network {op} failed: {reason}")]
    GuestNetwork { op: String, reason: String },
    /// The container's backend cannot do this (e.g. exec in a unikernel: there is no shell).
    #[error("{reason}")]
    Unimplemented { reason: String },
    /// The pod already runs a unikernel container (its tap is live).
    #[error("the pod already runs a unikernel container (tap {tap} is in use); one per pod")]
    PodHasUnikernel { tap: String },
    /// Input the caller supplied is invalid.
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },
    /// No pod (or container) with this id.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The name is reserved by another pod (or container).
    #[error("name {name:?} is already reserved by {id}")]
    AlreadyExists { name: String, id: String },
    /// The operation does not fit the object's current state.
    #[error("{reason}")]
    FailedPrecondition { reason: String },
    /// The image store failed (an image that is not there, a lease not recorded).
    #[error(transparent)]
    Image(#[from] imagestore::ImageError),
    /// Pod networking or namespaces failed; the source names the plugin and its message.
    #[error("pod network")]
    Network(#[source] cni::CniError),
    /// Creating, pinning or removing the pod's namespaces failed; the source names the step
    /// and the namespace's pin.
    #[error("pod namespaces")]
    Namespaces(#[source] cni::CniError),
    /// A step of making a pod's user namespace, or of an id-mapped mount for it, failed.
    #[error("user namespace: {step} at {path}")]
    UserNamespace {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// runc (or the container monitor) failed an operation.
    #[error("runtime {op} failed: {reason}")]
    Runtime { op: String, reason: String },
    /// An image volume cannot be set up. The message starts with the reason kubelet looks for
    /// (`ImageVolumeMountFailed`, cri-api's `ErrImageVolumeMountFailed`); the kind is the cause's.
    #[error("ImageVolumeMountFailed: image volume at {container_path:?}")]
    ImageVolume {
        container_path: String,
        #[source]
        source: Box<SandboxError>,
    },
    /// An operation did not finish in the time it was given (`ExecSync` timeout).
    #[error("{op} timed out after {secs} s")]
    Timeout { op: String, secs: u64 },
    /// A node plugin (NRI) refused a pod or container at a lifecycle hook.
    #[error("{event} refused by a node plugin")]
    Hook {
        event: &'static str,
        #[source]
        source: HookError,
    },
    /// A record on disk cannot be read or written.
    #[error("record {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    /// An operation (usually by runc or a VMM, which report text) failed while the file system
    /// holding `path` was full.
    #[error("{op} failed, the file system of {path} is full: {reason}")]
    DiskFull {
        op: String,
        path: PathBuf,
        reason: String,
    },
    /// A container's root file system is too large to copy into its guest's block root.
    #[error("{reason}")]
    GuestRootTooLarge { reason: String },
    #[error("i/o error at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SandboxError::ImageFile { .. } => ErrorKind::InvalidArgument,
            SandboxError::MissingBinary { .. } => ErrorKind::FailedPrecondition,
            SandboxError::UnsupportedGuest { .. } => ErrorKind::InvalidArgument,
            SandboxError::Accelerator { .. } => ErrorKind::FailedPrecondition,
            SandboxError::GuestNetwork { .. } => ErrorKind::Internal,
            SandboxError::PodHasUnikernel { .. } => ErrorKind::FailedPrecondition,
            SandboxError::Unimplemented { .. } => ErrorKind::Unimplemented,
            SandboxError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            SandboxError::NotFound { .. } => ErrorKind::NotFound,
            SandboxError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            SandboxError::FailedPrecondition { .. } => ErrorKind::FailedPrecondition,
            SandboxError::Image(e) => e.kind(),
            SandboxError::Network(e) | SandboxError::Namespaces(e) => e.kind(),
            SandboxError::UserNamespace { .. } => ErrorKind::Internal,
            SandboxError::Runtime { .. } => ErrorKind::Internal,
            SandboxError::ImageVolume { source, .. } => source.kind(),
            SandboxError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            SandboxError::Hook { .. } => ErrorKind::FailedPrecondition,
            SandboxError::Record { .. } => ErrorKind::Internal,
            SandboxError::DiskFull { .. } | SandboxError::GuestRootTooLarge { .. } => {
                ErrorKind::ResourceExhausted
            }
            SandboxError::Io { source, .. } if source.raw_os_error() == Some(28) => {
                ErrorKind::ResourceExhausted
            }
            SandboxError::Io { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SandboxError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The caller's mistake, `reason` saying which: `INVALID_ARGUMENT`.
pub(crate) fn invalid(reason: impl Into<String>) -> SandboxError {
    SandboxError::InvalidArgument {
        reason: reason.into(),
    }
}

/// Why a hook refused a pod or container: the observer's own error (in `crid`, the NRI
/// plugin's), kept whole. Here rather than in [`crate::hooks`], which depends on this module.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HookError(Box<dyn std::error::Error + Send + Sync>);

impl HookError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> HookError {
        HookError(error.into())
    }
}
