//! The image's files and CRI mounts for guests without a shared file system: they are copied
//! into the guest.
//!
//! A `linux` guest booted with an initrd gets, at each start, a private copy of the image's
//! initrd with a second newc cpio archive appended (the kernel unpacks concatenated archives,
//! compressed or not, in order, later entries replacing earlier ones): the image's own root
//! file system (its merged layers, less the kernel, initrd and block files and `urunc.json`:
//! urunc's `mountRootfs` for initrd guests), every CRI mount's files at its container path,
//! plus `/etc/crid/env` with the container's environment as
//! shell `export` lines, which such a guest's init sources: its environment is not put on the
//! kernel command line, which holds 2 KiB and passes init at most 32 variables (kubelet alone
//! adds eight per Service in the namespace), and `/etc/crid/args` with its argv as a `set --`
//! line (the command line keeps the argv too unless it would not fit). The copy is a snapshot taken at `StartContainer`: the guest's
//! writes stay in its memory, and later changes on the host (a ConfigMap update) do not reach
//! it. Read-only mounts are not enforced (the initramfs is one writable tmpfs).
//!
//! A `linux` QEMU guest whose image sets `mountRootfs=true` gets none of this: it mounts its
//! container's root file system, shared over virtiofs (see [`super::virtiofs`]).
//!
//! Other guest types cannot receive files this way (Unikraft, Mirage, Rumprun and Mewz boot
//! without an initramfs, and no tested guest has a 9p or virtiofs driver): their mounts are
//! skipped, with a warning and a note in the container's verbose status, never an error —
//! kubelet adds `/etc/hosts`, `/dev/termination-log` and the service-account token to every
//! container.
//!
//! Bounded: at most [`MAX_BYTES`] of file data and [`MAX_ENTRIES`] entries per container.
//! Symbolic links inside a mounted directory are copied as links (ConfigMap volumes are made
//! of them), never followed; devices, sockets and FIFOs are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use imagestore::{UnikernelInfo, UnikernelType};
use serde::{Deserialize, Serialize};

use crate::error::{SandboxError, invalid};

/// Upper bound of the file data copied into one guest.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Upper bound of the entries (files, directories, links) copied into one guest.
pub const MAX_ENTRIES: usize = 10_000;
/// Where the environment file goes in the guest.
pub const ENV_FILE: &str = "/etc/crid/env";
/// Where the argv file goes in the guest.
pub const ARGS_FILE: &str = "/etc/crid/args";

/// A CRI mount that reaches the guest as copied files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestMount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
}

/// What happened to one CRI mount, for the container's verbose status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountNote {
    pub container_path: String,
    /// `virtiofs` or `9p` (bound into the shared root), `block` (copied into the guest's root
    /// image), `initrd` (copied into the guest's initramfs) or `skipped`.
    pub delivery: String,
    pub note: String,
}

/// Whether the guest can receive files through its initrd.
pub fn takes_files(info: &UnikernelInfo) -> bool {
    info.unikernel_type == UnikernelType::Linux && info.initrd.is_some()
}

/// Checks a mount's container path: absolute, no `..`, no empty name; returns it normalised
/// (without a leading `/`, `.` components dropped).
fn guest_path(p: &str) -> Result<String, SandboxError> {
    let bad = |why: &str| invalid(format!("mount container path {p:?} {why}"));
    if !p.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => parts.push(n.to_str().ok_or_else(|| bad("is not UTF-8"))?),
            Component::ParentDir | Component::Prefix(_) => return Err(bad("contains '..'")),
        }
    }
    if parts.is_empty() {
        return Err(bad("is the root"));
    }
    Ok(parts.join("/"))
}

