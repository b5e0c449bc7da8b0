#!/usr/bin/env bash
# Runs the conformance suite against Debian's containerd + runc, to check the suite itself
# (by hand; slower to set up than CI's crid run). containerd gets its own root, state, socket,
# runc root, CNI network and a registry mirror pointing at a loopback registry with the test
# images (scripts/containerd.sh). Failures listed in conformance/src/gaps.rs are containerd's
# own gaps and are reported as such. Extra arguments go to the conformance binary
# (e.g. --focus images/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build -p conformance --bins

WORK=$(mktemp -d /tmp/crid-containerd.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    stop_containerd "$WORK"
    rm -rf "$WORK"
}
trap cleanup EXIT

source scripts/registry.sh
source scripts/containerd.sh
start_registry "$WORK/registry"
export CRID_TEST_REGISTRY
target/debug/crid-fixtures --registry "$CRID_TEST_REGISTRY"

start_containerd "$WORK/containerd" "$CRID_TEST_REGISTRY"
# containerd takes Localhost seccomp profiles from any absolute path.
mkdir -p "$WORK/seccomp"
target/debug/conformance --endpoint "unix://$CONTAINERD_SOCK" \
    --registry "$CRID_TEST_REGISTRY" --seccomp-profile-root "$WORK/seccomp" "$@" || {
    echo "--- containerd log"
    tail -30 "$WORK/containerd/containerd.log"
    exit 1
}
