/*
 * See elf.h. All offsets and sizes are read as 64-bit values and every sum is done in 64 bits
 * from 32-bit (or checked 64-bit) operands, so no header field can wrap an addition.
 */
#include "elf.h"

#define PT_LOAD 1
#define PT_NOTE 4
#define EM_386 3
#define EM_X86_64 62
#define ET_EXEC 2
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MAX_PHDRS 64
#define FOUR_GIB 0x100000000ull

static u64 rd(const u8 *p, u32 len)
{
	u64 v = 0;
	for (u32 i = 0; i < len; i++)
		v |= (u64)p[i] << (8 * i);
	return v;
}

/* Whether [off, off + len) lies inside an image of `size` bytes. */
static int inside(u64 off, u64 len, u32 size)
{
	return off <= size && len <= size - off;
}

static int overlaps(u64 a_start, u64 a_end, const struct range *r)
{
	return a_start < r->end && r->start < a_end;
}

/* The 32-bit entry of a PVH note in the note segment [off, off + len) of the image, or 0. */
static u32 pvh_entry(const u8 *img, u64 off, u64 len)
{
	u64 end = off + len;
	while (end - off >= 12) {
		u64 namesz = rd(img + off, 4), descsz = rd(img + off + 4, 4);
		u64 type = rd(img + off + 8, 4);
		u64 name = off + 12;
		u64 desc = name + ((namesz + 3) & ~3ull);
		u64 next = desc + ((descsz + 3) & ~3ull);
		if (next > end)
			return 0;
		if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && img[name] == 'X' &&
		    img[name + 1] == 'e' && img[name + 2] == 'n' && img[name + 3] == 0) {
			if (descsz == 4)
				return (u32)rd(img + desc, 4);
			if (descsz == 8 && rd(img + desc + 4, 4) == 0)
				return (u32)rd(img + desc, 4);
			return 0;
		}
		off = next;
	}
	return 0;
}

enum elf_error elf_check(const u8 *img, u32 size, const struct elf_limits *limits,
			 struct elf_kernel *out)
{
	if (size < 64 || img[0] != 0x7f || img[1] != 'E' || img[2] != 'L' || img[3] != 'F' ||
	    img[5] != 1 /* little-endian */)
		return ELF_BAD_HEADER;
	int is64;
	if (img[4] == 1)
		is64 = 0;
	else if (img[4] == 2)
		is64 = 1;
	else
		return ELF_BAD_HEADER;
	u64 machine = rd(img + 18, 2);
	if (rd(img + 16, 2) != ET_EXEC || (machine != EM_386 && machine != EM_X86_64))
		return ELF_BAD_HEADER;
	u64 phoff = is64 ? rd(img + 0x20, 8) : rd(img + 0x1c, 4);
	u64 phentsize = rd(img + (is64 ? 0x36 : 0x2a), 2);
	u64 phnum = rd(img + (is64 ? 0x38 : 0x2c), 2);
	u64 min_phent = is64 ? 56 : 32;
	if (phnum == 0 || phnum > MAX_PHDRS || phentsize < min_phent ||
	    !inside(phoff, phnum * phentsize, size))
		return ELF_BAD_PHDRS;

	out->entry = 0;
	out->nloads = 0;
	for (u64 i = 0; i < phnum; i++) {
		const u8 *ph = img + phoff + i * phentsize;
		u64 type = rd(ph, 4);
		u64 offset, paddr, filesz, memsz;
		if (is64) {
			offset = rd(ph + 8, 8);
			paddr = rd(ph + 24, 8);
			filesz = rd(ph + 32, 8);
			memsz = rd(ph + 40, 8);
		} else {
			offset = rd(ph + 4, 4);
			paddr = rd(ph + 12, 4);
			filesz = rd(ph + 16, 4);
			memsz = rd(ph + 20, 4);
		}
		if (type == PT_NOTE) {
			if (!inside(offset, filesz, size))
				return ELF_BAD_SEGMENT;
			if (!out->entry)
				out->entry = pvh_entry(img, offset, filesz);
			continue;
		}
		if (type != PT_LOAD || memsz == 0)
			continue;
		if (!inside(offset, filesz, size) || filesz > memsz)
			return ELF_BAD_SEGMENT;
		if (paddr >= FOUR_GIB || memsz > FOUR_GIB - paddr)
			return ELF_NOT_IN_RAM;
		u64 end = paddr + memsz;
		int in_ram = 0;
		for (u32 r = 0; r < limits->nram; r++)
			if (paddr >= limits->ram[r].start && end <= limits->ram[r].end)
				in_ram = 1;
		if (!in_ram)
			return ELF_NOT_IN_RAM;
		for (u32 k = 0; k < limits->nkeep; k++)
			if (overlaps(paddr, end, &limits->keep[k]))
				return ELF_OVERLAP;
		for (u32 l = 0; l < out->nloads; l++) {
			struct range other = { out->loads[l].paddr,
					       (u64)out->loads[l].paddr + out->loads[l].memsz };
			if (overlaps(paddr, end, &other))
				return ELF_OVERLAP;
		}
		if (out->nloads == ELF_MAX_LOADS)
			return ELF_TOO_MANY_LOADS;
		struct elf_load *l = &out->loads[out->nloads++];
		l->paddr = (u32)paddr;
		l->offset = (u32)offset;
		l->filesz = (u32)filesz;
		l->memsz = (u32)memsz;
	}
	if (!out->entry)
		return ELF_NO_ENTRY;
	for (u32 l = 0; l < out->nloads; l++)
		if (out->entry >= out->loads[l].paddr &&
		    out->entry - out->loads[l].paddr < out->loads[l].memsz)
			return ELF_OK;
	return ELF_ENTRY_OUTSIDE;
}

const char *elf_error_text(enum elf_error e)
{
	switch (e) {
	case ELF_OK:
		return "ok";
	case ELF_BAD_HEADER:
		return "not a little-endian x86 ELF executable";
	case ELF_BAD_PHDRS:
		return "program headers outside the image";
	case ELF_BAD_SEGMENT:
		return "a segment's file bytes are outside the image";
	case ELF_TOO_MANY_LOADS:
		return "too many loadable segments";
	case ELF_NOT_IN_RAM:
		return "a segment is outside guest RAM below 4 GiB";
	case ELF_OVERLAP:
		return "a segment overlaps the shim, the image or another segment";
	case ELF_NO_ENTRY:
		return "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)";
	case ELF_ENTRY_OUTSIDE:
		return "the PVH entry is outside the loaded segments";
	}
	return "unknown error";
}
