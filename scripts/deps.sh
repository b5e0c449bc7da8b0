#!/usr/bin/env bash
# Installs what crid and its tests need on Debian 12. Idempotent. (systemd: its
# systemd-socket-activate starts crid the way crid.socket does in crid/tests/hardening.rs.)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(runc containernetworking-plugins iproute2 iptables strace qemu-system-x86 qemu-utils
      docker-registry skopeo protobuf-compiler busybox-static gcc make curl jq
      containerd apparmor systemd nftables)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Always refresh the lists: the unikernel tests fetch Debian's cloud kernel with apt-get download.
apt-get update -qq
if ((${#missing[@]})); then
    apt-get install -y "${missing[@]}"
fi
