#!/usr/bin/env bash
# Tier 3, storage: ext4 on virtio-blk under Debian's stock kernel with a
# busybox user space (tests/linux/lib.sh). Run it where KVM runs Linux:
#
#   tools/kvmhost/kvmhost -q -- tests/linux/test-linux-storage.sh
#
# One boot (guest script tests/linux/guest/storage.sh) with seven disks, each
# an ext4 image made here and found by the guest by its serial
# (/sys/block/vdX/serial), not by order:
#   rawpci    raw,   pci,  writeback; has a 24 MiB /trash to delete and trim
#   rawmmio   raw,   mmio, cache=none, iothread=on; O_DIRECT I/O
#   qcowpci   qcow2 (made by qemu-img convert), pci, cache=none, aio=threads;
#             O_DIRECT I/O
#   qcowmmio  qcow2 (made by kestrel img convert), mmio; /trash, trimmed
#   overlay   qcow2 made by `kestrel img create -b base.raw -F raw`
#   snap      raw, snapshot=on
#   ro        raw, readonly=on
# Every image holds a 1 MiB /planted file of random data. The guest checks:
# each disk is on the transport asked for; mounts each read-write disk,
# writes 3 MiB + 1234567 bytes of fresh random data, syncs, unmounts, drops
# the caches, mounts again and reads both back with their sha256; on rawmmio
# and qcowpci also writes 4 MiB with dd oflag=direct and reads it back with
# iflag=direct; on rawpci and qcowmmio deletes /trash and runs fstrim; on ro
# sees /sys/block/vdX/ro = 1, mounts it read-only, cannot create a file and
# a direct write to the device fails; unmounts everything. It prints
# "STORAGE-SUM DISK PATH SHA256" for each file it wrote or read.
# The host then checks, from the image files themselves (qcow2 read by
# qemu-img, not by Kestrel):
#   - each file the guest wrote is in the image with the sha256 the guest
#     printed (debugfs dump), and the guest read each planted (and trash)
#     file with the sha256 the host gave it
#   - e2fsck -fn is clean on every image; qemu-img check is clean on every
#     qcow2
#   - discard: rawpci's allocated size (du) and qcowmmio's allocated data
#     (qemu-img map) and file size on disk shrank by at least 12 MiB
#   - snap and ro: the image file is byte-identical (sha256) afterwards
#   - overlay: the raw base is byte-identical; the guest's files are in the
#     overlay (read through it) and at least 4 MiB of data is allocated in
#     the overlay itself (map depth 0)
#   - Kestrel's log shows cache=none for the O_DIRECT disks
# plus linux_results: the guest's checks ran to the end, status 0 after the
# guest's poweroff, no oops/BUG/WARNING/panic.
# One PASS/FAIL/SKIP line per check; the last line "N passed, N failed,
# N skipped"; exit status 0 only if nothing failed (2: a missing tool, no
# kernel or no Kestrel build). Logs in $KESTREL_CACHE/linux/logs/.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/linux/lib.sh
. "$ROOT/tests/linux/lib.sh"
for t in mkfs.ext4 debugfs e2fsck qemu-img sha256sum du jq; do
	command -v "$t" >/dev/null || { echo "test-linux-storage.sh: $t is not installed" >&2; exit 2; }
done
linux_setup
WORK=$(mktemp -d /var/tmp/kestrel-storage.XXXXXX) || exit 2
trap 'rm -rf "$WORK"' EXIT

