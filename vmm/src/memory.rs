//! The guest's physical address space: RAM below the 32-bit MMIO hole (and above 4 GiB for
//! large guests), the fixed addresses of the boot structures, and the memory map the guest is
//! told about (e820 for Linux, the PVH memmap table for PVH kernels).

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::VmmError;

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The GDT both boot protocols start with.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT (limit 0): any exception before the guest loads its own is a triple fault.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, followed by the module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map table / Linux zero page (only one protocol is used per boot).
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The Linux boot stack grows down from here.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables for the 64-bit Linux entry: PML4, PDPT, one PD (first GiB, 2 MiB pages).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line and its largest size, NUL included.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// The start of the EBDA; [EBDA, 1 MiB) is reserved (legacy BIOS area).
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at 1 MiB and above.
pub const HIMEM_START: u64 = 0x10_0000;
/// RAM stops here below 4 GiB; the hole above holds the virtio-mmio devices.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 1 << 32;
/// The first virtio-mmio device window; each device gets [`MMIO_DEVICE_SIZE`] bytes.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;

/// e820 / PVH memory types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The smallest guest the boot structures fit in: kernels load at 1 MiB.
pub const MIN_MEMORY_MIB: u64 = 2;
/// A sanity bound on the requested size (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The RAM ranges for a guest of `mib` MiB: one below the MMIO hole, the rest from 4 GiB.
pub fn ram_ranges(mib: u64) -> Result<Vec<(GuestAddress, usize)>, VmmError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(VmmError::Config(format!(
            "memory must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB, not {mib}"
        )));
    }
    let bytes = mib << 20;
    let low = bytes.min(MMIO_HOLE_START);
    let to_usize =
        |n: u64| usize::try_from(n).map_err(|_| VmmError::Config("memory too large".into()));
    let mut ranges = vec![(GuestAddress(0), to_usize(low)?)];
    if bytes > low {
        ranges.push((GuestAddress(FOUR_GIB), to_usize(bytes - low)?));
    }
    Ok(ranges)
}

/// Allocates the guest's RAM (anonymous, untouched until the guest uses it).
pub fn create(mib: u64) -> Result<GuestMemoryMmap, VmmError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mib)?)
        .map_err(|e| VmmError::Memory(format!("allocating guest memory: {e}")))
}

/// One entry of the guest's memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map for `mem`: conventional memory up to the EBDA, the legacy area reserved,
/// then every RAM region from 1 MiB.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<MapEntry> {
    let mut map = vec![
        MapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push(MapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// One past the last byte of RAM below 4 GiB.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().0 < FOUR_GIB)
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range_and_large_one_skips_the_hole() {
        assert_eq!(ram_ranges(128).unwrap(), vec![(GuestAddress(0), 128 << 20)]);
        let big = ram_ranges(4096).unwrap();
        assert_eq!(big[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(
            big[1],
            (
                GuestAddress(FOUR_GIB),
                ((4096u64 << 20) - MMIO_HOLE_START) as usize
            )
        );
        assert!(ram_ranges(0).is_err());
        assert!(ram_ranges(1).is_err());
        assert!(ram_ranges(MAX_MEMORY_MIB + 1).is_err());
    }

    #[test]
    fn map_reserves_the_legacy_area() {
        let mem = create(16).unwrap();
        let map = memory_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 16 << 20);
        assert_eq!(low_ram_end(&mem), 16 << 20);
    }
}
