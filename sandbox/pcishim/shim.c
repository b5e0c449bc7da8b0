/*
 * crid's PCI set-up shim: the PVH kernel QEMU's pc machine boots through qboot for guests whose
 * drivers take their PCI devices as the firmware left them (Unikraft's x86 PCI bus, crid's test
 * guest). qboot boots in a few milliseconds but, unlike SeaBIOS, assigns no BAR and enables no
 * decoding; SeaBIOS costs seconds here (sandbox/src/vm/qemu.rs). So QEMU gets
 * `-bios qboot.rom -kernel <this shim> [-initrd <the guest's initrd>] -device loader,file=<the
 * guest's kernel> -fw_cfg name=opt/io.crid/pvh-entry,string=<its PVH entry>`: QEMU's ELF loader
 * puts the kernel's segments in RAM as for a -kernel, crid read its PVH entry from its note (a
 * kernel that loads over the shim only breaks its own boot, in its own VM), and the shim:
 *   1. configures bus 0 as SeaBIOS does on QEMU's pc machine: I/O BARs from 0xc000, 32-bit
 *      memory BARs (64-bit ones too, below 4 GiB) at the top of the PCI hole under the I/O
 *      APIC, PIIX3 PIRQ A-D routed to IRQ 10, 10, 11, 11 (level-triggered in the ELCR), each
 *      device's interrupt line set from its pin and slot, I/O, memory and bus mastering on;
 *   2. reads the kernel's entry from fw_cfg and checks it is in RAM, outside the shim;
 *   3. enters the kernel there with a start info of its own: the original command line, the
 *      memory map with the shim's pages marked reserved, and qboot's module (the guest's
 *      initrd), if any.
 * It copies nothing: with paging off (PVH), this host's PVM emulates every instruction, and a
 * guest-side copy of a 4 MiB kernel took seconds.
 * On an error it prints one line ("crid-pci-shim: ...") on the serial port and exits QEMU
 * through the isa-debug-exit port with status 0x7f (QEMU then exits 255).
 * No SSE, no libc, no interrupts: gcc -m32 -ffreestanding -nostdlib (build.sh).
 */

#include "pvh.h"

#define SERIAL 0x3f8
#define E820_RAM 1
#define E820_RESERVED 2
#define MAX_MEMMAP 64
#define MAX_RAM 32
#define FOUR_GIB 0x100000000ull

extern u8 shim_start[], shim_end[];

PVH_ENTRY(shim_main, 8192);

static void puts(const char *s)
{
	for (; *s; s++) {
		int spin = 100000;
		while (!(inb(SERIAL + 5) & 0x20) && --spin)
			;
		outb(SERIAL, (u8)*s);
	}
}

