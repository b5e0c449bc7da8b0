/*
 * A small 9P client for the test guest over a legacy virtio-9p PCI device (pci.h), to check
 * what a Unikraft guest with its root over 9p (urunc's mountRootfs) can do with the share crid
 * exports. Like Unikraft's 9pfs it picks the device whose mount tag (read from the device's
 * config space) is the root device the command line names (`vfs.fstab=[ "TAG:/:9pfs..." ]` or
 * `vfs.rootdev=TAG`; `fs0` without either), negotiates the protocol version Unikraft's 9pfs
 * asks for, 9P2000.u, and attaches as it does (empty uname and aname, no numeric uname).
 *
 * Modes, from the command line, each reported on the serial console:
 *   9p.read=PATH   prints the first line of the file (Twalk, Topen, Tread, Tclunk)
 *   9p.write=PATH  writes a line to the file: truncates it if it exists, else creates it in its
 *                  directory (Tcreate, mode 0644), and reports the bytes written or the error
 *   9p.mkdir=PATH  creates the directory (Tcreate with DMDIR, mode 0755)
 *   9p.stat=PATH   prints the owner's numeric uid and gid and the mode the server reports
 * Errors print the server's message and errno (Rerror). Every loop is bounded; replies are
 * parsed within their length. Included by guest.c after pci.h and net.h (for copy).
 */

#define VIRTIO_PCI_9P_LEGACY 0x1009
#define VIRTIO_9P_MOUNT_TAG 1
#define P9_VERSION "9P2000.u"
/* Above 8192, below which QEMU warns of degraded performance. */
#define P9_MSIZE 16384
#define P9_NOTAG 0xffff
#define P9_NOFID 0xffffffffu
#define P9_NONUNAME 0xffffffffu
#define P9_MAXWELEM 16
#define P9_PATH_MAX 200
#define P9_CMDLINE_MAX 4096
#define P9_ROOT_FID 1
#define P9_FILE_FID 2
#define P9_LINK_FID 3
#define P9_MAXLINKS 8
#define P9_QTSYMLINK 0x02

#define P9_TVERSION 100
#define P9_TATTACH 104
#define P9_RERROR 107
#define P9_TWALK 110
#define P9_TOPEN 112
#define P9_TCREATE 114
#define P9_TREAD 116
#define P9_TWRITE 118
#define P9_TCLUNK 120
#define P9_TSTAT 124

#define P9_OREAD 0
#define P9_OWRITE 1
#define P9_OTRUNC 0x10
#define P9_DMDIR 0x80000000u

static struct lvq p9q;
static u8 p9_tx[P9_MSIZE] __attribute__((aligned(16)));
static u8 p9_rx[P9_MSIZE] __attribute__((aligned(16)));
static u32 p9_tx_len;   /* the request being built; P9_MSIZE + 1 once it overflowed */
static u32 p9_rx_pos;   /* the reply being parsed */
static u32 p9_rx_end;
static int p9_rx_bad;   /* a read past the reply's end */
static u32 p9_msize = P9_MSIZE;
static u16 p9_tag;
static int p9_dead;     /* a request went unanswered */

static void p9_put(const void *data, u32 n)
{
	if (p9_tx_len + n > P9_MSIZE) {
		p9_tx_len = P9_MSIZE + 1;
		return;
	}
	copy(p9_tx + p9_tx_len, (const u8 *)data, n);
	p9_tx_len += n;
}

static void p9_u8(u8 v) { p9_put(&v, 1); }
static void p9_u16(u16 v) { p9_put(&v, 2); }
static void p9_u32(u32 v) { p9_put(&v, 4); }
static void p9_u64(u64 v) { p9_put(&v, 8); }

/* A 9P string: length, then the bytes (at most `max`, stopping at NUL or `stop`). */
static void p9_strn(const char *s, u32 max, char stop)
{
	u16 n = 0;
	while (n < max && s[n] && s[n] != stop)
		n++;
	p9_u16(n);
	p9_put(s, n);
}

