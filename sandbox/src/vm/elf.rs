//! The little of ELF crid reads itself in a guest's kernel: the program headers (the
//! `PT_LOAD` segments [`super::bootblock`] writes into a prepared QEMU's RAM) and the PVH
//! entry note (XEN_ELFNOTE_PHYS32_ENTRY, by which [`super::qemu`] chooses the firmware and
//! [`super::crid_vmm`] takes a Unikraft kernel). Little-endian 32- and 64-bit files only.
//!
//! The kernel is the image's, so untrusted, and the bytes given may be only its head: every
//! read is bounds-checked against them and every offset computed with checked arithmetic, so
//! a short or malformed file is an [`ElfError`] (or no note), never a panic.

/// The most program headers a kernel may have (they are a handful).
pub const MAX_PROGRAM_HEADERS: u64 = 64;
/// A loadable segment.
pub const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// The note giving the 32-bit PVH entry, in notes named "Xen".
const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;

/// Why the bytes are not an ELF file crid reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a little-endian ELF file")]
    NotElf,
    #[error("truncated ELF header")]
    TruncatedHeader,
    /// Program headers are of one size per class; any other would have fields read across
    /// two of them.
    #[error("program headers of {size} bytes (an ELF file of this class has {expected})")]
    ProgramHeaderSize { size: u64, expected: u64 },
    #[error("{count} program headers (at most {MAX_PROGRAM_HEADERS})")]
    TooManyProgramHeaders { count: u64 },
    #[error("program header {index} is past the end of the file")]
    ProgramHeaderPastEnd { index: u64 },
}

/// The fields of a program header crid uses (`p_type`, `p_offset`, `p_paddr`, `p_filesz`,
/// `p_memsz`), as read: nothing says they lie in the file or anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub kind: u32,
    pub offset: u64,
    pub paddr: u64,
    pub file_size: u64,
    pub mem_size: u64,
}

/// An ELF file's header, checked: its program header table's place, entry size and count.
#[derive(Debug)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    is64: bool,
    phoff: u64,
    phnum: u64,
}

impl<'a> Elf<'a> {
    /// Reads the ELF header at the start of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        if bytes.get(0..4) != Some(b"\x7fELF") || bytes.get(5) != Some(&1) {
            return Err(ElfError::NotElf);
        }
        let is64 = match bytes.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err(ElfError::NotElf),
        };
        let header = if is64 {
            (rd(bytes, 0x20, 8), rd(bytes, 0x36, 2), rd(bytes, 0x38, 2))
        } else {
            (rd(bytes, 0x1c, 4), rd(bytes, 0x2a, 2), rd(bytes, 0x2c, 2))
        };
        let (Some(phoff), Some(phentsize), Some(phnum)) = header else {
            return Err(ElfError::TruncatedHeader);
        };
        let expected = program_header_size(is64);
        if phnum > 0 && phentsize != expected {
            return Err(ElfError::ProgramHeaderSize {
                size: phentsize,
                expected,
            });
        }
        if phnum > MAX_PROGRAM_HEADERS {
            return Err(ElfError::TooManyProgramHeaders { count: phnum });
        }
        Ok(Elf {
            bytes,
            is64,
            phoff,
            phnum,
        })
    }

    /// The program headers in file order; one past the end of the bytes is an error.
    pub fn program_headers(&self) -> impl Iterator<Item = Result<ProgramHeader, ElfError>> {
        (0..self.phnum).map(|index| {
            self.program_header(index)
                .ok_or(ElfError::ProgramHeaderPastEnd { index })
        })
    }

    fn program_header(&self, index: u64) -> Option<ProgramHeader> {
        let size = program_header_size(self.is64);
        let start = usize::try_from(self.phoff.checked_add(index.checked_mul(size)?)?).ok()?;
        let h = self
            .bytes
            .get(start..)?
            .get(..usize::try_from(size).ok()?)?;
        let field = |off32: usize, off64: usize| match self.is64 {
            true => rd(h, off64, 8),
            false => rd(h, off32, 4),
        };
        Some(ProgramHeader {
            kind: u32::try_from(rd(h, 0, 4)?).ok()?,
            offset: field(4, 8)?,
            paddr: field(12, 24)?,
            file_size: field(16, 32)?,
            mem_size: field(20, 40)?,
        })
    }

    /// The value of the first PVH entry note ("Xen", type 18, of 4 or 8 bytes) in a
    /// `PT_NOTE` segment; none once a program header runs past the bytes given.
    pub fn pvh_entry(&self) -> Option<u64> {
        self.program_headers()
            .map_while(Result::ok)
            .filter(|ph| ph.kind == PT_NOTE)
            .find_map(|ph| pvh_note(self.bytes, ph.offset, ph.file_size))
    }
}