static void __attribute__((noreturn)) fail(const char *what)
{
	puts("crid-pci-shim: ");
	puts(what);
	puts("\n");
	/* crid's isa-debug-exit port (0x501 for mewz); QEMU exits (0x7f << 1) | 1. */
	outb(0xf4, 0x7f);
	outb(0x501, 0x7f);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- PCI configuration space, mechanism #1 ---- */

static void pci_addr(u32 bdf, u32 reg)
{
	outl(0xcf8, 0x80000000u | bdf << 8 | (reg & 0xfc));
}

static u32 pci_read32(u32 bdf, u32 reg)
{
	pci_addr(bdf, reg);
	return inl(0xcfc);
}

static void pci_write32(u32 bdf, u32 reg, u32 v)
{
	pci_addr(bdf, reg);
	outl(0xcfc, v);
}

static void pci_write16(u32 bdf, u32 reg, u16 v)
{
	pci_addr(bdf, reg);
	outw(0xcfc + (reg & 2), v);
}

static void pci_write8(u32 bdf, u32 reg, u8 v)
{
	pci_addr(bdf, reg);
	outb(0xcfc + (reg & 3), v);
}

#define PCI_COMMAND 0x04
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_COMMAND_SERR 0x100
#define PCI_BAR0 0x10
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d
#define PIIX3_ISA 0x70008086u /* device 7000, vendor 8086 */
#define PIIX4_PM 0x71138086u
#define ACPI_SCI_IRQ 9 /* hard-wired on PIIX4 */
#define PIIX_PIRQ_ROUTE 0x60
#define PIIX_ELCR1 0x4d0
#define PIIX_ELCR2 0x4d1
/* SeaBIOS's pci_irqs for PIIX: PIRQ A-D to IRQ 10, 10, 11, 11. */
static const u8 pirq_irq[4] = { 10, 10, 11, 11 };
/* SeaBIOS's limits on QEMU's pc machine: the I/O window, and the 32-bit PCI hole ends at the
 * I/O APIC. */
#define IO_BASE_SMALL 0xc000
#define IO_BASE_LARGE 0x1000
#define IO_LOW_END 0xa000
#define PCIMEM_END 0xfec00000ull

/* SeaBIOS's three root-bus windows. */
enum window { W_IO, W_MEM, W_PREFMEM };

struct bar {
	u32 bdf;
	u32 reg;
	u64 size;
	enum window window;
	int is64;
};

#define MAX_BARS 96
static struct bar bars[MAX_BARS];
static u32 nbars;

/* Sizes the BARs of a type-0 function (writing all ones, reading back, restoring). */
static void size_bars(u32 bdf)
{
	for (u32 reg = PCI_BAR0; reg <= PCI_BAR0 + 20; reg += 4) {
		u32 old = pci_read32(bdf, reg);
		pci_write32(bdf, reg, 0xffffffffu);
		u32 mask = pci_read32(bdf, reg);
		pci_write32(bdf, reg, old);
		if (mask == 0 || mask == 0xffffffffu)
			continue;
		struct bar b = { .bdf = bdf, .reg = reg };
		u64 bits;
		if (mask & 1) {
			b.window = W_IO;
			bits = mask & 0xfffffffcu;
		} else {
			b.window = mask & 8 ? W_PREFMEM : W_MEM;
			bits = mask & 0xfffffff0u;
			b.is64 = ((mask >> 1) & 3) == 2;
			if (b.is64 && reg < PCI_BAR0 + 20) {
				u32 old_hi = pci_read32(bdf, reg + 4);
				pci_write32(bdf, reg + 4, 0xffffffffu);
				bits |= (u64)pci_read32(bdf, reg + 4) << 32;
				pci_write32(bdf, reg + 4, old_hi);
			} else {
				bits |= 0xffffffff00000000ull; /* a 32-bit BAR */
			}
		}
		b.size = bits & (~bits + 1); /* the lowest writable bit */
		if (b.is64)
			reg += 4;
		/* Only windows that fit: I/O below 64 KiB, memory below 4 GiB. */
		u64 limit = b.window == W_IO ? 0x4000ull : 0x40000000ull;
		if (b.size && b.size <= limit && nbars < MAX_BARS)
			bars[nbars++] = b;
	}
}

/* Largest first, so that consecutive power-of-two windows stay naturally aligned. */
static void sort_bars(void)
{
	for (u32 i = 1; i < nbars; i++) {
		struct bar b = bars[i];
		u32 j = i;
		for (; j > 0 && bars[j - 1].size < b.size; j--)
			bars[j] = bars[j - 1];
		bars[j] = b;
	}
}

/* Assigns the BARs of window `w` consecutively from `base`. */
static void assign(enum window w, u64 base)
{
	for (u32 i = 0; i < nbars; i++) {
		if (bars[i].window != w)
			continue;
		pci_write32(bars[i].bdf, bars[i].reg, (u32)base);
		if (bars[i].is64)
			pci_write32(bars[i].bdf, bars[i].reg + 4, 0);
		base += bars[i].size;
	}
}

/* The total size of window `w`'s BARs; its alignment (its largest BAR) in *align. */
static u64 window_sum(enum window w, u64 *align)
{
	u64 sum = 0;
	*align = 1;
	for (u32 i = 0; i < nbars; i++) {
		if (bars[i].window != w)
			continue;
		sum += bars[i].size;
		if (bars[i].size > *align)
			*align = bars[i].size;
	}
	return sum;
}

/* Configures bus 0 (QEMU's pc machine has no bridges unless asked for); `ram_top` is the end
 * of RAM below 4 GiB. */
static void pci_setup(u64 ram_top)
{
	u32 functions[256];
	u32 nfunctions = 0;
	for (u32 dev = 0; dev < 32; dev++) {
		for (u32 fn = 0; fn < 8; fn++) {
			u32 bdf = dev << 3 | fn;
			u32 id = pci_read32(bdf, 0);
			if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) {
				if (fn == 0)
					break;
				continue;
			}
			u32 header = (pci_read32(bdf, 0x0c) >> 16) & 0xff;
			/* qboot routes the PIRQs too, but not the ELCR; SeaBIOS does both. */
			if (id == PIIX3_ISA) {
				u8 elcr[2] = { 0, 0 };
				for (u32 i = 0; i < 4; i++) {
					pci_write8(bdf, PIIX_PIRQ_ROUTE + i, pirq_irq[i]);
					elcr[pirq_irq[i] >> 3] |= (u8)(1 << (pirq_irq[i] & 7));
				}
				outb(PIIX_ELCR1, elcr[0]);
				outb(PIIX_ELCR2, elcr[1]);
			}
			if ((header & 0x7f) == 0) {
				size_bars(bdf);
				u32 pin = (pci_read32(bdf, PCI_INTERRUPT_LINE) >> 8) & 0xff;
				if (id == PIIX4_PM)
					pci_write8(bdf, PCI_INTERRUPT_LINE, ACPI_SCI_IRQ);
				else if (pin >= 1 && pin <= 4)
					pci_write8(bdf, PCI_INTERRUPT_LINE,
						   pirq_irq[(pin - 1 + dev - 1) & 3]);
				functions[nfunctions++] = bdf;
			}
			if (fn == 0 && !(header & 0x80))
				break; /* not a multi-function device */
		}
	}
	sort_bars();
	u64 align;
	u64 io_sum = window_sum(W_IO, &align);
	if (io_sum < 0x4000)
		assign(W_IO, IO_BASE_SMALL);
	else if (io_sum < IO_LOW_END - IO_BASE_LARGE)
		assign(W_IO, IO_BASE_LARGE);
	else
		fail("PCI: the I/O BARs do not fit below 0xa000");
	/* SeaBIOS's i440FX hole: from 2 or 3 GiB (or the end of RAM) to the I/O APIC. The
	 * window with the larger alignment goes at its top (prefetchable unless the other's
	 * is larger), the other right below. */
	u64 hole = ram_top <= 0x80000000ull ? 0x80000000ull :
		   ram_top <= 0xc0000000ull ? 0xc0000000ull : ram_top;
	u64 mem_align, pref_align;
	u64 mem_sum = window_sum(W_MEM, &mem_align);
	u64 pref_sum = window_sum(W_PREFMEM, &pref_align);
	enum window top = mem_align < pref_align ? W_MEM : W_PREFMEM;
	enum window below = top == W_MEM ? W_PREFMEM : W_MEM;
	u64 top_sum = top == W_MEM ? mem_sum : pref_sum;
	u64 top_align = top == W_MEM ? mem_align : pref_align;
	u64 below_sum = top == W_MEM ? pref_sum : mem_sum;
	u64 below_align = top == W_MEM ? pref_align : mem_align;
	if (mem_sum + pref_sum > PCIMEM_END - hole)
		fail("PCI: the memory BARs do not fit in the PCI hole");
	u64 top_base = (PCIMEM_END - top_sum) & ~(top_align - 1);
	u64 below_base = (top_base - below_sum) & ~(below_align - 1);
	if (below_base < hole)
		fail("PCI: the memory BARs do not fit in the PCI hole");
	assign(top, top_base);
	assign(below, below_base);
	for (u32 i = 0; i < nfunctions; i++) {
		u32 command = pci_read32(functions[i], PCI_COMMAND) & 0xffff;
		command |= PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
			   PCI_COMMAND_SERR;
		pci_write16(functions[i], PCI_COMMAND, (u16)command);
	}
}

