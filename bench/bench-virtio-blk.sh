#!/usr/bin/env bash
# virtio-blk figures (prints numbers, asserts nothing).
#
# A ring-3 micro-guest (tests/guests/virtio-bench.c) keeps one virtqueue at
# a fixed depth and polls the used ring (no interrupts); it times itself
# with the calibrated TSC, so boot does not count. The same raw file and
# cache mode are used for:
#   - Kestrel, aio=io_uring (its default) and aio=threads
#   - QEMU -M pc (qboot) with -device virtio-blk-pci, aio=io_uring and
#     aio=threads (QEMU's default)
#   - the host itself: fio, ioengine=io_uring, same block size and depth
# For Kestrel it also reports VM exits to userspace per request: the -v
# exit count of the run minus that of a run of the same guest doing no I/O.
# Doorbells go to KVM ioeventfds and completions need no interrupt, so
# this should be ~0.
#
# Environment:
#   BENCH_IMG   the raw file (default /var/tmp/kestrel-virtio-bench.img,
#               created as 1 GiB of allocated zeroes if missing)
#   BENCH_SECS  seconds per measurement (default 5)
#   CACHE       cache mode for both VMMs (default none; fio uses
#               direct=1 for none/directsync)
#   TESTS       "rw:bs:qd ..." (default: 4 KiB random read/write at QD1 and
#               QD32, 1 MiB sequential read/write at QD1)
#   SKIP_QEMU=1, SKIP_FIO=1, KESTREL, GUESTS, QEMU
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
QEMU=${QEMU:-qemu-system-x86_64}
ELF=$G/virtio-bench.elf
IMG=${BENCH_IMG:-/var/tmp/kestrel-virtio-bench.img}
SECS=${BENCH_SECS:-5}
CACHE=${CACHE:-none}
TESTS=${TESTS:-"randread:4096:1 randread:4096:32 randwrite:4096:1 randwrite:4096:32 read:1048576:1 write:1048576:1"}
QBOOT=/usr/share/qemu/qboot.rom

for f in "$K" "$ELF"; do
	[ -e "$f" ] || { echo "bench-virtio-blk.sh: $f missing (make; make guests)" >&2; exit 2; }
done
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" -ne $((1 << 30)) ]; then
	echo "creating $IMG (1 GiB, allocated)"
	dd if=/dev/zero of="$IMG" bs=1M count=1024 oflag=direct status=none || exit 2
fi
if [ "${SKIP_FIO:-0}" != 1 ] && ! command -v fio >/dev/null; then
	echo "fio not found (apt-get install -y fio): host figures skipped"
	SKIP_FIO=1
fi

# The value of NAME=N in TEXT (first match).
field() { sed -n "s/\(^\|.*[ :]\)$1= *\([0-9]*\).*/\2/p" <<<"$2" | head -n 1; }

# One guest run on Kestrel: prints the guest's bench line, then "exits N".
kestrel_run() { # AIO CMDLINE
	local out
	out=$(timeout $((SECS + 60)) "$K" run -v --kernel "$ELF" --memory 256M \
		--disk "path=$IMG,cache=$CACHE,aio=$1" --cmdline "$2" --serial stdio --no-reboot </dev/null 2>&1)
	grep -m1 '^bench: ' <<<"$out" | tr -d '\r'
	sed -n 's/.*vcpu0: \([0-9]*\) exits.*/exits=\1/p' <<<"$out"
}

qemu_run() { # AIO CMDLINE
	local bios=()
	[ -f "$QBOOT" ] && bios=(-bios "$QBOOT")
	timeout $((SECS + 60)) "$QEMU" -enable-kvm -nographic -no-reboot "${bios[@]}" -m 256M \
		-kernel "$ELF" -device isa-debug-exit,iobase=0xf4,iosize=4 \
		-drive "file=$IMG,format=raw,if=none,id=d0,cache=$CACHE,aio=$1" \
		-device virtio-blk-pci,drive=d0 -append "$2" </dev/null 2>/dev/null | grep -m1 '^bench: ' | tr -d '\r'
}

# fio on the host: prints "iops=N MBps=N" (MB = 10^6 bytes).
fio_run() { # RW BS QD
	local rw=$1 direct=0   # the guest's rw= names are fio's
	case $CACHE in none | directsync) direct=1 ;; esac
	fio --name=bench --filename="$IMG" --direct=$direct --ioengine=io_uring --rw="$rw" --bs="$2" \
		--iodepth="$3" --runtime="$SECS" --time_based --norandommap --randrepeat=0 \
		--output-format=json 2>/dev/null |
		python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print("iops=%d MBps=%d" % (d["iops"], d["bw_bytes"] / 1e6))'
}

