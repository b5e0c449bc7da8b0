#!/usr/bin/env bash
# Upstream critest (kubernetes-sigs/cri-tools) and `critest -benchmark` against a freshly
# started crid, through the CRI test kit (CRITEST_KIT, default /work/shared/critest; its
# README has the contract this follows). By hand, not in scripts/test.sh: the kit builds
# critest from cri-tools sources, which CI cannot fetch. Every failure critest finds gets a
# regression test in crid's own suite instead.
#
#   scripts/critest.sh [--no-bench] [critest/ginkgo args...]
#
# Before: `$KIT/run.sh build CRI_TOOLS_SRC` and `$KIT/run.sh images` (test images in the
# kit's registry on 127.0.0.1:5055; this script starts the registry if it is down).
# crid: CRID_BIN (default target/debug/crid; build it first), with its own root, state,
# socket, log and CNI network (bridge CNI_BRIDGE=cni-crid0, CNI_SUBNET=10.89.1.0/24, so it
# can run beside the kit's containerd on cni-harness0) under $W/crid/. Configured as the
# kit's contract asks: registry mirrors from the kit's conf (certs.d), sandbox image
# registry.k8s.io/pause:3.10, the kit's CNI conflist, cgroupfs, streaming on 127.0.0.1
# (crid clamps oom_score_adj to its own by itself), its NRI socket at $RUN/nri.sock, passed
# to critest with -nri-socket. On exit its pods are removed and it is
# stopped. The summary goes to $W/results/crid-<ts>.txt (and is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=${CRITEST_KIT:-/work/shared/critest}
export CRITEST_WORK=${CRITEST_WORK:-/var/tmp/crid-critest}
W=$CRITEST_WORK
CRID_BIN=${CRID_BIN:-$ROOT/target/debug/crid}
BRIDGE=${CNI_BRIDGE:-cni-crid0}
SUBNET=${CNI_SUBNET:-10.89.1.0/24}
BENCH=1
if [[ ${1:-} == --no-bench ]]; then BENCH=0; shift; fi

log() { echo "[critest.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x $KIT/run.sh ]] || die "no CRI test kit at $KIT (set CRITEST_KIT)"
[[ -x $CRID_BIN ]] || die "no crid binary at $CRID_BIN (cargo build -p crid, or set CRID_BIN)"
[[ -x $W/bin/critest && -x $W/bin/crictl ]] ||
    die "critest is not built: $KIT/run.sh build CRI_TOOLS_SRC"
[[ -s $W/images/out/images.tsv ]] || die "no test images: $KIT/run.sh images"
if ! "$KIT/images.sh" registry-status | grep -q running; then
    "$KIT/run.sh" registry-up
fi

TS=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$W/crid/$TS
SOCK=$RUN/crid.sock
mkdir -p "$RUN/net.d" "$RUN/cni-ipam" "$W/results"

# Mirrors for every upstream registry critest names, in hosts.toml form.
"$KIT/run.sh" conf >/dev/null
sed -e "s#@W@/run/cni-ipam#$RUN/cni-ipam#g" -e "s#@BRIDGE@#$BRIDGE#g" -e "s#@SUBNET@#$SUBNET#g" \
    "$KIT/conf/10-harness.conflist.in" >"$RUN/net.d/10-harness.conflist"
cat >"$RUN/config.toml" <<TOML
root = "$RUN/root"
state = "$RUN/state"
[grpc]
socket = "$SOCK"
[registry]
config_path = "$W/conf/mirrors/certs.d"
[images]
pause_image = "registry.k8s.io/pause:3.10"
[cni]
conf_dir = "$RUN/net.d"
bin_dirs = ["/usr/lib/cni"]
[runtime]
cgroup_driver = "cgroupfs"
[streaming]
address = "127.0.0.1"
[nri]
socket_path = "$RUN/nri.sock"
TOML

CRID_PID=
cleanup() {
    if [[ -n $CRID_PID ]] && kill -0 "$CRID_PID" 2>/dev/null; then
        log "removing crid's pods"
        "$W/bin/crictl" -r "unix://$SOCK" -i "unix://$SOCK" --timeout 60s rmp -fa >/dev/null 2>&1 ||
            log "could not remove every pod (see $RUN/crid.log)"
        kill "$CRID_PID"
        for _ in $(seq 100); do kill -0 "$CRID_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$CRID_PID" 2>/dev/null && kill -9 "$CRID_PID"
    fi
    ip link del "$BRIDGE" 2>/dev/null || true
    # The record stays (log, config); images and layers go unless something is still mounted.
    if ! grep -qF "$RUN/" /proc/self/mountinfo; then
        rm -rf "$RUN/root" "$RUN/state"
    else
        log "mounts left under $RUN; not removing it"
    fi
}
trap cleanup EXIT

"$CRID_BIN" --config "$RUN/config.toml" >"$RUN/crid.log" 2>&1 &
CRID_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || { tail -20 "$RUN/crid.log"; die "crid did not come up"; }
log "crid $("$CRID_BIN" --version 2>/dev/null || true) (pid $CRID_PID) on $SOCK; log $RUN/crid.log"

"$KIT/run.sh" critest "unix://$SOCK" -nri-socket="$RUN/nri.sock" "$@" >/dev/null || true
CRITEST_DIR=$(readlink -f "$W/results/critest-latest")
BENCH_DIR=
if [[ $BENCH == 1 ]]; then
    "$KIT/run.sh" critest-bench "unix://$SOCK" >/dev/null || true
    BENCH_DIR=$(readlink -f "$W/results/critest-bench-latest")
fi

SUMMARY=$W/results/crid-$TS.txt
{
    echo "crid: $CRID_BIN (worktree at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'))"
    echo "critest: $CRITEST_DIR"
    cat "$CRITEST_DIR/summary.txt"
    if [[ -n $BENCH_DIR ]]; then
        echo
        echo "critest -benchmark: $BENCH_DIR"
        cat "$BENCH_DIR/summary.txt"
    fi
} >"$SUMMARY"
cat "$SUMMARY"
log "summary: $SUMMARY"
