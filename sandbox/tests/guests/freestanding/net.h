/*
 * A polling virtio-net driver over virtio-mmio (version 2) for the test guest, and just enough
 * of ARP, IPv4, ICMP echo and UDP to answer on the guest's address. Included by guest.c after
 * virtio.h.
 */

#define BUF_SIZE 2048
#define VNET_HDR 12

static struct vq rxq __attribute__((aligned(4096)));
static struct vq txq __attribute__((aligned(4096)));
static u8 rx_bufs[VQ_SIZE][BUF_SIZE] __attribute__((aligned(16)));
static u8 tx_buf[BUF_SIZE] __attribute__((aligned(16)));
static volatile u32 *mmio;
static u8 my_mac[6];
static u8 my_ip[4];

static u32 rd(u32 off) { return vrd(mmio, off); }
static void wr(u32 off, u32 v) { vwr(mmio, off, v); }

/* The dotted address after "netdev.ip=" (Unikraft's form, IP/PREFIX:GW). */
static int parse_ip(const char *cmdline, u8 ip[4])
{
	const char *key = "netdev.ip=";
	for (const char *p = cmdline; *p; p++) {
		const char *k = key, *q = p;
		while (*k && *q == *k) {
			q++;
			k++;
		}
		if (*k)
			continue;
		for (int i = 0; i < 4; i++) {
			u32 v = 0;
			int digits = 0;
			while (*q >= '0' && *q <= '9' && digits < 3) {
				v = v * 10 + (u32)(*q++ - '0');
				digits++;
			}
			if (!digits || v > 255 || (i < 3 && *q++ != '.'))
				return 0;
			ip[i] = (u8)v;
		}
		return 1;
	}
	return 0;
}

static int net_init(void)
{
	if (!virtio_negotiate(mmio, 1u << 5)) /* VIRTIO_NET_F_MAC */
		return 0;
	virtio_setup_queue(mmio, 0, &rxq);
	virtio_setup_queue(mmio, 1, &txq);
	for (int i = 0; i < 6; i++)
		my_mac[i] = ((volatile u8 *)mmio)[0x100 + i];
	for (u16 i = 0; i < VQ_SIZE; i++) {
		rxq.desc[i].addr = (u32)rx_bufs[i];
		rxq.desc[i].len = BUF_SIZE;
		rxq.desc[i].flags = 2; /* VIRTQ_DESC_F_WRITE */
		rxq.avail.ring[i] = i;
	}
	barrier();
	rxq.avail.idx = VQ_SIZE;
	txq.desc[0].addr = (u32)tx_buf;
	wr(0x070, 1 | 2 | 8 | 4);
	barrier();
	wr(0x050, 0);
	return 1;
}

