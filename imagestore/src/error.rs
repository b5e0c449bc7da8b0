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
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::NotFound { .. } => ErrorKind::NotFound,
            ImageError::InvalidReference { .. } => ErrorKind::InvalidArgument,
            ImageError::Io { source, .. } if source.raw_os_error() == Some(28) => {
                ErrorKind::ResourceExhausted
            }
            ImageError::Io { .. } => ErrorKind::Internal,
        }
    }
}
