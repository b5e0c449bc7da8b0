#!/bin/sh
# Builds crid's linux test guest from Debian packages: build.sh OUTDIR [CACHEDIR]
#   OUTDIR/vmlinuz    Debian's linux-image-cloud-amd64 kernel
#   OUTDIR/initrd.gz  busybox-static, the virtio network and block modules, the ACPI power
#                     button and evdev modules (graceful shutdown), fuse and virtiofs (the
#                     container's root file system shared by crid; its block root is ext4,
#                     built into the kernel), ./init and guest-exit
#                     (./guest-exit.c, built statically: the workload's exit code to QEMU)
# The kernel package is fetched once with apt-get download into CACHEDIR (default OUTDIR).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
cache=${2:-$out}
mkdir -p "$out" "$cache"
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$pkg" ] || { echo "no linux-image-cloud-amd64 in apt" >&2; exit 1; }
deb=$(ls "$cache"/"$pkg"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    (cd "$cache" && apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
    deb=$(ls "$cache"/"$pkg"_*.deb | head -1)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/pkg"
cp "$work"/pkg/boot/vmlinuz-* "$out/vmlinuz"
root="$work/root"
mkdir -p "$root/bin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio \
         failover net_failover virtio_net virtio_blk evdev button fuse virtiofs; do
    f=$(find "$work/pkg/lib/modules" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { echo "module $m missing" >&2; exit 1; }
    case "$f" in
        *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *.zst) zstd -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
done
install -m 0755 "$here/init" "$root/init"
cc -static -Os -o "$root/bin/guest-exit" "$here/guest-exit.c"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9 > "$out/initrd.gz")