/* ---- the kernel's entry, from fw_cfg ---- */

#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_DMA_HIGH 0x514
#define FW_CFG_DMA_LOW 0x518
#define FW_CFG_ID 0x01
#define FW_CFG_ID_DMA 0x02
#define FW_CFG_FILE_DIR 0x19
#define FW_CFG_DMA_READ 0x02
#define FW_CFG_DMA_SELECT 0x08
#define FW_CFG_MAX_FILES 4096
#define ENTRY_FILE "opt/io.crid/pvh-entry" /* pcishim::ENTRY_FW_CFG in crid */

/* fw_cfg's DMA descriptor, big-endian. */
struct fw_cfg_dma {
	u32 control;
	u32 length;
	u64 address;
};

struct fw_cfg_file {
	u32 size; /* big-endian */
	u16 select; /* big-endian */
	u16 reserved;
	char name[56];
};

static volatile struct fw_cfg_dma dma __attribute__((aligned(16)));

static u32 be32(u32 v)
{
	return __builtin_bswap32(v);
}

/* Reads `len` bytes into `buf` from the item `select` (from its start), or with select 0 from
 * where the last read of the current item ended. QEMU copies before the port write returns. */
static int fw_cfg_read(u16 select, void *buf, u32 len)
{
	u32 control = FW_CFG_DMA_READ;
	if (select)
		control |= FW_CFG_DMA_SELECT | (u32)select << 16;
	dma.control = be32(control);
	dma.length = be32(len);
	dma.address = (u64)be32((u32)buf) << 32; /* a 64-bit big-endian address below 4 GiB */
	outl(FW_CFG_DMA_HIGH, 0);
	outl(FW_CFG_DMA_LOW, be32((u32)&dma));
	return dma.control == 0;
}

