#!/usr/bin/env bash
# mkdistro.sh: build (once per machine) the Debian 12 root file system that
# tests/linux/test-linux-distro.sh boots under Kestrel, and print its path.
#
#   tests/linux/mkdistro.sh            build if missing, print the image path
#   tests/linux/mkdistro.sh --dir      print the cache folder instead
#   tests/linux/mkdistro.sh --check    print the image path if it is built,
#                                      else say so and exit 1 (never builds)
#
# Runs on the host itself, as root, with network access to the Debian
# archive (the mirror apt uses here, read from /etc/apt/sources.list*, or
# $DEBIAN_MIRROR). Needs debootstrap, e2fsprogs (mkfs.ext4 -d),
# initramfs-tools-core (lsinitramfs) and openssh-client (ssh-keygen). Takes
# a few minutes the first time.
#
# What it makes, in $KESTREL_CACHE/distro/<key>/ (default cache
# /var/tmp/kestrel-cache), <key> a hash of this script (which holds the
# package list and the configuration) and of the kernel version:
#   debian.raw       a 1 GiB sparse raw ext4 image (label "debian") of
#                    `debootstrap --variant=minbase bookworm` with systemd,
#                    udev, dbus, openssh-server, ifupdown, isc-dhcp-client,
#                    iproute2 and kmod; hostname "kestrel-debian"; root's
#                    password locked, login by ssh key only; eth0 by DHCP
#                    (/etc/network/interfaces); / on /dev/vda ext4 in
#                    fstab; a getty on ttyS0; sshd enabled; systemd, udev,
#                    ifupdown and dhclient timeouts raised to 20-30 min
#                    (nested emulation is slow); and this
#                    machine's /lib/modules/$KVER, so that Debian's own
#                    kernel and initrd from /boot boot it with its modules
#   debian.raw.sha256  its sha256, as built (the test checks its copy)
#   id_ed25519{,.pub}  the ssh key whose public half is root's
#                    authorized_keys in the image
#   kver             the kernel version the modules are for
# A second call finds it and returns at once. Concurrent calls serialize on
# a flock; a build happens in a temporary folder renamed into place only
# when complete, so a failed or interrupted build leaves nothing half-made.
set -euo pipefail

# dbus: systemd-logind needs the system bus (without it the unit fails and the
# system is "degraded"); every Debian install but minbase has it.
PACKAGES=systemd-sysv,udev,dbus,openssh-server,isc-dhcp-client,ifupdown,iproute2,kmod
SUITE=bookworm
# 1 GiB: the test reads the whole file once through the outer VM's 9p share
SIZE=1G
HOSTNAME_=kestrel-debian

CACHE=${KESTREL_CACHE:-/var/tmp/kestrel-cache}/distro
SELF=$(readlink -f "${BASH_SOURCE[0]}")

die() { echo "mkdistro: $*" >&2; exit 2; }

want_dir=0 check_only=0
case ${1:-} in
--dir) want_dir=1 ;;
--check) check_only=1 ;;
"") ;;
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
*) die "unknown argument '$1' (see --help)" ;;
esac

# The kernel: the newest /boot/vmlinuz-V with /lib/modules/V (as lib.sh).
KVER=""
for v in $(ls /lib/modules 2>/dev/null | sort -V); do
	[ -f "/boot/vmlinuz-$v" ] && [ -f "/lib/modules/$v/modules.dep" ] && KVER=$v
done
[ -n "$KVER" ] || die "no Debian kernel in /boot with modules (apt-get install linux-image-amd64)"

key=$({ cat "$SELF"; echo "$KVER $PACKAGES $SUITE $SIZE"; } | sha256sum | cut -c1-16)
OUT=$CACHE/$KVER-$key
result() {
	if [ "$want_dir" = 1 ]; then echo "$OUT"; else echo "$OUT/debian.raw"; fi
}
if [ -s "$OUT/debian.raw" ]; then result; exit 0; fi
if [ "$check_only" = 1 ]; then
	echo "mkdistro: no Debian image for kernel $KVER in $OUT: run tests/linux/mkdistro.sh first (on a host with root and network)" >&2
	exit 1
fi

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
# Debian's initrd must find the root disk by itself (MODULES=most has these).
mods=$(lsinitramfs "/boot/initrd.img-$KVER" 2>/dev/null | grep -oE '/(virtio_pci|virtio_blk|ext4)\.ko$' | sort -u | wc -l)
[ "$mods" = 3 ] || die "/boot/initrd.img-$KVER lacks virtio_pci, virtio_blk or ext4: add them to /etc/initramfs-tools/modules and run update-initramfs -u -k $KVER"
for p in debootstrap mkfs.ext4 ssh-keygen flock; do
	command -v "$p" >/dev/null || die "needs $p (apt-get install debootstrap e2fsprogs openssh-client util-linux)"
done

# The mirror apt uses for the main archive (deb822 .sources or one-line lists).
mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v s="$SUITE" '
			/^[ \t]*$/ { if (u != "" && ok) exit; u = ""; ok = 0; next }
			/^URIs:/ { u = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
			END { if (u != "" && ok) print u }' "$f"
	done
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk -v s="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == s) { print ($2 ~ /^\[/ ? $3 : $2); break } }'
}
MIRROR=${DEBIAN_MIRROR:-$(mirror 2>/dev/null | head -n1 || true)}
[ -n "$MIRROR" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list* (set DEBIAN_MIRROR)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -s "$OUT/debian.raw" ]; then result; exit 0; fi # built while we waited
rm -rf "$CACHE"/.build-* # left by a builder killed outright (we hold the lock)

