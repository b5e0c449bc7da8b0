//! Unpacking one image layer (a tar stream, gzip- or zstd-compressed or not) into an empty
//! directory, in overlayfs format so layer directories stack as overlay lower directories.
//!
//! Layers are untrusted, so every path is resolved inside the destination by hand, one
//! component at a time, with `openat(O_NOFOLLOW | O_DIRECTORY)` on the directory descriptor of
//! the previous component; no symlink is ever followed while creating, linking or changing an
//! entry. The rules, decided once here:
//!
//! | entry | result |
//! |---|---|
//! | a `..` component in a name or hardlink target | the layer is rejected (`UnsafeLayerEntry`) |
//! | an absolute name (`/etc/x`) | the leading `/` is stripped: it lands at `dest/etc/x` |
//! | a name whose parent is a symlink in this layer | rejected |
//! | a hardlink whose target is missing, a directory, or behind a symlink | rejected |
//! | `.wh.NAME` | an overlay whiteout: char device 0:0 `NAME` in the same directory |
//! | `.wh..wh..opq` | the directory gets `trusted.overlay.opaque=y` (`user.overlay.opaque` unprivileged) |
//! | other `.wh..wh.*` (aufs metadata) | skipped |
//! | char device 0:0 | kept (it is an overlay whiteout) |
//! | other char and block devices | never created (a device node in an image would hand the container a host device); skipped with a warning |
//! | FIFOs | created |
//! | owners, setuid/setgid | applied only when privileged (root); unprivileged, owners are not changed and setuid/setgid bits are dropped |
//! | xattrs (PAX `SCHILY.xattr.*`) | only `user.*` and, privileged, `security.capability`; `trusted.*` (overlay's own control attributes) never |
//! | the layer root entry (`./`) | its metadata is ignored: `dest` keeps its own |
//!
//! A stream that is not a valid tar, a truncated or corrupt gzip/zstd stream, or one that
//! decompresses to more than [`UnpackOptions::max_bytes`], or past
//! [`UnpackOptions::ratio_floor`] to more than [`UnpackOptions::max_ratio`] times what was read
//! (decompression bombs), or holds more than [`UnpackOptions::max_entries`] entries gives an
//! error of kind `InvalidArgument`; the
//! caller removes `dest`. Directory modes and times are applied at the end, deepest first, so a
//! read-only directory can still be filled.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::ImageError;

/// What one unpacked layer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream, as the image config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// Bytes of regular file content written (the disk use, not counting metadata blocks).
    pub bytes: u64,
    /// Inodes created: files, directories, symlinks, FIFOs and whiteouts (not hardlinks).
    pub inodes: u64,
}

/// Limits and privilege of an unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Whether owners, setuid/setgid bits, `security.capability` and `trusted.overlay.*`
    /// whiteout attributes are applied. Defaults to "running as root".
    pub privileged: bool,
    /// The largest uncompressed stream accepted.
    pub max_bytes: u64,
    /// The most tar entries accepted.
    pub max_entries: u64,
    /// Past `ratio_floor` uncompressed bytes, the most uncompressed bytes per compressed byte.
    pub max_ratio: u64,
    pub ratio_floor: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            privileged: rustix::process::geteuid().is_root(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_ratio: DEFAULT_MAX_RATIO,
            ratio_floor: DEFAULT_RATIO_FLOOR,
        }
    }
}

/// 64 GiB: larger than any sane layer, small enough that a decompression bomb stops.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// gzip cannot exceed about 1032:1; only crafted zstd streams (or huge runs of zeros) go past
/// 2000:1.
pub const DEFAULT_MAX_RATIO: u64 = 2000;
/// The ratio is checked once 256 MiB are out, so small sparse files never trip it.
pub const DEFAULT_RATIO_FLOOR: u64 = 256 << 20;
/// Two million entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 2_000_000;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// What an opaque directory (`.wh..wh..opq`) carries, set to `y`: overlayfs's own attribute,
/// or its `userxattr` one where unpacking runs unprivileged.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OPAQUE_USER_XATTR: &str = "user.overlay.opaque";

/// How the layer blob is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Unpacks a layer blob into the empty directory `dest` with the default options.
pub fn unpack_layer<R: Read>(reader: R, dest: &Path) -> Result<UnpackStats, ImageError> {
    unpack_layer_with(reader, dest, &UnpackOptions::default())
}

/// Unpacks a layer blob into the empty directory `dest`.
pub fn unpack_layer_with<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let hashing = uncompressed(reader, opts)?;
    let root_fd = rustix::fs::open(
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io(dest, e.into()))?;
    let mut unpacker = Unpacker {
        root: root_fd,
        dest,
        opts,
        stats: UnpackStats {
            diff_id: String::new(),
            bytes: 0,
            inodes: 0,
        },
        dirs: BTreeMap::new(),
        implicit_dirs: std::cell::Cell::new(0),
        buf: vec![0u8; 128 * 1024],
    };

    let mut archive = tar::Archive::new(hashing);
    let mut entries = 0u64;
    for entry in archive.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        entries += 1;
        if entries > opts.max_entries {
            return Err(ImageError::LayerTooLarge {
                limit: opts.max_entries,
                what: "entries".to_owned(),
            });
        }
        unpacker.entry(&mut entry)?;
    }
    // The diff id covers the whole uncompressed stream, end-of-archive blocks included.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(stream_error)?;
    unpacker.finish_dirs()?;
    let mut stats = unpacker.stats;
    stats.inodes += unpacker.implicit_dirs.get();
    stats.diff_id = format!("sha256:{}", hex::encode(rest.hasher.finalize()));
    Ok(stats)
}