static void p9_str(const char *s) { p9_strn(s, P9_PATH_MAX, 0); }

static void p9_begin(u8 type)
{
	p9_tx_len = 4;
	p9_u8(type);
	p9_u16(type == P9_TVERSION ? P9_NOTAG : ++p9_tag);
}

static const u8 *p9_get(u32 n)
{
	if (p9_rx_bad || n > p9_rx_end - p9_rx_pos) {
		p9_rx_bad = 1;
		return 0;
	}
	const u8 *p = p9_rx + p9_rx_pos;
	p9_rx_pos += n;
	return p;
}

static u32 p9_get_le(u32 n)
{
	const u8 *p = p9_get(n);
	u32 v = 0;
	if (!p)
		return 0;
	while (n--)
		v = v << 8 | p[n];
	return v;
}

/* A string of the reply: its bytes (not NUL-terminated) and length in *len. */
static const u8 *p9_get_str(u32 *len)
{
	*len = p9_get_le(2);
	const u8 *p = p9_get(*len);
	if (!p)
		*len = 0;
	return p;
}

static void put_bytes(const u8 *p, u32 n)
{
	for (u32 i = 0; p && i < n && i < 120; i++)
		putc(p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?');
}

/* Sends the request built since p9_begin and checks the reply: 0 when it is the R-message of
 * the request (parsing then starts after its header), else -1, with the reason (the server's
 * Rerror message and errno, or a transport fault) printed after `what`. */
static int p9_rpc(const char *what)
{
	u8 type = p9_tx[4];
	if (p9_tx_len > p9_msize) {
		puts(what);
		puts(": request too long\n");
		return -1;
	}
	if (p9_dead) {
		puts(what);
		puts(": the device stopped answering\n");
		return -1;
	}
	copy(p9_tx, (const u8 *)&p9_tx_len, 4);
	int got = lvq_call(&p9q, p9_tx, p9_tx_len, p9_rx, p9_msize);
	/* The unanswered buffers still belong to the device: never reuse them. */
	p9_dead = got < 0;
	p9_rx_pos = 0;
	p9_rx_end = got < 0 ? 0 : (u32)got > p9_msize ? p9_msize : (u32)got;
	p9_rx_bad = 0;
	u32 size = p9_get_le(4);
	u32 rtype = p9_get_le(1);
	u32 tag = p9_get_le(2);
	u32 sent_tag = (u32)p9_tx[5] | (u32)p9_tx[6] << 8;
	if (got < 0 || p9_rx_bad || size < 7 || size > p9_rx_end || tag != sent_tag) {
		puts(what);
		puts(got < 0 ? ": no answer from the device\n" : ": malformed reply\n");
		return -1;
	}
	p9_rx_end = size;
	if (rtype == P9_RERROR) {
		u32 n;
		const u8 *msg = p9_get_str(&n);
		u32 err = p9_get_le(4);
		puts(what);
		puts(": error ");
		put_bytes(msg, n);
		puts(" (errno ");
		put_dec(err);
		puts(")\n");
		return -1;
	}
	if (rtype != (u32)type + 1u) {
		puts(what);
		puts(": unexpected reply type ");
		put_dec(rtype);
		putc('\n');
		return -1;
	}
	return 0;
}

static void p9_clunk(u32 fid)
{
	p9_begin(P9_TCLUNK);
	p9_u32(fid);
	p9_rpc("crid-test-guest: 9p: clunk");
}

/* Walks from the root through the names of `path` (at most P9_MAXWELEM) as `newfid`. Returns
 * the number of names walked (the server makes `newfid` only when that is all of them: the
 * count in *names), or -1 after an Rerror (the first name missing). *link is the index of the
 * first name walked that is a symbolic link, or -1; *at and *past bound that name in `path`. */
static int p9_walk_names(const char *path, u32 newfid, const char *what, u32 *names, int *link,
			 const char **at, const char **past)
{
	const char *name[P9_MAXWELEM];
	u32 n = 0;
	const char *p = path;
	for (u32 i = 0; i < P9_PATH_MAX && *p; i++) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		if (n == P9_MAXWELEM) {
			puts(what);
			puts(": too many path elements\n");
			return -1;
		}
		name[n++] = p;
		for (u32 j = 0; j < P9_PATH_MAX && *p && *p != '/'; j++)
			p++;
	}
	p9_begin(P9_TWALK);
	p9_u32(P9_ROOT_FID);
	p9_u32(newfid);
	p9_u16((u16)n);
	for (u32 i = 0; i < n; i++)
		p9_strn(name[i], P9_PATH_MAX, '/');
	*names = n;
	*link = -1;
	if (p9_rpc(what))
		return -1;
	u32 walked = p9_get_le(2);
	for (u32 i = 0; i < walked && i < n && !p9_rx_bad; i++) {
		u32 type = p9_get_le(1);
		p9_get(4 + 8);
		if ((type & P9_QTSYMLINK) && *link < 0) {
			*link = (int)i;
			*at = name[i];
			*past = name[i];
			for (u32 j = 0; j < P9_PATH_MAX && **past && **past != '/'; j++)
				(*past)++;
		}
	}
	return walked > n ? -1 : (int)walked;
}

