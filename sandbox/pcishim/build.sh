#!/bin/sh
# Builds crid's PCI set-up shim: build.sh OUTPUT (run by sandbox/build.rs; see shim.c).
# A 32-bit ELF (PVH enters in protected mode with paging off); QEMU's PVH loader takes ELF32.
set -eu
here=$(dirname "$0")
out=${1:-pcishim.elf}
gcc -m32 -O2 -std=gnu11 -Wall -Wextra -Werror -ffreestanding -fno-pic -fno-stack-protector \
    -fno-asynchronous-unwind-tables -mgeneral-regs-only -mno-sse -nostdlib -static -no-pie \
    -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,"$here/shim.ld" \
    -o "$out" "$here/shim.c"
