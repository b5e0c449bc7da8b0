/*
 * A host-side robustness check of the test guest's 9P client (ninep.h): the client runs against
 * a fake device that answers every request with random, truncated, oversized or
 * almost-right replies (the right size, type and tag around random contents). Built with
 * AddressSanitizer and UBSan by sandbox/tests/guest_9p_fuzz.rs; any read or write outside the
 * client's buffers aborts. It also checks that the client's loops are bounded: no run sends
 * more than MAX_CALLS requests, whatever the replies.
 *
 * Usage: fuzz_ninep ITERATIONS SEED (FUZZ_VERBOSE=1 prints what the client printed)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

/* What guest.c, virtio.h, net.h and pci.h give ninep.h, for the host. */
#define putc guest_putc
#define puts guest_puts
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define PCI_SLOTS 32
#define LVIRTIO_STATUS 18
#define LVIRTIO_CONFIG 20

static int verbose;
static void guest_putc(char c)
{
	if (verbose)
		fputc(c, stdout);
}
static void guest_puts(const char *s)
{
	while (*s)
		guest_putc(*s++);
}
static void put_hex(u32 v, int digits)
{
	while (digits--)
		guest_putc("0123456789abcdef"[(v >> (digits * 4)) & 0xf]);
}
static void put_dec(u32 v)
{
	char b[12];
	snprintf(b, sizeof(b), "%u", v);
	guest_puts(b);
}
static void copy(u8 *d, const u8 *s, u32 n) { memmove(d, s, n); }
static int same(const u8 *a, const u8 *b, u32 n) { return memcmp(a, b, n) == 0; }

struct lvq {
	u16 size;
};

/* ninep.h's P9_MSIZE: no request may be longer. */
#define P9_MSIZE_MAX 16384
/* The fake device: PCI slot 3 holds the 9p device tagged fs0. */
static const char device_tag[] = "fs0";
static u8 config_byte(u32 off)
{
	if (off == 0)
		return sizeof(device_tag) - 1;
	if (off == 1)
		return 0;
	return off - 2 < sizeof(device_tag) - 1 ? (u8)device_tag[off - 2] : 0;
}
static u8 inb(u16 port) { return config_byte(port - 0xc000 - LVIRTIO_CONFIG); }
static u16 inw(u16 port) { return (u16)(inb(port) | inb(port + 1) << 8); }
static void outb(u16 port, u8 v) { (void)port; (void)v; }

static u16 pci_find_legacy(u16 device, u32 *slot)
{
	(void)device;
	if (*slot > 3)
		return 0;
	*slot = 4;
	return 0xc000;
}

static int lvirtio_start(u16 io, u32 features, struct lvq *q)
{
	(void)io;
	q->size = 128;
	return (int)features;
}

#define MAX_CALLS 2000
static unsigned calls;
static unsigned seed_state;

static u32 rnd(void)
{
	seed_state = seed_state * 1103515245u + 12345u;
	return seed_state >> 8;
}

/* The reply being built. */
static u8 *rp;
static u32 rlen, rcap;

static void put(const void *v, u32 n)
{
	if (rlen + n <= rcap)
		memcpy(rp + rlen, v, n);
	rlen += n;
}
static void put8(u8 v) { put(&v, 1); }
static void put16(u16 v) { put(&v, 2); }
static void put32(u32 v) { put(&v, 4); }
static void put64(u64 v) { put(&v, 8); }
static void put_qid(void)
{
	static const u8 types[] = {0, 0x80, 0x02, 0x02, 0xff};
	put8(types[rnd() % sizeof(types)]);
	put32(rnd());
	put64(rnd());
}
static void put_string(void)
{
	static const char *const names[] = {
		"", "x", "..data/greeting", "/etc/hello", "../../../..", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q",
		"..2026_01_01", "/", "//", "9P2000.u", "9P2000.L",
	};
	if (rnd() % 4 == 0) {
		u16 n = (u16)(rnd() % 300);
		put16(n);
		for (u16 i = 0; i < n; i++)
			put8((u8)(rnd() % 4 ? 'a' + rnd() % 26 : '/'));
		return;
	}
	const char *v = names[rnd() % (sizeof(names) / sizeof(names[0]))];
	put16((u16)strlen(v));
	put(v, (u32)strlen(v));
}

/* Answers a request: mostly a well-formed reply of the request's R-type (or Rerror) with
 * random contents, sometimes mutated or truncated; now and then garbage, an oversized length
 * (which the client must clamp) or no answer at all. Returns the length the device reports. */
