#!/bin/sh
# Builds the freestanding PVH test guest: build.sh OUTPUT
# The code is 32-bit (PVH enters in protected mode); the file is converted to ELF64, the form
# PVH kernels (Linux, Unikraft) have and the one crid-vmm's loader (linux-loader) reads. QEMU
# boots either.
set -eu
here=$(dirname "$0")
out=${1:-guest.elf}
gcc -m32 -O2 -ffreestanding -fno-pic -fno-stack-protector -fno-asynchronous-unwind-tables \
    -mgeneral-regs-only -mno-sse -nostdlib -static -no-pie -Wl,--build-id=none -Wl,--no-warn-rwx-segments \
    -Wl,-T,"$here/guest.ld" -o "$out.32" "$here/guest.c"
objcopy -O elf64-x86-64 "$out.32" "$out"
rm -f "$out.32"
