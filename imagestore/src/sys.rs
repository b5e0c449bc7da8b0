//! The kernel operations of the image store: an exclusive `flock` on the metadata lock file, so
//! `crid images import` and a running daemon never write the metadata at the same time; and
//! [`replace_unsynced`], the atomic replacement of a file that need not survive a power loss.

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

/// Puts the complete file `tmp` in the place of `path` in one step, as `rename` does, for a
/// file that is not synced to disk (the leases): both names are swapped (`RENAME_EXCHANGE`),
/// then the old file, now at `tmp`, is removed. A plain `rename` over an existing file on ext4
/// (`auto_da_alloc`, the default) first starts the write-back of `tmp`'s data, in the caller's
/// time: 0.6 ms median and several ms at the 90th percentile on this project's busy host,
/// against 0.3 and 0.35 ms for the swap and the removal. Where there is nothing to swap with
/// (the first write) or the file system cannot swap, it renames.
pub(crate) fn replace_unsynced(tmp: &Path, path: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, tmp, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => {
            // The old leases; a leftover is only a stale temporary file.
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            std::fs::rename(tmp, path)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_unsynced_puts_the_new_file_in_place_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        let tmp = dir.path().join(".leases.tmp");
        // Nothing to swap with yet: a rename.
        std::fs::write(&tmp, "first").unwrap();
        replace_unsynced(&tmp, &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        assert!(!tmp.exists());
        // An existing file: swapped, and the old one removed.
        std::fs::write(&tmp, "second").unwrap();
        replace_unsynced(&tmp, &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        assert!(!tmp.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