# --- the images -------------------------------------------------------------------
mkdir -p "$WORK/plain" "$WORK/trashy"
head -c 1048576 /dev/urandom >"$WORK/plain/planted"
cp "$WORK/plain/planted" "$WORK/trashy/planted"
head -c 25165824 /dev/urandom >"$WORK/trashy/trash"
PLANTED=$(sha256sum <"$WORK/plain/planted" | cut -d' ' -f1)
TRASH=$(sha256sum <"$WORK/trashy/trash" | cut -d' ' -f1)
mkimg() { # mkimg IMAGE TREE: a 96 MiB ext4 holding TREE
	truncate -s 96M "$1" &&
		mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$2" "$1"
}
W=$WORK
mkimg "$W/rawpci.img" "$W/trashy" &&
	mkimg "$W/rawmmio.img" "$W/plain" &&
	mkimg "$W/qcowpci.raw" "$W/plain" &&
	qemu-img convert -f raw -O qcow2 "$W/qcowpci.raw" "$W/qcowpci.qcow2" &&
	mkimg "$W/qcowmmio.raw" "$W/trashy" &&
	"$KESTREL" img convert -q -f raw -O qcow2 "$W/qcowmmio.raw" "$W/qcowmmio.qcow2" &&
	mkimg "$W/base.raw" "$W/plain" &&
	"$KESTREL" img create -q -f qcow2 -b base.raw -F raw "$W/overlay.qcow2" &&
	mkimg "$W/snap.img" "$W/plain" &&
	mkimg "$W/ro.img" "$W/plain" ||
	{ echo "test-linux-storage.sh: cannot make the images" >&2; exit 2; }
rm -f "$W/qcowpci.raw" "$W/qcowmmio.raw"

sha() { sha256sum <"$1" | cut -d' ' -f1; }
kib() { du -k "$1" | cut -f1; }
# mapped IMAGE: bytes of data the image itself holds (qemu-img map, depth 0).
mapped() {
	qemu-img map -f qcow2 --output=json "$1" |
		jq '[.[] | select(.data and .depth == 0) | .length] | add // 0'
}
declare -A before
before[snap]=$(sha "$W/snap.img")
before[ro]=$(sha "$W/ro.img")
before[base]=$(sha "$W/base.raw")
before[rawpci_kib]=$(kib "$W/rawpci.img")
before[qcowmmio_kib]=$(kib "$W/qcowmmio.qcow2")
before[qcowmmio_map]=$(mapped "$W/qcowmmio.qcow2")
before[overlay_map]=$(mapped "$W/overlay.qcow2")

# --- the boot -----------------------------------------------------------------------
linux_boot storage -v \
	--cmdline "kestrel.direct=rawmmio,qcowpci kestrel.trim=rawpci,qcowmmio kestrel.mmio=rawmmio,qcowmmio" \
	--disk "path=$W/rawpci.img,serial=rawpci" \
	--disk "path=$W/rawmmio.img,serial=rawmmio,transport=mmio,cache=none,iothread=on" \
	--disk "path=$W/qcowpci.qcow2,format=qcow2,serial=qcowpci,cache=none,aio=threads" \
	--disk "path=$W/qcowmmio.qcow2,format=qcow2,serial=qcowmmio,transport=mmio" \
	--disk "path=$W/overlay.qcow2,format=qcow2,serial=overlay" \
	--disk "path=$W/snap.img,serial=snap,snapshot=on" \
	--disk "path=$W/ro.img,serial=ro,readonly=on"
linux_results storage
LOG=$LOGDIR/storage.log

# What the guest printed: SUM[disk path] = sha256.
declare -A SUM
while read -r _ d p s; do
	SUM[$d $p]=${s%$'\r'}
done < <(grep -a '^STORAGE-SUM ' "$LOG")

# --- the host's view of each image --------------------------------------------------
# view DISK: a raw file with the disk's content as the host reads it.
view() {
	case $1 in
	rawpci | rawmmio | snap | ro) echo "$W/$1.img" ;;
	*)
		qemu-img convert -f qcow2 -O raw "$W/$1.qcow2" "$W/$1.view" && echo "$W/$1.view" ;;
	esac
}
# dumpsha IMAGE PATH: the sha256 of PATH in the ext4 IMAGE, read by debugfs.
dumpsha() {
	rm -f "$W/dump"
	debugfs -R "dump $2 $W/dump" "$1" >/dev/null 2>&1
	[ -f "$W/dump" ] && sha "$W/dump"
}

