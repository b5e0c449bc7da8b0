/*
 * crid's PCI firmware (the PCI shim): the -bios of QEMU's pc machine for guests whose drivers
 * take their PCI devices as the firmware left them (Unikraft's x86 PCI bus, crid's test guest).
 * SeaBIOS configures them but costs seconds here, and qboot boots fast but assigns no BAR; both
 * run with paging off, which this host's PVM emulates instruction by instruction, and qboot
 * also opens the BIOS shadow area (seven PAM writes, each a round of KVM memory-slot updates
 * that wait for SRCU grace periods), copies itself there and checksums QEMU's ACPI tables a
 * byte at a time. So this firmware does only what a PVH guest sees, in as few instructions and
 * exits as it can. QEMU gets `-bios <this ROM> -kernel <the guest's PVH kernel> [-initrd ...]
 * -append ...`: QEMU's ELF loader places the kernel and puts its PVH entry, command line and
 * initrd in fw_cfg. From the reset vector the firmware
 *   1. enters 32-bit protected mode (flat segments, paging off), runs from the ROM's alias
 *      below 1 MiB and keeps its data in RAM at 64 KiB;
 *   2. sets up the chipset as qboot does (PIIX3 PIRQ A-D to IRQ 10, 10, 11, 11 and the ELCR,
 *      the PIIX4 PM and SMBus bases, the IDE decoders, the PICs) and configures bus 0 as
 *      SeaBIOS does on QEMU's pc: I/O BARs from 0xc000, memory BARs (64-bit ones too) packed
 *      under the I/O APIC in SeaBIOS's order, interrupt lines from pin and slot (9 for the
 *      PIIX4 ACPI function), I/O, memory and bus mastering on;
 *   3. runs QEMU's ACPI table loader (etc/table-loader): the tables at the top of RAM below
 *      4 GiB, in the room QEMU keeps free of the initrd there, the RSDP in the EBDA, where
 *      ACPI's legacy search finds it as PVH's rsdp_paddr gives it;
 *   4. builds the MP table qboot builds (the floating pointer in the EBDA too);
 *   5. enters the kernel at its PVH entry with a start info: the command line, a memory map
 *      (QEMU's etc/e820, in its order, after the low 1 MiB: RAM but for the firmware's own,
 *      the EBDA and the F segment, reserved as qboot reserves its; the ACPI tables at the top
 *      of RAM reserved) and the initrd as the module, read into place from fw_cfg.
 * There is no BIOS shadow: SMBIOS (qboot's copy in the F segment) and the real-mode BIOS
 * services are not provided, which PVH guests do not use.
 * A QEMU started before its guest was known (paused, without -kernel) gets its kernel from
 * crid instead: crid writes the PVH kernel's segments into guest RAM and a boot block at
 * BOOT_BLOCK (magic, entry, command line); when the magic is there the firmware takes the
 * entry and the command line from the block (and no initrd), else from fw_cfg as above.
 * On an error it prints one line ("crid-pci-shim: ...") on the serial port and exits QEMU
 * through the isa-debug-exit port with status 0x7f (QEMU then exits 255).
 * No SSE, no libc, no interrupts: gcc -m32 -ffreestanding -nostdlib (build.sh).
 */

#include "pvh.h"

#define SERIAL 0x3f8
#define E820_RAM 1
#define E820_RESERVED 2
#define MAX_MEMMAP 32

/* The firmware's RAM (shim.ld) from 64 KiB (ram_start): the stack, .bss (cleared), .noinit
 * (buffers always written before they are read, left as they are: clearing costs emulated
 * instructions too), then the command line (from ram_end). */
extern u8 ram_start[], bss_start[], bss_end[], ram_end[];
#define NOINIT __attribute__((section(".noinit")))

/*
 * The reset vector and the way into 32-bit protected mode. The CPU starts in real mode at
 * 0xfffffff0 (CS base 0xffff0000); the far jump reloads CS as 0xf000, the ROM's alias below
 * 1 MiB where everything here is linked (the linker script gives the offsets in that segment,
 * start16_off and gdt_desc_off). Then a flat GDT, protected mode, the stack and .bss.
 */