/// The diff id of a layer blob (the sha256 of its uncompressed stream), read within `opts`'
/// limits without unpacking it.
pub fn diff_id<R: Read>(reader: R, opts: &UnpackOptions) -> Result<String, ImageError> {
    let mut stream = uncompressed(reader, opts)?;
    io::copy(&mut stream, &mut io::sink()).map_err(stream_error)?;
    Ok(format!("sha256:{}", hex::encode(stream.hasher.finalize())))
}

/// Whether `dir`, a directory of a layer unpacked here, is opaque: it hides what lower layers
/// have under the same path (the layer had `.wh..wh..opq` in it). Symlinks are not followed.
pub fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    [OPAQUE_XATTR, OPAQUE_USER_XATTR]
        .iter()
        .any(|attr| matches!(rustix::fs::lgetxattr(dir, *attr, &mut buf), Ok(1) if buf[0] == b'y'))
}

/// The layer blob `reader` decompressed as its first bytes tell (gzip, zstd or none), hashed
/// and counted as it is read, within `opts`' byte and ratio limits.
fn uncompressed<'a, R: Read + 'a>(
    mut reader: R,
    opts: &UnpackOptions,
) -> Result<HashingReader<Box<dyn Read + 'a>>, ImageError> {
    let mut prefix = [0u8; 4];
    let mut n = 0;
    while n < prefix.len() {
        match reader.read(&mut prefix[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(corrupt(format!("cannot read the layer: {e}"))),
        }
    }
    let compressed = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let raw = Counting {
        inner: io::Cursor::new(prefix[..n].to_vec()).chain(reader),
        count: compressed.clone(),
    };
    let stream: Box<dyn Read + 'a> = match Compression::detect(&prefix[..n]) {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(raw)
                .map_err(|e| corrupt(format!("zstd stream: {e}")))?,
        ),
    };
    Ok(HashingReader {
        inner: stream,
        hasher: Sha256::new(),
        count: 0,
        limit: opts.max_bytes,
        compressed,
        max_ratio: opts.max_ratio,
        ratio_floor: opts.ratio_floor,
    })
}

/// Counts the bytes read from the blob itself.
struct Counting<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Hashes and counts the uncompressed stream, refusing to read past the limits.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    compressed: std::rc::Rc<std::cell::Cell<u64>>,
    max_ratio: u64,
    ratio_floor: u64,
}

#[derive(Debug)]
enum LimitExceeded {
    Bytes(u64),
    Ratio(u64),
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitExceeded::Bytes(n) => write!(f, "uncompressed layer larger than {n} bytes"),
            LimitExceeded::Ratio(r) => write!(f, "compression ratio above {r}:1"),
        }
    }
}