/* The target of the symbolic link whose name in `path` ends at `end`, from the 9P2000.u
 * stat's extension field, into `out` (NUL-terminated); 0 on success. */
static int p9_readlink(const char *path, const char *end, char *out, const char *what)
{
	static char prefix[P9_PATH_MAX + 1];
	u32 len = (u32)(end - path), n, walked;
	int link;
	const char *at, *past;
	copy((u8 *)prefix, (const u8 *)path, len);
	prefix[len] = 0;
	int got = p9_walk_names(prefix, P9_LINK_FID, what, &n, &link, &at, &past);
	if (got < 0)
		return -1;
	walked = (u32)got;
	if (walked != n)
		return -1;
	p9_begin(P9_TSTAT);
	p9_u32(P9_LINK_FID);
	int rc = p9_rpc(what);
	if (rc == 0) {
		p9_get(2 + 2 + 2 + 4 + 13 + 4 + 4 + 4 + 8);
		for (int i = 0; i < 4; i++)
			p9_get_str(&n);
		const u8 *target = p9_get_str(&n);
		if (p9_rx_bad || n == 0 || n > P9_PATH_MAX)
			rc = -1;
		else {
			copy((u8 *)out, target, n);
			out[n] = 0;
		}
	}
	p9_clunk(P9_LINK_FID);
	return rc;
}

/* Makes `newfid` the file at `path`, following symbolic links (as a client must: the server's
 * walk does not) at most P9_MAXLINKS times; 0 on success, else -1 with the reason printed. */
static int p9_lookup(const char *path, u32 newfid, const char *what)
{
	static char cur[P9_PATH_MAX + 1], next[P9_PATH_MAX + 1], target[P9_PATH_MAX + 1];
	u32 len = 0;
	while (len < P9_PATH_MAX && path[len])
		len++;
	copy((u8 *)cur, (const u8 *)path, len);
	cur[len] = 0;
	for (int hops = 0; hops <= P9_MAXLINKS; hops++) {
		u32 names;
		int link;
		const char *at = 0, *past = 0;
		int walked = p9_walk_names(cur, newfid, what, &names, &link, &at, &past);
		if (walked < 0)
			return -1;
		if (link < 0) {
			if ((u32)walked == names)
				return 0;
			puts(what);
			puts(": error No such file or directory (walk stopped early)\n");
			return -1;
		}
		if ((u32)walked == names)
			p9_clunk(newfid);
		if (p9_readlink(cur, past, target, what))
			return -1;
		/* next = (absolute target ? "" : the names before the link) + target + the rest. */
		u32 head = target[0] == '/' ? 0 : (u32)(at - cur), tlen = 0, rest = 0;
		while (tlen < P9_PATH_MAX && target[tlen])
			tlen++;
		while (rest < P9_PATH_MAX && past[rest])
			rest++;
		if (head + tlen + rest > P9_PATH_MAX) {
			puts(what);
			puts(": path too long\n");
			return -1;
		}
		copy((u8 *)next, (const u8 *)cur, head);
		copy((u8 *)next + head, (const u8 *)target, tlen);
		copy((u8 *)next + head + tlen, (const u8 *)past, rest);
		next[head + tlen + rest] = 0;
		copy((u8 *)cur, (const u8 *)next, head + tlen + rest + 1);
	}
	puts(what);
	puts(": too many symbolic links\n");
	return -1;
}

