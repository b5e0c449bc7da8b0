/*
 * What freestanding 32-bit x86 code needs, shared by crid's PCI firmware (shim.c) and the
 * freestanding test guest (sandbox/tests/guests/freestanding): fixed-width types, the PVH start
 * info structures (Xen's arch-x86/hvm/start_info.h, version 1), which the firmware hands the
 * guest, x86 port I/O, and, for the guest, PVH_ENTRY, which emits the XEN_ELFNOTE_PHYS32_ENTRY
 * note, the entry point and its stack. PVH enters in 32-bit protected mode with paging off and
 * %ebx holding the start info's physical address.
 */
#ifndef CRID_PVH_H
#define CRID_PVH_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;
	u32 memmap_entries;
	u32 reserved;
};

struct hvm_modlist_entry {
	u64 paddr;
	u64 size;
	u64 cmdline_paddr;
	u64 reserved;
};

struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(u16 port, u32 v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u16 inw(u16 port)
{
	u16 v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/*
 * The PVH note (namesz 4, descsz 4, type 18 = XEN_ELFNOTE_PHYS32_ENTRY, name "Xen", desc the
 * 32-bit entry address), the entry `_start` (interrupts off, the stack, `main(start_info)`, then
 * halt if it returns) and STACK bytes of stack in .bss. The linker scripts place .note.pvh and
 * .text.entry.
 */
#define PVH_ENTRY(main, stack)                                                                 \
	__asm__(".pushsection .note.pvh, \"a\", @note\n"                                       \
		".balign 4\n"                                                                  \
		".long 4\n"                                                                    \
		".long 4\n"                                                                    \
		".long 18\n"                                                                   \
		".asciz \"Xen\"\n"                                                             \
		".balign 4\n"                                                                  \
		".long _start\n"                                                               \
		".balign 4\n"                                                                  \
		".popsection\n");                                                              \
	__asm__(".pushsection .text.entry, \"ax\"\n"                                           \
		".globl _start\n"                                                              \
		"_start:\n"                                                                    \
		"  cli\n"                                                                      \
		"  movl $stack_top, %esp\n"                                                    \
		"  pushl %ebx\n"                                                               \
		"  call " #main "\n"                                                           \
		"1: hlt\n"                                                                     \
		"  jmp 1b\n"                                                                   \
		".popsection\n");                                                              \
	__asm__(".pushsection .bss\n"                                                          \
		".balign 16\n"                                                                 \
		".skip " #stack "\n"                                                           \
		"stack_top:\n"                                                                 \
		".popsection\n")

#endif
