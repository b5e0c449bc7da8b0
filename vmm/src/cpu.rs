//! vCPU set-up: CPUID, the flat segments and, for the Linux 64-bit entry, identity page tables,
//! then the registers each boot protocol starts with.
//!
//! Software KVMs (the PVM hypervisor on this project's CI machines) refuse some of what hardware
//! KVM accepts; this sets only what both protocols need: CPUID from `KVM_GET_SUPPORTED_CPUID`
//! with the APIC id filled in, no MSRs beyond what KVM initialises itself, and the FPU control
//! words a guest expects at reset.

use kvm_bindings::{CpuId, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::VmmError;
use crate::boot::Entry;
use crate::memory::{self, GuestMemoryMmap};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS: u64 = 0x80;

const LEAF_FEATURES: u32 = 1;
const LEAF_TOPOLOGY: u32 = 0xb;
const ECX_HYPERVISOR: u32 = 1 << 31;

/// One GDT descriptor from its access/flags word (`0xFA0B`-style: flags nibble, then access
/// byte), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The cached segment KVM loads for GDT entry `index` (selector `index * 8`).
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let bits = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bits(55, 1);
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// The GDT of each protocol: null, code, data, TSS (PVH: 32-bit flat code; Linux: 64-bit code).
fn gdt(entry: Entry) -> [u64; 4] {
    let code = match entry {
        Entry::Pvh { .. } => gdt_entry(0xc09b, 0, 0xfffff),
        Entry::Linux64 { .. } => gdt_entry(0xa09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

/// The CPUID table for vCPU `index` out of `count`.
pub fn cpuid(kvm: &Kvm, index: u32) -> Result<CpuId, VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24);
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_TOPOLOGY => e.edx = index,
            _ => {}
        }
    }
    Ok(cpuid)
}

/// Sets up the boot vCPU for `entry`: GDT (and page tables) in guest memory, segments,
/// control registers, general registers and the FPU.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: Entry) -> Result<(), VmmError> {
    let table = gdt(entry);
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(memory::GDT_ADDR + 8 * i as u64))
            .map_err(|e| VmmError::Memory(format!("writing the GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(memory::IDT_ADDR))
        .map_err(|e| VmmError::Memory(format!("writing the IDT: {e}")))?;

    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(|e| VmmError::kvm("KVM_GET_SREGS", e))?;
    sregs.gdt.base = memory::GDT_ADDR;
    sregs.gdt.limit = (8 * table.len() - 1) as u16;
    sregs.idt.base = memory::IDT_ADDR;
    sregs.idt.limit = 0;
    let code = segment(table[1], 1);
    let data = segment(table[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(table[3], 3);

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Pvh { entry } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = memory::PVH_INFO_ADDR;
        }
        Entry::Linux64 { entry } => {
            write_page_tables(mem)?;
            sregs.cr3 = memory::PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = memory::BOOT_STACK;
            regs.rbp = memory::BOOT_STACK;
            regs.rsi = memory::ZERO_PAGE_ADDR;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| VmmError::kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&regs)
        .map_err(|e| VmmError::kvm("KVM_SET_REGS", e))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| VmmError::kvm("KVM_SET_FPU", e))
}

/// Identity-maps the first GiB with 2 MiB pages (enough for the kernel's own early tables).
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| VmmError::Memory(format!("writing page tables: {e}")))
    };
    w(memory::PDPT_ADDR | PAGE_PRESENT_RW, memory::PML4_ADDR)?;
    w(memory::PD_ADDR | PAGE_PRESENT_RW, memory::PDPT_ADDR)?;
    for i in 0..512u64 {
        w(
            (i << 21) | PAGE_PRESENT_RW | PAGE_PS,
            memory::PD_ADDR + i * 8,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_decode() {
        let code = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!(code.selector, 8);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(
            (code.type_, code.s, code.present, code.db, code.l),
            (0xb, 1, 1, 1, 0)
        );
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code64.l, code64.db), (1, 0));
        let tss = segment(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.g, tss.type_, tss.s), (0x67, 0, 0xb, 0));
        assert_eq!(segment(0, 0).unusable, 1);
    }

    #[test]
    fn gdt_entry_layout_matches_the_manual() {
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x008b, 0x1234_5678, 0x67), 0x1200_8b34_5678_0067);
    }
}