/* `path` without its last name, into `out`. */
static void p9_parent(const char *path, char *out)
{
	u32 cut = 0;
	for (u32 i = 0; i < P9_PATH_MAX && path[i]; i++)
		if (path[i] == '/' && path[i + 1] && path[i + 1] != '/')
			cut = i;
	copy((u8 *)out, (const u8 *)path, cut);
	out[cut] = 0;
}

static int p9_open(u32 fid, u8 mode, const char *what)
{
	p9_begin(P9_TOPEN);
	p9_u32(fid);
	p9_u8(mode);
	return p9_rpc(what);
}

static void ninep_read(const char *path)
{
	const char *what = "crid-test-guest: 9p: read";
	if (p9_lookup(path, P9_FILE_FID, what))
		return;
	if (p9_open(P9_FILE_FID, P9_OREAD, what) == 0) {
		p9_begin(P9_TREAD);
		p9_u32(P9_FILE_FID);
		p9_u64(0);
		p9_u32(p9_msize - 24);
		if (p9_rpc(what) == 0) {
			u32 n = p9_get_le(4);
			const u8 *data = p9_get(n);
			u32 line = 0;
			while (data && line < n && data[line] != '\n')
				line++;
			puts(what);
			putc(' ');
			puts(path);
			puts(": ");
			put_bytes(data, line);
			putc('\n');
		}
	}
	p9_clunk(P9_FILE_FID);
}

/* Creates `path`'s last element with `perm` in its parent directory, opened with `mode` as
 * P9_FILE_FID: 0, or nonzero (reported) with the fid free again. */
static int p9_create(const char *path, u32 perm, u8 mode, const char *what)
{
	static char parent[P9_PATH_MAX + 1];
	p9_parent(path, parent);
	if (p9_lookup(parent, P9_FILE_FID, what))
		return -1;
	const char *name = path;
	for (u32 i = 0; i < P9_PATH_MAX && path[i]; i++)
		if (path[i] == '/' && path[i + 1])
			name = path + i + 1;
	p9_begin(P9_TCREATE);
	p9_u32(P9_FILE_FID);
	p9_strn(name, P9_PATH_MAX, '/');
	p9_u32(perm);
	p9_u8(mode);
	p9_str(""); /* 9P2000.u: no special file */
	if (p9_rpc(what)) {
		p9_clunk(P9_FILE_FID);
		return -1;
	}
	return 0;
}

static void ninep_write(const char *path)
{
	static const char text[] = "written by crid-test-guest over 9p\n";
	const char *what = "crid-test-guest: 9p: write";
	int created = 0;
	/* An existing file is truncated; else the file is created in its directory. */
	if (p9_lookup(path, P9_FILE_FID, "crid-test-guest: 9p: write: looking up")) {
		if (p9_create(path, 0644, P9_OWRITE, what))
			return;
		created = 1;
	} else if (p9_open(P9_FILE_FID, P9_OWRITE | P9_OTRUNC, what)) {
		p9_clunk(P9_FILE_FID);
		return;
	}
	p9_begin(P9_TWRITE);
	p9_u32(P9_FILE_FID);
	p9_u64(0);
	p9_u32(sizeof(text) - 1);
	p9_put(text, sizeof(text) - 1);
	if (p9_rpc(what) == 0) {
		puts(what);
		puts(created ? " (created) " : " (truncated) ");
		puts(path);
		puts(": ");
		put_dec(p9_get_le(4));
		puts(" bytes\n");
	}
	p9_clunk(P9_FILE_FID);
}

