/*
 * A freestanding test unikernel for crid.
 *
 * Booted through the PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY) in 32-bit protected mode with
 * paging off; %ebx holds the physical address of the hvm_start_info structure. It prints a
 * greeting and its command line on the first serial port (0x3f8), and the size and first line of
 * its first PVH module (an initrd), if it has one. Given a virtio-mmio block
 * device on the command line, it reads sector 0 and prints the text there ("disk marker: ..."),
 * writes sector 1 and reads it back (blk.h). Given 9p.read=, 9p.write= or 9p.stat= paths, it
 * reads, writes or stats them over the legacy virtio-9p PCI device tagged as its root (ninep.h,
 * pci.h). Then:
 *   exit=N   writes N to QEMU's isa-debug-exit port (0xf4): QEMU exits with (N << 1) | 1
 *   no exit= halts forever (for stop/kill tests), or, given a virtio-mmio network device
 *            (virtio_mmio.device=4K@0xADDR:IRQ) and an address (netdev.ip=A.B.C.D/...), serves
 *            it forever: answers ARP for its address, ICMP echo and UDP datagrams (echoed
 *            back to the sender), polling the queues (no interrupts).
 *   prompt=1 ends its output with a line that has no newline: "crid-test-guest: last words"
 *            before it exits, or "crid-test-guest: prompt> " before it halts (a VMM that
 *            sends its serial output a line at a time must still send these); prompt=2
 *            halts after a one-character prompt on a line of its own,
 *            "crid-test-guest: prompt\n>" (a VMM that has KVM queue the serial data port's
 *            writes must still send that byte, written after the guest's last exit).
 * No SSE, no libc: gcc -m32 -ffreestanding -mgeneral-regs-only -nostdlib -static.
 */

/* Types, start info, port I/O and the PVH entry, shared with crid's PCI shim. */
#include "../../../pcishim/pvh.h"

#define SERIAL 0x3f8
#define DEBUG_EXIT 0xf4

PVH_ENTRY(guest_main, 16384);

static void putc(char c)
{
	int spin = 100000;
	while (!(inb(SERIAL + 5) & 0x20) && --spin)
		;
	outb(SERIAL, (u8)c);
}

static void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

static void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* Returns the value of key=N in the command line, or -1. */
static int param(const char *cmdline, const char *key)
{
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ')
			p++;
		const char *k = key;
		const char *q = p;
		while (*k && *q == *k) {
			q++;
			k++;
		}
		if (!*k && *q == '=') {
			int v = 0, digits = 0;
			q++;
			while (*q >= '0' && *q <= '9' && digits < 3) {
				v = v * 10 + (*q - '0');
				q++;
				digits++;
			}
			return digits ? v : -1;
		}
		while (*p && *p != ' ')
			p++;
	}
	return -1;
}

#include "virtio.h"
#include "net.h"
#include "blk.h"
#include "pci.h"
#include "ninep.h"


/* "initrd: N bytes: FIRST LINE" for the first module (at most 64 characters of it). */
static void print_initrd(const struct hvm_start_info *info)
{
	if (!info->nr_modules || !info->modlist_paddr || info->modlist_paddr >= 0x100000000ull)
		return;
	const struct hvm_modlist_entry *m = (const struct hvm_modlist_entry *)(u32)info->modlist_paddr;
	if (!m->paddr || m->paddr >= 0x100000000ull || m->size >= 0x100000000ull)
		return;
	const char *text = (const char *)(u32)m->paddr;
	puts("initrd: ");
	put_dec((u32)m->size);
	puts(" bytes: ");
	for (u32 i = 0; i < m->size && i < 64 && text[i] != '\n'; i++)
		putc(text[i] >= ' ' && text[i] < 127 ? text[i] : '?');
	puts("\n");
}

void guest_main(const struct hvm_start_info *info)
{
	const char *cmdline = "";
	puts("crid-test-guest: booted\n");
	if (info->magic != HVM_START_MAGIC) {
		puts("crid-test-guest: bad start info magic\n");
		outb(DEBUG_EXIT, 0x7f);
		halt_forever();
	}
	if (info->cmdline_paddr && info->cmdline_paddr < 0x100000000ull)
		cmdline = (const char *)(u32)info->cmdline_paddr;
	puts("cmdline: ");
	puts(cmdline);
	puts("\n");
	print_initrd(info);
	blk_test(cmdline);
	ninep_test(cmdline);
	int prompt = param(cmdline, "prompt") > 0;
	int code = param(cmdline, "exit");
	if (code >= 0 && code < 128) {
		puts("crid-test-guest: exiting\n");
		if (prompt)
			puts("crid-test-guest: last words");
		outb(DEBUG_EXIT, (u8)code);
	}
	if (net_serve(cmdline))
		halt_forever();
	if (prompt) {
		puts(param(cmdline, "prompt") == 2 ? "crid-test-guest: prompt\n>"
						   : "crid-test-guest: prompt> ");
		halt_forever();
	}
	puts("crid-test-guest: halting\n");
	halt_forever();
}
