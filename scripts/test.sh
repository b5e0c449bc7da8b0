#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root on Debian 12): installs what the tests need,
# starts a registry on loopback, builds once, then runs lint, unit, integration and
# conformance tests. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/deps.sh

WORK=$(mktemp -d /tmp/crid-test.XXXXXX)
# Searchable by others: containers of user-namespaced pods reach crid's root and state
# (under $WORK/crid) from inside their user namespace.
chmod 711 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== build"
cargo build --workspace --all-targets
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets are not workspace members, so nothing above compiles them; checked here so
# an API change that breaks them fails the suite. Sharing target/ reuses clippy's dependencies.
cargo check --manifest-path fuzz/Cargo.toml --bins --target-dir target

echo "== registry on 127.0.0.1"
source scripts/registry.sh
start_registry "$WORK/registry"
export CRID_TEST_REGISTRY

echo "== test images"
# Built by cargo build above; pushes busybox, layered, zstd, unikernel and evil images.
target/debug/crid-fixtures --registry "$CRID_TEST_REGISTRY"

echo "== unit and integration tests"
cargo test --workspace -- --test-threads=2

echo "== conformance suite against crid"
mkdir -p "$WORK/crid/net.d" "$WORK/crid/certs.d/$CRID_TEST_REGISTRY"
cp crid/dist/10-crid-bridge.conflist "$WORK/crid/net.d/"
cat >"$WORK/crid/certs.d/$CRID_TEST_REGISTRY/hosts.toml" <<TOML
server = "http://$CRID_TEST_REGISTRY"
TOML
cat >"$WORK/crid/config.toml" <<TOML
[registry]
config_path = "$WORK/crid/certs.d"
[cni]
conf_dir = "$WORK/crid/net.d"
TOML
target/debug/crid --config "$WORK/crid/config.toml" --root "$WORK/crid/root" \
    --state "$WORK/crid/state" --socket "$WORK/crid/crid.sock" >"$WORK/crid/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$WORK/crid/crid.sock" ] && break; sleep 0.1; done
# No seccomp profile root: crid takes Localhost profiles from any absolute path by default.
if ! target/debug/conformance --endpoint "unix://$WORK/crid/crid.sock"; then
    echo "--- crid log"; tail -50 "$WORK/crid/log"
    exit 1
fi
