# Storage checks (tests/linux/test-linux-storage.sh), sourced by /init.
# Disks, found by --disk serial=ID (/sys/block/vdX/serial), all ext4 made by
# the host:
#   rawpci rawmmio qcowpci qcowmmio   read-write: files written, read back
#   overlay                           read-write, a qcow2 over a raw base
#   snap                              snapshot=on: read-write, thrown away
#   ro                                readonly=on
# kestrel.direct=ID,ID   disks (cache=none) that also get O_DIRECT I/O
# kestrel.trim=ID,ID     disks with a /trash file to delete and fstrim
# kestrel.mmio=ID,ID     disks on virtio-mmio (the others: virtio-pci)
# Every file written is reported as "STORAGE-SUM ID /PATH SHA256" for the
# host to compare with what it reads from the image afterwards; files the
# host planted are read and reported the same way. All disks are unmounted
# before the end, so the images are clean.
direct=,$(kparam direct),
trim=,$(kparam trim),
mmio=,$(kparam mmio),
echo 3 >/proc/sys/vm/drop_caches

# fresh SIZE NAME: SIZE bytes of random data in /tmp/NAME, prints its sha256.
fresh() {
	head -c "$1" /dev/urandom >"/tmp/$2"
	sha256sum "/tmp/$2" | cut -d' ' -f1
}
shaof() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
# remount ID DEV: unmount (flushes), drop the caches, mount again.
remount() {
	umount "/mnt/$1" && echo 3 >/proc/sys/vm/drop_caches && mount -t ext4 "$2" "/mnt/$1"
}

# transport ID DEV: the disk is on the transport asked for.
transport() {
	want=pci
	case $mmio in *,$1,*) want=mmio ;; esac
	path=$(readlink -f "/sys/block/${2#/dev/}/device")
	case $path in
	*/pci0000:*) got=pci ;;
	*/platform/*) got=mmio ;;
	*) got=unknown ;;
	esac
	check "$1: $2 is on virtio-$want ($path)" [ "$got" = "$want" ]
}

# rw_disk ID: mount, write files, sync, read back after a remount.
rw_disk() {
	d=$1
	dev=$(disk_by_serial "$d") || { fail "$d: no disk with serial=$d"; return; }
	transport "$d" "$dev"
	mkdir -p "/mnt/$d"
	if ! mount -t ext4 "$dev" "/mnt/$d"; then
		fail "$d: ext4 on $dev does not mount"
		return
	fi
	pass "$d: ext4 on $dev mounted read-write"
	# Files the host planted: report them for the host to compare.
	for f in /mnt/$d/planted /mnt/$d/trash; do
		[ -f "$f" ] && echo "STORAGE-SUM $d ${f#/mnt/$d} $(shaof "$f")"
	done
	s1=$(fresh 3145728 "$d-one")
	s2=$(fresh 1234567 "$d-two")
	mkdir -p "/mnt/$d/dir"
	cp "/tmp/$d-one" "/mnt/$d/one" && cp "/tmp/$d-two" "/mnt/$d/dir/two" && sync
	check "$d: wrote 3 MiB + 1234567 bytes of random data and synced" [ $? = 0 ]
	echo "STORAGE-SUM $d /one $s1"
	echo "STORAGE-SUM $d /dir/two $s2"
	case $direct in
	*,$d,*)
		s3=$(fresh 4194304 "$d-direct")
		dd if="/tmp/$d-direct" of="/mnt/$d/direct" bs=65536 oflag=direct conv=fsync 2>/tmp/dd.err
		check "$d: O_DIRECT write of 4 MiB (dd oflag=direct: $(tail -n 1 /tmp/dd.err))" [ $? = 0 ]
		echo "STORAGE-SUM $d /direct $s3"
		got=$(dd if="/mnt/$d/direct" bs=65536 iflag=direct 2>/tmp/dd.err | sha256sum | cut -d' ' -f1)
		check "$d: O_DIRECT read back the same sha256 (dd iflag=direct: $(tail -n 1 /tmp/dd.err))" [ "$got" = "$s3" ]
		;;
	esac
	if remount "$d" "$dev"; then
		g1=$(shaof "/mnt/$d/one")
		g2=$(shaof "/mnt/$d/dir/two")
		check "$d: after a remount and dropping the caches both files read back with their sha256" \
			[ "$g1" = "$s1" -a "$g2" = "$s2" ]
	else
		fail "$d: remount failed"
	fi
	case $trim in
	*,$d,*)
		rm -f "/mnt/$d/trash" && sync
		out=$(fstrim -v "/mnt/$d" 2>&1)
		st=$?
		bytes=$(echo "$out" | sed -n 's/.*(\([0-9]*\) bytes).*/\1/p')
		[ -n "$bytes" ] || bytes=$(echo "$out" | grep -o '[0-9]* bytes' | tr -dc 0-9)
		check "$d: fstrim after deleting /trash ($out)" [ "$st" = 0 -a "${bytes:-0}" -gt 16777216 ]
		;;
	esac
	rm -f "/tmp/$d-"*
}

for d in rawpci rawmmio qcowpci qcowmmio overlay snap; do
	rw_disk $d
done

# readonly=on: the guest sees a read-only disk, reads it, cannot write it.
dev=$(disk_by_serial ro)
if [ -n "$dev" ]; then
	transport ro "$dev"
	ro=$(cat "/sys/block/${dev#/dev/}/ro")
	check "ro: /sys/block/${dev#/dev/}/ro is 1 (saw $ro)" [ "$ro" = 1 ]
	mkdir -p /mnt/ro
	if mount -t ext4 -o ro "$dev" /mnt/ro; then
		pass "ro: ext4 on $dev mounted read-only"
		echo "STORAGE-SUM ro /planted $(shaof /mnt/ro/planted)"
		out=$(touch /mnt/ro/new 2>&1)
		check "ro: creating a file fails ($out)" [ ! -e /mnt/ro/new ]
	else
		fail "ro: ext4 on $dev does not mount read-only"
	fi
	# The device itself: a direct write to its last 4 KiB must fail.
	last=$(($(cat "/sys/block/${dev#/dev/}/size") / 8 - 1))
	out=$(dd if=/dev/zero of="$dev" bs=4096 seek=$last count=1 oflag=direct conv=notrunc,fsync 2>&1)
	st=$?
	check "ro: a direct write to $dev fails (dd status $st: $(echo "$out" | head -n 1))" [ "$st" != 0 ]
else
	fail "ro: no disk with serial=ro"
fi

for d in rawpci rawmmio qcowpci qcowmmio overlay snap ro; do
	if grep -q " /mnt/$d " /proc/mounts; then
		check "$d: unmounted cleanly" umount "/mnt/$d"
	fi
done
sync
