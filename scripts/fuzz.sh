#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 30),
# starting from its seed corpus (fuzz/corpus/<target>, see fuzz-seeds.sh) and
# the inputs of past findings (fuzz/regressions/<target>). Fails on the first
# crash, panic (a broken invariant), leak, timeout or out-of-memory; libFuzzer
# leaves the input in fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS [TARGET...]]
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
[ -d fuzz/corpus ] || scripts/fuzz-seeds.sh

for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  dirs=("fuzz/corpus/$target")
  [ -d "fuzz/regressions/$target" ] && dirs+=("fuzz/regressions/$target")
  log="$(mktemp)"
  echo "--- $target (${seconds}s)"
  if ! cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "FAIL: fuzz target $target found a problem (input in fuzz/artifacts/$target/)" >&2
    rm -f "$log"
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "$log" |
    sed 's/^stat::/    /'
  rm -f "$log"
done