static int fw_cfg_has_dma(void)
{
	u32 id = 0;
	outw(FW_CFG_SELECTOR, FW_CFG_ID);
	for (u32 i = 0; i < 4; i++)
		id |= (u32)inb(FW_CFG_DATA) << (8 * i);
	return (id & FW_CFG_ID_DMA) != 0;
}

static int is_entry_file(const char *name)
{
	const char *want = ENTRY_FILE;
	u32 i = 0;
	for (; want[i]; i++)
		if (name[i] != want[i])
			return 0;
	return name[i] == 0;
}

/* The kernel's PVH entry: crid's fw_cfg file of decimal digits. */
static u32 read_entry(void)
{
	static struct fw_cfg_file file;
	static char digits[16];
	u32 count;
	if (!fw_cfg_has_dma() || !fw_cfg_read(FW_CFG_FILE_DIR, &count, 4))
		fail("no fw_cfg DMA");
	count = be32(count);
	for (u32 i = 0; i < count && i < FW_CFG_MAX_FILES; i++) {
		if (!fw_cfg_read(0, &file, sizeof(file)))
			break;
		file.name[sizeof(file.name) - 1] = 0;
		if (!is_entry_file(file.name))
			continue;
		u32 size = be32(file.size);
		u16 select = (u16)(file.select >> 8 | file.select << 8);
		if (size == 0 || size >= sizeof(digits) || !fw_cfg_read(select, digits, size))
			break;
		u64 entry = 0;
		for (u32 d = 0; d < size && digits[d]; d++) {
			if (digits[d] < '0' || digits[d] > '9')
				fail("bad PVH entry in fw_cfg");
			entry = entry * 10 + (u64)(digits[d] - '0');
		}
		if (entry == 0 || entry >= FOUR_GIB)
			fail("bad PVH entry in fw_cfg");
		return (u32)entry;
	}
	fail("no PVH entry in fw_cfg (" ENTRY_FILE ")");
}