TMP=$(mktemp -d "$CACHE/.build-XXXXXX")
ROOTFS=$TMP/rootfs
cleanup() {
	local m
	# debootstrap or a chroot step may leave proc/sys/dev mounted on failure
	for m in $(awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

t0=$SECONDS
echo "mkdistro: debootstrap $SUITE from $MIRROR into $ROOTFS (minutes)" >&2
mkdir -p "$CACHE/debs" # downloaded packages, kept across builds
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
	"$SUITE" "$ROOTFS" "$MIRROR" \
	>"$TMP/debootstrap.log" 2>&1 || {
	tail -n 20 "$TMP/debootstrap.log" >&2
	die "debootstrap failed (network to $MIRROR?)"
}
echo "mkdistro: debootstrap done in $((SECONDS - t0)) s; configuring" >&2

# Configuration.
echo "$HOSTNAME_" >"$ROOTFS/etc/hostname"
cat >"$ROOTFS/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_
::1		localhost ip6-localhost ip6-loopback
EOF
cat >"$ROOTFS/etc/network/interfaces" <<'EOF'
# Written by Kestrel's tests/linux/mkdistro.sh
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
EOF
cat >"$ROOTFS/etc/fstab" <<'EOF'
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/vda / ext4 errors=remount-ro 0 1
EOF
# root: no password (locked), the test's ssh key only
chroot "$ROOTFS" passwd -l root >/dev/null
ssh-keygen -q -t ed25519 -N "" -C "kestrel-distro-test" -f "$TMP/id_ed25519"
install -d -m 700 "$ROOTFS/root/.ssh"
install -m 600 "$TMP/id_ed25519.pub" "$ROOTFS/root/.ssh/authorized_keys"
# sshd (its host keys were made by the package's postinst) and a serial getty
# (the links are absolute, into the image: test them as links, not targets)
chroot "$ROOTFS" systemctl enable ssh.service >/dev/null 2>&1
chroot "$ROOTFS" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1
[ -L "$ROOTFS/etc/systemd/system/multi-user.target.wants/ssh.service" ] ||
	die "ssh.service is not enabled in the image"
[ -L "$ROOTFS/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service" ] ||
	die "serial-getty@ttyS0.service is not enabled in the image"
ls "$ROOTFS"/etc/ssh/ssh_host_*_key >/dev/null 2>&1 || die "no ssh host keys in the image"
# Patience: under nested emulation (kvmhost's outer VM is QEMU TCG, shared
# CPUs) this guest runs ~100 times slower than on hardware, and systemd's,
# udev's, ifupdown's and dhclient's default timeouts (90 s to 3 min) expire
# during a normal boot (seen: dev-ttyS0.device, ifupdown-pre's udevadm
# settle). Raised to 20-30 min, so that only real failures fail.
mkdir -p "$ROOTFS/etc/systemd/system.conf.d" "$ROOTFS/etc/systemd/system/ifupdown-pre.service.d" \
	"$ROOTFS/etc/systemd/system/networking.service.d"
cat >"$ROOTFS/etc/systemd/system.conf.d/50-kestrel-slow-host.conf" <<'EOF'
[Manager]
DefaultTimeoutStartSec=30min
DefaultTimeoutStopSec=10min
DefaultDeviceTimeoutSec=30min
EOF
cat >"$ROOTFS/etc/systemd/system/ifupdown-pre.service.d/50-kestrel-slow-host.conf" <<'EOF'
[Service]
TimeoutSec=30min
ExecStart=
ExecStart=/bin/sh -c 'if [ "$CONFIGURE_INTERFACES" != "no" ] && [ -n "$(ifquery --read-environment --list --exclude=lo)" ] && [ -x /bin/udevadm ]; then udevadm settle --timeout=1800; fi'
EOF
cat >"$ROOTFS/etc/systemd/system/networking.service.d/50-kestrel-slow-host.conf" <<'EOF'
[Service]
TimeoutStartSec=30min
EOF
echo "event_timeout=1800" >>"$ROOTFS/etc/udev/udev.conf"
echo "timeout 1200;" >>"$ROOTFS/etc/dhcp/dhclient.conf"
# the kernel's modules (virtio_net, etc. are loaded by udev from the root fs)
mkdir -p "$ROOTFS/lib/modules"
cp -a "/lib/modules/$KVER" "$ROOTFS/lib/modules/"
chroot "$ROOTFS" depmod "$KVER"
# smaller: no package cache, no apt lists
rm -f "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin
rm -rf "$ROOTFS"/var/lib/apt/lists/*
rm -f "$ROOTFS"/var/log/*.log

echo "mkdistro: mkfs.ext4 -d ($SIZE sparse)" >&2
truncate -s "$SIZE" "$TMP/debian.raw"
# inode tables and journal zeroed now (as holes), not by the guest's first boot
mkfs.ext4 -q -F -L debian -E lazy_itable_init=0,lazy_journal_init=0 \
	-d "$ROOTFS" "$TMP/debian.raw"
e2fsck -fn "$TMP/debian.raw" >"$TMP/e2fsck.log" 2>&1 || {
	cat "$TMP/e2fsck.log" >&2
	die "the new image does not pass e2fsck -fn"
}
echo "$KVER" >"$TMP/kver"
sha256sum <"$TMP/debian.raw" | cut -d' ' -f1 >"$TMP/debian.raw.sha256"
chmod 755 "$TMP"

# Into place: only a complete build gets the final name.
rm -rf "$ROOTFS"
rm -f "$TMP/debootstrap.log" "$TMP/e2fsck.log"
rm -rf "$OUT"
mv -T "$TMP" "$OUT"
trap - EXIT
for old in "$CACHE/$KVER"-*; do # images of earlier versions of this script
	[ "$old" = "$OUT" ] || rm -rf "$old"
done
echo "mkdistro: built in $((SECONDS - t0)) s: $(du -h "$OUT/debian.raw" | cut -f1) used of $SIZE" >&2
result
