//! Finding a file named by an image (kernel, initrd, block image) in the image's unpacked layer
//! directories, as the merged rootfs would show it, without ever leaving those directories.
//!
//! Layers are searched top-most first, honouring OCI whiteouts (`.wh.NAME` files, `.wh..wh..opq`
//! opaque directories, and overlay-style 0:0 character devices). Symbolic links are followed
//! inside the merged view (absolute targets restart at the rootfs root); a target that climbs
//! above the root, a `..` in the requested path, a loop, or a final entry that is not a regular
//! file is an error.

use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::SandboxError;

const MAX_SYMLINKS: usize = 40;

/// Resolves `rel` (relative to the rootfs root; a leading `/` is allowed) in the layers, given
/// bottom-most first. Returns the host path of a regular file.
pub fn resolve_in_layers(
    layer_dirs_bottom_first: &[PathBuf],
    rel: &Path,
) -> Result<PathBuf, SandboxError> {
    let err = |reason: &str| SandboxError::ImageFile {
        path: rel.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut queue: Vec<OsString> = Vec::new(); // components still to walk, reversed
    for c in rel.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => queue.push(n.to_os_string()),
            Component::ParentDir => return Err(err("the path contains '..'")),
            Component::Prefix(_) => return Err(err("not a rootfs path")),
        }
    }
    if queue.is_empty() {
        return Err(err("the path names the rootfs root"));
    }
    queue.reverse();
    let mut walked: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = queue.pop() {
        walked.push(name);
        let Some((host, meta)) = lookup(layer_dirs_bottom_first, &walked) else {
            return Err(err("not found in the image"));
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(err("too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&host).map_err(|e| SandboxError::io(&host, e))?;
            walked.pop();
            let mut pending: Vec<OsString> = Vec::new();
            for c in target.components() {
                match c {
                    Component::RootDir => {
                        walked.clear();
                        pending.clear();
                    }
                    Component::CurDir => {}
                    Component::ParentDir => {
                        if pending.pop().is_none() && walked.pop().is_none() {
                            return Err(err("a symbolic link points outside the rootfs"));
                        }
                    }
                    Component::Normal(n) => pending.push(n.to_os_string()),
                    Component::Prefix(_) => return Err(err("a symbolic link has a bad target")),
                }
            }
            // Walk the target's components before the rest of the path.
            queue.extend(pending.into_iter().rev());
            continue;
        }
        if queue.is_empty() {
            if ft.is_file() {
                return Ok(host);
            }
            return Err(err("not a regular file"));
        }
        if !ft.is_dir() {
            return Err(err("a path component is not a directory"));
        }
    }
    Err(err("the path resolves to the rootfs root"))
}

fn is_whiteout_device(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// The top-most layer entry for `walked` (each earlier component already a directory in the
/// merged view), or None when absent or whited out. Never follows a host symlink: every
/// prefix must be a real directory inside the layer.
fn lookup(layers: &[PathBuf], walked: &[OsString]) -> Option<(PathBuf, Metadata)> {
    let last = walked.len() - 1;
    'layers: for layer in layers.iter().rev() {
        let mut dir = layer.clone();
        let mut opaque = false;
        for (i, name) in walked.iter().enumerate() {
            let mut wh = OsString::from(".wh.");
            wh.push(name);
            if std::fs::symlink_metadata(dir.join(&wh)).is_ok() {
                return None;
            }
            if i > 0
                && (std::fs::symlink_metadata(dir.join(".wh..wh..opq")).is_ok()
                    || imagestore::unpack::is_opaque(&dir))
            {
                opaque = true;
            }
            let path = dir.join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if is_whiteout_device(&meta) => return None,
                Ok(meta) if i == last => return Some((path, meta)),
                Ok(meta) if meta.file_type().is_dir() => dir = path,
                // A non-directory here hides lower layers' entries beneath it.
                Ok(_) => return None,
                Err(_) => {
                    if opaque {
                        return None;
                    }
                    continue 'layers;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Img {
        _dir: tempfile::TempDir,
        layers: Vec<PathBuf>,
    }

    fn img(n: usize) -> Img {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect();
        for l in &layers {
            std::fs::create_dir_all(l).unwrap();
        }
        Img { _dir: dir, layers }
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn top_most_wins_and_leading_slash() {
        let i = img(2);
        write(&i.layers[0].join("unikernel/kernel"), "old");
        write(&i.layers[1].join("unikernel/kernel"), "new");
        write(&i.layers[0].join("unikernel/initrd"), "rd");
        let k = resolve_in_layers(&i.layers, Path::new("/unikernel/kernel")).unwrap();
        assert_eq!(std::fs::read_to_string(k).unwrap(), "new");
        let r = resolve_in_layers(&i.layers, Path::new("unikernel/initrd")).unwrap();
        assert_eq!(r, i.layers[0].join("unikernel/initrd"));
    }

    #[test]
    fn rejects_dotdot_missing_dirs_and_root() {
        let i = img(1);
        write(&i.layers[0].join("k"), "k");
        for p in ["../k", "a/../k", "/", "", "missing"] {
            let e = resolve_in_layers(&i.layers, Path::new(p)).unwrap_err();
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{p}");
        }
        std::fs::create_dir(i.layers[0].join("d")).unwrap();
        assert!(resolve_in_layers(&i.layers, Path::new("d")).is_err());
        assert!(resolve_in_layers(&i.layers, Path::new("k/x")).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let i = img(2);
        write(&i.layers[0].join("boot/vmlinuz-6"), "kernel");
        symlink("boot/vmlinuz-6", i.layers[1].join("vmlinuz")).unwrap();
        symlink("/boot", i.layers[1].join("b")).unwrap();
        let k = resolve_in_layers(&i.layers, Path::new("vmlinuz")).unwrap();
        assert_eq!(k, i.layers[0].join("boot/vmlinuz-6"));
        let k = resolve_in_layers(&i.layers, Path::new("b/vmlinuz-6")).unwrap();
        assert_eq!(k, i.layers[0].join("boot/vmlinuz-6"));
        // ../.. inside the rootfs is clamped only by failure, never followed out.
        std::fs::create_dir_all(i.layers[1].join("x")).unwrap();
        symlink("../../../etc/passwd", i.layers[1].join("x/esc")).unwrap();
        assert!(resolve_in_layers(&i.layers, Path::new("x/esc")).is_err());
        // An absolute host path is resolved inside the rootfs, where it does not exist.
        symlink("/etc/passwd", i.layers[1].join("abs")).unwrap();
        assert!(resolve_in_layers(&i.layers, Path::new("abs")).is_err());
        // A directory symlink to the host is never followed on the host.
        symlink("/etc", i.layers[1].join("etc")).unwrap();
        assert!(resolve_in_layers(&i.layers, Path::new("etc/passwd")).is_err());
        symlink("loop", i.layers[1].join("loop")).unwrap();
        assert!(resolve_in_layers(&i.layers, Path::new("loop")).is_err());
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers() {
        let i = img(2);
        write(&i.layers[0].join("a/k"), "k");
        write(&i.layers[0].join("o/k"), "k");
        write(&i.layers[1].join("a/.wh.k"), "");
        write(&i.layers[1].join("o/.wh..wh..opq"), "");
        assert!(resolve_in_layers(&i.layers, Path::new("a/k")).is_err());
        assert!(resolve_in_layers(&i.layers, Path::new("o/k")).is_err());
        write(&i.layers[1].join(".wh.a"), "");
        assert!(resolve_in_layers(&i.layers, Path::new("a/k")).is_err());
    }

    #[test]
    fn overlay_format_whiteouts_hide_lower_layers() {
        let i = img(2);
        write(&i.layers[0].join("x/k"), "k");
        write(&i.layers[0].join("o/k"), "k");
        write(&i.layers[1].join("o/other"), "");
        // Opaque directory marked by xattr, as imagestore's unpacking writes it.
        let marked =
            super::super::sys::set_xattr(&i.layers[1].join("o"), c"trusted.overlay.opaque", b"y")
                || super::super::sys::set_xattr(
                    &i.layers[1].join("o"),
                    c"user.overlay.opaque",
                    b"y",
                );
        if marked {
            assert!(resolve_in_layers(&i.layers, Path::new("o/k")).is_err());
        } else {
            eprintln!("skipped the xattr case: the temp filesystem takes no overlay xattrs");
        }
        assert!(resolve_in_layers(&i.layers, Path::new("x/k")).is_ok());
        // A 0:0 character device (needs root to create).
        std::fs::create_dir_all(i.layers[1].join("x")).unwrap();
        let made = std::process::Command::new("mknod")
            .arg(i.layers[1].join("x/k"))
            .args(["c", "0", "0"])
            .status()
            .is_ok_and(|s| s.success());
        if made {
            assert!(resolve_in_layers(&i.layers, Path::new("x/k")).is_err());
        }
    }
}