impl std::error::Error for LimitExceeded {}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(LimitExceeded::Bytes(self.limit)));
        }
        if self.count > self.ratio_floor
            && self.count / self.compressed.get().max(1) > self.max_ratio
        {
            return Err(io::Error::other(LimitExceeded::Ratio(self.max_ratio)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn corrupt(reason: impl Into<String>) -> ImageError {
    ImageError::CorruptLayer {
        reason: reason.into(),
    }
}

fn unsafe_entry(path: &[u8], reason: impl Into<String>) -> ImageError {
    ImageError::UnsafeLayerEntry {
        path: String::from_utf8_lossy(path).chars().take(256).collect(),
        reason: reason.into(),
    }
}

/// An error while reading the (decompressed) stream: the layer is bad, or too large.
fn stream_error(e: io::Error) -> ImageError {
    match e.get_ref().and_then(|i| i.downcast_ref::<LimitExceeded>()) {
        Some(LimitExceeded::Bytes(limit)) => {
            return ImageError::LayerTooLarge {
                limit: *limit,
                what: "bytes".to_owned(),
            };
        }
        Some(LimitExceeded::Ratio(ratio)) => {
            return ImageError::LayerTooLarge {
                limit: *ratio,
                what: "uncompressed bytes per compressed byte".to_owned(),
            };
        }
        None => {}
    }
    corrupt(e.to_string())
}

/// Splits a tar name into its components: empty and `.` components are dropped (so a leading
/// `/` is stripped), `..` is refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, ImageError> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(path, "contains a `..` component")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: i64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    dest: &'a Path,
    opts: &'a UnpackOptions,
    stats: UnpackStats,
    /// Directories whose mode, owner and times are applied at the end, by component path.
    dirs: BTreeMap<Vec<Vec<u8>>, DirMeta>,
    /// Parent directories created because an entry needed them.
    implicit_dirs: std::cell::Cell<u64>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn io_error(&self, rel: &[u8], e: impl Into<io::Error>) -> ImageError {
        let e: io::Error = e.into();
        if e.raw_os_error() == Some(Errno::NAMETOOLONG.raw_os_error())
            || e.raw_os_error() == Some(Errno::INVAL.raw_os_error())
        {
            return corrupt(format!(
                "cannot create {:?}: {e}",
                String::from_utf8_lossy(rel)
            ));
        }
        ImageError::io(self.dest.join(os(rel)), e)
    }

    /// Opens the directory `comps` inside the layer without following symlinks, creating
    /// missing directories (mode 0755, root-owned) when `create`.
    fn open_dir(&self, full: &[u8], comps: &[&[u8]], create: bool) -> Result<OwnedFd, ImageError> {
        let mut cur = rustix::fs::openat(
            &self.root,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ImageError::io(self.dest, e.into()))?;
        for c in comps {
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&cur, os(c), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                        Ok(()) => self.implicit_dirs.set(self.implicit_dirs.get() + 1),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io_error(full, e)),
                    }
                    rustix::fs::openat(&cur, os(c), flags, Mode::empty())
                        .map_err(|e| self.classify_open_error(&cur, full, c, e))?
                }
                Err(e) => return Err(self.classify_open_error(&cur, full, c, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn classify_open_error(
        &self,
        parent: &OwnedFd,
        full: &[u8],
        comp: &[u8],
        e: Errno,
    ) -> ImageError {
        match rustix::fs::statat(parent, os(comp), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => unsafe_entry(
                full,
                format!(
                    "goes through the symlink {:?}",
                    String::from_utf8_lossy(comp)
                ),
            ),
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                corrupt(format!(
                    "{:?}: {:?} is not a directory",
                    String::from_utf8_lossy(full),
                    String::from_utf8_lossy(comp)
                ))
            }
            Err(Errno::NOENT) => corrupt(format!(
                "{:?}: {:?} does not exist",
                String::from_utf8_lossy(full),
                String::from_utf8_lossy(comp)
            )),
            _ => self.io_error(full, e),
        }
    }

    /// Removes whatever this layer already has at `name` (a later entry replaces an earlier
    /// one); a directory stays when `keep_dir`. Returns whether a directory was kept.
    fn clear(
        &self,
        parent: &OwnedFd,
        full: &[u8],
        comps: &[&[u8]],
        name: &[u8],
        keep_dir: bool,
    ) -> Result<bool, ImageError> {
        let st = match rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io_error(full, e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            // Every component was opened with O_NOFOLLOW and only this unpack writes here, so
            // the joined path names this very directory; remove_dir_all never follows symlinks.
            let mut p = self.dest.to_path_buf();
            for c in comps {
                p.push(os(c));
            }
            std::fs::remove_dir_all(&p).map_err(|e| self.io_error(full, e))?;
        } else {
            rustix::fs::unlinkat(parent, os(name), AtFlags::empty())
                .map_err(|e| self.io_error(full, e))?;
        }
        Ok(false)
    }

    fn owner(&self, header: &tar::Header, full: &[u8]) -> Result<(u32, u32), ImageError> {
        // Empty (unparseable) owner fields, as some writers leave them, mean root.
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let id = |v: u64| u32::try_from(v).ok().filter(|v| *v != u32::MAX);
        match (id(uid), id(gid)) {
            (Some(u), Some(g)) => Ok((u, g)),
            _ => Err(corrupt(format!(
                "{:?} has an invalid owner {uid}:{gid}",
                String::from_utf8_lossy(full)
            ))),
        }
    }

    fn mode(&self, header: &tar::Header) -> u32 {
        let mode = header.mode().unwrap_or(0o644);
        if self.opts.privileged {
            mode & 0o7777
        } else {
            mode & 0o1777
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let full = entry.path_bytes().into_owned();
        let comps = components(&full)?;
        let kind = entry.header().entry_type();
        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself (`./`): dest keeps its own metadata.
            return Ok(());
        };
        let name: &[u8] = name;

        // Whiteouts.
        if name.starts_with(WHITEOUT_PREFIX) {
            let parent = self.open_dir(&full, parents, true)?;
            if name == WHITEOUT_OPAQUE {
                let attr = if self.opts.privileged {
                    OPAQUE_XATTR
                } else {
                    OPAQUE_USER_XATTR
                };
                return rustix::fs::fsetxattr(&parent, attr, b"y", XattrFlags::empty())
                    .map_err(|e| self.io_error(&full, e));
            }
            if name.starts_with(WHITEOUT_META_PREFIX) {
                tracing::debug!(path = %String::from_utf8_lossy(&full), "skipping aufs metadata");
                return Ok(());
            }
            let target = &name[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(unsafe_entry(&full, "whiteout of no file"));
            }
            let mut target_comps = parents.to_vec();
            target_comps.push(target);
            self.clear(&parent, &full, &target_comps, target, false)?;
            return self.whiteout(&parent, &full, target);
        }

        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }

        let parent = self.open_dir(&full, parents, true)?;
        let header = entry.header().clone();
        let mode = self.mode(&header);
        let (uid, gid) = self.owner(&header, &full)?;
        let mtime = header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64;
        let times = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        };
        let privileged = self.opts.privileged;
        let owned_comps: Vec<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();

        match kind {
            tar::EntryType::Directory => {
                if !self.clear(&parent, &full, &comps, name, true)? {
                    rustix::fs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.io_error(&full, e))?;
                    self.stats.inodes += 1;
                }
                let dir = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io_error(&full, e))?;
                self.xattrs(entry, &dir, &full)?;
                self.dirs.insert(
                    owned_comps,
                    DirMeta {
                        mode,
                        uid: privileged.then_some(uid),
                        gid: privileged.then_some(gid),
                        mtime,
                    },
                );
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&parent, &full, &comps, name, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io_error(&full, e))?;
                self.stats.inodes += 1;
                let mut file = File::from(fd);
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(stream_error(e)),
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| self.io_error(&full, e))?;
                    self.stats.bytes += n as u64;
                }
                self.xattrs(entry, &file, &full)?;
                if privileged {
                    rustix::fs::fchown(
                        &file,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    )
                    .map_err(|e| self.io_error(&full, e))?;
                }
                // After chown, which clears setuid/setgid.
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| self.io_error(&full, e))?;
                rustix::fs::futimens(&file, &times).map_err(|e| self.io_error(&full, e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt("symlink without a target"))?
                    .into_owned();
                if target.is_empty() {
                    return Err(corrupt(format!(
                        "symlink {:?} has an empty target",
                        String::from_utf8_lossy(&full)
                    )));
                }
                self.clear(&parent, &full, &comps, name, false)?;
                // The target is stored, never followed here: in the container it resolves
                // inside the container's root.
                rustix::fs::symlinkat(os(&target), &parent, os(name))
                    .map_err(|e| self.io_error(&full, e))?;
                self.stats.inodes += 1;
                if privileged {
                    self.chown_nofollow(&parent, name, &full, uid, gid)?;
                }
                rustix::fs::utimensat(&parent, os(name), &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io_error(&full, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt("hardlink without a target"))?
                    .into_owned();
                let tcomps = components(&target).map_err(|_| {
                    unsafe_entry(&full, "hardlink target contains a `..` component")
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(unsafe_entry(&full, "hardlink to the layer root"));
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tparent = self
                    .open_dir(&target, tparents, false)
                    .map_err(|e| match e {
                        ImageError::UnsafeLayerEntry { .. } => {
                            unsafe_entry(&full, "hardlink target goes through a symlink")
                        }
                        _ => unsafe_entry(&full, "hardlink target is not in this layer"),
                    })?;
                match rustix::fs::statat(&tparent, os(tname), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(unsafe_entry(&full, "hardlink to a directory"));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(unsafe_entry(&full, "hardlink target is not in this layer"));
                    }
                }
                self.clear(&parent, &full, &comps, name, false)?;
                // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never resolved.
                rustix::fs::linkat(&tparent, os(tname), &parent, os(name), AtFlags::empty())
                    .map_err(|e| self.io_error(&full, e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(u32::MAX);
                let minor = header.device_minor().ok().flatten().unwrap_or(u32::MAX);
                if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                    self.clear(&parent, &full, &comps, name, false)?;
                    return self.whiteout(&parent, &full, name);
                }
                tracing::warn!(
                    path = %String::from_utf8_lossy(&full),
                    major,
                    minor,
                    "skipping a device node in an image layer"
                );
            }
            tar::EntryType::Fifo => {
                self.clear(&parent, &full, &comps, name, false)?;
                rustix::fs::mknodat(
                    &parent,
                    os(name),
                    FileType::Fifo,
                    Mode::from_raw_mode(mode & 0o777),
                    0,
                )
                .map_err(|e| self.io_error(&full, e))?;
                self.stats.inodes += 1;
                if privileged {
                    self.chown_nofollow(&parent, name, &full, uid, gid)?;
                }
            }
            other => {
                tracing::warn!(
                    path = %String::from_utf8_lossy(&full),
                    kind = ?other,
                    "skipping a tar entry of unsupported type"
                );
            }
        }
        Ok(())
    }

    /// An overlay whiteout: char device 0:0, root-owned (unprivileged creation works since
    /// Linux 5.8).
    fn whiteout(&mut self, parent: &OwnedFd, full: &[u8], name: &[u8]) -> Result<(), ImageError> {
        rustix::fs::mknodat(
            parent,
            os(name),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| self.io_error(full, e))?;
        self.stats.inodes += 1;
        Ok(())
    }

    /// Gives `name` in `parent` (a symlink or FIFO) the entry's owner, without following it.
    fn chown_nofollow(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        full: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<(), ImageError> {
        rustix::fs::chownat(
            parent,
            os(name),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io_error(full, e))
    }

    /// Applies the PAX `SCHILY.xattr.*` attributes that are safe to keep.
    fn xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        fd: impl AsFd,
        full: &[u8],
    ) -> Result<(), ImageError> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts {
            let Ok(ext) = ext else { continue };
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            let allowed = name.starts_with(b"user.")
                || (self.opts.privileged && name == b"security.capability");
            if !allowed {
                tracing::debug!(
                    path = %String::from_utf8_lossy(full),
                    xattr = %String::from_utf8_lossy(name),
                    "skipping an xattr"
                );
                continue;
            }
            match rustix::fs::fsetxattr(&fd, os(name), ext.value_bytes(), XattrFlags::empty()) {
                Ok(()) => {}
                // A filesystem without xattrs loses nothing essential.
                Err(Errno::NOTSUP) => {}
                Err(e) => return Err(self.io_error(full, e)),
            }
        }
        Ok(())
    }

    /// Applies directory owners, modes and times, deepest first.
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(comps, _)| std::cmp::Reverse(comps.len()));
        for (comps, meta) in dirs {
            let refs: Vec<&[u8]> = comps.iter().map(|c| c.as_slice()).collect();
            let full = comps.join(&b'/');
            // A later entry may have replaced the directory: then there is nothing to do.
            let Ok(dir) = self.open_dir(&full, &refs, false) else {
                continue;
            };
            if let (Some(uid), Some(gid)) = (meta.uid, meta.gid) {
                rustix::fs::fchown(
                    &dir,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| self.io_error(&full, e))?;
            }
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.io_error(&full, e))?;
            let t = rustix::fs::Timespec {
                tv_sec: meta.mtime,
                tv_nsec: 0,
            };
            rustix::fs::futimens(
                &dir,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )
            .map_err(|e| self.io_error(&full, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    /// One tar entry, written with a raw name field so `..` and absolute names get through.
    #[derive(Clone)]
    enum E {
        File(&'static str, &'static [u8]),
        FileMode(&'static str, u32),
        Dir(&'static str, u32),
        Sym(&'static str, String),
        Hard(&'static str, String),
        Dev(&'static str, tar::EntryType, u32, u32),
    }

    fn header(kind: tar::EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let (h, data): (tar::Header, &[u8]) = match e {
                E::File(n, d) => (
                    header(
                        tar::EntryType::Regular,
                        n.as_bytes(),
                        b"",
                        0o644,
                        d.len() as u64,
                    ),
                    d,
                ),
                E::FileMode(n, m) => (
                    header(tar::EntryType::Regular, n.as_bytes(), b"", *m, 0),
                    b"",
                ),
                E::Dir(n, m) => (
                    header(tar::EntryType::Directory, n.as_bytes(), b"", *m, 0),
                    b"",
                ),
                E::Sym(n, t) => (
                    header(
                        tar::EntryType::Symlink,
                        n.as_bytes(),
                        t.as_bytes(),
                        0o777,
                        0,
                    ),
                    b"",
                ),
                E::Hard(n, t) => (
                    header(tar::EntryType::Link, n.as_bytes(), t.as_bytes(), 0o644, 0),
                    b"",
                ),
                E::Dev(n, k, maj, min) => {
                    let mut h = header(*k, n.as_bytes(), b"", 0o666, 0);
                    h.set_device_major(*maj).unwrap();
                    h.set_device_minor(*min).unwrap();
                    h.set_cksum();
                    (h, b"")
                }
            };
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A temp dir holding `layer/` (the destination) and a sentinel file `outside`.
    struct Sandbox {
        dir: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("layer")).unwrap();
            std::fs::write(dir.path().join("outside"), b"precious").unwrap();
            std::fs::set_permissions(
                dir.path().join("outside"),
                std::fs::Permissions::from_mode(0o640),
            )
            .unwrap();
            Sandbox { dir }
        }
        fn root(&self) -> PathBuf {
            self.dir.path().to_owned()
        }
        fn dest(&self) -> PathBuf {
            self.dir.path().join("layer")
        }
        fn unpack(&self, tar: &[u8], privileged: bool) -> Result<UnpackStats, ImageError> {
            let opts = UnpackOptions {
                privileged,
                ..UnpackOptions::default()
            };
            unpack_layer_with(tar, &self.dest(), &opts)
        }
        /// Nothing outside `layer/` was created or changed.
        fn assert_outside_untouched(&self) {
            let mut names: Vec<_> = std::fs::read_dir(self.root())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["layer", "outside"]);
            let out = self.root().join("outside");
            let meta = std::fs::symlink_metadata(&out).unwrap();
            assert!(meta.is_file());
            assert_eq!(meta.nlink(), 1, "outside file got hardlinked");
            assert_eq!(meta.mode() & 0o7777, 0o640, "outside file got chmod-ed");
            assert_eq!(std::fs::read(&out).unwrap(), b"precious");
        }
    }

    fn root_abs(s: &Sandbox, rest: &str) -> String {
        format!("{}{rest}", s.root().display())
    }

    #[rstest]
    #[case::dotdot_file(|_: &Sandbox| vec![E::File("../escape", b"x")])]
    #[case::dotdot_overwrite(|_: &Sandbox| vec![E::File("../outside", b"pwned")])]
    #[case::nested_dotdot(|_: &Sandbox| vec![E::Dir("a/", 0o755), E::File("a/../../escape", b"x")])]
    #[case::dotdot_dir(|_: &Sandbox| vec![E::Dir("../escape/", 0o755)])]
    #[case::dotdot_symlink_name(|_: &Sandbox| vec![E::Sym("../escape", "/etc".into())])]
    #[case::symlink_abs_then_file(|s: &Sandbox| vec![
        E::Sym("link", root_abs(s, "")), E::File("link/escape", b"x")])]
    #[case::symlink_abs_then_overwrite(|s: &Sandbox| vec![
        E::Sym("link", root_abs(s, "")), E::File("link/outside", b"pwned")])]
    #[case::symlink_rel_then_file(|_: &Sandbox| vec![
        E::Sym("link", "..".into()), E::File("link/escape", b"x")])]
    #[case::symlink_then_dir(|s: &Sandbox| vec![
        E::Sym("link", root_abs(s, "")), E::Dir("link/escape/", 0o777)])]
    #[case::symlink_chain(|_: &Sandbox| vec![
        E::Dir("d/", 0o755), E::Sym("d/up", "..".into()), E::Sym("d/up2", "up/..".into()),
        E::File("d/up2/escape", b"x")])]
    #[case::hardlink_dotdot(|_: &Sandbox| vec![E::Hard("hl", "../outside".into())])]
    #[case::hardlink_absolute_outside(|s: &Sandbox| vec![E::Hard("hl", root_abs(s, "/outside"))])]
    #[case::hardlink_through_symlink(|s: &Sandbox| vec![
        E::Sym("link", root_abs(s, "")), E::Hard("hl", "link/outside".into())])]
    #[case::hardlink_missing(|_: &Sandbox| vec![E::Hard("hl", "nope".into())])]
    #[case::hardlink_to_dir(|_: &Sandbox| vec![E::Dir("d/", 0o755), E::Hard("hl", "d".into())])]
    #[case::whiteout_dotdot(|_: &Sandbox| vec![E::File("../.wh.outside", b"")])]
    #[case::whiteout_through_symlink(|s: &Sandbox| vec![
        E::Sym("link", root_abs(s, "")), E::File("link/.wh.outside", b"")])]
    #[case::whiteout_of_parent(|_: &Sandbox| vec![E::File(".wh..", b"")])]
    #[case::opaque_through_symlink(|s: &Sandbox| vec![
        E::Sym("link", root_abs(s, "")), E::File("link/.wh..wh..opq", b"")])]
    fn escapes_are_rejected(
        #[case] build: fn(&Sandbox) -> Vec<E>,
        #[values(false, true)] gz: bool,
        #[values(false, true)] privileged: bool,
    ) {
        // Privileged mode needs root; unprivileged mode is checked by every user.
        let privileged = privileged && rustix::process::geteuid().is_root();
        let s = Sandbox::new();
        let mut tar = tar_of(&build(&s));
        if gz {
            tar = gzip(&tar);
        }
        let err = s.unpack(&tar, privileged).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        assert!(
            matches!(err, ImageError::UnsafeLayerEntry { .. }),
            "unexpected error {err:?}"
        );
        s.assert_outside_untouched();
    }

    #[rstest]
    #[case::absolute_path_is_stripped(
        |s: &Sandbox| vec![E::File(Box::leak(root_abs(s, "/outside").into_boxed_str()), b"in layer")],
        |s: &Sandbox| assert_eq!(std::fs::read(s.dest().join(root_abs(s, "/outside").trim_start_matches('/'))).unwrap(), b"in layer"))]
    #[case::regular_file_replaces_symlink(
        |s: &Sandbox| vec![E::Sym("f", root_abs(s, "/outside")), E::File("f", b"mine")],
        |s: &Sandbox| assert_eq!(std::fs::read(s.dest().join("f")).unwrap(), b"mine"))]
    #[case::dir_replaces_symlink(
        |s: &Sandbox| vec![E::Sym("f", root_abs(s, "/outside")), E::Dir("f/", 0o777)],
        |s: &Sandbox| assert!(std::fs::symlink_metadata(s.dest().join("f")).unwrap().is_dir()))]
    #[case::hardlinked_file_is_replaced_not_written(
        |_: &Sandbox| vec![E::File("a", b"one"), E::Hard("b", "a".into()), E::File("b", b"two")],
        |s: &Sandbox| {
            assert_eq!(std::fs::read(s.dest().join("a")).unwrap(), b"one");
            assert_eq!(std::fs::read(s.dest().join("b")).unwrap(), b"two");
        })]
    #[case::device_node_is_skipped(
        |_: &Sandbox| vec![E::Dev("null", tar::EntryType::Char, 1, 3), E::Dev("sda", tar::EntryType::Block, 8, 0)],
        |s: &Sandbox| {
            assert!(std::fs::symlink_metadata(s.dest().join("null")).is_err());
            assert!(std::fs::symlink_metadata(s.dest().join("sda")).is_err());
        })]
    #[case::symlink_targets_are_kept_verbatim(
        |_: &Sandbox| vec![E::Sym("etc", "/etc".into()), E::Sym("up", "../../..".into())],
        |s: &Sandbox| {
            assert_eq!(std::fs::read_link(s.dest().join("etc")).unwrap(), Path::new("/etc"));
            assert_eq!(std::fs::read_link(s.dest().join("up")).unwrap(), Path::new("../../.."));
        })]
    #[case::hardlink_to_symlink_links_the_symlink(
        |s: &Sandbox| vec![E::Sym("l", root_abs(s, "/outside")), E::Hard("h", "/l".into())],
        |s: &Sandbox| {
            let m = std::fs::symlink_metadata(s.dest().join("h")).unwrap();
            assert!(m.file_type().is_symlink());
            assert_eq!(m.nlink(), 2);
        })]
    fn neutralised_entries_stay_inside(
        #[case] build: fn(&Sandbox) -> Vec<E>,
        #[case] check: fn(&Sandbox),
    ) {
        let s = Sandbox::new();
        s.unpack(&tar_of(&build(&s)), rustix::process::geteuid().is_root())
            .unwrap();
        check(&s);
        s.assert_outside_untouched();
    }

    #[rstest]
    #[case::unprivileged(false, 0o755)]
    #[case::privileged(true, 0o4755)]
    fn setuid_kept_only_when_privileged(#[case] privileged: bool, #[case] want: u32) {
        if privileged && !rustix::process::geteuid().is_root() {
            eprintln!("skipped: privileged unpack needs root");
            return;
        }
        let s = Sandbox::new();
        s.unpack(
            &tar_of(&[
                E::FileMode("suid", 0o4755),
                E::Dir("ro/", 0o555),
                E::File("ro/f", b"x"),
            ]),
            privileged,
        )
        .unwrap();
        let m = std::fs::metadata(s.dest().join("suid")).unwrap();
        assert_eq!(m.mode() & 0o7777, want);
        // Directory modes are applied last, so a read-only directory could be filled.
        let m = std::fs::metadata(s.dest().join("ro")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o555);
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(std::fs::read(s.dest().join("ro/f")).unwrap(), b"x");
    }

    #[rstest]
    #[case::plain(Compression::None)]
    #[case::gzip(Compression::Gzip)]
    #[case::zstd(Compression::Zstd)]
    fn diff_id_is_the_uncompressed_digest(#[case] c: Compression) {
        let tar = tar_of(&[
            E::Dir("bin/", 0o755),
            E::File("bin/hello", b"hello world\n"),
            E::Sym("bin/hi", "hello".into()),
            E::Hard("bin/hey", "bin/hello".into()),
            E::File("deep/implicit/parents", b"12345"),
        ]);
        let blob = match c {
            Compression::None => tar.clone(),
            Compression::Gzip => gzip(&tar),
            Compression::Zstd => zstd::encode_all(&tar[..], 3).unwrap(),
        };
        assert_eq!(Compression::detect(&blob), c);
        let s = Sandbox::new();
        let stats = s.unpack(&blob, false).unwrap();
        assert_eq!(
            stats.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(
            diff_id(&blob[..], &UnpackOptions::default()).unwrap(),
            stats.diff_id
        );
        assert_eq!(stats.bytes, 12 + 5);
        // bin, hello, hi, deep, implicit, parents (the hardlink shares an inode).
        assert_eq!(stats.inodes, 6);
        assert_eq!(
            std::fs::read(s.dest().join("bin/hey")).unwrap(),
            b"hello world\n"
        );
        assert_eq!(
            std::fs::metadata(s.dest().join("bin/hey")).unwrap().nlink(),
            2
        );
        assert_eq!(
            std::fs::read(s.dest().join("deep/implicit/parents")).unwrap(),
            b"12345"
        );
    }

    #[rstest]
    #[case::truncated_gzip(|t: Vec<u8>| { let g = gzip(&t); g[..g.len() / 2].to_vec() })]
    #[case::truncated_zstd(|t: Vec<u8>| { let z = zstd::encode_all(&t[..], 3).unwrap(); z[..z.len() / 2].to_vec() })]
    #[case::truncated_tar(|t: Vec<u8>| t[..700].to_vec())]
    #[case::garbage(|_| b"this is not a tar archive at all, just some text. ".repeat(40))]
    #[case::gzip_of_garbage(|_| gzip(&b"no tar here ".repeat(100)))]
    #[case::corrupt_gzip(|t: Vec<u8>| { let mut g = gzip(&t); let n = g.len(); for b in &mut g[20..n - 8] { *b ^= 0x55; } g })]
    fn bad_streams_give_corrupt_layer(#[case] mangle: fn(Vec<u8>) -> Vec<u8>) {
        let tar = tar_of(&[E::File("a", &[7u8; 4000]), E::File("b", b"bbb")]);
        let s = Sandbox::new();
        let err = s.unpack(&mangle(tar), false).unwrap_err();
        assert!(matches!(err, ImageError::CorruptLayer { .. }), "{err:?}");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        s.assert_outside_untouched();
    }

    #[test]
    fn decompression_bomb_is_stopped() {
        let zeros = vec![0u8; 8 << 20];
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("bomb").unwrap();
        h.set_size(zeros.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &zeros[..]).unwrap();
        let blob = gzip(&b.into_inner().unwrap());
        assert!(blob.len() < 100_000);
        let s = Sandbox::new();
        let opts = UnpackOptions {
            privileged: false,
            max_bytes: 1 << 20,
            max_entries: 10,
            ..UnpackOptions::default()
        };
        let err = unpack_layer_with(&blob[..], &s.dest(), &opts).unwrap_err();
        assert!(
            matches!(err, ImageError::LayerTooLarge { ref what, .. } if what == "bytes"),
            "{err:?}"
        );
        // The ratio stops it too, long before the byte limit.
        let ratio = UnpackOptions {
            privileged: false,
            max_ratio: 100,
            ratio_floor: 1 << 20,
            ..UnpackOptions::default()
        };
        let s2 = Sandbox::new();
        let err = unpack_layer_with(&blob[..], &s2.dest(), &ratio).unwrap_err();
        assert!(
            matches!(err, ImageError::LayerTooLarge { limit: 100, .. }),
            "{err:?}"
        );
        // Hashing a blob without unpacking it (a layer already in the store) stops there too.
        let err = diff_id(&blob[..], &ratio).unwrap_err();
        assert!(
            matches!(err, ImageError::LayerTooLarge { limit: 100, .. }),
            "{err:?}"
        );
        // Without limits in the way it unpacks.
        let s3 = Sandbox::new();
        unpack_layer_with(
            &blob[..],
            &s3.dest(),
            &UnpackOptions {
                privileged: false,
                ..UnpackOptions::default()
            },
        )
        .unwrap();
        let files = vec![E::File("a", b""); 11];
        let err = unpack_layer_with(&tar_of(&files)[..], &s.dest(), &opts).unwrap_err();
        assert!(matches!(err, ImageError::LayerTooLarge { .. }), "{err:?}");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let privileged = rustix::process::geteuid().is_root();
        let s = Sandbox::new();
        let tar = tar_of(&[
            E::Dir("etc/", 0o755),
            E::File("etc/.wh.passwd", b""),
            E::File("opaque/.wh..wh..opq", b""),
            E::File("opaque/kept", b"k"),
            E::File(".wh..wh.plnk", b""),
            E::Dev("already", tar::EntryType::Char, 0, 0),
        ]);
        s.unpack(&tar, privileged).unwrap();
        for wh in ["etc/passwd", "already"] {
            let m = std::fs::symlink_metadata(s.dest().join(wh)).unwrap();
            assert!(
                std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()),
                "{wh}"
            );
            assert_eq!(m.rdev(), 0);
        }
        assert!(!s.dest().join("etc/.wh.passwd").exists());
        assert!(!s.dest().join(".wh..wh.plnk").exists());
        let attr = if privileged {
            "trusted.overlay.opaque"
        } else {
            "user.overlay.opaque"
        };
        let mut buf = [0u8; 8];
        let n = rustix::fs::lgetxattr(s.dest().join("opaque"), attr, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
        assert_eq!(std::fs::read(s.dest().join("opaque/kept")).unwrap(), b"k");
        assert!(is_opaque(&s.dest().join("opaque")));
        assert!(!is_opaque(&s.dest().join("etc")));
    }

    /// Mutated archives (flipped bytes in headers and data, truncations) never panic and never
    /// write outside the destination: a cheap stand-in for a fuzzer on the tar parser.
    #[test]
    fn mutated_archives_never_escape_or_panic() {
        let s = Sandbox::new();
        let base = tar_of(&[
            E::Dir("a/", 0o755),
            E::File("a/f", b"data"),
            E::Sym("a/l", root_abs(&s, "/outside")),
            E::Hard("a/h", "a/f".into()),
            E::File("a/.wh.x", b""),
            E::Dev("a/d", tar::EntryType::Char, 0, 0),
        ]);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let mut t = base.clone();
            for _ in 0..(1 + next() % 8) {
                let i = (next() as usize) % t.len();
                t[i] = next() as u8;
            }
            if round % 5 == 0 {
                let cut = (next() as usize) % t.len();
                t.truncate(cut);
            }
            let blob = if round % 2 == 0 { gzip(&t) } else { t };
            let dest = s.root().join("layer");
            let _ = s.unpack(
                &blob,
                round % 3 == 0 && rustix::process::geteuid().is_root(),
            );
            s.assert_outside_untouched();
            std::fs::remove_dir_all(&dest).unwrap();
            std::fs::create_dir(&dest).unwrap();
        }
    }

    #[test]
    fn long_and_pax_names_work() {
        let long = format!("{}/file", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
        let s = Sandbox::new();
        s.unpack(&b.into_inner().unwrap(), false).unwrap();
        assert_eq!(std::fs::read(s.dest().join(&long)).unwrap(), b"ok");
    }
}
