#!/usr/bin/env bash
# Set-up and start on a fresh Debian machine: installs runc and the CNI plugins, builds crid,
# installs the default CNI network (only if /etc/cni/net.d has none) and runs crid in the
# foreground with its built-in defaults (socket /run/crid/crid.sock).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p crid -p crid-vmm
install -m 0755 target/release/crid /usr/local/bin/crid
# The small per-container monitor binary; crid falls back to `crid monitor` without it.
install -m 0755 target/release/crid-monitor /usr/local/bin/crid-monitor
# crid's own VMM (hypervisor `crid`), found next to crid.
install -m 0755 target/release/crid-vmm /usr/local/bin/crid-vmm
if ! ls /etc/cni/net.d/*.conflist /etc/cni/net.d/*.conf >/dev/null 2>&1; then
    install -D -m 0644 crid/dist/10-crid-bridge.conflist /etc/cni/net.d/10-crid-bridge.conflist
fi
exec /usr/local/bin/crid "$@"
