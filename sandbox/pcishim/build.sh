#!/bin/sh
# Builds crid's PCI firmware: build.sh OUTPUT (run by sandbox/build.rs; see shim.c). A 64 KiB
# ROM image, QEMU's -bios, from 32-bit freestanding code and its 16-bit reset vector.
set -eu
here=$(dirname "$0")
out=${1:-pcishim.rom}
gcc -m32 -O2 -std=gnu11 -Wall -Wextra -Werror -ffreestanding -fno-pic -fno-stack-protector \
    -fno-asynchronous-unwind-tables -mgeneral-regs-only -mno-sse -nostdlib -static -no-pie \
    -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,"$here/shim.ld" \
    -o "$out.elf" "$here/shim.c"
objcopy -O binary "$out.elf" "$out"
rm -f "$out.elf"
size=$(wc -c <"$out")
if [ "$size" -ne 65536 ]; then
    echo "build.sh: $out is $size bytes, not the 64 KiB ROM QEMU maps" >&2
    exit 1
fi