static void ninep_mkdir(const char *path)
{
	const char *what = "crid-test-guest: 9p: mkdir";
	if (p9_create(path, P9_DMDIR | 0755, P9_OREAD, what))
		return;
	puts(what);
	putc(' ');
	puts(path);
	puts(": created\n");
	p9_clunk(P9_FILE_FID);
}

static void put_oct(u32 v)
{
	char b[12];
	int i = 0;
	do {
		b[i++] = (char)('0' + (v & 7));
		v >>= 3;
	} while (v && i < 11);
	while (i)
		putc(b[--i]);
}

static void ninep_stat(const char *path)
{
	const char *what = "crid-test-guest: 9p: stat";
	if (p9_lookup(path, P9_FILE_FID, what))
		return;
	p9_begin(P9_TSTAT);
	p9_u32(P9_FILE_FID);
	if (p9_rpc(what) == 0) {
		u32 n;
		/* nstat[2] size[2] type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]
		 * name[s] uid[s] gid[s] muid[s] extension[s] n_uid[4] n_gid[4] n_muid[4] */
		p9_get(2 + 2 + 2 + 4 + 13);
		u32 mode = p9_get_le(4);
		p9_get(4 + 4 + 8);
		for (int i = 0; i < 5; i++)
			p9_get_str(&n);
		u32 uid = p9_get_le(4);
		u32 gid = p9_get_le(4);
		if (p9_rx_bad) {
			puts(what);
			puts(": short reply\n");
		} else {
			puts(what);
			putc(' ');
			puts(path);
			puts(": uid ");
			put_dec(uid);
			puts(" gid ");
			put_dec(gid);
			puts(" mode ");
			put_oct(mode & 0777);
			puts(mode & P9_DMDIR ? " dir\n" : "\n");
		}
	}
	p9_clunk(P9_FILE_FID);
}

/* The value of the next `key` token (`key` includes its '=') from *p on, copied into `out`
 * (at most P9_PATH_MAX bytes, NUL-terminated); *p moves past it. 0 when there is none. At most
 * P9_CMDLINE_MAX characters of the command line are looked at. */
static int next_value(const char **p, const char *cmdline, const char *key, char *out)
{
#define LEFT(q) ((u32)((q) - cmdline) < P9_CMDLINE_MAX && *(q))
	while (LEFT(*p)) {
		while (LEFT(*p) && **p == ' ')
			(*p)++;
		const char *k = key, *q = *p;
		while (*k && LEFT(q) && *q == *k) {
			q++;
			k++;
		}
		u32 n = 0;
		if (!*k)
			while (n < P9_PATH_MAX && LEFT(q + n) && q[n] != ' ') {
				out[n] = q[n];
				n++;
			}
		while (LEFT(*p) && **p != ' ')
			(*p)++;
		if (!*k) {
			out[n] = 0;
			return 1;
		}
	}
	return 0;
#undef LEFT
}

/* The root device the command line names, as Unikraft reads it: the device of a
 * `vfs.fstab=[ "DEV:/:9pfs:::" ]` entry, else `vfs.rootdev=DEV`, else fs0. */
static void root_tag(const char *cmdline, char tag[P9_PATH_MAX + 1])
{
	const char *p = cmdline;
	if (next_value(&p, cmdline, "vfs.rootdev=", tag))
		return;
	p = cmdline;
	for (u32 i = 0; i < P9_CMDLINE_MAX && p[i]; i++) {
		if (p[i] != '"')
			continue;
		u32 n = 0;
		while (n < P9_PATH_MAX && p[i + 1 + n] && p[i + 1 + n] != ':' && p[i + 1 + n] != '"')
			n++;
		const char *rest = p + i + 1 + n;
		if (rest[0] == ':' && rest[1] == '/' && rest[2] == ':' && n) {
			copy((u8 *)tag, (const u8 *)(p + i + 1), n);
			tag[n] = 0;
			return;
		}
	}
	copy((u8 *)tag, (const u8 *)"fs0", 4);
}