/// The PVH entry of a little-endian ELF image (or its head): [`Elf::pvh_entry`]; none when
/// it is no ELF file crid reads.
pub fn pvh_entry(bytes: &[u8]) -> Option<u64> {
    Elf::parse(bytes).ok()?.pvh_entry()
}

/// The first 64 KiB of the kernel file at `path`, where its ELF program headers and notes
/// (or a bzImage's setup header) are: what crid reads of a kernel it does not load itself.
/// `None` when it cannot be read.
pub fn kernel_head(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// `e_phentsize` of each class: `Elf32_Phdr`, `Elf64_Phdr`.
fn program_header_size(is64: bool) -> u64 {
    if is64 { 56 } else { 32 }
}

/// The PVH entry among the notes at `offset..offset + size` of `bytes` (what of them is
/// there): each note a name size, a value size and a type (32-bit words), then the name and
/// the value, each padded to 4 bytes.
fn pvh_note(bytes: &[u8], offset: u64, size: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let end = usize::try_from(offset.saturating_add(size))
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let mut notes = bytes.get(start..end)?;
    let align = |n: u64| usize::try_from(n.div_ceil(4) * 4).ok();
    while let (Some(namesz), Some(descsz), Some(kind)) =
        (rd(notes, 0, 4), rd(notes, 4, 4), rd(notes, 8, 4))
    {
        let name = notes.get(12..)?.get(..usize::try_from(namesz).ok()?);
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0") {
            return match descsz {
                4 | 8 => rd(notes, 16, usize::try_from(descsz).ok()?),
                _ => None,
            };
        }
        let next = 12usize
            .checked_add(align(namesz)?)?
            .checked_add(align(descsz)?)?;
        notes = notes.get(next..)?;
    }
    None
}

