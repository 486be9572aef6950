#!/usr/bin/env bash
# Traces the `ember` binary booting every test-guest scenario and writes one
# strace log per run into OUT (default /tmp/ember-seccomp-trace).
# Usage: crates/jailer/seccomp/trace.sh [OUT]
# Needs root (for /dev/kvm), strace and script(1). See README.md beside this file.
set -euo pipefail

out=${1:-/tmp/ember-seccomp-trace}
repo=$(cd "$(dirname "$0")/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
guests=$out/guests
ember=$target/release/ember

cd "$repo"
cargo build -q -p ember --release
cargo run -q -p ember-test-guests -- "$guests" > /dev/null
rm -f "$out"/*.trace
mkdir -p "$out"

# trace NAME KERNEL SCENARIO [EXTRA ember run ARGS...]: stdin from /dev/null.
trace() {
    local name=$1 kernel=$2 scenario=$3
    shift 3
    strace -f -qq -X verbose -o "$out/$name.trace" \
        "$ember" run --kernel "$guests/$kernel" \
        --cmdline "console=ttyS0 ember.test=$scenario" "$@" \
        < /dev/null > "$out/$name.out" 2>&1 || true
}

for kernel in guest-elf64 guest-pvh guest-bzimage; do
    trace "bootinfo-$kernel" "$kernel" bootinfo
done
trace boottimer guest-elf64 boottimer
trace reset guest-elf64 reset
trace badinsn guest-elf64 badinsn
trace bootinfo-2vcpus guest-elf64 bootinfo --vcpus 2
trace debug-log guest-elf64 bootinfo --level Debug --log-path "$out/debug-log.log"

# echo: the guest echoes a line read from the serial port; stdin is a pipe.
printf 'hello seccomp\n' | strace -f -qq -X verbose -o "$out/echo.trace" \
    "$ember" run --kernel "$guests/guest-elf64" \
    --cmdline "console=ttyS0 ember.test=echo" > "$out/echo.out" 2>&1 || true

# hlt on a terminal: raw mode on and off (TCGETS/TCSETS) on the main thread.
script -qec "strace -f -qq -X verbose -o '$out/hlt-tty.trace' '$ember' run \
    --kernel '$guests/guest-elf64' --cmdline 'console=ttyS0 ember.test=hlt'" \
    /dev/null > "$out/hlt-tty.out" 2>&1 &
wrapper=$!
sleep 3
kill -TERM "$(pgrep -n -x ember)"
wait "$wrapper" || true

# hlt: the guest parks; SIGTERM stops the VM (signal handled on any thread).
for vcpus in 1 2; do
    strace -f -qq -X verbose -o "$out/hlt-$vcpus.trace" \
        "$ember" run --kernel "$guests/guest-elf64" --vcpus "$vcpus" \
        --cmdline "console=ttyS0 ember.test=hlt" < /dev/null > "$out/hlt-$vcpus.out" 2>&1 &
    tracer=$!
    sleep 3
    kill -TERM "$(pgrep -P "$tracer" -x ember)"
    wait "$tracer" || true
done

echo "traces in $out:"
ls "$out"/*.trace
