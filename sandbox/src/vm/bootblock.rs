//! A PVH kernel loaded by crid into the RAM of a QEMU that started before its guest was known
//! (paused, `-S`, without `-kernel`; [`super::VmSpec::guest_ram`]): QEMU fixes its kernel and
//! command line when it starts, so a QEMU prepared ahead gets them in its RAM instead. Its RAM
//! is a shared file (`memory-backend-file`, `share=on`) in which crid writes the kernel's
//! `PT_LOAD` segments at their physical addresses, as QEMU's ELF loader would, and a boot
//! block at [`BOOT_BLOCK_ADDR`]: magic, PVH entry, command line. crid's PCI firmware
//! (`sandbox/pcishim/shim.c`) takes the entry and the command line from the block when its
//! magic is there, else from fw_cfg, and clears the magic before it enters the kernel.
//!
//! The kernel is the image's, so untrusted: every segment is checked against the guest's RAM
//! (from 1 MiB, where the firmware's own memory ends, to the end of the RAM below 4 GiB, which
//! is where the file's offsets are the guest's physical addresses), and the entry with it.
//! The RAM is that of a QEMU that has not run its guest: zero but for what crid writes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::elf::{Elf, PT_LOAD, ProgramHeader};
use crate::SandboxError;

/// Where the boot block goes: below the firmware's RAM (64 KiB), above the real-mode
/// interrupt table and the BIOS data area.
pub const BOOT_BLOCK_ADDR: u64 = 0x8000;
/// The block's first word when it holds a kernel: "crid".
const BOOT_MAGIC: u32 = 0x6469_7263;
/// The block's header: magic, entry, command line length, reserved.
const HEADER: usize = 16;
/// The longest command line the block holds (up to the firmware's RAM at 64 KiB).
pub const MAX_CMDLINE: usize = 0x10000 - BOOT_BLOCK_ADDR as usize - HEADER;
/// Where the kernel's memory starts: the firmware's and the real-mode areas are below.
const KERNEL_FLOOR: u64 = 0x10_0000;
/// The largest kernel file read.
const MAX_KERNEL_FILE: u64 = 256 << 20;
/// What a segment's zeroed tail is written with at a time.
const ZEROS: usize = 64 * 1024;

/// The RAM QEMU's `pc` machine maps from physical address 0 for `memory_bytes` of RAM: all of
/// it below 3.5 GiB, else 3 GiB (the rest above 4 GiB), as QEMU 7.2's `pc` splits it.
pub fn ram_below_4g(memory_bytes: u64) -> u64 {
    if memory_bytes >= 0xe000_0000 {
        0xc000_0000
    } else {
        memory_bytes
    }
}

/// A PVH kernel ready to be written into guest RAM.
#[derive(Debug)]
pub struct PvhKernel {
    bytes: Vec<u8>,
    /// Its non-empty `PT_LOAD` segments: file bytes `offset..offset + file_size` at `paddr`,
    /// zeros up to `mem_size`.
    segments: Vec<ProgramHeader>,
    /// The 32-bit PVH entry.
    pub entry: u32,
}

