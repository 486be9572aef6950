#!/usr/bin/env bash
# Builds Ember's reference Linux guest from Debian packages only: a small
# microVM kernel and a busybox root file system.
#
#   resources/guest/build.sh [OUT_DIR]     (default: target/linux-guest)
#
# OUT_DIR receives:
#   vmlinux            uncompressed ELF kernel (PVH note and 64-bit entry)
#   bzImage            compressed kernel (Linux boot protocol)
#   initramfs.cpio.gz  the root file system as an initramfs
#   rootfs.ext4        the same root file system as an ext4 image
#   kernel.config      the configuration the kernel was built with
#
# The guest's /init writes 123 to the boot-timer device (0xC000_0000), prints
# "guest-init: ready", runs whatever follows " -- " on the kernel command line
# with `sh -c`, prints "guest-exit: N" and reboots (an i8042 reset with
# reboot=k, which ends the microVM). Without arguments it opens a shell.
#
# Booting this guest needs a host with hardware virtualization (Intel VT-x or
# AMD-V, i.e. the kvm_intel or kvm_amd module). Under a nested hypervisor that
# emulates guest kernel code (PVM) it does not boot in reasonable time.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT_DIR/target/linux-guest}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

have() { command -v "$1" >/dev/null 2>&1; }
if ! have make || ! have bc || ! have flex || ! have bison || ! have cpio \
    || ! have mkfs.ext4 || [ ! -e /usr/include/libelf.h ]; then
  apt-get update -qq
  apt-get install -y -qq build-essential bc flex bison libelf-dev libssl-dev \
    cpio xz-utils e2fsprogs >/dev/null
fi

cd "$WORK"
if ! apt-get download -qq linux-source-6.1 busybox-static >/dev/null 2>&1; then
  apt-get update -qq
  apt-get download -qq linux-source-6.1 busybox-static >/dev/null
fi
dpkg-deb -x linux-source-6.1_*.deb src
dpkg-deb -x busybox-static_*.deb bb
tar xf src/usr/src/linux-source-6.1.tar.xz
cd linux-source-6.1

# tinyconfig plus what a microVM guest uses: PVH and 64-bit entry, KVM
# paravirtualization, SMP via the MP table, COM1 console, virtio over MMIO
# described on the command line, the virtio devices Ember provides, ext4,
# initramfs, and the i8042 for reboot.
make -s tinyconfig
./scripts/config \
  -e 64BIT -e PRINTK -e EARLY_PRINTK -e TTY -e UNIX98_PTYS \
  -e SERIAL_8250 -e SERIAL_8250_CONSOLE \
  -e HYPERVISOR_GUEST -e PARAVIRT -e KVM_GUEST -e PVH -e SMP -e X86_MPPARSE -e ACPI \
  -d PCI \
  -e VIRTIO_MENU -e VIRTIO -e VIRTIO_MMIO -e VIRTIO_MMIO_CMDLINE_DEVICES \
  -e BLOCK -e BLK_DEV -e VIRTIO_BLK \
  -e NET -e INET -e UNIX -e PACKET -e NETDEVICES -e NET_CORE -e VIRTIO_NET \
  -e VSOCKETS -e VIRTIO_VSOCKETS \
  -e MEMORY_BALLOON -e VIRTIO_BALLOON -e HW_RANDOM -e HW_RANDOM_VIRTIO \
  -e EXT4_FS -e BLK_DEV_INITRD -e RD_GZIP -e DEVTMPFS -e DEVTMPFS_MOUNT \
  -e PROC_FS -e SYSFS -e TMPFS -e SHMEM -e BINFMT_ELF -e BINFMT_SCRIPT \
  -e MULTIUSER -e FUTEX -e EPOLL -e SIGNALFD -e TIMERFD -e EVENTFD -e AIO \
  -e FILE_LOCKING -e POSIX_TIMERS \
  -e SERIO -e SERIO_I8042 -e INPUT -e INPUT_KEYBOARD -e KEYBOARD_ATKBD \
  -e DEVMEM -e NO_HZ_IDLE -e HIGH_RES_TIMERS
make -s olddefconfig
for option in VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET VIRTIO_VSOCKETS \
    SERIAL_8250_CONSOLE EXT4_FS PVH DEVMEM SERIO_I8042; do
  grep -q "^CONFIG_${option}=y" .config || {
    echo "the kernel configuration lacks CONFIG_${option}" >&2
    exit 1
  }
done
make -s -j"$(nproc)" vmlinux bzImage
cp .config "$OUT/kernel.config"
cp arch/x86/boot/bzImage "$OUT/bzImage"
strip --strip-debug -o "$OUT/vmlinux" vmlinux
cd "$WORK"

ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,root}
cp bb/bin/busybox "$ROOTFS/bin/busybox"
for applet in $("$ROOTFS/bin/busybox" --list); do
  [ -e "$ROOTFS/bin/$applet" ] || ln -s busybox "$ROOTFS/bin/$applet"
done
cat > "$ROOTFS/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
# Boot-time signal for the VMM's boot-timer device.
devmem 0xc0000000 8 123 2>/dev/null
echo "guest-init: ready"
if [ "$#" -gt 0 ]; then
  sh -c "$*"
  echo "guest-exit: $?"
else
  setsid cttyhack sh
fi
sync
reboot -f
INIT
chmod +x "$ROOTFS/init"
ln -s ../init "$ROOTFS/sbin/init"
(cd "$ROOTFS" && find . | cpio -o -H newc --quiet | gzip -9 > "$OUT/initramfs.cpio.gz")
rm -f "$OUT/rootfs.ext4"
mkfs.ext4 -q -L rootfs -d "$ROOTFS" "$OUT/rootfs.ext4" 16M
ls -l "$OUT"
