#!/usr/bin/env bash
# Linux tier for qcow2: the kernel mounts an ext4 root read-write from a
# qcow2 overlay over a raw base (virtio-blk, format=qcow2). Afterwards the
# base is unchanged, the overlay holds the superblock write and passes
# `qemu-img check`; with snapshot=on the overlay file is byte-for-byte
# untouched. Two boots. Ends with "N passed, N failed".
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KESTREL="${KESTREL:-$ROOT/build/kestrel}"
TIMEOUT="${TIMEOUT:-900}"
passed=0 failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { if [[ $2 == 0 ]]; then pass "$1${3:+ ($3)}"; else fail "$1${3:+ ($3)}"; fi; }

kout="$("$HERE/build-kernel.sh")" || { echo "test-linux-qcow2.sh: kernel build failed" >&2; exit 2; }
eval "$kout"
WORK="$(mktemp -d /var/tmp/kestrel-qcow2-linux.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/dev" "$WORK/root/sbin"
echo "kestrel qcow2 marker $$" > "$WORK/root/kestrel-marker"
printf 'not an executable\n' > "$WORK/root/sbin/init"
chmod 755 "$WORK/root/sbin/init"
base="$WORK/base.raw" ov="$WORK/overlay.qcow2"
truncate -s 64M "$base"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$WORK/root" "$base"
"$KESTREL" img create -q -f qcow2 -b "$base" -F raw "$ov"
base_sum="$(sha256sum < "$base")"
mounts_of() { "$KESTREL" img convert -O raw "$1" "$WORK/flat.raw" && dumpe2fs -h "$WORK/flat.raw" 2>/dev/null | sed -n 's/^Mount count: *//p'; rm -f "$WORK/flat.raw"; }

boot() { # boot NAME DISKOPTS: boots, leaves the log in $WORK/NAME.log
	"$HERE/boot.sh" kestrel "$VMLINUX" --timeout "$TIMEOUT" --log "$WORK/$1.log" --quiet \
		--extra-cmdline "root=/dev/vda rw rdinit=/nonexistent" --vmm-arg --disk --vmm-arg "$2" >/dev/null
	# shellcheck disable=SC1090
	source "$WORK/$1.log.result"
}

echo "== rw root on a qcow2 overlay over a raw base"
boot overlay "path=$ov,format=qcow2"
log="$WORK/overlay.log"
check "VMM exited by itself with status 0" "$([[ $BOOT_EXIT == 0 ]]; echo $?)" "status $BOOT_EXIT, $BOOT_END"
grep -qE 'EXT4-fs \(vda\): mounted filesystem .*with ordered data mode' "$log"; check "ext4 root mounted from the overlay" $?
grep -qE 'VFS: Mounted root \(ext4 filesystem\) on device' "$log"; check "mounted read-write" $?
[[ "$(sha256sum < "$base")" == "$base_sum" ]]; check "raw base unchanged (sha256)" $?
qemu-img check -q "$ov"; check "qemu-img check on the overlay is clean" $?
alloc="$(qemu-img map --output=json "$ov" | grep -c '"depth": 0, "present": true, "zero": false, "data": true')"
check "the overlay holds the guest's writes" "$([[ $alloc -gt 0 ]]; echo $?)" "$alloc data extents in the overlay"
mc="$(mounts_of "$ov")"
check "superblock in the overlay shows the mount (Mount count 1)" "$([[ $mc == 1 ]]; echo $?)" "mount count $mc"

echo "== snapshot=on on the overlay"
ov_sum="$(sha256sum < "$ov")"
boot snap "path=$ov,format=qcow2,snapshot=on"
log="$WORK/snap.log"
check "snapshot=on: VMM exited with status 0" "$([[ $BOOT_EXIT == 0 ]]; echo $?)" "status $BOOT_EXIT"
grep -qE 'VFS: Mounted root \(ext4 filesystem\) on device' "$log"; check "snapshot=on: root mounted read-write" $?
[[ "$(sha256sum < "$ov")" == "$ov_sum" ]]; check "snapshot=on: overlay byte-for-byte unchanged" $?
[[ "$(sha256sum < "$base")" == "$base_sum" ]]; check "snapshot=on: base unchanged" $?

echo "$passed passed, $failed failed"
((failed == 0))
