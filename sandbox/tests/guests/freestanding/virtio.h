/*
 * What the test guest's polling virtio-mmio (version 2) drivers share: the split virtqueue
 * layout, register access, finding a device announced on the command line
 * (virtio_mmio.device=4K@0xADDR:IRQ, any number of them) and feature negotiation. Included by
 * guest.c before net.h and blk.h.
 */

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLK 2
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

#define VQ_SIZE 8

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[VQ_SIZE];
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[VQ_SIZE];
};

struct vq {
	struct virtq_desc desc[VQ_SIZE] __attribute__((aligned(16)));
	struct virtq_avail avail __attribute__((aligned(2)));
	struct virtq_used used __attribute__((aligned(4)));
	u16 last_used;
};

#define barrier() __asm__ volatile("" : : : "memory")

static void put_hex(u32 v, int digits)
{
	const char *hex = "0123456789abcdef";
	while (digits--)
		putc(hex[(v >> (digits * 4)) & 0xf]);
}

static void put_dec(u32 v)
{
	char b[12];
	int i = 0;
	do {
		b[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i)
		putc(b[--i]);
}

static u32 vrd(volatile u32 *regs, u32 off) { return regs[off / 4]; }
static void vwr(volatile u32 *regs, u32 off, u32 v) { regs[off / 4] = v; }

/* The hex number at p (after "0x"); *end is set past it. */
static u32 parse_hex(const char *p, const char **end)
{
	u32 v = 0;
	for (;; p++) {
		u32 d;
		if (*p >= '0' && *p <= '9')
			d = (u32)(*p - '0');
		else if (*p >= 'a' && *p <= 'f')
			d = (u32)(*p - 'a' + 10);
		else
			break;
		v = (v << 4) | d;
	}
	*end = p;
	return v;
}

/* The base of the first virtio-mmio device of type `id` announced on the command line, or 0. */
static u32 virtio_find(const char *cmdline, u32 id)
{
	const char *key = "virtio_mmio.device=";
	for (const char *p = cmdline; *p; p++) {
		const char *k = key, *q = p;
		while (*k && *q == *k) {
			q++;
			k++;
		}
		if (*k)
			continue;
		while (*q && *q != '@' && *q != ' ')
			q++;
		if (q[0] != '@' || q[1] != '0' || q[2] != 'x')
			continue;
		u32 base = parse_hex(q + 3, &q);
		volatile u32 *regs = (volatile u32 *)base;
		if (base && vrd(regs, 0x000) == 0x74726976 && vrd(regs, 0x004) == 2 && vrd(regs, 0x008) == id)
			return base;
		p = q - 1;
	}
	return 0;
}

/* Resets the device and negotiates `features` (low word) with VIRTIO_F_VERSION_1; 1 if the
 * device accepts (FEATURES_OK). */
static int virtio_negotiate(volatile u32 *regs, u32 features)
{
	vwr(regs, 0x070, 0);
	vwr(regs, 0x070, 1 | 2);
	vwr(regs, 0x024, 0);
	vwr(regs, 0x020, features);
	vwr(regs, 0x024, 1);
	vwr(regs, 0x020, 1); /* VIRTIO_F_VERSION_1 */
	vwr(regs, 0x070, 1 | 2 | 8);
	return (vrd(regs, 0x070) & 8) != 0;
}

static void virtio_setup_queue(volatile u32 *regs, u32 index, struct vq *q)
{
	vwr(regs, 0x030, index);
	if (vrd(regs, 0x034) < VQ_SIZE)
		return;
	vwr(regs, 0x038, VQ_SIZE);
	vwr(regs, 0x080, (u32)q->desc);
	vwr(regs, 0x084, 0);
	vwr(regs, 0x090, (u32)&q->avail);
	vwr(regs, 0x094, 0);
	vwr(regs, 0x0a0, (u32)&q->used);
	vwr(regs, 0x0a4, 0);
	vwr(regs, 0x044, 1);
}
