#!/usr/bin/env bash
# Traces `ember --api-sock` through a whole API session with a block device:
# configure (logger, metrics FIFO, boot source, a rate-limited Writeback drive,
# machine), InstanceStart, GET, pause, resume, FlushMetrics, SendCtrlAltDel,
# bad requests, concurrent clients, a rate-limiter update and a backing-file
# swap, then SIGTERM. Writes OUT/api.trace (default /tmp/ember-seccomp-trace).
# Usage: crates/jailer/seccomp/trace-api.sh [OUT]   (root, strace, curl)
set -euo pipefail

out=${1:-/tmp/ember-seccomp-trace}
repo=$(cd "$(dirname "$0")/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
ember=$target/release/ember
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$repo"
cargo build -q -p ember --release
cargo run -q -p ember-test-guests -- "$work/guests" > /dev/null
mkdir -p "$out"
sock=$work/api.sock
head -c $((64 * 512)) /dev/zero > "$work/d1.img"
head -c $((80 * 512)) /dev/urandom > "$work/d2.img"
mkfifo "$work/metrics.fifo"

strace -f -qq -X verbose -o "$out/api.trace" "$ember" --api-sock "$sock" --no-seccomp \
    > "$work/serial.out" 2> "$work/ember.err" &
ember_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

api() { curl -s --unix-socket "$sock" -X "$1" "http://localhost$2" ${3:+-d "$3"} > /dev/null; }
api PUT /logger "{\"log_path\": \"$work/ember.log\", \"level\": \"Debug\"}"
api PUT /metrics "{\"metrics_path\": \"$work/metrics.fifo\"}"
api PUT /boot-source "{\"kernel_image_path\": \"$work/guests/guest-elf64\", \"boot_args\": \"console=ttyS0 ember.test=blk-rescan blk.wait=300000000\"}"
api PUT /drives/d "{\"drive_id\": \"d\", \"path_on_host\": \"$work/d1.img\", \"is_root_device\": false, \"is_read_only\": false, \"cache_type\": \"Writeback\", \"rate_limiter\": {\"ops\": {\"size\": 100, \"refill_time\": 100}}}"
api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 64}'
api PUT /actions '{"action_type": "InstanceStart"}'
sleep 0.5
api GET /
api GET /vm/config
api PATCH /vm '{"state": "Paused"}'
api PATCH /vm '{"state": "Resumed"}'
api PUT /actions '{"action_type": "FlushMetrics"}'
api PUT /actions '{"action_type": "SendCtrlAltDel"}'
api PUT /machine-config '{bad'
api DELETE /x
clients=()
for _ in 1 2 3 4 5; do api GET / & clients+=($!); done
for pid in "${clients[@]}"; do wait "$pid"; done
api PATCH /drives/d '{"drive_id": "d", "rate_limiter": {"ops": {"size": 1000, "refill_time": 100}}}'
api PATCH /drives/d "{\"drive_id\": \"d\", \"path_on_host\": \"$work/d2.img\"}"
sleep 1
kill -TERM "$ember_pid" 2> /dev/null || true
wait "$ember_pid" || true
grep -q "phase=0x2" "$work/serial.out" || { echo "the guest did not see the swap" >&2; exit 1; }
echo "$out/api.trace"
