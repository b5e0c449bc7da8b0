//! Loading the guest: the kernel (an ELF with a PVH note, an ELF vmlinux or a bzImage, all
//! parsed by `linux-loader`), the optional initrd, the command line, and the boot structures
//! the entry protocol expects.
//!
//! - PVH (what QEMU uses for a PVH ELF; Unikraft, the crid test guest, Linux with CONFIG_PVH):
//!   32-bit protected mode with paging off at the note's entry, EBX = `hvm_start_info`, which
//!   points at the command line, the memory map and the initrd as module 0.
//! - Linux 64-bit boot protocol (bzImage, or a vmlinux without the note — what Firecracker
//!   does): long mode on identity page tables, RSI = the zero page with the setup header, the
//!   command line, the initrd and the e820 map.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Error as ElfError, PvhBootCapability};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, KernelLoaderResult, load_cmdline};
use vm_memory::{Bytes, GuestAddress, ReadVolatile};

use crate::VmmError;
use crate::memory::{self, GuestMemoryMmap};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// The 64-bit entry of a bzImage is 0x200 past the protected-mode code it loads.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const SETUP_HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_UNDEFINED: u8 = 0xff;
const PAGE: u64 = 0x1000;

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode, paging off; EBX = [`memory::PVH_INFO_ADDR`].
    Pvh { entry: u64 },
    /// 64-bit long mode; RSI = [`memory::ZERO_PAGE_ADDR`].
    Linux64 { entry: u64 },
}

/// What the guest is started with: files, or any seekable bytes (the fuzz target's).
pub struct BootFiles<'a, K, I> {
    pub kernel: &'a mut K,
    pub initrd: Option<&'a mut I>,
    pub cmdline: &'a Cmdline,
}

/// What a kernel or initrd can be read from.
pub trait Image: Read + ReadVolatile + Seek {}
impl<T: Read + ReadVolatile + Seek> Image for T {}

/// Parses the kernel command line (at most [`memory::CMDLINE_MAX`] bytes with its NUL).
pub fn cmdline(text: &str) -> Result<Cmdline, VmmError> {
    Cmdline::try_from(text, memory::CMDLINE_MAX)
        .map_err(|e| VmmError::Boot(format!("kernel command line: {e}")))
}

/// Loads the kernel, initrd and command line into `mem` and writes the boot structures.
pub fn load<K: Image, I: Image>(
    mem: &GuestMemoryMmap,
    files: BootFiles<'_, K, I>,
) -> Result<Entry, VmmError> {
    let (loaded, kind) = load_kernel(mem, files.kernel)?;
    let low_end = memory::low_ram_end(mem);
    if loaded.kernel_end > low_end {
        return Err(VmmError::Boot(
            "the kernel does not fit in guest memory".into(),
        ));
    }
    load_cmdline(mem, GuestAddress(memory::CMDLINE_ADDR), files.cmdline)
        .map_err(|e| VmmError::Boot(format!("writing the command line: {e}")))?;
    let cmdline_len = files
        .cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .unwrap_or(1);
    match kind {
        KernelKind::Pvh(entry) => {
            let initrd = match files.initrd {
                Some(f) => Some(load_initrd(mem, f, loaded.kernel_end, low_end)?),
                None => None,
            };
            write_pvh_info(mem, initrd)?;
            Ok(Entry::Pvh { entry })
        }
        KernelKind::Linux { entry, header } => {
            let max = match u64::from(header.initrd_addr_max) {
                0 => low_end,
                m => (m + 1).min(low_end),
            };
            let initrd = match files.initrd {
                Some(f) => Some(load_initrd(mem, f, loaded.kernel_end, max)?),
                None => None,
            };
            write_zero_page(mem, header, cmdline_len, initrd)?;
            Ok(Entry::Linux64 { entry })
        }
    }
}

enum KernelKind {
    Pvh(u64),
    Linux { entry: u64, header: setup_header },
}

