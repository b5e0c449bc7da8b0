//! Errors of the image service and the kinds every domain crate maps its errors onto.

/// What went wrong, independent of transport. `crid` maps each kind to exactly one gRPC code;
/// the other domain crates reuse this enum so the mapping lives in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unimplemented,
    DeadlineExceeded,
    Cancelled,
    Unavailable,
    ResourceExhausted,
    Internal,
}

/// Errors of the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference} not found")]
    NotFound { reference: String },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("i/o error at {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {registry} cannot be reached: {reason}")]
    RegistryUnavailable { registry: String, reason: String },
    #[error("registry {registry} failed: {reason}")]
    Registry { registry: String, reason: String },
    #[error(
        "pull access to {reference} denied, the repository does not exist or needs credentials"
    )]
    AccessDenied { reference: String },
    #[error("digest mismatch for {expected}: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error("invalid manifest {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("invalid image config {digest}: {reason}")]
    InvalidConfig { digest: String, reason: String },
    #[error("no image for platform {platform} in {reference}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("pulling {reference} was cancelled")]
    Cancelled { reference: String },
    #[error("the deadline for pulling {reference} expired")]
    DeadlineExceeded { reference: String },
    #[error("image {id} is pinned and cannot be removed")]
    Pinned { id: String },
    #[error("image id prefix {prefix} matches more than one image")]
    AmbiguousId { prefix: String },
    #[error("invalid registry configuration {path}: {reason}")]
    HostsConfig {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("image metadata {path} is corrupt")]
    Metadata {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot import {path}: {reason}")]
    Import {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("layer {digest} cannot be unpacked: {reason}")]
    Unpack { digest: String, reason: String },
    #[error("layer entry {path:?} is unsafe: {reason}")]
    UnsafeLayerEntry { path: String, reason: String },
    #[error("layer stream is corrupt: {reason}")]
    CorruptLayer { reason: String },
    #[error("layer exceeds the limit of {limit} {what}")]
    LayerTooLarge { limit: u64, what: String },
    #[error("invalid unikernel image, key {key}: {reason}")]
    InvalidUnikernel { key: String, reason: String },
    #[error("background task failed: {reason}")]
    Task { reason: String },
    /// The error of an operation several callers waited on (one download shared by concurrent
    /// pulls), rendered once with its source chain.
    #[error("{message}")]
    Shared { kind: ErrorKind, message: String },
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::NotFound { .. }
            | ImageError::AccessDenied { .. }
            | ImageError::NoMatchingPlatform { .. } => ErrorKind::NotFound,
            ImageError::InvalidReference { .. }
            | ImageError::InvalidDigest { .. }
            | ImageError::InvalidManifest { .. }
            | ImageError::InvalidConfig { .. }
            | ImageError::AmbiguousId { .. }
            | ImageError::Import { .. }
            | ImageError::Unpack { .. }
            | ImageError::UnsafeLayerEntry { .. }
            | ImageError::CorruptLayer { .. }
            | ImageError::LayerTooLarge { .. }
            | ImageError::InvalidUnikernel { .. } => ErrorKind::InvalidArgument,
            ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::Pinned { .. }
            | ImageError::HostsConfig { .. } => ErrorKind::FailedPrecondition,
            ImageError::RegistryUnavailable { .. } => ErrorKind::Unavailable,
            ImageError::Cancelled { .. } => ErrorKind::Cancelled,
            ImageError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            ImageError::Io { source, .. } if source.raw_os_error() == Some(28) => {
                ErrorKind::ResourceExhausted
            }
            ImageError::Shared { kind, .. } => *kind,
            ImageError::Io { .. }
            | ImageError::Registry { .. }
            | ImageError::Metadata { .. }
            | ImageError::Task { .. } => ErrorKind::Internal,
        }
    }

    /// A copy for every waiter of a shared operation.
    pub(crate) fn shared(&self) -> ImageError {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ImageError::Shared {
            kind: self.kind(),
            message,
        }
    }

    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
}