/// The little-endian value of `len` bytes at `off` in `buf`; `None` past its end.
fn rd(buf: &[u8], off: usize, len: usize) -> Option<u64> {
    let bytes = buf.get(off..off.checked_add(len)?)?;
    Some(
        bytes
            .iter()
            .rev()
            .fold(0u64, |v, b| (v << 8) | u64::from(*b)),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal 32-bit ELF with one PT_NOTE holding the PVH note (entry 1 MiB).
    pub(crate) fn pvh_elf32() -> Vec<u8> {
        let mut b = vec![0u8; 0x80];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[5] = 1;
        b[0x1c..0x20].copy_from_slice(&52u32.to_le_bytes()); // phoff
        b[0x2a..0x2c].copy_from_slice(&32u16.to_le_bytes()); // phentsize
        b[0x2c..0x2e].copy_from_slice(&1u16.to_le_bytes()); // phnum
        b[52..56].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        b[56..60].copy_from_slice(&0x60u32.to_le_bytes()); // offset
        b[68..72].copy_from_slice(&20u32.to_le_bytes()); // filesz
        b[0x60..0x64].copy_from_slice(&4u32.to_le_bytes());
        b[0x64..0x68].copy_from_slice(&4u32.to_le_bytes());
        b[0x68..0x6c].copy_from_slice(&18u32.to_le_bytes());
        b[0x6c..0x70].copy_from_slice(b"Xen\0");
        b[0x70..0x74].copy_from_slice(&0x100000u32.to_le_bytes()); // the entry
        b
    }

    /// A 64-bit ELF header with `phnum` program headers of 56 bytes right after it.
    pub(crate) fn elf64_header(phnum: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        b
    }

    /// `h` as a 64-bit program header.
    pub(crate) fn program_header64(h: &ProgramHeader) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[0..4].copy_from_slice(&h.kind.to_le_bytes());
        for (at, value) in [
            (8, h.offset),
            (24, h.paddr),
            (32, h.file_size),
            (40, h.mem_size),
        ] {
            b[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_the_program_headers_of_both_classes() {
        let elf32 = pvh_elf32();
        let headers: Vec<_> = Elf::parse(&elf32).unwrap().program_headers().collect();
        let note = ProgramHeader {
            kind: PT_NOTE,
            offset: 0x60,
            paddr: 0,
            file_size: 20,
            mem_size: 0,
        };
        assert_eq!(headers, [Ok(note)]);

        let load = ProgramHeader {
            kind: PT_LOAD,
            offset: 0x1000,
            paddr: 0x10_0000,
            file_size: 0x20,
            mem_size: 0x30,
        };
        let mut elf64 = elf64_header(1);
        elf64.extend(program_header64(&load));
        let headers: Vec<_> = Elf::parse(&elf64).unwrap().program_headers().collect();
        assert_eq!(headers, [Ok(load)]);
    }

    #[test]
    fn refuses_malformed_headers() {
        let parse = |b: &[u8]| Elf::parse(b).map(|_| ());
        assert_eq!(parse(b""), Err(ElfError::NotElf));
        assert_eq!(parse(b"MZ\x90\0"), Err(ElfError::NotElf));
        let mut big_endian = pvh_elf32();
        big_endian[5] = 2;
        assert_eq!(parse(&big_endian), Err(ElfError::NotElf));
        let mut no_class = pvh_elf32();
        no_class[4] = 3;
        assert_eq!(parse(&no_class), Err(ElfError::NotElf));
        // Cut inside the header: before the program header count of either class.
        assert_eq!(parse(&pvh_elf32()[..0x2d]), Err(ElfError::TruncatedHeader));
        assert_eq!(
            parse(&elf64_header(1)[..0x39]),
            Err(ElfError::TruncatedHeader)
        );
        // Program headers of another size (here a 64-bit one in a 32-bit file).
        let mut odd = pvh_elf32();
        odd[0x2a..0x2c].copy_from_slice(&56u16.to_le_bytes());
        let expected = ElfError::ProgramHeaderSize {
            size: 56,
            expected: 32,
        };
        assert_eq!(parse(&odd), Err(expected));
        // No program headers need no size.
        let mut none = elf64_header(0);
        none[0x36..0x38].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(parse(&none), Ok(()));
        assert_eq!(
            parse(&elf64_header(65)),
            Err(ElfError::TooManyProgramHeaders { count: 65 })
        );
    }

    #[test]
    fn program_headers_past_the_bytes_are_errors() {
        // Cut inside the only program header.
        let cut = &pvh_elf32()[..60];
        let headers: Vec<_> = Elf::parse(cut).unwrap().program_headers().collect();
        assert_eq!(headers, [Err(ElfError::ProgramHeaderPastEnd { index: 0 })]);
        // A table offset far past the file, and one past any address (offset + index * size
        // overflows), in both classes.
        let mut far = pvh_elf32();
        far[0x1c..0x20].copy_from_slice(&u32::MAX.to_le_bytes());
        let headers: Vec<_> = Elf::parse(&far).unwrap().program_headers().collect();
        assert_eq!(headers, [Err(ElfError::ProgramHeaderPastEnd { index: 0 })]);
        let mut far64 = elf64_header(2);
        far64[0x20..0x28].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        let headers: Vec<_> = Elf::parse(&far64).unwrap().program_headers().collect();
        assert_eq!(
            headers,
            [0, 1].map(|index| Err(ElfError::ProgramHeaderPastEnd { index }))
        );
        assert_eq!(pvh_entry(&far), None);
        assert_eq!(pvh_entry(&far64), None);
    }

    /// Every prefix of the fixture, and the fixture with any one byte at 0 or 0xff: read
    /// without a panic (the fuzz target `pvh_kernel` goes further).
    #[test]
    fn never_panics_on_damaged_files() {
        let read = |b: &[u8]| {
            if let Ok(elf) = Elf::parse(b) {
                elf.program_headers().for_each(drop);
                elf.pvh_entry();
            }
        };
        let good = pvh_elf32();
        for len in 0..good.len() {
            read(&good[..len]);
        }
        for at in 0..good.len() {
            for byte in [0, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                read(&bad);
            }
        }
    }

    #[test]
    fn finds_the_pvh_note() {
        assert_eq!(pvh_entry(&pvh_elf32()), Some(0x100000));
        assert_eq!(pvh_entry(b"\x7fELF"), None);
        assert_eq!(pvh_entry(&[]), None);
        // Another note type.
        let mut other = pvh_elf32();
        other[0x68] = 17;
        assert_eq!(pvh_entry(&other), None);
        // A note segment larger than the bytes read: what is there is searched.
        let mut huge = pvh_elf32();
        huge[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&huge), Some(0x100000));
        // The value: 4 or 8 bytes; one cut off or of another size is none.
        assert_eq!(pvh_entry(&pvh_elf32()[..0x72]), None);
        let mut odd = pvh_elf32();
        odd[0x64..0x68].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(pvh_entry(&odd), None);
        let mut wide = pvh_elf32();
        wide[0x64..0x68].copy_from_slice(&8u32.to_le_bytes());
        wide[68..72].copy_from_slice(&24u32.to_le_bytes());
        wide[0x70..0x78].copy_from_slice(&0x1_0000_0000u64.to_le_bytes());
        assert_eq!(pvh_entry(&wide), Some(0x1_0000_0000));
        // Its value past the note segment (a value of 8 bytes in a segment of 20) is none.
        wide[68..72].copy_from_slice(&20u32.to_le_bytes());
        assert_eq!(pvh_entry(&wide), None);
        // Name and value sizes that overflow the next note's offset end the search.
        let mut overflow = pvh_elf32();
        overflow[0x68] = 17;
        overflow[0x60..0x64].copy_from_slice(&u32::MAX.to_le_bytes());
        overflow[0x64..0x68].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&overflow), None);
    }
}