__asm__(".pushsection .reset, \"ax\"\n"
	".code16\n"
	"  ljmp $0xf000, $start16_off\n"
	".popsection\n"
	".pushsection .text16, \"ax\"\n"
	".code16\n"
	".globl start16, gdt_desc\n"
	"start16:\n"
	"  cli\n"
	"  cld\n"
	"  lgdtl %cs:gdt_desc_off\n"
	"  movl %cr0, %eax\n"
	"  orl $1, %eax\n"
	"  movl %eax, %cr0\n"
	"  ljmpl $0x08, $start32\n"
	".code32\n"
	"start32:\n"
	"  movl $0x10, %eax\n"
	"  movl %eax, %ds\n"
	"  movl %eax, %es\n"
	"  movl %eax, %ss\n"
	"  movl %eax, %fs\n"
	"  movl %eax, %gs\n"
	"  movl $stack_top, %esp\n"
	"  movl $bss_start, %edi\n"
	"  movl $bss_end, %ecx\n"
	"  subl %edi, %ecx\n"
	"  shrl $2, %ecx\n"
	"  xorl %eax, %eax\n"
	"  rep stosl\n"
	"  call fw_main\n"
	"1: hlt\n"
	"  jmp 1b\n"
	".balign 8\n"
	"gdt:\n"
	"  .quad 0\n"
	"  .quad 0x00cf9b000000ffff\n" /* 0x08: flat 32-bit code */
	"  .quad 0x00cf93000000ffff\n" /* 0x10: flat 32-bit data */
	"gdt_desc:\n"
	"  .word 23\n"
	"  .long gdt\n"
	".popsection\n"
	".pushsection .stack, \"aw\", @nobits\n"
	".balign 16\n"
	".skip 8192\n"
	"stack_top:\n"
	".popsection\n");

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