/* Finds the 9p device tagged `tag`, starts it, negotiates and attaches; 0 on success. */
static int ninep_connect(const char *tag)
{
	const char *what = "crid-test-guest: 9p";
	u32 slot = 0;
	for (int dev = 0; dev < PCI_SLOTS; dev++) {
		u16 io = pci_find_legacy(VIRTIO_PCI_9P_LEGACY, &slot);
		if (!io)
			break;
		int features = lvirtio_start(io, VIRTIO_9P_MOUNT_TAG, &p9q);
		if (features < 0 || !(features & VIRTIO_9P_MOUNT_TAG))
			continue;
		u16 len = inw(io + LVIRTIO_CONFIG);
		u32 i = 0;
		while (i < len && i < P9_PATH_MAX && tag[i] && inb(io + LVIRTIO_CONFIG + 2 + i) == (u8)tag[i])
			i++;
		if (i != len || tag[i]) {
			outb(io + LVIRTIO_STATUS, 0);
			continue;
		}
		puts("crid-test-guest: 9p: device tagged ");
		puts(tag);
		puts(" at I/O port 0x");
		put_hex(io, 4);
		puts(", queue of ");
		put_dec(p9q.size);
		putc('\n');
		p9_begin(P9_TVERSION);
		p9_u32(P9_MSIZE);
		p9_str(P9_VERSION);
		if (p9_rpc("crid-test-guest: 9p: version"))
			return -1;
		u32 msize = p9_get_le(4), n;
		const u8 *version = p9_get_str(&n);
		if (n != sizeof(P9_VERSION) - 1 || !same(version, (const u8 *)P9_VERSION, n) || msize < 256) {
			puts("crid-test-guest: 9p: server refused " P9_VERSION "\n");
			return -1;
		}
		if (msize < p9_msize)
			p9_msize = msize;
		p9_begin(P9_TATTACH);
		p9_u32(P9_ROOT_FID);
		p9_u32(P9_NOFID);
		p9_str("");
		p9_str("");
		p9_u32(P9_NONUNAME);
		if (p9_rpc("crid-test-guest: 9p: attach"))
			return -1;
		puts("crid-test-guest: 9p: attached with " P9_VERSION ", msize ");
		put_dec(p9_msize);
		putc('\n');
		return 0;
	}
	puts(what);
	puts(": no virtio-9p device tagged ");
	puts(tag);
	putc('\n');
	return -1;
}

static void ninep_test(const char *cmdline)
{
	static char tag[P9_PATH_MAX + 1];
	static char path[P9_PATH_MAX + 1];
	const char *p = cmdline;
	if (!next_value(&p, cmdline, "9p.", path))
		return;
	root_tag(cmdline, tag);
	if (ninep_connect(tag))
		return;
	/* In command line order. */
	p = cmdline;
	for (int i = 0; i < 64 && next_value(&p, cmdline, "9p.", path); i++) {
		if (path[0] == 'r' && path[1] == 'e' && path[2] == 'a' && path[3] == 'd' && path[4] == '=')
			ninep_read(path + 5);
		else if (path[0] == 'w' && path[1] == 'r' && path[2] == 'i' && path[3] == 't' &&
			 path[4] == 'e' && path[5] == '=')
			ninep_write(path + 6);
		else if (path[0] == 'm' && path[1] == 'k' && path[2] == 'd' && path[3] == 'i' &&
			 path[4] == 'r' && path[5] == '=')
			ninep_mkdir(path + 6);
		else if (path[0] == 's' && path[1] == 't' && path[2] == 'a' && path[3] == 't' && path[4] == '=')
			ninep_stat(path + 5);
	}
	puts("crid-test-guest: 9p: done\n");
}
