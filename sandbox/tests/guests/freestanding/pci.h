/*
 * Legacy virtio over PCI for the test guest: PCI configuration space through ports 0xcf8/0xcfc,
 * finding a device on bus 0, and the legacy (virtio 0.9.5) register block in its I/O BAR 0 with
 * a split virtqueue at a page frame number. This is the transport of QEMU's
 * `virtio-9p-pci,disable-modern=on,disable-legacy=off`, the device urunc and crid give Unikraft
 * guests (Unikraft's x86 virtio PCI driver is a legacy one). Polling only, no interrupts.
 * Included by guest.c after virtio.h (for the descriptor layout and barrier()).
 */

#define PCI_VENDOR_VIRTIO 0x1af4
#define PCI_SLOTS 32

/* Legacy virtio PCI registers, offsets in BAR 0 (no MSI-X enabled: config at 20). */
#define LVIRTIO_HOST_FEATURES 0
#define LVIRTIO_GUEST_FEATURES 4
#define LVIRTIO_QUEUE_PFN 8
#define LVIRTIO_QUEUE_NUM 12
#define LVIRTIO_QUEUE_SEL 14
#define LVIRTIO_QUEUE_NOTIFY 16
#define LVIRTIO_STATUS 18
#define LVIRTIO_CONFIG 20

/* The largest queue a legacy device may impose that the guest takes (QEMU's 9p: 128). */
#define LVQ_MAX 256
#define LVQ_ALIGN 4096

static u32 pci_read(u32 slot, u32 reg)
{
	outl(0xcf8, 0x80000000u | slot << 11 | (reg & 0xfc));
	return inl(0xcfc);
}

/*
 * The I/O base of the next legacy virtio PCI device with PCI device id `device` on bus 0
 * (function 0), searching from slot *slot, or 0 when there is none; *slot is left past it.
 * Like Unikraft's x86 PCI bus, it takes BAR 0 and the command register as the firmware left
 * them and configures nothing: a device without an I/O BAR or I/O decoding (QEMU's pc machine
 * under qboot) is reported and skipped, so the tests show whether crid's QEMU set-up gives a
 * Unikraft guest a usable device. (Bus mastering may stay off: SeaBIOS leaves it off, and QEMU
 * turns it on for a legacy virtio device when the driver sets DRIVER_OK.)
 */
static u16 pci_find_legacy(u16 device, u32 *slot)
{
	for (; *slot < PCI_SLOTS; (*slot)++) {
		u32 s = *slot;
		if (pci_read(s, 0x00) != (PCI_VENDOR_VIRTIO | (u32)device << 16))
			continue;
		u32 bar = pci_read(s, 0x10);
		u32 command = pci_read(s, 0x04) & 0xffff;
		if (!(bar & 1) || !(bar & 0xfffc) || !(command & 0x1)) {
			puts("crid-test-guest: PCI slot ");
			put_dec(s);
			puts(": virtio device not configured by the firmware (BAR0 0x");
			put_hex(bar, 8);
			puts(", command 0x");
			put_hex(command, 4);
			puts(")\n");
			continue;
		}
		(*slot)++;
		return (u16)(bar & 0xfffc);
	}
	return 0;
}

/* A split virtqueue in the legacy layout: descriptors, then the available ring, then the used
 * ring at the next 4 KiB boundary; the device chooses its size. */
struct lvq {
	u8 mem[3 * LVQ_ALIGN] __attribute__((aligned(LVQ_ALIGN)));
	u16 size;
	u16 last_used;
	u16 io;
	struct virtq_desc *desc;
	volatile u16 *avail; /* flags, idx, ring[size] */
	volatile u16 *used;  /* flags, idx, then {u32 id, u32 len}[size] */
};

/* Resets the device at `io`, accepts `features` of what it offers and sets up queue 0 in `q`;
 * returns the features agreed, or -1 when the queue is unusable. */
static int lvirtio_start(u16 io, u32 features, struct lvq *q)
{
	outb(io + LVIRTIO_STATUS, 0);
	outb(io + LVIRTIO_STATUS, 1 | 2); /* ACKNOWLEDGE | DRIVER */
	features &= inl(io + LVIRTIO_HOST_FEATURES);
	outl(io + LVIRTIO_GUEST_FEATURES, features);
	outw(io + LVIRTIO_QUEUE_SEL, 0);
	u16 n = inw(io + LVIRTIO_QUEUE_NUM);
	if (n == 0 || n > LVQ_MAX || (n & (n - 1)))
		return -1;
	for (u32 i = 0; i < sizeof(q->mem); i++)
		q->mem[i] = 0;
	u32 avail_end = 16u * n + 2u * (3u + n);
	q->size = n;
	q->last_used = 0;
	q->io = io;
	q->desc = (struct virtq_desc *)q->mem;
	q->avail = (volatile u16 *)(q->mem + 16u * n);
	q->used = (volatile u16 *)(q->mem + ((avail_end + LVQ_ALIGN - 1) & ~(LVQ_ALIGN - 1u)));
	outl(io + LVIRTIO_QUEUE_PFN, (u32)q->mem >> 12);
	outb(io + LVIRTIO_STATUS, 1 | 2 | 4); /* DRIVER_OK */
	return (int)features;
}

/* Puts a two-buffer chain (the device reads `out`, writes `in`) on queue 0, notifies, and polls
 * for the answer (bounded); returns the length the device wrote, or -1 without an answer. */
static int lvq_call(struct lvq *q, const void *out, u32 out_len, void *in, u32 in_len)
{
	q->desc[0].addr = (u32)out;
	q->desc[0].len = out_len;
	q->desc[0].flags = VIRTQ_DESC_F_NEXT;
	q->desc[0].next = 1;
	q->desc[1].addr = (u32)in;
	q->desc[1].len = in_len;
	q->desc[1].flags = VIRTQ_DESC_F_WRITE;
	q->desc[1].next = 0;
	u16 idx = q->avail[1];
	q->avail[2 + idx % q->size] = 0;
	barrier();
	q->avail[1] = (u16)(idx + 1);
	barrier();
	outw(q->io + LVIRTIO_QUEUE_NOTIFY, 0);
	for (u32 spin = 0; spin < 200000000u && q->used[1] == q->last_used; spin++)
		__asm__ volatile("pause");
	if (q->used[1] == q->last_used)
		return -1;
	volatile u32 *elem = (volatile u32 *)(q->used + 2) + 2 * (q->last_used % q->size);
	q->last_used = q->used[1];
	barrier();
	return (int)elem[1];
}
