#!/bin/sh
# Builds the freestanding PVH test guest: build.sh OUTPUT
set -eu
here=$(dirname "$0")
out=${1:-guest.elf}
gcc -m32 -O2 -ffreestanding -fno-pic -fno-stack-protector -fno-asynchronous-unwind-tables \
    -mgeneral-regs-only -mno-sse -nostdlib -static -no-pie -Wl,--build-id=none -Wl,--no-warn-rwx-segments \
    -Wl,-T,"$here/guest.ld" -o "$out" "$here/guest.c"