/// Loads an ELF (PVH note preferred) or, when the file is not an ELF, a bzImage.
fn load_kernel<K: Image>(
    mem: &GuestMemoryMmap,
    kernel: &mut K,
) -> Result<(KernelLoaderResult, KernelKind), VmmError> {
    let himem = Some(GuestAddress(memory::HIMEM_START));
    match Elf::load(mem, None, kernel, himem) {
        Ok(r) => {
            let kind = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => KernelKind::Pvh(addr.0),
                _ => KernelKind::Linux {
                    entry: r.kernel_load.0,
                    header: vmlinux_header(),
                },
            };
            Ok((r, kind))
        }
        Err(linux_loader::loader::Error::Elf(ElfError::InvalidElfMagicNumber)) => {
            kernel
                .seek(SeekFrom::Start(0))
                .map_err(|e| VmmError::io("seeking the kernel", e))?;
            let r = BzImage::load(mem, None, kernel, himem)
                .map_err(|e| VmmError::Boot(format!("loading the kernel: {e}")))?;
            let header = r
                .setup_header
                .ok_or_else(|| VmmError::Boot("bzImage without a setup header".into()))?;
            let entry = r
                .kernel_load
                .0
                .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                .ok_or_else(|| VmmError::Boot("bzImage load address overflows".into()))?;
            Ok((r, KernelKind::Linux { entry, header }))
        }
        Err(e) => Err(VmmError::Boot(format!("loading the ELF kernel: {e}"))),
    }
}

/// The setup header a vmlinux would carry in a bzImage.
fn vmlinux_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: SETUP_HEADER_MAGIC,
        kernel_alignment: 0x0100_0000,
        ..Default::default()
    }
}

/// Reads the initrd into the highest page-aligned place below `below` and above `kernel_end`.
fn load_initrd<I: Image>(
    mem: &GuestMemoryMmap,
    initrd: &mut I,
    kernel_end: u64,
    below: u64,
) -> Result<(u64, u64), VmmError> {
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(|e| VmmError::io("sizing the initrd", e))?;
    initrd
        .seek(SeekFrom::Start(0))
        .map_err(|e| VmmError::io("seeking the initrd", e))?;
    let addr = below
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| VmmError::Boot("the initrd does not fit in guest memory".into()))?;
    let len = usize::try_from(size).map_err(|_| VmmError::Boot("initrd too large".into()))?;
    read_into(mem, GuestAddress(addr), initrd, len)?;
    Ok((addr, size))
}

fn read_into<F: ReadVolatile>(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    src: &mut F,
    len: usize,
) -> Result<(), VmmError> {
    mem.read_exact_volatile_from(addr, src, len)
        .map_err(|e| VmmError::Boot(format!("reading the initrd into guest memory: {e}")))
}

