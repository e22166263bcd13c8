#!/usr/bin/env bash
# Build the busybox initramfs for the NORMAL Linux-guest path (hosts with real
# VT-x/AMD-V, where guest user space runs and can make system calls).
#
# Usage: tests/linux/mkinitramfs.sh [OUTPUT]     (default $KESTREL_CACHE/linux/initramfs.cpio.gz)
# Prints the path of the archive on stdout.
#
# Boot it with:   tests/linux/boot.sh kestrel "$VMLINUX" --initrd <OUTPUT>
# It is unpacked over the kernel's built-in initramfs and replaces its /init.
# The /init script mounts proc, sysfs and devtmpfs, prints a few checks, each
# line starting "KESTREL-CHECK", then "KESTREL-INIT-DONE", and powers the
# machine off with `poweroff -f` (ACPI S5; a VMM without ACPI power-off makes
# the kernel print "reboot: System halted" instead -- with panic=-1 boot.sh's
# command line, add --extra-cmdline "reboot=..." or use `reboot -f` if needed).
#
# On the nested-KVM test host this path cannot work: the guest's user space
# cannot make system calls there, so /init never gets past its first
# instruction that enters the kernel. test-linux.sh therefore uses the
# kernel-only path (the built-in initramfs, see initramfs.list).
set -euo pipefail

CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"
OUTFILE="${1:-$CACHE/linux/initramfs.cpio.gz}"

for p in busybox-static cpio; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        echo "mkinitramfs: installing $p" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >&2
    fi
done
BUSYBOX=/bin/busybox

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,root,etc}
cp "$BUSYBOX" "$stage/bin/busybox"
chmod 755 "$stage"
for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$stage/bin/$applet"
done
# /dev/console for the kernel's stdin/stdout of /init (the kernel's built-in
# initramfs has one too, so failing to create it as non-root is harmless).
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true

cat > "$stage/init" <<'EOF'
#!/bin/sh
# Kestrel Linux-guest check script (busybox). Output lines start with KESTREL-.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "KESTREL-CHECK init: running as pid $$ on $(uname -r)"
echo "KESTREL-CHECK cpus: $(grep -c '^processor' /proc/cpuinfo)"
echo "KESTREL-CHECK date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "KESTREL-CHECK interrupts:"
head -n 12 /proc/interrupts
echo "KESTREL-CHECK virtio devices: $(ls /sys/bus/virtio/devices 2>/dev/null | tr '\n' ' ')"
for d in /sys/bus/virtio/devices/*; do
    [ -e "$d/device" ] && echo "KESTREL-CHECK virtio $(basename "$d"): device id $(cat "$d/device")"
done
echo "KESTREL-INIT-DONE"
poweroff -f
# Not reached unless power-off failed.
echo "KESTREL-CHECK poweroff failed"
reboot -f
EOF
chmod 755 "$stage/init"

mkdir -p "$(dirname "$OUTFILE")"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner 0:0 --quiet) \
    | gzip -9 > "$OUTFILE.tmp"
mv "$OUTFILE.tmp" "$OUTFILE"
echo "$OUTFILE"
