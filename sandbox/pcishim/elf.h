/*
 * Validation of the guest kernel the PCI shim loads: an untrusted ELF image (the PVH module
 * QEMU placed in guest RAM). Pure code over a byte buffer, no I/O, so the host test
 * (sandbox/tests/pcishim_elf.rs, through test_elf.c) runs the same checks on crafted images.
 */
#ifndef CRID_SHIM_ELF_H
#define CRID_SHIM_ELF_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define ELF_MAX_LOADS 16
#define ELF_MAX_RAM 32

/* A half-open physical range [start, end). */
struct range {
	u64 start;
	u64 end;
};

struct elf_load {
	u32 paddr;
	u32 offset; /* in the image */
	u32 filesz;
	u32 memsz;
};

struct elf_kernel {
	u32 entry; /* XEN_ELFNOTE_PHYS32_ENTRY */
	u32 nloads;
	struct elf_load loads[ELF_MAX_LOADS];
};

/* Where the image may load: inside one of `ram`, outside every range of `keep` (the shim, the
 * image itself, the start info it hands on). */
struct elf_limits {
	const struct range *ram;
	u32 nram;
	const struct range *keep;
	u32 nkeep;
};

enum elf_error {
	ELF_OK = 0,
	ELF_BAD_HEADER,    /* not a little-endian x86 ELF executable, or the header is cut off */
	ELF_BAD_PHDRS,     /* program headers outside the image, or too many */
	ELF_BAD_SEGMENT,   /* a PT_LOAD whose file bytes are outside the image, or filesz > memsz */
	ELF_TOO_MANY_LOADS,
	ELF_NOT_IN_RAM,    /* a PT_LOAD not inside guest RAM below 4 GiB */
	ELF_OVERLAP,       /* a PT_LOAD over the shim, the image, or another PT_LOAD */
	ELF_NO_ENTRY,      /* no well-formed PVH note */
	ELF_ENTRY_OUTSIDE, /* the PVH entry is not in a loaded segment */
};

/* Checks `img` (size bytes) and fills `out`; returns ELF_OK or the first problem found. */
enum elf_error elf_check(const u8 *img, u32 size, const struct elf_limits *limits,
			 struct elf_kernel *out);

/* A short lowercase description of an error, for the serial console. */
const char *elf_error_text(enum elf_error e);

#endif
