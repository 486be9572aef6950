#!/usr/bin/env bash
# Line coverage of the workspace's tests, KVM tests included, measured with
# cargo-tarpaulin's LLVM engine (source-based coverage: `-Cinstrument-coverage`
# with the profiler runtime that ships with the standard library; tarpaulin
# reads the .profraw files itself, so the llvm-tools component is not needed).
# The ptrace engine cannot run the KVM tests (ptrace and the vCPU threads'
# signals do not mix: tarpaulin fails with EINVAL) nor the jailer's tests.
#
# Left out of the run: the packages whose tests start their own binary as a
# subprocess, `ember` (examples/ember) and `ember-jailer-bin` (examples/jailer).
# Instrumented, those binaries write their .profraw file at exit, which their
# seccomp filter (exit status 159) or their jail forbids, and the tests fail;
# .ci/run runs their tests uninstrumented. Their sources are in exclude_path.
#
# Prints the coverage of each crate and of the whole workspace, and compares
# the total with coverage_config_x86_64.json (rust-vmm's convention):
#   - more than 1 point below its coverage_score: fails;
#   - above it: passes and suggests raising the score in the file.
# A failing test fails the script too, so CI uses this run as its test run.
#
# Usage: scripts/coverage.sh [extra tarpaulin arguments]
# Environment: COVERAGE_TARGET_DIR (default target/coverage), where the
# instrumented build and the report (report/tarpaulin-report.json) go.
set -euo pipefail
cd "$(dirname "$0")/.."

config=coverage_config_x86_64.json
target_dir="${COVERAGE_TARGET_DIR:-target/coverage}"
report_dir="$target_dir/report"
mkdir -p "$report_dir"
rm -f "$report_dir/tarpaulin-report.json"

field() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$config" "$1"
}
score="$(field coverage_score)"
exclude_path="$(field exclude_path)"
features="$(field crate_features)"

# exclude_path: comma-separated directories (or files) left out of the count.
exclude_args=()
IFS=',' read -r -a excluded <<<"$exclude_path"
for path in "${excluded[@]}"; do
  path="${path// /}"
  [ -n "$path" ] && exclude_args+=("${path%/}/*")
done
feature_args=()
[ -n "$features" ] && feature_args=(--features "$features")

status=0
cargo tarpaulin --workspace --exclude ember --exclude ember-jailer-bin \
  --locked --engine llvm --skip-clean --target-dir "$target_dir" --timeout 600 \
  --out Json --output-dir "$report_dir" \
  ${exclude_args[@]+--exclude-files "${exclude_args[@]}"} \
  ${feature_args[@]+"${feature_args[@]}"} "$@" || status=$?

report="$report_dir/tarpaulin-report.json"
if [ ! -s "$report" ]; then
  echo "FAIL: tarpaulin wrote no report (exit status $status)" >&2
  exit 1
fi

python3 - "$report" "$score" "$status" "$config" <<'EOF'
import json, os, sys
from collections import defaultdict

report, score, status, config = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = json.load(open(report))
root = os.getcwd()
crates = defaultdict(lambda: [0, 0])
for f in data["files"]:
    path = os.path.relpath(os.path.join("/", *f["path"]), root)
    parts = path.split(os.sep)
    name = os.path.join(*parts[:2]) if parts[0] in ("crates", "examples") else parts[0]
    crates[name][0] += f["covered"]
    crates[name][1] += f["coverable"]

print(f"\n{'crate':<28} {'lines':>13} {'coverage':>9}")
for name in sorted(crates):
    covered, coverable = crates[name]
    if coverable == 0:
        continue
    pct = 100.0 * covered / coverable if coverable else 100.0
    print(f"{name:<28} {covered:>6}/{coverable:<6} {pct:>8.1f}%")
covered = sum(c for c, _ in crates.values())
coverable = sum(n for _, n in crates.values())
total = round(100.0 * covered / coverable, 1) if coverable else 0.0
print(f"{'workspace':<28} {covered:>6}/{coverable:<6} {total:>8.1f}%")

if status != 0:
    print(f"\nFAIL: tarpaulin exited with status {status} (a test failed or timed out)")
    sys.exit(1)
if total < score - 1.0:
    print(f"\nFAIL: coverage {total}% is more than 1 point below {score}% ({config})")
    sys.exit(1)
if total > score:
    print(f"\nCoverage rose from {score}% to {total}%: set \"coverage_score\": {total} in {config}")
else:
    print(f"\nCoverage {total}% (floor: {score}% - 1 point)")
EOF
