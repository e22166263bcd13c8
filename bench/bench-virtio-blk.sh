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
# Each figure is the median of RUNS runs, the VMMs alternating (K uring,
# K threads, Q uring, Q threads, then again); the ratios are Kestrel/QEMU
# (IOPS, MB/s: above 1 favours Kestrel). Inside tools/kvmhost's outer VM
# (KESTREL_KVMHOST_INSIDE=1) both run nested under TCG: only ratios compare.
#
# Environment:
#   BENCH_IMG   the raw file (default /var/tmp/kestrel-virtio-bench.img,
#               created as BENCH_IMG_MB (default 1024) MiB of allocated
#               zeroes if missing or of another size)
#   BENCH_SECS  seconds per measurement (default 5)
#   RUNS        runs per figure (default 3)
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
RUNS=${RUNS:-3}
IMG_MB=${BENCH_IMG_MB:-1024}
CACHE=${CACHE:-none}
TESTS=${TESTS:-"randread:4096:1 randread:4096:32 randwrite:4096:1 randwrite:4096:32 read:1048576:1 write:1048576:1"}
QBOOT=/usr/share/qemu/qboot.rom

for f in "$K" "$ELF"; do
	[ -e "$f" ] || { echo "bench-virtio-blk.sh: $f missing (make; make guests)" >&2; exit 2; }
done
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" -ne $((IMG_MB << 20)) ]; then
	echo "creating $IMG ($IMG_MB MiB, allocated)"
	dd if=/dev/zero of="$IMG" bs=1M count="$IMG_MB" oflag=direct status=none || exit 2
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
	timeout $((SECS + 60)) "$QEMU" -accel kvm -nographic -no-reboot "${bios[@]}" -m 256M \
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
if [ "${KESTREL_KVMHOST_INSIDE:-0}" = 1 ]; then
	echo "NOTE: inside tools/kvmhost's outer VM (QEMU TCG, nested KVM): every absolute figure below is"
	echo "      a nested guest's under TCG emulation; only the Kestrel/QEMU ratios compare."
fi
echo "image $IMG ($(df -T "$IMG" | awk 'NR == 2 { print $2 }')), cache=$CACHE, ${SECS} s per figure"
"$QEMU" --version | head -n 1
command -v fio >/dev/null && fio --version

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END {
	if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "== virtio-blk, 1 queue, polling guest (IOPS for 4 KiB, MB/s for 1 MiB; MB = 10^6 bytes; median of $RUNS)"
printf '%-17s %9s %9s %9s %9s %9s | %7s %7s %7s | %9s %9s\n' test "K uring" "K thread" "Q uring" "Q thread" "host fio" \
	"K/Q u" "K/Q t" "K/host" "exits/req" "kicks/req"
for t in $TESTS; do
	IFS=: read -r rw bs qd <<<"$t"
	metric=iops
	[ "$bs" -ge 65536 ] && metric=MBps
	label="$rw $((bs / 1024))k qd$qd"
	[ "$bs" -ge 1048576 ] && label="$rw $((bs >> 20))M qd$qd"
	args="rw=$rw bs=$bs qd=$qd"

	kb=$(kestrel_run io_uring "$args seconds=0")
	exb=$(field exits "$kb")
	kvs="" ktvs="" qvs="" qtvs="" eprs="" kprs="" k=""
	for _ in $(seq "$RUNS"); do
		k=$(kestrel_run io_uring "$args seconds=$SECS")
		kt=$(kestrel_run threads "$args seconds=$SECS")
		kvs+=" $(field $metric "$k")" ktvs+=" $(field $metric "$kt")"
		ops=$(field ops "$k") kicks=$(field kicks "$k") ex=$(field exits "$k")
		eprs+=" $(awk -v e="$ex" -v b="$exb" -v o="$ops" 'BEGIN { if (o > 0 && e != "" && b != "") printf "%.4f", (e - b) / o }')"
		kprs+=" $(awk -v k="$kicks" -v o="$ops" 'BEGIN { if (o > 0) printf "%.3f", k / o }')"
		if [ "${SKIP_QEMU:-0}" != 1 ]; then
			qvs+=" $(field $metric "$(qemu_run $QEMU_AIO_URING "$args seconds=$SECS")")"
			qtvs+=" $(field $metric "$(qemu_run threads "$args seconds=$SECS")")"
		fi
	done
	kv=$(median <<<"$kvs") ktv=$(median <<<"$ktvs") qv=$(median <<<"$qvs") qtv=$(median <<<"$qtvs")
	epr=$(median <<<"$eprs") kpr=$(median <<<"$kprs")

	hv=""
	[ "${SKIP_FIO:-0}" != 1 ] && hv=$(field $metric " $(fio_run "$rw" "$bs" "$qd")")

	printf '%-17s %9s %9s %9s %9s %9s | %7s %7s %7s | %9s %9s\n' "$label" "${kv:--}" "${ktv:--}" "${qv:--}" \
		"${qtv:--}" "${hv:--}" "$(ratio "$kv" "$qv")" "$(ratio "$ktv" "$qtv")" "$(ratio "$kv" "$hv")" "${epr:--}" "${kpr:--}"
	if [ "${VERBOSE:-0}" = 1 ]; then
		echo "    runs K uring:$kvs; K threads:$ktvs; Q uring:$qvs; Q threads:$qtvs"
		echo "    kestrel:  $(tr '\n' ' ' <<<"$k" | tr -s ' ')"
		echo "    baseline: $(tr '\n' ' ' <<<"$kb" | tr -s ' ')"
	fi
done
echo
echo "K = Kestrel, Q = QEMU ($QEMU_AIO_URING / threads), host = fio io_uring on the same file."
echo "K/Q u, K/Q t: Kestrel/QEMU with aio=io_uring, aio=threads; above 1 is better for Kestrel."
echo "exits/req: Kestrel vcpu0 exits to userspace (run minus a no-I/O run) per request (aio=io_uring run)."
echo "kicks/req: doorbell writes per request (the device suppresses them while it is busy)."
