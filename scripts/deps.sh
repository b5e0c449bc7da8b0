#!/usr/bin/env bash
# Installs what crid and its tests need on Debian 12. Idempotent. (systemd: its
# systemd-socket-activate starts crid the way crid.socket does in crid/tests/hardening.rs;
# crun: crid's default OCI runtime, runc the one of the "runc" handler; nginx-light and
# apache2-bin: crid/tests/workloads.rs builds its server images from their binaries; nftables:
# only the test oracle of sandbox/tests/vm_net.rs, crid makes its NAT table over netlink;
# e2fsprogs: mkfs.ext4 builds a linux guest's block root.)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(runc crun containernetworking-plugins iproute2 iptables strace qemu-system-x86 qemu-utils e2fsprogs
      docker-registry skopeo protobuf-compiler busybox-static gcc make curl jq
      containerd apparmor systemd nftables nginx-light apache2-bin)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Always refresh the lists: the unikernel tests fetch Debian's cloud kernel with apt-get download.
apt-get update -qq
if ((${#missing[@]})); then
    apt-get install -y "${missing[@]}"
fi
# crun refuses a cgroup v1 (hybrid) host whose v2 mount still holds controllers ("cgroups in
# hybrid mode not supported"); crid then falls back to runc. Give each such controller (hugetlb
# on this machine kind) its own v1 hierarchy, as systemd's hybrid layout does.
if [[ ! -e /sys/fs/cgroup/cgroup.controllers && -r /sys/fs/cgroup/unified/cgroup.controllers ]]; then
    for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        mkdir -p "/sys/fs/cgroup/$c" 2>/dev/null || true
        # A controller in use on v2 cannot move: then crid falls back to runc (and says so).
        mountpoint -q "/sys/fs/cgroup/$c" || mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" ||
            echo "deps.sh: cannot mount the $c controller on v1; crid will use runc" >&2
    done
fi