static int lvq_call(struct lvq *q, const void *out, u32 out_len, void *in, u32 in_len)
{
	(void)q;
	const u8 *req = out;
	u8 *rep = in;
	calls++;
	if (calls > MAX_CALLS) {
		fprintf(stderr, "more than %d requests: an unbounded loop\n", MAX_CALLS);
		abort();
	}
	if (out_len < 7 || out_len > P9_MSIZE_MAX) {
		fprintf(stderr, "request of %u bytes\n", out_len);
		abort();
	}
	u32 kind = rnd() % 64;
	if (kind == 0)
		return -1;
	if (kind < 4) {
		u32 len = rnd() % (in_len + 1);
		for (u32 i = 0; i < len; i++)
			rep[i] = (u8)rnd();
		return kind == 1 ? (int)(in_len + rnd() % 4096) : (int)len;
	}
	rp = rep;
	rcap = in_len;
	rlen = 4;
	u8 type = req[4];
	if (rnd() % 8 == 0 && type != 100) {
		put8(107);
		put(req + 5, 2);
		put_string();
		put32(rnd() % 140);
	} else {
		put8((u8)(type + 1));
		put(req + 5, 2);
		switch (type) {
		case 100: {
			put32(rnd() % 4 ? 256 + rnd() % 70000 : rnd());
			if (rnd() % 8) {
				put16(8);
				put("9P2000.u", 8);
			} else {
				put_string();
			}
			break;
		}
		case 104:
			put_qid();
			break;
		case 110: {
			u16 asked;
			memcpy(&asked, req + 15, 2);
			u16 n = rnd() % 3 ? asked : (u16)(rnd() % 20);
			put16(n);
			for (u16 i = 0; i < n; i++)
				put_qid();
			break;
		}
		case 112:
		case 114:
			put_qid();
			put32(rnd());
			break;
		case 116: {
			if (rnd() % 16 == 0) {
				/* A device that fills the buffer and claims more: size, count and the
				 * reported length all past the buffer, no newline to stop a scan. */
				u32 claimed = in_len + 1 + rnd() % 4096;
				put32(claimed - 11);
				while (rlen < rcap)
					put8('a');
				memcpy(rep, &claimed, 4);
				return (int)claimed;
			}
			u32 n = rnd() % 4 ? rnd() % 200 : rnd();
			put32(n);
			for (u32 i = 0; i < n && rlen < rcap; i++)
				put8(rnd() % 8 ? (u8)('a' + rnd() % 26) : '\n');
			break;
		}
		case 118:
			put32(rnd());
			break;
		case 124: {
			u32 at = rlen;
			put16(0);
			put16(0);
			put16(0);
			put32(0);
			put_qid();
			put32(rnd());
			put32(rnd());
			put32(rnd());
			put64(rnd());
			for (int i = 0; i < 5; i++)
				put_string();
			put32(rnd());
			put32(rnd());
			put32(rnd());
			u16 n = (u16)(rlen - at - 2);
			if (at + 2 <= rcap)
				memcpy(rp + at, &n, 2);
			break;
		}
		default:
			break;
		}
	}
	if (rlen > rcap)
		rlen = rcap;
	u32 size = rlen;
	if (rnd() % 8 == 0)
		size = rnd() % (rlen + 8);
	memcpy(rep, &size, 4);
	if (rnd() % 8 == 0 && rlen > 7)
		rep[7 + rnd() % (rlen - 7)] = (u8)rnd();
	return (int)(rnd() % 16 == 0 ? rnd() % (rlen + 1) : rlen);
}

#include "ninep.h"

int main(int argc, char **argv)
{
	unsigned iterations = argc > 1 ? (unsigned)atoi(argv[1]) : 1000;
	unsigned seed = argc > 2 ? (unsigned)atoi(argv[2]) : 1;
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	const char *cmdline = "vfs.fstab=[ \"fs0:/:9pfs:::\" ] -- 9p.read=/srv/a/../b/c "
			      "9p.read=/etc/app/greeting 9p.stat=/ 9p.write=/data/x "
			      "9p.mkdir=/data/d 9p.write=/dev/termination-log "
			      "9p.read=/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r 9p.stat=/etc//hosts";
	unsigned max_calls = 0;
	for (unsigned i = 0; i < iterations; i++) {
		seed_state = seed + i * 7919u;
		calls = 0;
		p9_dead = 0;
		p9_msize = P9_MSIZE;
		p9_tag = 0;
		ninep_test(cmdline);
		if (calls > max_calls)
			max_calls = calls;
	}
	printf("fuzz_ninep: %u runs, at most %u requests in one\n", iterations, max_calls);
	return 0;
}
