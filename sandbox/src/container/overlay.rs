//! Overlay mount data shared by the container rootfs (`runc.rs`) and image volumes
//! (`image_volume.rs`).

use std::path::{Path, PathBuf};

use crate::SandboxError;

/// The overlay option data must fit a page; longer `lowerdir` lists go through short links.
const MAX_LOWERDIR: usize = 3000;

/// The `lowerdir=` value for `lowers` (top first): their paths joined with `:`, or, when that
/// would not fit the mount data, the same through links `links/0`, `links/1`, … to them.
pub(super) fn lowerdir(lowers: &[PathBuf], links: &Path) -> Result<String, SandboxError> {
    let join = |l: &[PathBuf]| {
        l.iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    };
    let joined = join(lowers);
    if joined.len() <= MAX_LOWERDIR {
        return Ok(joined);
    }
    std::fs::create_dir_all(links).map_err(|e| SandboxError::io(links, e))?;
    let mut short = Vec::with_capacity(lowers.len());
    for (i, l) in lowers.iter().enumerate() {
        let link = links.join(i.to_string());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(l, &link).map_err(|e| SandboxError::io(&link, e))?;
        short.push(link);
    }
    Ok(join(&short))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_lowerdir_goes_through_short_links() {
        let dir = tempfile::tempdir().unwrap();
        let links = dir.path().join("l");
        let short = [PathBuf::from("/a"), PathBuf::from("/b")];
        assert_eq!(lowerdir(&short, &links).unwrap(), "/a:/b");
        assert!(!links.exists());
        let long: Vec<PathBuf> = (0..40)
            .map(|i| dir.path().join(format!("{i}-{}", "x".repeat(100))))
            .collect();
        let value = lowerdir(&long, &links).unwrap();
        assert!(value.len() <= MAX_LOWERDIR, "{value}");
        let parts: Vec<&str> = value.split(':').collect();
        assert_eq!(parts.len(), long.len());
        for (i, (part, layer)) in parts.iter().zip(&long).enumerate() {
            assert_eq!(*part, links.join(i.to_string()).to_str().unwrap());
            assert_eq!(&std::fs::read_link(part).unwrap(), layer);
        }
    }
}