fn bad(path: &Path, reason: impl Into<String>) -> SandboxError {
    SandboxError::ImageFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl PvhKernel {
    /// Reads the kernel at `path` and checks it fits a guest whose RAM below 4 GiB ends at
    /// `ram_end`.
    pub fn read(path: &Path, ram_end: u64) -> Result<PvhKernel, SandboxError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|f| f.take(MAX_KERNEL_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| SandboxError::io(path, e))?;
        if bytes.len() as u64 > MAX_KERNEL_FILE {
            return Err(bad(path, "the kernel is larger than 256 MiB"));
        }
        PvhKernel::parse(bytes, ram_end).map_err(|reason| bad(path, reason))
    }

    fn parse(bytes: Vec<u8>, ram_end: u64) -> Result<PvhKernel, String> {
        let elf = Elf::parse(&bytes).map_err(|e| e.to_string())?;
        let entry = elf
            .pvh_entry()
            .ok_or("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")?;
        let in_ram = |addr: u64| (KERNEL_FLOOR..ram_end).contains(&addr);
        let entry = u32::try_from(entry)
            .ok()
            .filter(|e| in_ram(u64::from(*e)))
            .ok_or_else(|| format!("the PVH entry {entry:#x} is not in the guest's RAM"))?;
        let mut segments = Vec::new();
        for (i, ph) in elf.program_headers().enumerate() {
            let seg = ph.map_err(|e| e.to_string())?;
            if seg.kind != PT_LOAD || seg.mem_size == 0 {
                continue;
            }
            check_segment(&seg, bytes.len() as u64, ram_end).map_err(|e| {
                let (size, at) = (seg.mem_size, seg.paddr);
                format!("segment {i} ({size:#x} bytes at {at:#x}): {e}")
            })?;
            segments.push(seg);
        }
        if segments.is_empty() {
            return Err("no loadable segment".into());
        }
        Ok(PvhKernel {
            bytes,
            segments,
            entry,
        })
    }

    /// Writes the segments and the boot block with `cmdline` into `ram`, the guest's RAM
    /// (offset = physical address), which must be zero but for what this writes.
    pub fn load(&self, ram: &File, ram_path: &Path, cmdline: &str) -> Result<(), SandboxError> {
        let block = boot_block(self.entry, cmdline)?;
        let write = |bytes: &[u8], at: u64| {
            ram.write_all_at(bytes, at)
                .map_err(|e| SandboxError::io(ram_path, e))
        };
        let zeros = vec![0u8; ZEROS];
        for seg in &self.segments {
            // Checked by `parse`: in the file and in RAM.
            let start = seg.offset as usize;
            let data = &self.bytes[start..start + seg.file_size as usize];
            write(data, seg.paddr)?;
            let mut at = seg.paddr + seg.file_size;
            let end = seg.paddr + seg.mem_size;
            while at < end {
                let n = (end - at).min(ZEROS as u64);
                write(&zeros[..n as usize], at)?;
                at += n;
            }
        }
        write(&block, BOOT_BLOCK_ADDR)
    }
}

/// Whether a segment lies in the file (its bytes) and in the guest's RAM (all of it).
fn check_segment(seg: &ProgramHeader, file_len: u64, ram_end: u64) -> Result<(), String> {
    if seg.file_size > seg.mem_size {
        return Err("more file bytes than memory".into());
    }
    let file_end = seg.offset.checked_add(seg.file_size);
    if file_end.is_none_or(|end| end > file_len) {
        return Err("its bytes run past the end of the file".into());
    }
    let mem_end = seg.paddr.checked_add(seg.mem_size);
    if seg.paddr < KERNEL_FLOOR || mem_end.is_none_or(|end| end > ram_end) {
        return Err(format!(
            "not in the guest's RAM ({KERNEL_FLOOR:#x}..{ram_end:#x})"
        ));
    }
    Ok(())
}

