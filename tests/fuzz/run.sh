#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 45) from its seeds
# (seeds/TARGET, checked in) plus what earlier runs found (corpus/TARGET,
# not checked in), and prints one line per target: executions, corpus size,
# result. A crash stops with its input in artifacts/TARGET/ and exit 1;
# replay it with `cargo +nightly fuzz run TARGET artifacts/TARGET/crash-…`.
#   tests/fuzz/run.sh [SECONDS] [TARGET…]
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install --locked cargo-fuzz" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 \
    || { echo "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
seconds=${1:-45}
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# One build for all targets (each `fuzz run` below then finds it built).
cargo +nightly fuzz build -O >/dev/null 2>build.log || { cat build.log >&2; exit 1; }
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    if cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log and artifacts/$t/)"
        failed=1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '%-14s %10s executions in %ss, corpus %5s inputs: %s\n' "$t" "$runs" "$seconds" "$corpus" "$result"
done
exit "$failed"