fn write_pvh_info(mem: &GuestMemoryMmap, initrd: Option<(u64, u64)>) -> Result<(), VmmError> {
    let map: Vec<hvm_memmap_table_entry> = memory::memory_map(mem)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: memory::CMDLINE_ADDR,
        memmap_paddr: memory::PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(memory::PVH_INFO_ADDR));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = memory::PVH_MODLIST_ADDR;
        params = BootParams::new(&info, GuestAddress(memory::PVH_INFO_ADDR));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(memory::PVH_MODLIST_ADDR),
        );
    }
    params.set_sections(&map, GuestAddress(memory::PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| VmmError::Boot(format!("writing the PVH start info: {e}")))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: setup_header,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), VmmError> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = SETUP_HEADER_MAGIC;
    params.hdr.cmd_line_ptr = memory::CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = memory::memory_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(VmmError::Boot("too many e820 entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(memory::ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| VmmError::Boot(format!("writing the zero page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    /// A 64-bit ELF with one PT_LOAD at 1 MiB (4 bytes: `hlt; jmp $-1; nop`) and, when
    /// `pvh`, a PT_NOTE with the PVH entry note.
    pub(crate) fn elf64(pvh: bool) -> Vec<u8> {
        let phnum: u16 = if pvh { 2 } else { 1 };
        let phoff = 64u64;
        let data_off = phoff + 56 * u64::from(phnum);
        let note_off = data_off + 4;
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0x10_0000u64.to_le_bytes()); // entry
        b.extend_from_slice(&phoff.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // shoff
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&64u16.to_le_bytes());
        b.extend_from_slice(&56u16.to_le_bytes());
        b.extend_from_slice(&phnum.to_le_bytes());
        b.extend_from_slice(&[0; 6]);
        let phdr = |b: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64| {
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&5u32.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&4u64.to_le_bytes());
        };
        phdr(&mut b, 1, data_off, 0x10_0000, 4);
        if pvh {
            phdr(&mut b, 4, note_off, 0, 20);
        }
        b.extend_from_slice(&[0xf4, 0xeb, 0xfd, 0x90]);
        if pvh {
            for v in [4u32, 4, 18] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(b"Xen\0");
            b.extend_from_slice(&0x10_0000u32.to_le_bytes());
        }
        b
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn pvh_elf_boots_through_the_start_info() {
        let mem = memory::create(16).unwrap();
        let mut k = file(&elf64(true));
        let mut initrd = file(&[7u8; 5000]);
        let cl = cmdline("exit=3 hello").unwrap();
        let entry = load(
            &mem,
            BootFiles {
                kernel: &mut k,
                initrd: Some(&mut initrd),
                cmdline: &cl,
            },
        )
        .unwrap();
        assert_eq!(entry, Entry::Pvh { entry: 0x10_0000 });
        let info: hvm_start_info = mem.read_obj(GuestAddress(memory::PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(m.size, 5000);
        assert_eq!(m.paddr % PAGE, 0);
        assert!(m.paddr + m.size <= 16 << 20);
        let mut cl_bytes = [0u8; 13];
        mem.read_slice(&mut cl_bytes, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&cl_bytes, b"exit=3 hello\0");
        let first: u8 = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(first, 0xf4);
    }

    #[test]
    fn elf_without_note_boots_linux_64() {
        let mem = memory::create(16).unwrap();
        let mut k = file(&elf64(false));
        let cl = cmdline("console=ttyS0").unwrap();
        let entry = load(
            &mem,
            BootFiles {
                kernel: &mut k,
                initrd: None::<&mut File>,
                cmdline: &cl,
            },
        )
        .unwrap();
        assert_eq!(entry, Entry::Linux64 { entry: 0x10_0000 });
        let zp: boot_params = mem.read_obj(GuestAddress(memory::ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ zp.hdr.header }, SETUP_HEADER_MAGIC);
        assert_eq!({ zp.hdr.cmd_line_ptr }, memory::CMDLINE_ADDR as u32);
        assert_eq!(zp.e820_entries, 3);
    }

    #[test]
    fn garbage_and_oversized_kernels_are_errors() {
        let mem = memory::create(4).unwrap();
        let cl = cmdline("").unwrap();
        for bytes in [&b""[..], b"not a kernel at all", &[0u8; 4096]] {
            let mut k = file(bytes);
            let r = load(
                &mem,
                BootFiles {
                    kernel: &mut k,
                    initrd: None::<&mut File>,
                    cmdline: &cl,
                },
            );
            assert!(r.is_err());
        }
        // An initrd larger than the guest.
        let mut k = file(&elf64(true));
        let mut initrd = file(&vec![0u8; 5 << 20]);
        let r = load(
            &mem,
            BootFiles {
                kernel: &mut k,
                initrd: Some(&mut initrd),
                cmdline: &cl,
            },
        );
        assert!(r.is_err());
    }

    #[test]
    fn cmdline_is_bounded() {
        assert!(cmdline(&"a".repeat(memory::CMDLINE_MAX)).is_err());
        assert!(cmdline("console=ttyS0 exit=1").is_ok());
    }
}