static u16 csum(const u8 *p, u32 len)
{
	u32 sum = 0;
	for (u32 i = 0; i + 1 < len; i += 2)
		sum += (u32)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (u32)(p[len - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static void copy(u8 *d, const u8 *s, u32 n)
{
	while (n--)
		*d++ = *s++;
}

static int same(const u8 *a, const u8 *b, u32 n)
{
	while (n--)
		if (*a++ != *b++)
			return 0;
	return 1;
}

/* Sends tx_buf's frame of `len` bytes (after the virtio-net header) and waits for the device. */
static void transmit(u32 len)
{
	for (int i = 0; i < VNET_HDR; i++)
		tx_buf[i] = 0;
	txq.desc[0].len = VNET_HDR + len;
	txq.desc[0].flags = 0;
	txq.avail.ring[txq.avail.idx % VQ_SIZE] = 0;
	barrier();
	txq.avail.idx++;
	barrier();
	wr(0x050, 1);
	for (int spin = 0; spin < 1000000 && *(volatile u16 *)&txq.used.idx == txq.last_used; spin++)
		__asm__ volatile("pause");
	txq.last_used = *(volatile u16 *)&txq.used.idx;
}

/* Answers one received Ethernet frame if it is for us; returns the reply's length or 0. */
static u32 answer(const u8 *in, u32 len, u8 *out)
{
	if (len < 14)
		return 0;
	u16 type = (u16)(in[12] << 8 | in[13]);
	copy(out, in + 6, 6);
	copy(out + 6, my_mac, 6);
	copy(out + 12, in + 12, 2);
	if (type == 0x0806 && len >= 42) {
		const u8 *a = in + 14;
		if (a[7] != 1 || !same(a + 24, my_ip, 4)) /* a request for our address */
			return 0;
		u8 *r = out + 14;
		copy(r, a, 6);
		r[6] = 0;
		r[7] = 2;
		copy(r + 8, my_mac, 6);
		copy(r + 14, my_ip, 4);
		copy(r + 18, a + 8, 10);
		return 42;
	}
	if (type != 0x0800 || len < 34)
		return 0;
	const u8 *ip = in + 14;
	u32 ihl = (u32)(ip[0] & 0xf) * 4;
	u32 total = (u32)(ip[2] << 8 | ip[3]);
	if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl || 14 + total > len || total > BUF_SIZE - 14 - VNET_HDR)
		return 0;
	if (!same(ip + 16, my_ip, 4))
		return 0;
	u8 *o = out + 14;
	copy(o, ip, total);
	copy(o + 12, ip + 16, 4);
	copy(o + 16, ip + 12, 4);
	o[8] = 64;
	u8 *l4 = o + ihl;
	u32 l4len = total - ihl;
	if (ip[9] == 1 && l4len >= 8 && l4[0] == 8) { /* ICMP echo request */
		l4[0] = 0;
		l4[2] = l4[3] = 0;
		u16 c = csum(l4, l4len);
		l4[2] = (u8)(c >> 8);
		l4[3] = (u8)c;
	} else if (ip[9] == 17 && l4len >= 8) { /* UDP: echo to the sender */
		u8 port[2];
		copy(port, l4, 2);
		copy(l4, l4 + 2, 2);
		copy(l4 + 2, port, 2);
		l4[6] = l4[7] = 0; /* no checksum (allowed for IPv4) */
	} else {
		return 0;
	}
	o[10] = o[11] = 0;
	u16 c = csum(o, ihl);
	o[10] = (u8)(c >> 8);
	o[11] = (u8)c;
	return 14 + total;
}

/* Serves the network forever; returns 0 without a device or address, 1 when it fails. */
static int net_serve(const char *cmdline)
{
	u32 base = virtio_find(cmdline, VIRTIO_ID_NET);
	if (!base || !parse_ip(cmdline, my_ip))
		return 0;
	mmio = (volatile u32 *)base;
	if (!net_init()) {
		puts("crid-test-guest: no virtio-net device\n");
		return 1;
	}
	puts("crid-test-guest: net up ");
	for (int i = 0; i < 6; i++) {
		put_hex(my_mac[i], 2);
		putc(i < 5 ? ':' : ' ');
	}
	for (int i = 0; i < 4; i++) {
		put_dec(my_ip[i]);
		putc(i < 3 ? '.' : '\n');
	}
	for (;;) {
		u16 used = *(volatile u16 *)&rxq.used.idx;
		if (used == rxq.last_used) {
			__asm__ volatile("pause");
			continue;
		}
		barrier();
		struct virtq_used_elem e = rxq.used.ring[rxq.last_used % VQ_SIZE];
		rxq.last_used++;
		if (e.id < VQ_SIZE && e.len > VNET_HDR && e.len <= BUF_SIZE) {
			u32 n = answer(rx_bufs[e.id] + VNET_HDR, e.len - VNET_HDR, tx_buf + VNET_HDR);
			if (n)
				transmit(n);
		}
		rxq.avail.ring[rxq.avail.idx % VQ_SIZE] = (u16)(e.id % VQ_SIZE);
		barrier();
		rxq.avail.idx++;
		barrier();
		wr(0x050, 0);
	}
}