QEMU_AIO_URING=io_uring
if [ "${SKIP_QEMU:-0}" != 1 ]; then
	# A QEMU without io_uring support exits at once on aio=io_uring.
	"$QEMU" -machine none -display none -S -monitor none \
		-drive "file=$IMG,format=raw,if=none,aio=io_uring,cache=$CACHE" </dev/null >/dev/null 2>&1 &
	pid=$!
	sleep 1
	if kill -0 $pid 2>/dev/null; then
		kill $pid
		wait $pid 2>/dev/null
	else
		wait $pid 2>/dev/null
		echo "QEMU has no aio=io_uring: using aio=native"
		QEMU_AIO_URING=native
	fi
fi

echo "== host"
echo "kernel $(uname -r), $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ -d /sys/module/kvm_pvm ] && echo "kvm: kvm_pvm (nested)"
echo "image $IMG ($(df -T "$IMG" | awk 'NR == 2 { print $2 }')), cache=$CACHE, ${SECS} s per figure"
"$QEMU" --version | head -n 1
command -v fio >/dev/null && fio --version

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "== virtio-blk, 1 queue, polling guest (IOPS for 4 KiB, MB/s for 1 MiB; MB = 10^6 bytes)"
printf '%-17s %9s %9s %9s %9s %9s | %7s %7s %7s | %9s %9s\n' test "K uring" "K thread" "Q uring" "Q thread" "host fio" \
	"K/Q u" "K/Q t" "K/host" "exits/req" "kicks/req"
for t in $TESTS; do
	IFS=: read -r rw bs qd <<<"$t"
	metric=iops
	[ "$bs" -ge 65536 ] && metric=MBps
	label="$rw $((bs / 1024))k qd$qd"
	[ "$bs" -ge 1048576 ] && label="$rw $((bs >> 20))M qd$qd"
	args="rw=$rw bs=$bs qd=$qd"

	k=$(kestrel_run io_uring "$args seconds=$SECS")
	kb=$(kestrel_run io_uring "$args seconds=0")
	kt=$(kestrel_run threads "$args seconds=$SECS")
	kv=$(field $metric "$k") ktv=$(field $metric "$kt")
	ops=$(field ops "$k") kicks=$(field kicks "$k")
	ex=$(field exits "$k") exb=$(field exits "$kb")
	epr=$(awk -v e="$ex" -v b="$exb" -v o="$ops" 'BEGIN { if (o > 0 && e != "" && b != "") printf "%.4f", (e - b) / o; else print "-" }')
	kpr=$(awk -v k="$kicks" -v o="$ops" 'BEGIN { if (o > 0) printf "%.3f", k / o; else print "-" }')

	qv="" qtv=""
	if [ "${SKIP_QEMU:-0}" != 1 ]; then
		qv=$(field $metric "$(qemu_run $QEMU_AIO_URING "$args seconds=$SECS")")
		qtv=$(field $metric "$(qemu_run threads "$args seconds=$SECS")")
	fi
	hv=""
	[ "${SKIP_FIO:-0}" != 1 ] && hv=$(field $metric " $(fio_run "$rw" "$bs" "$qd")")

	printf '%-17s %9s %9s %9s %9s %9s | %7s %7s %7s | %9s %9s\n' "$label" "${kv:--}" "${ktv:--}" "${qv:--}" \
		"${qtv:--}" "${hv:--}" "$(ratio "$kv" "$qv")" "$(ratio "$ktv" "$qtv")" "$(ratio "$kv" "$hv")" "$epr" "$kpr"
	if [ "${VERBOSE:-0}" = 1 ]; then
		echo "    kestrel:  $(tr '\n' ' ' <<<"$k" | tr -s ' ')"
		echo "    baseline: $(tr '\n' ' ' <<<"$kb" | tr -s ' ')"
	fi
done
echo
echo "K = Kestrel, Q = QEMU ($QEMU_AIO_URING / threads), host = fio io_uring on the same file."
echo "exits/req: Kestrel vcpu0 exits to userspace (run minus a no-I/O run) per request (aio=io_uring run)."
echo "kicks/req: doorbell writes per request (the device suppresses them while it is busy)."