/// The boot block the firmware reads: magic, entry, command line length, reserved (all
/// little-endian 32-bit), then the command line.
fn boot_block(entry: u32, cmdline: &str) -> Result<Vec<u8>, SandboxError> {
    if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
        return Err(SandboxError::UnsupportedGuest {
            reason: format!(
                "a guest command line of {} bytes (with NUL bytes or over {MAX_CMDLINE})",
                cmdline.len()
            ),
        });
    }
    let mut block = Vec::with_capacity(HEADER + cmdline.len());
    for word in [BOOT_MAGIC, entry, cmdline.len() as u32, 0] {
        block.extend_from_slice(&word.to_le_bytes());
    }
    block.extend_from_slice(cmdline.as_bytes());
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::elf::tests::{elf64_header, program_header64};

    const MIB: u64 = 1 << 20;

    /// A 64-bit PVH ELF with one PT_NOTE (entry `entry`) and the given PT_LOAD segments
    /// (paddr, file bytes, memory size), each segment's bytes after the headers.
    fn elf64(entry: u32, loads: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let phnum = 1 + loads.len();
        let data_start = 64 + 56 * phnum;
        let note: Vec<u8> = [4u32, 4, 18]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .chain(*b"Xen\0")
            .chain(entry.to_le_bytes())
            .collect();
        let mut out = elf64_header(phnum as u16);
        let mut data = note.clone();
        let mut ph = |kind: u32, offset: u64, paddr: u64, file_size: u64, mem_size: u64| {
            out.extend(program_header64(&ProgramHeader {
                kind,
                offset,
                paddr,
                file_size,
                mem_size,
            }))
        };
        let note_size = note.len() as u64;
        ph(4, data_start as u64, 0, note_size, note_size);
        for (paddr, bytes, memsz) in loads {
            let off = (data_start + data.len()) as u64;
            ph(1, off, *paddr, bytes.len() as u64, *memsz);
            data.extend_from_slice(bytes);
        }
        out.extend(data);
        out
    }

    fn ram(size: u64) -> (tempfile::NamedTempFile, File) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        let file = f.reopen().unwrap();
        (f, file)
    }

    #[test]
    fn writes_segments_at_their_physical_addresses_and_the_boot_block() {
        let kernel = elf64(
            0x10_0010,
            &[(MIB, b"TEXT", 16), (2 * MIB, b"DATA", 4 + 70_000)],
        );
        let k = PvhKernel::parse(kernel, 8 * MIB).unwrap();
        assert_eq!(k.entry, 0x10_0010);
        let (tmp, file) = ram(8 * MIB);
        // Not what the loader assumes, but shows it zeroes a segment's tail.
        file.write_all_at(&[0xff; 80_000], 2 * MIB).unwrap();
        k.load(&file, tmp.path(), "app -p 8080").unwrap();
        let mem = std::fs::read(tmp.path()).unwrap();
        let at = |a: u64, n: usize| &mem[a as usize..a as usize + n];
        assert_eq!(at(MIB, 4), b"TEXT");
        assert_eq!(at(2 * MIB, 4), b"DATA");
        assert!(at(2 * MIB + 4, 70_000).iter().all(|b| *b == 0));
        assert_eq!(at(2 * MIB + 70_004, 4), [0xff; 4], "past the segment");
        let block = at(BOOT_BLOCK_ADDR, HEADER + 11);
        assert_eq!(&block[0..4], b"crid");
        assert_eq!(block[4..8], 0x10_0010u32.to_le_bytes());
        assert_eq!(block[8..12], 11u32.to_le_bytes());
        assert_eq!(&block[HEADER..], b"app -p 8080");
    }

    #[test]
    fn refuses_what_does_not_fit_the_guest() {
        let parse = |bytes: Vec<u8>| PvhKernel::parse(bytes, 8 * MIB).map(|k| k.entry);
        let err = |bytes: Vec<u8>| parse(bytes).unwrap_err();
        assert!(err(b"MZ not an ELF".to_vec()).contains("not a little-endian ELF"));
        assert!(err(elf64(0x20_0000, &[])).contains("no loadable segment"));
        assert!(err(elf64(9 * MIB as u32, &[(MIB, b"x", 1)])).contains("PVH entry"));
        assert!(err(elf64(0x8000, &[(MIB, b"x", 1)])).contains("PVH entry"));
        // Below 1 MiB (over the firmware), past the RAM, wrapping around.
        assert!(err(elf64(MIB as u32, &[(0x8000, b"x", 1)])).contains("not in the guest's RAM"));
        assert!(err(elf64(MIB as u32, &[(7 * MIB, b"x", 2 * MIB)])).contains("not in the guest"));
        assert!(err(elf64(MIB as u32, &[(u64::MAX - 1, b"x", 4)])).contains("not in the guest"));
        // More file bytes than memory; file bytes past the end of the file.
        assert!(err(elf64(MIB as u32, &[(MIB, b"xyz", 1)])).contains("more file bytes"));
        let mut short = elf64(MIB as u32, &[(MIB, b"abcd", 4)]);
        short.truncate(short.len() - 2);
        assert!(err(short).contains("past the end of the file"));
        let mut no_note = elf64(MIB as u32, &[(MIB, b"x", 1)]);
        let note = no_note.windows(4).position(|w| w == b"Xen\0").unwrap();
        no_note[note] = b'Y';
        assert!(err(no_note).contains("no PVH entry"));
        // The ELF reader's refusals: a header cut short, a third program header (after the
        // note's and the segment's) past the end of the file.
        let elf = elf64(MIB as u32, &[(MIB, b"x", 1)]);
        assert!(err(elf[..0x30].to_vec()).contains("truncated ELF header"));
        let mut more = elf.clone();
        more[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        assert!(err(more).contains("program header 2 is past the end of the file"));
        assert_eq!(parse(elf64(MIB as u32, &[(MIB, b"x", 1)])), Ok(MIB as u32));
    }

    #[test]
    fn the_command_line_must_fit_the_block() {
        assert!(boot_block(MIB as u32, &"x".repeat(MAX_CMDLINE)).is_ok());
        assert!(boot_block(MIB as u32, &"x".repeat(MAX_CMDLINE + 1)).is_err());
        assert!(boot_block(MIB as u32, "a\0b").is_err());
    }

    #[test]
    fn ram_below_4g_as_pc_splits_it() {
        assert_eq!(ram_below_4g(32 * MIB), 32 * MIB);
        assert_eq!(ram_below_4g(0xdfff_ffff), 0xdfff_ffff);
        assert_eq!(ram_below_4g(4 << 30), 0xc000_0000);
    }
}
