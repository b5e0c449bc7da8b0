/*
 * Host driver for the shim's kernel checks (sandbox/tests/pcishim_elf.rs): test_elf IMAGE
 * (built with AddressSanitizer and UBSan) checks IMAGE as the shim would in a 128 MiB guest (RAM below 640 KiB and from 1 MiB, the
 * shim at 64 KiB, the image itself at 112 MiB) and prints "ok entry=0x... loads=N" and one
 * "load paddr filesz memsz" line per segment, or "error: TEXT".
 */
#include <stdio.h>
#include <stdlib.h>

#include "elf.h"

#define IMAGE_AT 0x7000000ull

int main(int argc, char **argv)
{
	/* Exactly the file's size, so that AddressSanitizer sees any read past the image. */
	FILE *f = argc == 2 ? fopen(argv[1], "rb") : NULL;
	if (!f || fseek(f, 0, SEEK_END))
		return 2;
	long len = ftell(f);
	if (len <= 0 || len > 0x1000000 || fseek(f, 0, SEEK_SET))
		return 2;
	u32 size = (u32)len;
	u8 *img = malloc(size);
	if (!img || fread(img, 1, size, f) != size)
		return 2;
	fclose(f);
	const struct range ram[2] = { { 0, 0x9fc00 }, { 0x100000, 0x8000000 } };
	const struct range keep[2] = { { 0x10000, 0x20000 }, { IMAGE_AT, IMAGE_AT + size } };
	const struct elf_limits limits = { ram, 2, keep, 2 };
	struct elf_kernel k;
	enum elf_error e = elf_check(img, size, &limits, &k);
	if (e != ELF_OK) {
		printf("error: %s\n", elf_error_text(e));
		free(img);
		return 1;
	}
	printf("ok entry=0x%x loads=%u\n", k.entry, k.nloads);
	for (u32 i = 0; i < k.nloads; i++)
		printf("load 0x%x 0x%x 0x%x\n", k.loads[i].paddr, k.loads[i].filesz,
		       k.loads[i].memsz);
	free(img);
	return 0;
}
