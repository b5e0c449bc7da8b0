#!/usr/bin/env bash
# Runs the conformance suite against Debian's containerd + runc, to check the suite itself
# (by hand; slower to set up than CI's crid run). containerd gets its own root, state, socket,
# CNI configuration and a registry mirror pointing at a loopback registry with the test images.
# Extra arguments go to the conformance binary (e.g. --focus images/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build -p conformance --bins

WORK=$(mktemp -d /tmp/crid-containerd.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # containerd's shims and mounts outlive it; remove what this run created.
    pkill -f "containerd-shim.*-namespace k8s.io.*$WORK" 2>/dev/null || true
    grep " $WORK" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

source scripts/registry.sh
start_registry "$WORK/registry"
export CRID_TEST_REGISTRY
target/debug/crid-fixtures --registry "$CRID_TEST_REGISTRY"

mkdir -p "$WORK/net.d" "$WORK/certs.d/$CRID_TEST_REGISTRY"
sed 's/"crid0"/"cridctr0"/; s#10.88.0.0/16#10.89.0.0/16#' crid/dist/10-crid-bridge.conflist \
    >"$WORK/net.d/10-bridge.conflist"
cat >"$WORK/certs.d/$CRID_TEST_REGISTRY/hosts.toml" <<TOML
server = "http://$CRID_TEST_REGISTRY"
[host."http://$CRID_TEST_REGISTRY"]
  capabilities = ["pull", "resolve", "push"]
TOML
cat >"$WORK/config.toml" <<TOML
version = 2
root = "$WORK/root"
state = "$WORK/state"
[grpc]
  address = "$WORK/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$CRID_TEST_REGISTRY/pause:3.10"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$WORK/certs.d"
TOML
containerd --config "$WORK/config.toml" >"$WORK/containerd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/containerd.sock" ] && break; sleep 0.1; done
target/debug/conformance --endpoint "unix://$WORK/containerd.sock" \
    --registry "$CRID_TEST_REGISTRY" "$@" || { tail -30 "$WORK/containerd.log"; exit 1; }
