#!/usr/bin/env bash
# Benchmarks crid against Debian's containerd 1.6 + runc on this machine, in the same run:
# builds release binaries, starts a loopback registry with the test images, crid (its own
# root, state, socket and CNI network: bridge cridbench0, 10.90.0.0/16), containerd
# (scripts/containerd.sh: bridge cridctr0, 10.89.0.0/16) and a second crid without prepared
# pod networks (bridge cridbench1, 10.91.0.0/16), then runs crid-bench with all three.
# With gcc, the freestanding test guest is packed as a unikernel image and measured too, and so
# is the linux test guest (its kernel package fetched once with apt-get download).
# Then 50 guests at once on crid-vmm and on QEMU next to 50 runc pods ($BENCH_PARALLEL_GUESTS).
# Prints the Markdown table; the JSON report goes to $BENCH_JSON (default bench.json).
# BENCH_SKIP_BUILD=1 skips the build.
# Arguments go to crid-bench instead of the defaults, which keep a run to a few minutes
# on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JSON=${BENCH_JSON:-$ROOT/bench.json}
scripts/deps.sh >/dev/null
# BENCH_SKIP_BUILD=1 reuses the release binaries already in target/release.
[ -n "${BENCH_SKIP_BUILD:-}" ] || cargo build --release -p crid -p conformance -p crid-vmm

WORK=$(mktemp -d /tmp/crid-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    stop_containerd "$WORK/containerd"
    # crid's detached monitors (and any VMM) carry the run's directory in their command line.
    for pid in $(pgrep -f "$WORK/crid" || true); do kill "$pid" 2>/dev/null || true; done
    grep -o " $WORK[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    ip link del cridbench0 2>/dev/null || true
    ip link del cridbench1 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

source scripts/registry.sh
source scripts/containerd.sh
start_registry "$WORK/registry"
export CRID_TEST_REGISTRY
target/release/crid-fixtures --registry "$CRID_TEST_REGISTRY" >/dev/null
# The freestanding test guest as a unikernel image (it prints, then halts and keeps running):
# crid-bench measures its start to first serial byte next to a runc busybox container.
UK_ARGS=()
if sh sandbox/tests/guests/freestanding/build.sh "$WORK/guest.elf" >/dev/null 2>&1; then
    target/release/crid unikernel pack --type unikraft --hypervisor qemu \
        --kernel "$WORK/guest.elf" -t bench-guest \
        --push "$CRID_TEST_REGISTRY/crid-bench/unikernel:latest" >/dev/null
    # The same kernel for crid's own VMM (found next to target/release/crid).
    target/release/crid unikernel pack --type unikraft --hypervisor crid \
        --kernel "$WORK/guest.elf" -t bench-guest \
        --push "$CRID_TEST_REGISTRY/crid-bench/unikernel:crid" >/dev/null
    # The same kernel for QEMU declaring its virtio-mmio drivers: microvm in a pod network.
    target/release/crid unikernel pack --type unikraft --hypervisor qemu --virtio mmio \
        --kernel "$WORK/guest.elf" -t bench-guest \
        --push "$CRID_TEST_REGISTRY/crid-bench/unikernel:mmio" >/dev/null
    UK_ARGS=(--unikernel-image crid-bench/unikernel:latest
        --unikernel-image crid-bench/unikernel:mmio
        --unikernel-image crid-bench/unikernel:crid)
    # $BENCH_PARALLEL_GUESTS (default 50; e.g. 10,50; 0 skips) guests on crid-vmm, then on
    # QEMU, started at once, then as many runc pods: wall time and memory while all run.
    if [ "${BENCH_PARALLEL_GUESTS:-50}" != 0 ]; then
        UK_ARGS+=(--parallel-guests "${BENCH_PARALLEL_GUESTS:-50}"
            --parallel-guest-image crid-bench/unikernel:crid
            --parallel-guest-image crid-bench/unikernel:latest)
    fi
fi
# The linux test guest (Debian's cloud kernel and a busybox initrd), measured the same way.
if sh sandbox/tests/guests/linux/build.sh "$WORK/linux" "$ROOT/target/crid-linux-guest" >/dev/null 2>&1; then
    target/release/crid unikernel pack --type linux --hypervisor qemu \
        --kernel "$WORK/linux/vmlinuz" --initrd "$WORK/linux/initrd.gz" -t bench-linux \
        --push "$CRID_TEST_REGISTRY/crid-bench/linux:latest" >/dev/null
    UK_ARGS+=(--unikernel-image crid-bench/linux:latest)
fi

# start_crid NAME BRIDGE SUBNET PREPARED: a crid of its own (root, state, socket, bridge) in
# $WORK/NAME, with cni.prepared_networks = PREPARED.
start_crid() {
    local C=$WORK/$1
    mkdir -p "$C/net.d" "$C/certs.d/$CRID_TEST_REGISTRY" "$C/cni"
    cat >"$C/net.d/10-bridge.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$1",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$2",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$C/cni",
        "ranges": [[{ "subnet": "$3" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
JSON
    cat >"$C/certs.d/$CRID_TEST_REGISTRY/hosts.toml" <<TOML
server = "http://$CRID_TEST_REGISTRY"
TOML
    cat >"$C/config.toml" <<TOML
[registry]
config_path = "$C/certs.d"
[images]
pause_image = "$CRID_TEST_REGISTRY/pause:3.10"
[cni]
conf_dir = "$C/net.d"
bin_dirs = ["/usr/lib/cni"]
prepared_networks = $4
[log]
level = "warn"
TOML
    target/release/crid --config "$C/config.toml" --root "$C/root" --state "$C/state" \
        --socket "$C/crid.sock" >"$C/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do [ -S "$C/crid.sock" ] && break; sleep 0.1; done
    [ -S "$C/crid.sock" ] || { cat "$C/log"; exit 1; }
}
# crid as shipped (two prepared pod networks), and a second crid that attaches every pod from
# scratch (prepared_networks = 0), so the table shows what the prepared networks are worth.
start_crid crid cridbench0 10.90.0.0/16 2
start_crid crid-unprepared cridbench1 10.91.0.0/16 0
C=$WORK/crid
C0=$WORK/crid-unprepared

start_containerd "$WORK/containerd" "$CRID_TEST_REGISTRY"

# Each runtime's processes: its daemon plus per-pod processes (crid's monitors and VMMs,
# containerd's shims), all of which carry the run's own directory in their command line.
ARGS=("$@")
[ $# -gt 0 ] || ARGS=(--iterations 10 --parallel 10,50 --sustain-secs 10)
re() { printf '%s' "$1" | sed 's/[.[\*^$()+?{|]/\\&/g'; }
target/release/crid-bench \
    --runtime "crid=unix://$C/crid.sock,$(re "$C/")" \
    --runtime "containerd=unix://$CONTAINERD_SOCK,$(re "$WORK/containerd/")" \
    --runtime "crid-unprepared=unix://$C0/crid.sock,$(re "$C0/")" \
    --registry "$CRID_TEST_REGISTRY" --log-root "$WORK/logs" --json "$JSON" \
    "${UK_ARGS[@]}" "${ARGS[@]}" || {
    echo "--- crid log"; tail -20 "$C/log"
    echo "--- containerd log"; tail -20 "$WORK/containerd/containerd.log"
    exit 1
}
echo "JSON report: $JSON"