for d in rawpci rawmmio qcowpci qcowmmio overlay snap ro; do
	img=$(view "$d") || { fail "$d: host cannot read the image back"; continue; }
	# The planted file (and trash) as the guest read them.
	[ "${SUM[$d /planted]:-}" = "$PLANTED" ]
	check "$d: the guest read /planted with the host's sha256 (${SUM[$d /planted]:-none printed})" $?
	case $d in rawpci | qcowmmio)
		[ "${SUM[$d /trash]:-}" = "$TRASH" ]
		check "$d: the guest read the 24 MiB /trash with the host's sha256 before deleting it" $? ;;
	esac
	# The files the guest wrote, re-read from the image.
	files=()
	case $d in
	rawpci | qcowmmio | overlay) files=(/one /dir/two) ;;
	rawmmio | qcowpci) files=(/one /dir/two /direct) ;;
	esac
	if [ ${#files[@]} -gt 0 ]; then
		bad=""
		for p in "${files[@]}"; do
			got=$(dumpsha "$img" "$p")
			[ -n "${SUM[$d $p]:-}" ] && [ "$got" = "${SUM[$d $p]}" ] || bad+=" $p (guest ${SUM[$d $p]:-none}, image ${got:-missing})"
		done
		[ -z "$bad" ]
		check "$d: host re-read ${files[*]} from the image with the guest's sha256${bad:+; differ:$bad}" $?
	fi
	out=$(e2fsck -fn "$img" 2>&1)
	check "$d: e2fsck -fn clean ($(echo "$out" | tail -n 1))" $?
	case $d in qcowpci | qcowmmio | overlay)
		out=$(qemu-img check "$W/$d.qcow2" 2>&1)
		check "$d: qemu-img check clean ($(echo "$out" | tail -n 1))" $? ;;
	esac
	rm -f "$W/$d.view"
done

# snapshot=on and readonly=on: the files did not change.
for d in snap ro; do
	now=$(sha "$W/$d.img")
	[ "$now" = "${before[$d]}" ]
	check "$d: the image file is byte-identical afterwards (sha256 ${now:0:16}...)" $?
done
# The guest did write to snap (through the throwaway overlay).
[ -n "${SUM[snap /one]:-}" ] && ! grep -aq 'GUEST-FAIL snap:' "$LOG"
check "snap: the guest wrote and read back its files on the snapshot=on disk" $?

# The overlay: base untouched, the writes in the overlay itself.
now=$(sha "$W/base.raw")
[ "$now" = "${before[base]}" ]
check "overlay: the raw base is byte-identical afterwards" $?
n=$(mapped "$W/overlay.qcow2")
[ "$n" -ge $((before[overlay_map] + 4 * 1048576)) ]
check "overlay: the overlay itself holds the guest's writes (map depth 0: ${before[overlay_map]} -> $n bytes)" $?

# Discard.
n=$(kib "$W/rawpci.img")
[ "$n" -le $((before[rawpci_kib] - 12288)) ]
check "rawpci: fstrim shrank the raw image's allocation (du ${before[rawpci_kib]} -> $n KiB)" $?
n=$(mapped "$W/qcowmmio.qcow2")
[ "$n" -le $((before[qcowmmio_map] - 12582912)) ]
check "qcowmmio: fstrim freed qcow2 clusters (map data ${before[qcowmmio_map]} -> $n bytes)" $?
n=$(kib "$W/qcowmmio.qcow2")
[ "$n" -le $((before[qcowmmio_kib] - 12288)) ]
check "qcowmmio: and the qcow2 file's allocation shrank (du ${before[qcowmmio_kib]} -> $n KiB)" $?

# The O_DIRECT disks ran with cache=none.
for d in rawmmio qcowpci; do
	line=$(grep -a "virtio-blk.*$d\.\(img\|qcow2\)'.*cache=" "$LOG" | head -n 1)
	[[ $line == *cache=none* ]]
	check "$d: Kestrel opened it with cache=none (${line#kestrel: })" $?
done

linux_summary
