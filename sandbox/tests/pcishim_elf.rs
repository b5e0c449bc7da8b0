//! The PCI shim's checks of the guest kernel it loads (`pcishim/elf.c`, the same source the
//! shim is built from), run on the host with AddressSanitizer and UBSan through
//! `pcishim/test_elf.c` against crafted ELF images: a well-formed kernel loads; every header
//! that points outside the image, outside guest RAM, over the shim or the image itself, or
//! wraps an addition is refused without reading past the image.
//!
//! Needs gcc with its sanitizer runtimes (Debian's gcc has them); in CI (CI=true) their
//! absence fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A PT_LOAD: physical address, file offset, file size, memory size.
#[derive(Clone, Copy)]
struct Load {
    paddr: u64,
    offset: u64,
    filesz: u64,
    memsz: u64,
}

const fn load(paddr: u64, offset: u64, filesz: u64, memsz: u64) -> Load {
    Load {
        paddr,
        offset,
        filesz,
        memsz,
    }
}

/// A little-endian ELF64 x86-64 executable: the loads, then a PT_NOTE holding `note` (a raw
/// note: namesz, descsz, type, name, desc), its contents after the program headers, the file
/// padded to its last load's bytes.
fn elf64(loads: &[Load], note: &[u8]) -> Vec<u8> {
    let phnum = loads.len() + 1;
    let note_off = 64 + 56 * phnum;
    let mut b = vec![0u8; note_off + note.len()];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little-endian
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
    b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    b[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut phdr = |i: usize, ty: u32, l: Load| {
        let p = 64 + 56 * i;
        b[p..p + 4].copy_from_slice(&ty.to_le_bytes());
        b[p + 8..p + 16].copy_from_slice(&l.offset.to_le_bytes());
        b[p + 16..p + 24].copy_from_slice(&l.paddr.to_le_bytes()); // vaddr
        b[p + 24..p + 32].copy_from_slice(&l.paddr.to_le_bytes());
        b[p + 32..p + 40].copy_from_slice(&l.filesz.to_le_bytes());
        b[p + 40..p + 48].copy_from_slice(&l.memsz.to_le_bytes());
    };
    for (i, l) in loads.iter().enumerate() {
        phdr(i, 1, *l);
    }
    let n = note.len() as u64;
    phdr(loads.len(), 4, load(0, note_off as u64, n, n));
    b[note_off..].copy_from_slice(note);
    let end = loads
        .iter()
        .filter(|l| l.offset < 1 << 20 && l.filesz < 1 << 20)
        .map(|l| (l.offset + l.filesz) as usize)
        .max()
        .unwrap_or(0);
    if b.len() < end {
        b.resize(end, 0);
    }
    b
}

/// The PVH note: "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), a 4-byte entry.
fn pvh_note(entry: u32) -> Vec<u8> {
    let mut n = Vec::new();
    for v in [4u32, 4, 18] {
        n.extend(v.to_le_bytes());
    }
    n.extend(b"Xen\0");
    n.extend(entry.to_le_bytes());
    n
}

struct Checker {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Checker {
    fn build() -> Option<Checker> {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcishim");
        let exe = dir.path().join("test_elf");
        let built = Command::new("gcc")
            .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror"])
            .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
            .arg("-o")
            .arg(&exe)
            .arg(src.join("test_elf.c"))
            .arg(src.join("elf.c"))
            .status();
        if !matches!(built, Ok(s) if s.success()) {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("cannot build {}: {built:?}", src.display());
            }
            eprintln!("skipped: cannot build {}: {built:?}", src.display());
            return None;
        }
        Some(Checker { dir, exe })
    }

    /// The checker's verdict on `image`: its stdout, after checking that it ran cleanly.
    fn check(&self, image: &[u8]) -> String {
        let file = self.dir.path().join("image");
        std::fs::write(&file, image).unwrap();
        let out = Command::new(&self.exe)
            .arg(&file)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            matches!(out.status.code(), Some(0 | 1)) && out.stderr.is_empty(),
            "{:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

const KERNEL: Load = load(0x100000, 0x1000, 0x200, 0x3000);

#[test]
fn the_shim_loads_a_well_formed_kernel() {
    let Some(c) = Checker::build() else { return };
    let bss = load(0x104000, 0x1200, 0, 0x1000);
    let out = c.check(&elf64(&[KERNEL, bss], &pvh_note(0x100010)));
    assert_eq!(
        out,
        "ok entry=0x100010 loads=2\nload 0x100000 0x200 0x3000\nload 0x104000 0x0 0x1000\n"
    );
    // Low memory is RAM too; an 8-byte note descriptor with a zero upper half is taken.
    let mut note = pvh_note(0x20010);
    note[4] = 8;
    note.extend([0; 4]);
    let out = c.check(&elf64(&[load(0x20000, 0x1000, 0x10, 0x20)], &note));
    assert!(out.starts_with("ok entry=0x20010 loads=1"), "{out}");
}

#[test]
fn the_shim_refuses_malformed_or_misplaced_kernels() {
    let Some(c) = Checker::build() else { return };
    let good = elf64(&[KERNEL], &pvh_note(0x100010));
    let refused = |image: &[u8], why: &str| {
        let out = c.check(image);
        assert_eq!(out, format!("error: {why}\n"));
    };
    let header = "not a little-endian x86 ELF executable";
    let phdrs = "program headers outside the image";
    let segment = "a segment's file bytes are outside the image";
    let ram = "a segment is outside guest RAM below 4 GiB";
    let overlap = "a segment overlaps the shim, the image or another segment";
    let no_entry = "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)";

    // Headers.
    refused(&good[..40], header);
    let mut big_endian = good.clone();
    big_endian[5] = 2;
    refused(&big_endian, header);
    let mut arm = good.clone();
    arm[18] = 183;
    refused(&arm, header);
    let mut far = good.clone();
    far[0x20..0x28].copy_from_slice(&(good.len() as u64).to_le_bytes());
    refused(&far, phdrs);
    let mut wrapping = good.clone();
    wrapping[0x20..0x28].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    refused(&wrapping, phdrs);
    let mut short_entries = good.clone();
    short_entries[0x36] = 32;
    refused(&short_entries, phdrs);
    refused(&good[..64 + 56], phdrs); // the note's header cut off

    // Segments' file bytes.
    refused(
        &elf64(&[load(0x100000, 0x1000, 0x200, 0x100)], &pvh_note(0x100010)),
        segment,
    );
    let mut past_end = elf64(&[KERNEL], &pvh_note(0x100010));
    past_end.truncate(0x1100);
    refused(&past_end, segment);
    let wrap = load(0x100000, u64::MAX - 0x10, 0x20, 0x100);
    refused(&elf64(&[wrap], &pvh_note(0x100010)), segment);

    // Where they load: inside RAM below 4 GiB, clear of the shim, the image and each other.
    let at = |paddr: u64, memsz: u64| elf64(&[load(paddr, 0x1000, 0, memsz)], &pvh_note(0x100010));
    refused(&at(0xffff_f000, 0x2000), ram);
    refused(&at(0x1_0000_0000, 0x1000), ram);
    refused(&at(0x100000, u64::MAX), ram);
    refused(&at(0xa0000, 0x1000), ram); // the VGA hole
    refused(&at(0x7fff000, 0x2000), ram); // past the end of RAM
    refused(&at(0x18000, 0x1000), overlap); // the shim
    refused(&at(0x6fff000, 0x2000), overlap); // the image itself
    let twice = [KERNEL, load(0x102000, 0x1000, 0, 0x2000)];
    refused(&elf64(&twice, &pvh_note(0x100010)), overlap);
    let many: Vec<Load> = (0..17)
        .map(|i| load(0x100000 + i * 0x1000, 0x1000, 0, 0x1000))
        .collect();
    refused(
        &elf64(&many, &pvh_note(0x100010)),
        "too many loadable segments",
    );

    // The PVH entry: a well-formed note, inside a loaded segment.
    refused(&elf64(&[KERNEL], &[]), no_entry);
    let mut other_type = pvh_note(0x100010);
    other_type[8] = 17;
    refused(&elf64(&[KERNEL], &other_type), no_entry);
    let mut long_name = pvh_note(0x100010);
    long_name[0..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    refused(&elf64(&[KERNEL], &long_name), no_entry);
    let mut high_entry = pvh_note(0x100010);
    high_entry[4] = 8;
    high_entry.extend(1u32.to_le_bytes());
    refused(&elf64(&[KERNEL], &high_entry), no_entry);
    refused(
        &elf64(&[KERNEL], &pvh_note(0x200000)),
        "the PVH entry is outside the loaded segments",
    );

    // The shim itself (linked where it runs) may not load over itself.
    refused(sandbox::vm::pcishim::IMAGE, overlap);
}