/* ---- the kernel ---- */

static struct hvm_start_info next_info;
static struct hvm_modlist_entry next_module;
static struct hvm_memmap_entry next_map[MAX_MEMMAP + 2];

/* The memory map handed on: `map` with the shim's pages cut out of RAM as reserved. */
static u32 carve_shim(const struct hvm_memmap_entry *map, u32 n)
{
	u64 lo = (u32)shim_start, hi = (u32)shim_end;
	u32 out = 0;
	for (u32 i = 0; i < n; i++) {
		struct hvm_memmap_entry e = map[i];
		u64 end = e.addr + e.size;
		if (e.type != E820_RAM || end <= lo || e.addr >= hi) {
			next_map[out++] = e;
			continue;
		}
		if (e.addr < lo)
			next_map[out++] = (struct hvm_memmap_entry){ e.addr, lo - e.addr, E820_RAM, 0 };
		u64 r_lo = e.addr > lo ? e.addr : lo, r_hi = end < hi ? end : hi;
		next_map[out++] = (struct hvm_memmap_entry){ r_lo, r_hi - r_lo, E820_RESERVED, 0 };
		if (end > hi)
			next_map[out++] = (struct hvm_memmap_entry){ hi, end - hi, E820_RAM, 0 };
	}
	return out;
}

void __attribute__((noreturn)) shim_main(const struct hvm_start_info *info)
{
	if (info->magic != HVM_START_MAGIC || info->version < 1)
		fail("no PVH start info with a memory map");
	if (info->memmap_entries == 0 || info->memmap_entries > MAX_MEMMAP ||
	    info->memmap_paddr >= FOUR_GIB)
		fail("bad memory map");
	const struct hvm_memmap_entry *map =
		(const struct hvm_memmap_entry *)(u32)info->memmap_paddr;
	u32 entry = read_entry();
	u64 ram_top = 0;
	int entry_in_ram = 0;
	for (u32 i = 0; i < info->memmap_entries; i++) {
		if (map[i].type != E820_RAM || map[i].addr >= FOUR_GIB)
			continue;
		u64 end = map[i].addr + map[i].size;
		if (end > FOUR_GIB)
			end = FOUR_GIB;
		if (end > ram_top)
			ram_top = end;
		if (entry >= map[i].addr && entry < end)
			entry_in_ram = 1;
	}
	if (!entry_in_ram || (entry >= (u32)shim_start && entry < (u32)shim_end))
		fail("the PVH entry is not in the kernel's RAM");
	pci_setup(ram_top);

	/* qboot's module entry (the guest's initrd) lives in qboot's memory: keep a copy. */
	if (info->nr_modules && info->modlist_paddr && info->modlist_paddr < FOUR_GIB) {
		const struct hvm_modlist_entry *mod =
			(const struct hvm_modlist_entry *)(u32)info->modlist_paddr;
		if (mod->paddr && mod->size)
			next_module = *mod;
	}
	next_info = (struct hvm_start_info){
		.magic = HVM_START_MAGIC,
		.version = 1,
		.flags = info->flags,
		.cmdline_paddr = info->cmdline_paddr,
		.rsdp_paddr = info->rsdp_paddr,
		.memmap_paddr = (u32)next_map,
		.memmap_entries = carve_shim(map, info->memmap_entries),
		.nr_modules = next_module.size ? 1 : 0,
		.modlist_paddr = next_module.size ? (u32)&next_module : 0,
	};
	__asm__ volatile("jmp *%0" : : "r"(entry), "b"(&next_info) : "memory");
	__builtin_unreachable();
}
