//! The kernel operations of the image store: an exclusive `flock` on the metadata lock file, so
//! `crid images import` and a running daemon never write the metadata at the same time.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::ImageError;

/// Held while the metadata is read-modified-written; released on drop.
pub(crate) struct FileLock {
    _lock: Flock<File>,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is held.
    pub(crate) fn exclusive(path: &Path) -> Result<FileLock, ImageError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ImageError::io(path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| ImageError::io(path, std::io::Error::from(errno)))?;
        Ok(FileLock { _lock: lock })
    }
}
