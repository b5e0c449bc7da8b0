#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (default 30 s), starting from
# the small committed seed corpora in fuzz/seeds/<target>. Not part of scripts/test.sh.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Corpora grow in fuzz/corpus/<target> (not committed); crashes land in fuzz/artifacts/<target>
# and make the script fail. Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly
# toolchain for the sanitizer flags; without nightly it builds with RUSTC_BOOTSTRAP=1 on stable.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(image_reference manifest layer_unpack cni_result unikernel cri_request vmm_kernel vmm_ports vmm_virtio vmm_blk pvh_kernel)
fi

if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    echo "no nightly toolchain: building on stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

"${fuzz[@]}" build -O

# layer_unpack's scratch roots (one per fuzzer process, named after its pid).
trap 'rm -rf "${TMPDIR:-/tmp}"/crid-fuzz-unpack-*' EXIT

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t (${secs}s)"
    # -rss_limit_mb: the daemon's bounds must hold under the fuzzer too.
    if ! "${fuzz[@]}" run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=20 \
        -print_final_stats=1 2>"artifacts/$t/log"; then
        failed+=("$t")
        tail -40 "artifacts/$t/log" >&2
    fi
    grep -E '^stat::number_of_executed_units|^Done|^#[0-9]+.*DONE' "artifacts/$t/log" | tail -2 || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (crash inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${secs}s without a crash"
