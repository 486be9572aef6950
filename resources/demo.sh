#!/usr/bin/env bash
# Sets everything up and boots a microVM with Ember.
#
# On a host with hardware virtualization (kvm_intel or kvm_amd loaded) it
# builds the reference Linux guest (resources/guest/build.sh, once, about ten
# minutes) and runs a command in it. On hosts whose KVM emulates guest kernel
# code (such as a nested PVM host), where Linux cannot boot, it boots Ember's
# test guest instead, which prints what the VMM told it at boot.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo gcc; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is needed" >&2; exit 1; }
done
[ -r /dev/kvm ] && [ -w /dev/kvm ] || {
  echo "demo: /dev/kvm is missing or not accessible to $(id -un)" >&2
  exit 1
}

cargo build --release --quiet -p ember -p ember-test-guests
EMBER=target/release/ember
OUT=target/demo
mkdir -p "$OUT"

if [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; then
  [ -f target/linux-guest/vmlinux ] || resources/guest/build.sh target/linux-guest
  exec "$EMBER" run --kernel target/linux-guest/vmlinux \
    --initrd target/linux-guest/initramfs.cpio.gz --vcpus 2 --mem 256 \
    -- 'echo "Hello from an Ember microVM"; uname -a; cat /proc/cpuinfo | grep -c processor'
else
  echo "demo: no hardware virtualization here; booting Ember's test guest" >&2
  target/release/ember-test-guests "$OUT/test-guests" >/dev/null
  exec "$EMBER" run --kernel "$OUT/test-guests/guest-pvh" --vcpus 2 --mem 256 \
    --cmdline "console=ttyS0 ember.test=bootinfo"
fi
