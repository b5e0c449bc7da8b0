//! Layer unpacking. The input describes a tar stream entry by entry (names built from a small
//! alphabet of hostile components: `..`, `.wh.` whiteouts, absolute names, links to the
//! directories around the destination) with valid header checksums, so the fuzzer reaches the
//! unpacker's rules instead of tar's checksum; or raw bytes. It is unpacked into a directory
//! five levels below a scratch root holding sentinel files. Afterwards nothing may exist in
//! the scratch root but the destination's parents and the untouched sentinels, and the layer
//! may hold no device node but overlay whiteouts (0:0).
#![no_main]

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use imagestore::unpack::{UnpackOptions, unpack_layer_with};
use libfuzzer_sys::fuzz_target;

const PARTS: &[&str] = &[
    "a", "b", "..", ".", "", "etc", "passwd", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", "link",
    "dir", "outer", "sentinel", "layer", "\u{0}x",
];

#[derive(Debug, Arbitrary)]
struct Entry {
    kind: u8,
    absolute: bool,
    path: Vec<u8>,
    /// A link target: `None` the scratch root; else built like `path`, below the scratch root
    /// (absolute) when `link_into_root`.
    link: Option<Vec<u8>>,
    link_into_root: bool,
    mode: u16,
    owner: u8,
    major: u8,
    minor: u8,
    data: Vec<u8>,
    xattr: Option<(u8, Vec<u8>)>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Entries { entries: Vec<Entry>, gzip: bool },
    Raw(Vec<u8>),
}

fn join(idx: &[u8], absolute: bool) -> Vec<u8> {
    let mut s = Vec::new();
    if absolute {
        s.push(b'/');
    }
    for (n, i) in idx.iter().take(12).enumerate() {
        if n > 0 {
            s.push(b'/');
        }
        s.extend_from_slice(PARTS[*i as usize % PARTS.len()].as_bytes());
    }
    s
}

fn entry_type(k: u8) -> tar::EntryType {
    match k % 9 {
        0 | 1 => tar::EntryType::Regular,
        2 => tar::EntryType::Directory,
        3 => tar::EntryType::Symlink,
        4 => tar::EntryType::Link,
        5 => tar::EntryType::Char,
        6 => tar::EntryType::Block,
        7 => tar::EntryType::Fifo,
        _ => tar::EntryType::new(k),
    }
}

fn tar_of(entries: &[Entry], root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries.iter().take(64) {
        if let Some((which, value)) = &e.xattr {
            let key = match which % 4 {
                0 => "SCHILY.xattr.user.x",
                1 => "SCHILY.xattr.trusted.overlay.opaque",
                2 => "SCHILY.xattr.security.capability",
                _ => "SCHILY.xattr.trusted.overlay.redirect",
            };
            let _ = b.append_pax_extensions([(key, value.as_slice())]);
        }
        let mut h = tar::Header::new_ustar();
        let name = join(&e.path, e.absolute);
        let bytes = h.as_mut_bytes();
        let n = name.len().min(100);
        bytes[..n].copy_from_slice(&name[..n]);
        let link = match &e.link {
            None => root.as_os_str().as_encoded_bytes().to_vec(),
            Some(l) if e.link_into_root => {
                let mut t = root.as_os_str().as_encoded_bytes().to_vec();
                t.extend(join(l, true));
                t
            }
            Some(l) => join(l, false),
        };
        let n = link.len().min(100);
        bytes[157..157 + n].copy_from_slice(&link[..n]);
        let ty = entry_type(e.kind);
        h.set_entry_type(ty);
        h.set_mode(u32::from(e.mode) & 0o7777);
        h.set_uid(u64::from(e.owner));
        h.set_gid(u64::from(e.owner));
        let _ = h.set_device_major(u32::from(e.major));
        let _ = h.set_device_minor(u32::from(e.minor));
        let data: &[u8] = if ty == tar::EntryType::Regular {
            &e.data
        } else {
            &[]
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        let _ = b.append(&h, data);
    }
    b.into_inner().unwrap_or_default()
}

/// The scratch root: `<tmp>/crid-fuzz-unpack-<pid>`.
fn scratch() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("crid-fuzz-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    })
}

const SENTINEL: &[u8] = b"untouched";

/// Everything below `root` except the inside of `dest`.
fn walk(dir: &Path, dest: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if p != dest && e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, dest, out);
        }
    }
}

fn check_layer(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = m.file_type();
        if ft.is_block_device() || (ft.is_char_device() && m.rdev() != 0) {
            panic!("device node {} (rdev {:#x}) in the layer", e.path().display(), m.rdev());
        }
        if ft.is_dir() {
            check_layer(&e.path());
        }
    }
}

fuzz_target!(|input: Input| {
    let root = scratch();
    let parents = root.join("a/b/c/outer");
    let dest = parents.join("layer");
    let _ = std::fs::remove_dir_all(root.join("a"));
    std::fs::create_dir_all(&dest).unwrap();
    for s in [root.join("sentinel"), parents.join("sentinel")] {
        std::fs::write(&s, SENTINEL).unwrap();
    }
    let stream = match &input {
        Input::Raw(bytes) => bytes.clone(),
        Input::Entries { entries, gzip } => {
            let t = tar_of(entries, root);
            if *gzip {
                let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = g.write_all(&t);
                g.finish().unwrap_or_default()
            } else {
                t
            }
        }
    };
    let opts = UnpackOptions {
        max_bytes: 64 << 20,
        max_entries: 10_000,
        ..UnpackOptions::default()
    };
    let _ = unpack_layer_with(stream.as_slice(), &dest, &opts);

    let mut found = Vec::new();
    walk(root, &dest, &mut found);
    let allowed: Vec<PathBuf> = ["a", "a/b", "a/b/c", "a/b/c/outer", "a/b/c/outer/layer"]
        .iter()
        .map(|p| root.join(p))
        .chain([root.join("sentinel"), parents.join("sentinel")])
        .collect();
    for p in &found {
        assert!(allowed.contains(p), "{} written outside the layer", p.display());
    }
    for s in [root.join("sentinel"), parents.join("sentinel")] {
        assert_eq!(std::fs::read(&s).ok().as_deref(), Some(SENTINEL), "{}", s.display());
    }
    check_layer(&dest);
});