static void *copy(void *dst, const void *src, u32 n)
{
	__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
	return dst;
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
#define I440FX 0x12378086u /* device 1237, vendor 8086 */
#define PIIX3_ISA 0x70008086u
#define PIIX3_IDE 0x70108086u
#define PIIX4_PM 0x71138086u
#define ACPI_SCI_IRQ 9 /* hard-wired on PIIX4 */
#define PIIX_PIRQ_ROUTE 0x60
#define PIIX_ELCR1 0x4d0
#define PIIX_ELCR2 0x4d1
/* qboot's and SeaBIOS's PIIX4 set-up: the ACPI PM I/O base (0x600, as QEMU's ACPI tables
 * say once it is set) and enable, the SMBus base (0x700) and enable. */
#define PIIX4_PMBASE 0x40
#define PIIX4_PMREGMISC 0x80
#define PIIX4_SMBHSTBASE 0x90
#define PIIX4_SMBHSTCFG 0xd2
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
static struct bar bars[MAX_BARS] NOINIT;
static u32 nbars;

/* The size mask of a BAR: all ones written, read back at the address still latched. The BARs
 * are unassigned (zero) at power-on and those kept are assigned below, so only a BAR left out
 * is written back. Every configuration access is a port I/O exit to QEMU. */
static u32 bar_mask(u32 bdf, u32 reg)
{
	pci_addr(bdf, reg);
	outl(0xcfc, 0xffffffffu);
	return inl(0xcfc);
}

/* Sizes the BARs of a type-0 function. */
static void size_bars(u32 bdf)
{
	for (u32 reg = PCI_BAR0; reg <= PCI_BAR0 + 20; reg += 4) {
		u32 mask = bar_mask(bdf, reg);
		if (mask == 0)
			continue; /* not implemented: the write did nothing */
		struct bar b = { .bdf = bdf, .reg = reg };
		u64 bits;
		if (mask & 1) {
			b.window = W_IO;
			bits = mask & 0xfffffffcu;
		} else {
			b.window = mask & 8 ? W_PREFMEM : W_MEM;
			bits = mask & 0xfffffff0u;
			b.is64 = ((mask >> 1) & 3) == 2;
			if (b.is64 && reg < PCI_BAR0 + 20)
				bits |= (u64)bar_mask(bdf, reg + 4) << 32;
			else
				bits |= 0xffffffff00000000ull; /* a 32-bit BAR */
		}
		b.size = bits & (~bits + 1); /* the lowest writable bit */
		/* Only windows that fit: I/O below 64 KiB, memory below 4 GiB. */
		u64 limit = b.window == W_IO ? 0x4000ull : 0x40000000ull;
		if (b.size && b.size <= limit && nbars < MAX_BARS) {
			bars[nbars++] = b;
		} else {
			pci_write32(bdf, reg, 0);
			if (b.is64)
				pci_write32(bdf, reg + 4, 0);
		}
		if (b.is64)
			reg += 4;
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

/* The chipset set-up qboot does before anything reads QEMU's ACPI tables (which QEMU builds
 * from the PM base when they are first read). */
static void chipset_setup(u32 bdf, u32 id)
{
	if (id == PIIX3_ISA) {
		u8 elcr[2] = { 0, 0 };
		for (u32 i = 0; i < 4; i++) {
			pci_write8(bdf, PIIX_PIRQ_ROUTE + i, pirq_irq[i]);
			elcr[pirq_irq[i] >> 3] |= (u8)(1 << (pirq_irq[i] & 7));
		}
		outb(PIIX_ELCR1, elcr[0]);
		outb(PIIX_ELCR2, elcr[1]);
	} else if (id == PIIX4_PM) {
		pci_write32(bdf, PIIX4_PMBASE, 0x601);
		pci_write8(bdf, PIIX4_PMREGMISC, 0x01);
		pci_write32(bdf, PIIX4_SMBHSTBASE, 0x701);
		pci_write8(bdf, PIIX4_SMBHSTCFG, 0x09);
	} else if (id == PIIX3_IDE) {
		/* The legacy ports, both channels' decoders on. */
		pci_write32(bdf, 0x10, 0x1f0);
		pci_write32(bdf, 0x14, 0x3f4);
		pci_write32(bdf, 0x18, 0x170);
		pci_write32(bdf, 0x1c, 0x374);
		pci_write16(bdf, 0x40, 0x8000);
		pci_write16(bdf, 0x42, 0x8000);
	}
}

/* The PICs as qboot leaves them: vectors 0x08 and 0x70, cascaded, all masked but the cascade. */
static void pic_setup(void)
{
	static const u8 seq[][2] = {
		{ 0x20, 0x11 }, { 0xa0, 0x11 }, { 0x21, 0x08 }, { 0xa1, 0x70 },
		{ 0x21, 0x04 }, { 0xa1, 0x02 }, { 0x21, 0x01 }, { 0xa1, 0x01 },
		{ 0x21, 0xfb }, { 0xa1, 0xff },
	};
	for (u32 i = 0; i < sizeof(seq) / sizeof(seq[0]); i++)
		outb(seq[i][0], seq[i][1]);
}

/* Configures bus 0 (QEMU's pc machine has no bridges unless asked for); `ram_top` is the end
 * of RAM below 4 GiB. */
static void pci_setup(u64 ram_top)
{
	u32 functions[256];
	u32 nfunctions = 0;
	if (pci_read32(0, 0) != I440FX)
		fail("not QEMU's pc machine (no i440FX host bridge)");
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
			chipset_setup(bdf, id);
			if ((header & 0x7f) == 0) {
				/* QEMU's host bridge, ISA bridge and PM function have no BARs:
				 * sizing them is 18 exits each for nothing. */
				if (id != I440FX && id != PIIX3_ISA && id != PIIX4_PM)
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

/* ---- fw_cfg ---- */

#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_DMA_HIGH 0x514
#define FW_CFG_DMA_LOW 0x518
#define FW_CFG_ID 0x01
#define FW_CFG_NB_CPUS 0x05
#define FW_CFG_INITRD_ADDR 0x0a
#define FW_CFG_INITRD_SIZE 0x0b
#define FW_CFG_KERNEL_ENTRY 0x10
#define FW_CFG_INITRD_DATA 0x12
#define FW_CFG_CMDLINE_SIZE 0x14
#define FW_CFG_CMDLINE_DATA 0x15
#define FW_CFG_FILE_DIR 0x19
#define FW_CFG_IRQ0_OVERRIDE 0x8002
#define FW_CFG_ID_DMA 0x02
#define FW_CFG_DMA_READ 0x02
#define FW_CFG_DMA_SELECT 0x08
#define MAX_FILES 64

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
	char name[56]; /* NUL-padded */
};

static volatile struct fw_cfg_dma dma __attribute__((aligned(16)));
/* fw_cfg's file directory as it reads: a big-endian count, then the entries. */
static struct {
	u32 count;
	struct fw_cfg_file files[MAX_FILES];
} dir NOINIT;
static struct fw_cfg_file *const files = dir.files;
static u32 nfiles;

static u32 be32(u32 v)
{
	return __builtin_bswap32(v);
}

/* Reads `len` bytes into `buf` from the start of item `select`. QEMU copies before the port
 * write returns: one exit per read, whatever its length. */
static void fw_cfg_read(u16 select, void *buf, u32 len)
{
	dma.control = be32(FW_CFG_DMA_READ | FW_CFG_DMA_SELECT | (u32)select << 16);
	dma.length = be32(len);
	dma.address = (u64)be32((u32)buf) << 32; /* a 64-bit big-endian address below 4 GiB */
	outl(FW_CFG_DMA_HIGH, 0);
	outl(FW_CFG_DMA_LOW, be32((u32)&dma));
	if (dma.control != 0)
		fail("fw_cfg DMA failed");
}

static u32 fw_cfg_u32(u16 select)
{
	u32 v = 0;
	fw_cfg_read(select, &v, 4);
	return v; /* fw_cfg's numbered items are little-endian */
}

static void fw_cfg_init(void)
{
	u32 id = 0;
	outw(FW_CFG_SELECTOR, FW_CFG_ID);
	for (u32 i = 0; i < 4; i++)
		id |= (u32)inb(FW_CFG_DATA) << (8 * i);
	if (!(id & FW_CFG_ID_DMA))
		fail("no fw_cfg DMA");
	/* The directory in two reads: its count, then the count and every entry. */
	fw_cfg_read(FW_CFG_FILE_DIR, &dir.count, 4);
	u32 count = be32(dir.count);
	nfiles = count < MAX_FILES ? count : MAX_FILES;
	fw_cfg_read(FW_CFG_FILE_DIR, &dir, 4 + nfiles * sizeof(struct fw_cfg_file));
}

/* Whether two NUL-padded 56-byte names are equal: word by word (fw_cfg and the table loader
 * both zero-fill theirs), most differ in the first word or two. */
static int name_eq(const char *a, const char *b)
{
	const u32 *x = (const u32 *)a, *y = (const u32 *)b;
	for (u32 i = 0; i < 56 / 4; i++) {
		if (x[i] != y[i])
			return 0;
		if ((x[i] - 0x01010101u) & ~x[i] & 0x80808080u)
			return 1; /* the word holding the NUL matched */
	}
	return 1;
}

/* The index of the file named `name` (56 bytes, NUL-padded), or -1. */
static int file_index(const char *name)
{
	for (u32 i = 0; i < nfiles; i++)
		if (name_eq(files[i].name, name))
			return (int)i;
	return -1;
}

static u16 file_select(u32 i)
{
	return (u16)(files[i].select >> 8 | files[i].select << 8);
}

/* The names the firmware looks up, NUL-padded as the directory's are. */
static const char TABLE_LOADER[56] = "etc/table-loader";
static const char E820[56] = "etc/e820";

/* ---- the memory below 1 MiB ---- */

#define EBDA 0x9fc00 /* qboot's: the last KiB of conventional memory */
#define BDA_EBDA_SEG 0x40e
#define RSDP_MAX 36 /* ACPI 2.0's RSDP */
#define MPTABLE_FLOAT (EBDA + 64) /* after the RSDP, still in the EBDA's first KiB */

/* ---- ACPI: QEMU's table loader (etc/table-loader), as qboot and SeaBIOS run it ---- */

#define ACPI_ROOM 0x28000 /* what QEMU keeps free of the initrd under the top of RAM */

struct loader_cmd {
	u32 cmd;
	union {
		struct {
			char file[56];
			u32 align;
			u8 zone;
		} __attribute__((packed)) alloc;
		struct {
			char dest[56];
			char src[56];
			u32 offset;
			u8 size;
		} __attribute__((packed)) ptr;
		struct {
			char file[56];
			u32 offset;
			u32 start;
			u32 len;
		} __attribute__((packed)) csum;
		u8 pad[124];
	};
} __attribute__((packed));

#define CMD_ALLOC 1
#define CMD_PTR 2
#define CMD_CHECKSUM 3
#define ZONE_FSEG 2
#define MAX_LOADER (4096 / sizeof(struct loader_cmd))

static struct loader_cmd loader[MAX_LOADER] __attribute__((aligned(4))) NOINIT;
/* Where each fw_cfg file the loader allocated was put (by directory index); the indexes of
 * those files, which the loader's other commands name. */
static u8 *file_addr[MAX_FILES];
static u32 allocated[MAX_FILES];
static u32 nallocated;

/* A 32-bit load from any address. */
typedef u32 __attribute__((aligned(1), may_alias)) unaligned_u32;

/* The byte sum of `len` bytes at `p`. Emulated code pays per instruction: the low byte of a sum
 * is the sum of the low bytes, so one add of the 32-bit word starting at each byte does, sixteen
 * to a loop (half of qboot's instructions per byte, or less). */
static u8 sum8(const u8 *p, u32 len)
{
	u32 acc = 0;
	for (; len >= 16 + 3; len -= 16, p += 16) {
		const unaligned_u32 *w0 = (const unaligned_u32 *)p;
		acc += w0[0] + *(const unaligned_u32 *)(p + 1) + *(const unaligned_u32 *)(p + 2) +
		       *(const unaligned_u32 *)(p + 3) + w0[1] + *(const unaligned_u32 *)(p + 5) +
		       *(const unaligned_u32 *)(p + 6) + *(const unaligned_u32 *)(p + 7) + w0[2] +
		       *(const unaligned_u32 *)(p + 9) + *(const unaligned_u32 *)(p + 10) +
		       *(const unaligned_u32 *)(p + 11) + w0[3] + *(const unaligned_u32 *)(p + 13) +
		       *(const unaligned_u32 *)(p + 14) + *(const unaligned_u32 *)(p + 15);
	}
	for (; len; len--)
		acc += *p++;
	return (u8)acc;
}

static u8 *loader_file(const char *name, u32 *size)
{
	/* Most commands name the file the one before named (the tables blob): try it first. */
	static u32 last;
	for (u32 k = 0; k < nallocated; k++) {
		u32 i = allocated[(last + k) % nallocated];
		if (name_eq(files[i].name, name)) {
			last = (last + k) % nallocated;
			*size = be32(files[i].size);
			return file_addr[i];
		}
	}
	fail("ACPI: the table loader names a file it did not allocate");
}

/* Runs the table loader; returns the RSDP's address (0 without ACPI). */
static u32 acpi_setup(u32 lowmem, u32 *acpi_low)
{
	int script = file_index(TABLE_LOADER);
	*acpi_low = lowmem;
	if (script < 0)
		return 0;
	u32 len = be32(files[script].size);
	if (len > sizeof(loader))
		fail("ACPI: the table loader is too long");
	fw_cfg_read(file_select(script), loader, len);
	u32 top = lowmem, fseg = EBDA, rsdp = 0;
	for (u32 c = 0; c < len / sizeof(struct loader_cmd); c++) {
		struct loader_cmd *s = &loader[c];
		if (s->cmd == CMD_ALLOC) {
			int i = file_index(s->alloc.file);
			if (i < 0)
				fail("ACPI: no such fw_cfg file");
			u32 size = be32(files[i].size);
			u32 align = s->alloc.align < 16 ? 16 : s->alloc.align;
			if (align & (align - 1))
				fail("ACPI: bad alignment");
			u8 *p;
			if (s->alloc.zone == ZONE_FSEG) {
				fseg = (fseg + align - 1) & ~(align - 1);
				if (size > EBDA + RSDP_MAX - fseg)
					fail("ACPI: the RSDP does not fit in the EBDA");
				p = (u8 *)fseg;
				fseg += size;
				if (!rsdp)
					rsdp = (u32)p;
			} else {
				if (size > top || ((top - size) & ~(align - 1)) < lowmem - ACPI_ROOM)
					fail("ACPI: the tables do not fit under the top of RAM");
				top = (top - size) & ~(align - 1);
				p = (u8 *)top;
			}
			if (!file_addr[i])
				allocated[nallocated++] = (u32)i;
			file_addr[i] = p;
			if (size)
				fw_cfg_read(file_select(i), p, size);
		} else if (s->cmd == CMD_PTR) {
			u32 dest_size, src_size;
			u8 *dest = loader_file(s->ptr.dest, &dest_size);
			u8 *src = loader_file(s->ptr.src, &src_size);
			u32 n = s->ptr.size;
			if ((n != 1 && n != 2 && n != 4 && n != 8) || s->ptr.offset > dest_size ||
			    n > dest_size - s->ptr.offset)
				fail("ACPI: bad pointer");
			u64 v = 0;
			copy(&v, dest + s->ptr.offset, n);
			v += (u32)src;
			copy(dest + s->ptr.offset, &v, n);
		} else if (s->cmd == CMD_CHECKSUM) {
			u32 size;
			u8 *p = loader_file(s->csum.file, &size);
			if (s->csum.offset >= size || s->csum.start > size ||
			    s->csum.len > size - s->csum.start)
				fail("ACPI: bad checksum range");
			p[s->csum.offset] -= sum8(p + s->csum.start, s->csum.len);
		}
		/* Anything else (WRITE_POINTER: devices crid does not give) is skipped, as
		 * qboot does. */
	}
	*acpi_low = top;
	return rsdp;
}

/* ---- the MP table, as qboot builds it ---- */

struct mp_float {
	char signature[4];
	u32 physptr;
	u8 length, spec, checksum, feature1;
	u32 feature2;
} __attribute__((packed));

struct mp_table {
	char signature[4];
	u16 length;
	u8 spec, checksum;
	char oem[8], product[12];
	u32 oemptr;
	u16 oemsize, count;
	u32 lapic;
	u16 exttable_len;
	u8 exttable_checksum, reserved;
} __attribute__((packed));

struct mp_cpu {
	u8 type, apicid, apicver, flags;
	u32 signature, features, reserved[2];
} __attribute__((packed));

struct mp_entry8 {
	u8 type, b1, b2, b3, b4, b5, b6, b7;
} __attribute__((packed));

#define MP_MAX_CPUS 255
/* The configuration table, in the firmware's RAM (qboot's follows its pointer in the EBDA,
 * which has no room for many CPUs). */
static struct {
	struct mp_table table;
	struct mp_cpu cpus[MP_MAX_CPUS];
	struct mp_entry8 rest[1 + 1 + 16 + 2]; /* bus, I/O APIC, 16 interrupts, 2 local ones */
} mp NOINIT;

static void mptable_setup(void)
{
	u32 cpus = fw_cfg_u32(FW_CFG_NB_CPUS) & 0xffff;
	u32 irq0_override = fw_cfg_u32(FW_CFG_IRQ0_OVERRIDE);
	if (cpus == 0 || cpus > MP_MAX_CPUS)
		fail("bad CPU count in fw_cfg");
	u32 eax, ebx, ecx, edx;
	__asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "0"(1));
	struct mp_entry8 *e = (struct mp_entry8 *)&mp.cpus[cpus];
	for (u32 i = 0; i < cpus; i++)
		mp.cpus[i] = (struct mp_cpu){ .type = 0, .apicid = (u8)i, .apicver = 0x14,
					      .flags = (u8)(i == 0 ? 3 : 1), .signature = eax,
					      .features = edx };
	u8 ioapic = (u8)(cpus + 1);
	*e++ = (struct mp_entry8){ 1, 0, 'I', 'S', 'A', ' ', ' ', ' ' }; /* bus 0: ISA */
	*e++ = (struct mp_entry8){ 2, ioapic, 0x14, 1, 0x00, 0x00, 0xc0, 0xfe }; /* 0xfec00000 */
	for (u8 irq = 0; irq < 16; irq++) {
		if (irq0_override && irq == 2)
			continue;
		u8 dst = irq0_override && irq == 0 ? 2 : irq;
		*e++ = (struct mp_entry8){ 3, 0, 0, 0, 0, irq, ioapic, dst };
	}
	*e++ = (struct mp_entry8){ 4, 3, 0, 0, 0, 0, 0, 0 }; /* ExtINT to LINT0 */
	*e++ = (struct mp_entry8){ 4, 1, 0, 0, 0, 0, 0xff, 1 }; /* NMI to LINT1 */
	struct mp_table *t = &mp.table;
	*t = (struct mp_table){
		.length = (u16)((u8 *)e - (u8 *)t),
		.spec = 4,
		.count = (u16)(cpus + (u32)(e - (struct mp_entry8 *)&mp.cpus[cpus])),
		.lapic = 0xfee00000u,
	};
	copy(t->signature, "PCMP", 4);
	copy(t->oem, "QBOOT   ", 8);
	copy(t->product, "000000000000", 12);
	t->checksum = (u8)-sum8((const u8 *)t, t->length);
	struct mp_float *f = (struct mp_float *)MPTABLE_FLOAT;
	*f = (struct mp_float){ .physptr = (u32)t, .length = 1, .spec = 4 };
	copy(f->signature, "_MP_", 4);
	f->checksum = (u8)-sum8((const u8 *)f, sizeof(*f));
}

/* ---- the kernel ---- */

/* crid's boot block (sandbox/src/vm/bootblock.rs), below the firmware's RAM: RAM the kernel
 * gets afterwards, so the firmware clears the magic once it has read the block. */
#define BOOT_BLOCK 0x8000
#define BOOT_MAGIC 0x64697263u /* "crid" */
#define BOOT_CMDLINE_MAX (0x10000 - BOOT_BLOCK - 16)
struct boot_block {
	u32 magic;
	u32 entry;
	u32 cmdline_size;
	u32 reserved;
	char cmdline[];
};

static struct hvm_start_info start_info;
static struct hvm_modlist_entry module;
static struct hvm_memmap_entry memmap[MAX_MEMMAP];
static u32 nmap;

static void map_add(u64 addr, u64 size, u32 type)
{
	if (size == 0)
		return;
	if (nmap == MAX_MEMMAP)
		fail("too many memory map entries");
	memmap[nmap++] = (struct hvm_memmap_entry){ addr, size, type, 0 };
}

/* An entry of QEMU's etc/e820, packed (20 bytes). */
struct e820_entry {
	u64 addr;
	u64 size;
	u32 type;
} __attribute__((packed));

/* QEMU's memory map (etc/e820) into `qemu`; returns its entry count and sets *lowmem to the
 * end of the RAM that starts at 0. */
static u32 read_e820(struct e820_entry *qemu, u32 max, u32 *lowmem)
{
	int i = file_index(E820);
	if (i < 0)
		fail("no etc/e820 in fw_cfg");
	u32 n = be32(files[i].size) / sizeof(struct e820_entry);
	if (n > max)
		n = max;
	fw_cfg_read(file_select(i), qemu, n * sizeof(struct e820_entry));
	*lowmem = 0;
	for (u32 k = 0; k < n; k++)
		if (qemu[k].addr == 0 && qemu[k].type == E820_RAM)
			*lowmem = qemu[k].size > 0xffffffffull ? 0xffffffffu : (u32)qemu[k].size;
	if (*lowmem < 0x200000)
		fail("less than 2 MiB of RAM");
	return n;
}

void __attribute__((noreturn)) fw_main(void)
{
	fw_cfg_init();
	struct e820_entry qemu[MAX_MEMMAP - 8];
	u32 lowmem;
	u32 nqemu = read_e820(qemu, sizeof(qemu) / sizeof(qemu[0]), &lowmem);

	pic_setup();
	pci_setup(lowmem);

	/* The EBDA: the BIOS data area points at it, ACPI's and the MP spec's searches look at
	 * its first KiB. */
	__asm__ volatile("movw %0, (%1)" : : "r"((u16)(EBDA >> 4)), "r"(BDA_EBDA_SEG) : "memory");
	u32 acpi_low;
	u32 rsdp = acpi_setup(lowmem, &acpi_low);
	mptable_setup();

	struct boot_block *block = (struct boot_block *)BOOT_BLOCK;
	int from_block = block->magic == BOOT_MAGIC;
	u32 cmdline_size = from_block ? block->cmdline_size : fw_cfg_u32(FW_CFG_CMDLINE_SIZE);
	u8 *cmdline = ram_end;
	if (cmdline_size > EBDA - (u32)cmdline - 1 ||
	    (from_block && cmdline_size > BOOT_CMDLINE_MAX))
		fail("the command line is too long");
	if (from_block)
		copy(cmdline, block->cmdline, cmdline_size);
	else if (cmdline_size)
		fw_cfg_read(FW_CFG_CMDLINE_DATA, cmdline, cmdline_size);
	cmdline[cmdline_size] = 0;
	u32 ram_end = ((u32)cmdline + cmdline_size + 1 + 4095) & ~4095u;
	if (ram_end > EBDA)
		ram_end = EBDA;

	u32 initrd_size = from_block ? 0 : fw_cfg_u32(FW_CFG_INITRD_SIZE);
	if (initrd_size) {
		u32 initrd = fw_cfg_u32(FW_CFG_INITRD_ADDR);
		if (initrd < 0x100000 || initrd > acpi_low || initrd_size > acpi_low - initrd)
			fail("the initrd is not in RAM");
		fw_cfg_read(FW_CFG_INITRD_DATA, (void *)initrd, initrd_size);
		module = (struct hvm_modlist_entry){ .paddr = initrd, .size = initrd_size };
	}

	/* The memory map: the low 1 MiB (the firmware's RAM, the EBDA and the F segment reserved,
	 * as qboot reserves its), then QEMU's entries in QEMU's order, as qboot passes them: its
	 * RAM from 1 MiB (less the ACPI tables at its top), the rest as they are. */
	u32 fw_ram = (u32)ram_start;
	map_add(0, fw_ram, E820_RAM);
	map_add(fw_ram, ram_end - fw_ram, E820_RESERVED);
	map_add(ram_end, EBDA - ram_end, E820_RAM);
	map_add(EBDA, 0xa0000 - EBDA, E820_RESERVED);
	map_add(0xf0000, 0x10000, E820_RESERVED);
	for (u32 k = 0; k < nqemu; k++) {
		if (qemu[k].addr == 0 && qemu[k].type == E820_RAM) {
			map_add(0x100000, acpi_low - 0x100000, E820_RAM);
			map_add(acpi_low, lowmem - acpi_low, E820_RESERVED);
			if (qemu[k].size > lowmem)
				map_add(lowmem, qemu[k].size - lowmem, E820_RAM);
		} else {
			map_add(qemu[k].addr, qemu[k].size, qemu[k].type);
		}
	}

	u32 entry = from_block ? block->entry : fw_cfg_u32(FW_CFG_KERNEL_ENTRY);
	if (entry < 0x100000 || entry >= lowmem)
		fail("the PVH entry is not in the kernel's RAM");
	if (from_block)
		block->magic = 0;
	start_info = (struct hvm_start_info){
		.magic = HVM_START_MAGIC,
		.version = 1,
		.cmdline_paddr = (u32)cmdline,
		.rsdp_paddr = rsdp,
		.memmap_paddr = (u32)memmap,
		.memmap_entries = nmap,
		.nr_modules = initrd_size ? 1 : 0,
		.modlist_paddr = initrd_size ? (u32)&module : 0,
	};
	__asm__ volatile("jmp *%0" : : "r"(entry), "b"(&start_info), "a"(0x2badb002) : "memory");
	__builtin_unreachable();
}
