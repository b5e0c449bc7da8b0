/*
 * A polling virtio-blk driver over virtio-mmio (version 2) for the test guest: given a block
 * device, it reads sector 0 and prints the text at its start (the disk's marker), prints the
 * 16-bit value at byte 1080 (an ext4 superblock's magic), then writes sector 1 and reads it
 * back, reporting each step on the serial console. Included by guest.c
 * after virtio.h and net.h (for copy and same).
 */

#define SECTOR 512
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define BLK_NO_ANSWER 0xff

struct virtio_blk_req {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct vq blkq __attribute__((aligned(4096)));
static struct virtio_blk_req blk_hdr __attribute__((aligned(16)));
static u8 blk_buf[SECTOR] __attribute__((aligned(16)));
static volatile u8 blk_status;
static volatile u32 *blk_regs;

/* One request for one sector through blk_buf: header, data, status in one chain. Returns the
 * device's status (0: done) or BLK_NO_ANSWER. */
static u8 blk_request(u32 type, u32 sector)
{
	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	blk_status = BLK_NO_ANSWER;
	blkq.desc[0].addr = (u32)&blk_hdr;
	blkq.desc[0].len = sizeof(blk_hdr);
	blkq.desc[0].flags = VIRTQ_DESC_F_NEXT;
	blkq.desc[0].next = 1;
	blkq.desc[1].addr = (u32)blk_buf;
	blkq.desc[1].len = SECTOR;
	blkq.desc[1].flags = VIRTQ_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0);
	blkq.desc[1].next = 2;
	blkq.desc[2].addr = (u32)&blk_status;
	blkq.desc[2].len = 1;
	blkq.desc[2].flags = VIRTQ_DESC_F_WRITE;
	blkq.desc[2].next = 0;
	blkq.avail.ring[blkq.avail.idx % VQ_SIZE] = 0;
	barrier();
	blkq.avail.idx++;
	barrier();
	vwr(blk_regs, 0x050, 0);
	for (int spin = 0; spin < 10000000 && *(volatile u16 *)&blkq.used.idx == blkq.last_used; spin++)
		__asm__ volatile("pause");
	if (*(volatile u16 *)&blkq.used.idx == blkq.last_used)
		return BLK_NO_ANSWER;
	blkq.last_used = *(volatile u16 *)&blkq.used.idx;
	barrier();
	return blk_status;
}

static void blk_test(const char *cmdline)
{
	static const char written[] = "crid-test-guest wrote sector 1";
	u32 base = virtio_find(cmdline, VIRTIO_ID_BLK);
	if (!base)
		return;
	blk_regs = (volatile u32 *)base;
	if (!virtio_negotiate(blk_regs, 0)) {
		puts("crid-test-guest: disk: features refused\n");
		return;
	}
	virtio_setup_queue(blk_regs, 0, &blkq);
	vwr(blk_regs, 0x070, 1 | 2 | 8 | 4);
	u32 sectors = vrd(blk_regs, 0x100); /* capacity, low word */
	puts("crid-test-guest: disk: ");
	put_dec(sectors);
	puts(" sectors\n");
	u8 st = blk_request(VIRTIO_BLK_T_IN, 0);
	if (st) {
		puts("crid-test-guest: disk: read failed, status ");
		put_dec(st);
		putc('\n');
		return;
	}
	puts("crid-test-guest: disk marker: ");
	for (int i = 0; i < 64 && blk_buf[i] >= 0x20 && blk_buf[i] < 0x7f; i++)
		putc((char)blk_buf[i]);
	putc('\n');
	/* An ext2/3/4 superblock starts at byte 1024; its magic (ef53, little-endian) is at 1080. */
	if (sectors > 2 && blk_request(VIRTIO_BLK_T_IN, 2) == 0) {
		puts("crid-test-guest: disk: bytes 1080-1081: ");
		put_hex(blk_buf[57], 2);
		put_hex(blk_buf[56], 2);
		putc('\n');
	}
	if (sectors < 2)
		return;
	for (int i = 0; i < SECTOR; i++)
		blk_buf[i] = 0;
	copy(blk_buf, (const u8 *)written, sizeof(written) - 1);
	st = blk_request(VIRTIO_BLK_T_OUT, 1);
	if (st) {
		puts("crid-test-guest: disk: write refused, status ");
		put_dec(st);
		putc('\n');
		return;
	}
	for (int i = 0; i < SECTOR; i++)
		blk_buf[i] = 0;
	st = blk_request(VIRTIO_BLK_T_IN, 1);
	if (st == 0 && same(blk_buf, (const u8 *)written, sizeof(written) - 1))
		puts("crid-test-guest: disk: write read back\n");
	else
		puts("crid-test-guest: disk: read-back mismatch\n");
}