/// Writes `out` = `base` followed by a newc archive holding the image's root file system
/// (`layers`, bottom-most first, without the `skip` paths: the kernel, initrd and block files
/// and `urunc.json`), the environment and argv files and `mounts`, in that order (later entries
/// win).
pub fn build_initrd(
    base: &Path,
    layers: &[PathBuf],
    skip: &[String],
    mounts: &[GuestMount],
    env: &[(String, String)],
    argv: &[String],
    out: &Path,
) -> Result<(), SandboxError> {
    let mut archive = Archive::default();
    let skip: BTreeSet<String> = skip
        .iter()
        .filter_map(|p| guest_path(&format!("/{}", p.trim_start_matches('/'))).ok())
        .collect();
    archive.rootfs(layers, &skip)?;
    archive.file(&guest_path(ENV_FILE)?, 0o644, &env_file(env).into_bytes())?;
    archive.file(
        &guest_path(ARGS_FILE)?,
        0o644,
        &args_file(argv).into_bytes(),
    )?;
    for m in mounts {
        let dest = guest_path(&m.container_path)?;
        let meta =
            std::fs::metadata(&m.host_path).map_err(|e| SandboxError::io(&m.host_path, e))?;
        if meta.is_dir() {
            archive.tree(&m.host_path, &dest)?;
        } else if meta.is_file() {
            let data = read_bounded(&m.host_path, archive.bytes)?;
            archive.file(&dest, mode_of(&meta), &data)?;
        } else {
            tracing::warn!(path = %m.host_path.display(), "mount source is neither a file nor a directory: not copied into the guest");
        }
    }
    let _ = std::fs::remove_file(out);
    std::fs::copy(base, out).map_err(|e| SandboxError::io(out, e))?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .map_err(|e| SandboxError::io(out, e))?;
    // The kernel skips zero padding between archives; a newc header starts 4-byte aligned.
    let len = f.metadata().map_err(|e| SandboxError::io(out, e))?.len();
    let pad = usize::try_from((4 - len % 4) % 4).unwrap_or(0);
    let bytes = archive.finish()?;
    f.write_all(&vec![0u8; pad])
        .and_then(|()| f.write_all(&bytes))
        .map_err(|e| SandboxError::io(out, e))
}

/// The workload's argv as a shell `set --` line, each argument single-quoted: the guest's init
/// sources it, so no argument needs the kernel command line (2 KiB in all).
pub fn args_file(argv: &[String]) -> String {
    let mut line = "set --".to_owned();
    for a in argv {
        line.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
    }
    line.push('\n');
    line
}

/// `export KEY='VALUE'` lines, single quotes escaped; keys that are not shell names are left
/// out (they still reach the kernel command line).
pub fn env_file(env: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if name_ok {
            s.push_str(&format!("export {k}='{}'\n", v.replace('\'', r"'\''")));
        }
    }
    s
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777 & !0o6000
}

/// Reads a file, failing once the archive's data (`used` so far) would pass [`MAX_BYTES`].
fn read_bounded(path: &Path, used: u64) -> Result<Vec<u8>, SandboxError> {
    let left = MAX_BYTES.saturating_sub(used);
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(left + 1).read_to_end(&mut data))
        .map_err(|e| SandboxError::io(path, e))?;
    if data.len() as u64 > left {
        return Err(too_big());
    }
    Ok(data)
}

fn too_big() -> SandboxError {
    invalid(format!(
        "the container's mounts hold more than {} MiB or {MAX_ENTRIES} entries, which a guest \
         without a shared file system gets copied into its initrd",
        MAX_BYTES >> 20
    ))
}

/// A newc archive being built in memory.
#[derive(Default)]
struct Archive {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    entries: usize,
    bytes: u64,
}

impl Archive {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), SandboxError> {
        self.entries += 1;
        self.bytes += data.len() as u64;
        if self.entries > MAX_ENTRIES || self.bytes > MAX_BYTES {
            return Err(too_big());
        }
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let ino = u32::try_from(self.entries).map_err(|_| too_big())?;
        let out = std::mem::take(&mut self.out);
        let mut w = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .write(out, size);
        let io = |e| SandboxError::Runtime {
            op: "initrd archive".into(),
            reason: format!("{e}"),
        };
        w.write_all(data).map_err(io)?;
        self.out = w.finish().map_err(io)?;
        Ok(())
    }

    /// The directories above `name` (not `name` itself), each once.
    fn parents(&mut self, name: &str) -> Result<(), SandboxError> {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.dir(&prefix.clone(), 0o755)?;
        }
        Ok(())
    }

    fn dir(&mut self, name: &str, mode: u32) -> Result<(), SandboxError> {
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040_000 | mode, &[])?;
        }
        Ok(())
    }

    /// A regular file at `name` (normalised by [`guest_path`]) and the directories above it.
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), SandboxError> {
        self.parents(name)?;
        self.entry(name, 0o100_000 | mode, data)
    }

    /// Copies the directory `src` to `dest`, not following links.
    fn tree(&mut self, src: &Path, dest: &str) -> Result<(), SandboxError> {
        self.parents(dest)?;
        let meta = std::fs::metadata(src).map_err(|e| SandboxError::io(src, e))?;
        self.dir(dest, mode_of(&meta))?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| SandboxError::io(src, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| SandboxError::io(src, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "a file name that is not UTF-8 is not copied into the guest");
                continue;
            };
            let to = format!("{dest}/{name}");
            let meta = std::fs::symlink_metadata(&path).map_err(|e| SandboxError::io(&path, e))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.tree(&path, &to)?;
            } else if ft.is_file() {
                let data = read_bounded(&path, self.bytes)?;
                self.entry(&to, 0o100_000 | mode_of(&meta), &data)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| SandboxError::io(&path, e))?;
                let target = target.as_os_str().as_encoded_bytes().to_vec();
                self.entry(&to, 0o120_777, &target)?;
            }
        }
        Ok(())
    }

    /// The merged view of the image's layers (overlayfs format, top-most wins; whiteouts and
    /// opaque directories hide what is below them), parents before children.
    fn rootfs(&mut self, layers: &[PathBuf], skip: &BTreeSet<String>) -> Result<(), SandboxError> {
        let mut seen: BTreeMap<String, bool> = BTreeMap::new();
        let mut found: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
        let mut sealed: BTreeSet<String> = BTreeSet::new();
        for layer in layers.iter().rev() {
            collect(layer, "", skip, &mut seen, &mut sealed, &mut found)?;
        }
        found.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        for (name, path, meta) in found {
            let ft = meta.file_type();
            if ft.is_dir() {
                self.dir(&name, mode_of(&meta))?;
            } else if ft.is_file() {
                let data = read_bounded(&path, self.bytes)?;
                self.entry(&name, 0o100_000 | mode_of(&meta), &data)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| SandboxError::io(&path, e))?;
                self.entry(&name, 0o120_777, target.as_os_str().as_encoded_bytes())?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>, SandboxError> {
        cpio::newc::trailer(self.out).map_err(|e| SandboxError::Runtime {
            op: "initrd archive".into(),
            reason: e.to_string(),
        })
    }
}

/// Walks one layer's `dir` (at image path `prefix`) for [`Archive::rootfs`]: `seen` maps the
/// paths a higher layer decided (to whether they are directories, whose lower contents still
/// merge), `sealed` holds opaque directories (nothing below them merges).
fn collect(
    dir: &Path,
    prefix: &str,
    skip: &BTreeSet<String>,
    seen: &mut BTreeMap<String, bool>,
    sealed: &mut BTreeSet<String>,
    found: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
) -> Result<(), SandboxError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let entries = std::fs::read_dir(dir).map_err(|e| SandboxError::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| SandboxError::io(dir, e))?;
        let Some(file) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let name = if prefix.is_empty() {
            file
        } else {
            format!("{prefix}/{file}")
        };
        if skip.contains(&name) {
            continue;
        }
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| SandboxError::io(&path, e))?;
        let is_dir = meta.is_dir();
        match seen.get(&name) {
            // A higher layer's file, link or whiteout hides this one and all below it.
            Some(false) => continue,
            Some(true) if !is_dir => continue,
            Some(true) => {}
            None => {
                let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
                seen.insert(name.clone(), is_dir);
                if whiteout {
                    continue;
                }
                found.push((name.clone(), path.clone(), meta));
            }
        }
        if is_dir && !sealed.contains(&name) {
            if imagestore::unpack::is_opaque(&path) {
                sealed.insert(name.clone());
            }
            collect(&path, &name, skip, seen, sealed, found)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, data) of every entry of the archive appended after `skip` bytes.
    fn entries(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let mut r = cpio::newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let (name, mode) = (r.entry().name().to_owned(), r.entry().mode());
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            out.push((name, mode, data));
            rest = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn appends_files_dirs_links_and_env_after_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("initrd.gz");
        std::fs::write(&base, b"BASE!").unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let cm = dir.path().join("cm");
        std::fs::create_dir_all(cm.join("..2026_12_06")).unwrap();
        std::fs::write(cm.join("..2026_12_06/greeting"), "hello").unwrap();
        std::os::unix::fs::symlink("..2026_12_06", cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/greeting", cm.join("greeting")).unwrap();
        let out = dir.path().join("out.img");
        let mounts = [
            GuestMount {
                container_path: "/etc/hosts".into(),
                host_path: dir.path().join("hosts"),
                readonly: false,
            },
            GuestMount {
                container_path: "/etc/config/".into(),
                host_path: cm,
                readonly: true,
            },
        ];
        let env = [
            ("A".to_owned(), "it's".to_owned()),
            ("1x".into(), "no".into()),
        ];
        let argv = ["/app/serve".to_owned(), "it's".into()];
        build_initrd(&base, &[], &[], &mounts, &env, &argv, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..5], b"BASE!");
        assert_eq!(&bytes[5..8], [0, 0, 0]);
        let got = entries(&bytes[8..]);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/crid",
                "etc/crid/env",
                "etc/crid/args",
                "etc/hosts",
                "etc/config",
                "etc/config/..2026_12_06",
                "etc/config/..2026_12_06/greeting",
                "etc/config/..data",
                "etc/config/greeting",
            ]
        );
        assert_eq!(got[2].2, b"export A='it'\\''s'\n");
        assert_eq!(got[3].2, b"set -- '/app/serve' 'it'\\''s'\n");
        assert_eq!(got[4].2, b"127.0.0.1 localhost\n");
        assert_eq!(got[5].1 & 0o170_000, 0o040_000);
        assert_eq!(got[9].1, 0o120_777);
        assert_eq!(got[9].2, b"..data/greeting");
    }

    #[test]
    fn args_file_quotes_every_argument() {
        let argv = ["/app/serve".to_owned(), "it's".into(), "two words".into()];
        assert_eq!(
            args_file(&argv),
            "set -- '/app/serve' 'it'\\''s' 'two words'\n"
        );
        assert_eq!(args_file(&[]), "set --\n");
    }

    #[test]
    fn merges_the_image_layers_top_most_first() {
        let dir = tempfile::tempdir().unwrap();
        let (low, high) = (dir.path().join("low"), dir.path().join("high"));
        for d in [&low, &high] {
            std::fs::create_dir_all(d.join("app")).unwrap();
        }
        std::fs::create_dir_all(low.join("unikernel")).unwrap();
        std::fs::write(low.join("unikernel/vmlinuz"), "kernel").unwrap();
        std::fs::write(low.join("app/run.sh"), "old").unwrap();
        std::fs::write(low.join("app/gone"), "deleted above").unwrap();
        std::fs::write(high.join("app/run.sh"), "new").unwrap();
        nix::sys::stat::mknod(
            &high.join("app/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap_or_else(|_| std::fs::write(high.join("app/gone.skip"), "").unwrap());
        let base = dir.path().join("base");
        std::fs::write(&base, b"").unwrap();
        let out = dir.path().join("out");
        build_initrd(
            &base,
            &[low.clone(), high.clone()],
            &["/unikernel/vmlinuz".into()],
            &[],
            &[],
            &[],
            &out,
        )
        .unwrap();
        let got = entries(&std::fs::read(&out).unwrap());
        let find = |n: &str| got.iter().find(|e| e.0 == n).map(|e| e.2.clone());
        assert_eq!(find("app/run.sh").unwrap(), b"new");
        assert!(find("unikernel/vmlinuz").is_none());
        assert!(find("unikernel").is_some());
        if high.join("app/gone").exists() {
            assert!(
                find("app/gone").is_none(),
                "{:?}",
                got.iter().map(|e| &e.0).collect::<Vec<_>>()
            );
        }
        // Parents come before children.
        let pos = |n: &str| got.iter().position(|e| e.0 == n).unwrap();
        assert!(pos("app") < pos("app/run.sh"));
    }

    #[test]
    fn bad_paths_and_limits() {
        assert!(guest_path("etc/hosts").is_err());
        assert!(guest_path("/a/../b").is_err());
        assert!(guest_path("/").is_err());
        assert_eq!(guest_path("/a/./b/").unwrap(), "a/b");
        let mut a = Archive {
            bytes: MAX_BYTES,
            ..Default::default()
        };
        let err = a.file("x", 0o644, &[1]).unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
    }
}
