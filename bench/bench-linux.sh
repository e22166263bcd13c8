#!/usr/bin/env bash
# Linux guest benchmarks, Kestrel vs QEMU side by side:
#
#   bench/bench-linux.sh
#
# Where /dev/kvm cannot run a Linux guest (tools/kvmhost --probe says
# "outer"), it builds the guest initramfs here and runs itself again inside
# tools/kvmhost's outer VM (the same as `tools/kvmhost/kvmhost -q --
# bench/bench-linux.sh`, which works too but builds them under TCG).
#
# Debian's stock kernel with the tier-3 busybox initramfs (tests/linux/lib.sh)
# boots on Kestrel and on QEMU with the same devices and the same command
# line; the guest script tests/linux/guest/bench.sh (kestrel.test=bench)
# runs the workload and prints BENCH-* lines that this script parses:
#   - boot: Kestrel `--memory 512M --cpus 1`, QEMU `-accel kvm -cpu host
#     -M q35 -nodefaults` (SeaBIOS, no option ROMs), the test initramfs:
#     kernel start -> "Run /init" and -> /init's first line (the guest's
#     clock), VMM start -> /init's first line and -> VMM exit after the
#     guest's poweroff (this host's clock, each serial line time-stamped)
#   - fio on virtio-blk (a raw image on /var/tmp, cache=none,aio=io_uring on
#     both; serial=bench), libaio, direct=1, 192 MiB of the disk: 4 KiB random
#     read and write at QD1 and QD32, 1 MiB sequential read and write at QD8;
#     IOPS or MB/s, mean and p99 completion latency
#   - TCP over virtio-net with user-mode networking (slirp on both): the
#     guest's iperf3 -c 10.0.2.2 (this host's loopback, an iperf3 server of
#     this script's own) for TX, and -R for RX; Mbit/s at the receiver
# The workload boots use the initramfs built with -b fio -b iperf3 (cached
# apart from the test one). Runs alternate, K Q K Q..., RUNS times each;
# the table gives the medians and the ratio Kestrel/QEMU, with the
# direction that is better for Kestrel (higher: throughput; lower: times).
#
# Checks (one PASS/FAIL line each): per boot, the VMM exited 0 after the
# guest ran bench.sh to its end (BENCH-END, GUEST-DONE), no oops/BUG/panic,
# every figure present and no BENCH-ERR; per workload boot, on the host:
# the iperf3 server's own summaries agree with the guest's Mbit/s within
# 15%, and the image file holds the guest's fio writes (it is re-zeroed
# before each workload boot; sampled 1 MiB blocks of the written range are
# not all zero). Last line "N passed, N failed, N skipped"; exit 0 only if
# nothing failed (2: setup error).
#
# Environment:
#   RUNS        boots per VMM and kind (default 3)
#   BENCH_SECS  seconds per fio job and per iperf3 direction (default 5)
#   CPUS        guest vCPUs (default 1), MEMORY (default 512M)
#   BENCH_IMG   the raw image (default /var/tmp/kestrel-bench-linux.img,
#               256 MiB, written with zeroes: O_DIRECT needs a real file
#               system, not tmpfs)
#   IPERF_PORT  the iperf3 server's port on 127.0.0.1 (default 5201)
#   SKIP_BOOT=1, SKIP_WORK=1   leave out the boot or the workload boots
#   KESTREL, QEMU (default qemu-system-x86_64), LOGDIR
# Inside tools/kvmhost's outer VM (KESTREL_KVMHOST_INSIDE=1) every figure is
# a nested guest's under TCG emulation: only the ratios compare.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/linux/lib.sh
. "$ROOT/tests/linux/lib.sh"
RUNS=${RUNS:-3}
SECS=${BENCH_SECS:-5}
CPUS=${CPUS:-1}
MEMORY=${MEMORY:-512M}
QEMU=${QEMU:-qemu-system-x86_64}
IMG=${BENCH_IMG:-/var/tmp/kestrel-bench-linux.img}
IMG_MB=256
PORT=${IPERF_PORT:-5201}
JOBS="randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 read-1M-qd8 write-1M-qd8"

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-linux.sh: RUNS='$RUNS' is not a count" >&2; exit 2; }
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { echo "bench-linux.sh: BENCH_SECS='$SECS' is not a number of seconds" >&2; exit 2; }
for p in fio iperf3 "$QEMU"; do
	command -v "$p" >/dev/null || { echo "bench-linux.sh: $p is not installed (scripts/setup.sh)" >&2; exit 2; }
done

linux_setup
BOOT_INITRD=$INITRD
linux_setup -b fio -b iperf3
WORK_INITRD=$INITRD
# Where this /dev/kvm cannot run Linux, go on in tools/kvmhost's outer VM:
# both initramfs are built here first (natively; under TCG the one with fio
# takes minutes), and the logs go to the same folder.
if [ "${KESTREL_KVMHOST_INSIDE:-0}" != 1 ] && [ -x "$ROOT/tools/kvmhost/kvmhost" ]; then
	case $("$ROOT/tools/kvmhost/kvmhost" --probe 2>/dev/null) in
	*" outer:"*)
		echo "bench-linux.sh: this /dev/kvm cannot run Linux guests: continuing in tools/kvmhost's outer VM"
		export LOGDIR
		cd "$ROOT" && exec tools/kvmhost/kvmhost -q -- bench/bench-linux.sh ;;
	esac
fi

echo "== bench-linux: $(uname -r) host, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "guest: $KERNEL, $CPUS vCPU(s), $MEMORY; $RUNS run(s) per VMM, alternating; ${SECS} s per fio job and iperf3 direction"
echo "image: $IMG ($IMG_MB MiB raw, $(df -T "$(dirname "$IMG")" | awk 'NR == 2 { print $2 }')), cache=none,aio=io_uring on both"
"$QEMU" --version | head -n 1 | sed 's/^/qemu: /'
if [ "${KESTREL_KVMHOST_INSIDE:-0}" = 1 ]; then
	echo "NOTE: inside tools/kvmhost's outer VM (QEMU TCG): every absolute figure below is a nested"
	echo "      guest's under TCG emulation, far from native speed; only the Kestrel/QEMU ratios compare."
fi

IPERF_LOG=$LOGDIR/iperf3-server.log
IPERF_PID=""
cleanup() {
	[ -n "$IPERF_PID" ] && kill "$IPERF_PID" 2>/dev/null && wait "$IPERF_PID" 2>/dev/null
	rm -f "$IMG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "${SKIP_WORK:-0}" != 1 ]; then
	iperf3 -s -B 127.0.0.1 -p "$PORT" -f m --forceflush --logfile "$IPERF_LOG" &
	IPERF_PID=$!
	listening() { ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; }
	for _ in $(seq 100); do
		listening && break
		kill -0 "$IPERF_PID" 2>/dev/null || break
		sleep 0.1
	done
	listening ||
		{ echo "bench-linux.sh: the iperf3 server did not start on 127.0.0.1:$PORT: $(tail -n 1 "$IPERF_LOG" 2>/dev/null)" >&2; exit 2; }
fi

# stamp T0_US: copies stdin to stdout, each line prefixed with the seconds
# since T0_US (microseconds since the epoch) at which it was read.
stamp() {
	local t0=$1 line t
	while IFS= read -r line || [ -n "$line" ]; do
		t=$((${EPOCHREALTIME/./} - t0))
		printf '%d.%06d %s\n' $((t / 1000000)) $((t % 1000000)) "${line%$'\r'}"
	done
}

# bench_boot VMM TAG MODE: one boot of VMM (kestrel|qemu) with
# kestrel.bench=MODE (boot|work); log $LOGDIR/TAG.log (host seconds since
# the VMM started, then the line). Sets B_STATUS (124: timed out) and
# B_EXIT (seconds from the VMM's start to its exit).
bench_boot() {
	local vmm=$1 tag=$2 mode=$3 initrd=$BOOT_INITRD limit=300 cmd
	[ "$mode" = work ] && initrd=$WORK_INITRD limit=$((600 + 10 * SECS))
	local cmdline="console=ttyS0 loglevel=4 panic=-1 kestrel.test=bench kestrel.bench=$mode"
	cmdline+=" kestrel.secs=$SECS kestrel.iperf=10.0.2.2:$PORT"
	if [ "$vmm" = kestrel ]; then
		cmd=("$KESTREL" run --kernel "$KERNEL" --initrd "$initrd" --cmdline "$cmdline" --no-reboot
			--serial stdio --memory "$MEMORY" --cpus "$CPUS"
			--disk "path=$IMG,format=raw,cache=none,aio=io_uring,serial=bench" --net user)
	else
		# shellcheck disable=SC2054  # the commas belong to -drive and -device
		cmd=("$QEMU" -accel kvm -cpu host -M q35 -nodefaults -no-reboot -display none
			-m "$MEMORY" -smp "$CPUS" -kernel "$KERNEL" -initrd "$initrd" -append "$cmdline"
			-serial stdio
			-drive "file=$IMG,format=raw,if=none,id=d0,cache=none,aio=io_uring"
			-device virtio-blk-pci,drive=d0,serial=bench
			-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)
	fi
	echo "${cmd[*]}" >"$LOGDIR/$tag.cmd"
	local t0=${EPOCHREALTIME/./}
	timeout -k 5 "$limit" "${cmd[@]}" </dev/null 2>&1 | stamp "$t0" >"$LOGDIR/$tag.log"
	B_STATUS=${PIPESTATUS[0]}
	local t=$((${EPOCHREALTIME/./} - t0))
	B_EXIT=$(printf '%d.%06d' $((t / 1000000)) $((t % 1000000)))
}

# bytes_of LINE: the byte count of an iperf3 summary line ("1.78 GBytes").
bytes_of() {
	awk '{ for (i = 1; i < NF; i++) {
		if ($(i + 1) == "Bytes") printf "%.0f\n", $i
		if ($(i + 1) == "KBytes") printf "%.0f\n", $i * 1024
		if ($(i + 1) == "MBytes") printf "%.0f\n", $i * 1048576
		if ($(i + 1) == "GBytes") printf "%.0f\n", $i * 1073741824 } }' <<<"$1"
}
# kv KEY LINE: the value of KEY=VALUE in LINE.
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2" | head -n 1; }
# num X: X if it is a number, else nothing.
num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]] && echo "$1"; }

declare -A VALS   # "vmm|row" -> space-separated values, one per run
ROWS=()           # row keys in print order
declare -A UNIT BETTER
row() { # KEY UNIT BETTER: declare a row once
	[ -n "${UNIT[$1]:-}" ] && return
	ROWS+=("$1")
	UNIT[$1]=$2 BETTER[$1]=$3
}
add() { # VMM KEY VALUE
	local v
	v=$(num "$3") || return 0
	VALS[$1|$2]+="$v "
}

# The host's checks of one boot, common to both kinds.
boot_checks() { # VMM TAG WHAT
	local log=$LOGDIR/$2.log
	grep -q ' BENCH-END ' "$log" && grep -q ' GUEST-DONE$' "$log" && [ "$B_STATUS" = 0 ] &&
		! grep -qE '(^|\] )(BUG:|WARNING:|Oops|general protection fault|Kernel panic)' "$log"
	check "$2: $1 ran bench.sh ($3) to its end and exited 0 after the poweroff (status $B_STATUS, $B_EXIT s), no oops/BUG/WARNING/panic" $?
	if [ "$B_STATUS" != 0 ] || ! grep -q ' GUEST-DONE$' "$log"; then
		echo "--- $2: the log's tail ($log)"
		tail -n 8 "$log" | sed 's/^/  | /'
	fi
}

# clock_check TAG LOW HIGH: the guest's clock (uptime at BENCH-BOOT and
# BENCH-END) ran at the host's rate (the serial time stamps of those lines):
# their ratio within LOW..HIGH, so the guest-clock figures are worth
# comparing. (The boot runs' interval is 3 s, where a late serial line
# under load weighs more: they get a wider range, to catch a grossly wrong
# guest clock.)
clock_check() {
	local log=$LOGDIR/$1.log st
	awk -v lo="$2" -v hi="$3" '
		$2 == "BENCH-BOOT" && !h0 { h0 = $1; for (i = 3; i <= NF; i++) if ($i ~ /^init_s=/) g0 = substr($i, 8) }
		$2 == "BENCH-END" { h1 = $1; g1 = substr($3, 10) }
		END { r = (h1 > h0 && g0 != "" && g1 != "") ? (g1 - g0) / (h1 - h0) : 0
			printf "%.1f s of guest time over %.1f s of host time (%.2f, want %s..%s)\n", g1 - g0, h1 - h0, r, lo, hi
			exit !(r >= lo && r <= hi) }' "$log" >"$LOGDIR/$1.clock"
	st=$?
	check "$1: the guest's clock keeps the host's pace: $(cat "$LOGDIR/$1.clock")" $st
}

run_boot() { # VMM RUN
	local vmm=$1 tag=$1-boot-$2 log line ri is st
	bench_boot "$vmm" "$tag" boot
	log=$LOGDIR/$tag.log
	boot_checks "$vmm" "$tag" boot
	line=$(grep -m1 ' BENCH-BOOT ' "$log")
	ri=$(kv run_init_s "$line") is=$(kv init_s "$line")
	st=$(awk '$2 == "GUEST-START" { print $1; exit }' "$log")
	[ -n "$(num "$ri")" ] && [ -n "$(num "$is")" ] && [ -n "$(num "$st")" ] && ! grep -q ' BENCH-ERR' "$log"
	check "$tag: boot figures present (Run /init $ri s, /init's first line $is s guest clock; $st s, exit $B_EXIT s host clock)" $?
	clock_check "$tag" 0.5 1.5
	row "boot: kernel start -> Run /init (guest clock)" s lower
	row "boot: kernel start -> /init's first line (guest clock)" s lower
	row "boot: VMM start -> /init's first line (host clock)" s lower
	row "boot: VMM start -> exit after poweroff (host clock)" s lower
	add "$vmm" "boot: kernel start -> Run /init (guest clock)" "$ri"
	add "$vmm" "boot: kernel start -> /init's first line (guest clock)" "$is"
	add "$vmm" "boot: VMM start -> /init's first line (host clock)" "$st"
	add "$vmm" "boot: VMM start -> exit after poweroff (host clock)" "$B_EXIT"
}

# make_image: IMG_MB MiB of written zeroes, before every workload boot.
make_image() {
	rm -f "$IMG"
	dd if=/dev/zero of="$IMG" bs=1M count=$IMG_MB oflag=direct status=none ||
		{ echo "bench-linux.sh: cannot write $IMG" >&2; exit 2; }
}

run_work() { # VMM RUN
	local vmm=$1 tag=$1-work-$2 log j line n=0 want miss=""
	make_image
	local srv0
	srv0=$(grep -cE ' (sender|receiver)$' "$IPERF_LOG")
	bench_boot "$vmm" "$tag" work
	log=$LOGDIR/$tag.log
	boot_checks "$vmm" "$tag" "fio, iperf3"
	clock_check "$tag" 0.9 1.1
	want=$(($(wc -w <<<"$JOBS") + 2))
	for j in $JOBS; do
		line=$(grep -m1 " BENCH-FIO name=$j " "$log") || { miss+=" $j"; continue; }
		local rw bs iops kibps lat p99 t
		rw=$(kv rw "$line") bs=$(kv bs "$line") iops=$(kv iops "$line") kibps=$(kv kibps "$line")
		lat=$(kv lat_us "$line") p99=$(kv p99_us "$line")
		if [ "$bs" = 4k ]; then
			t=$(num "$iops") || { miss+=" $j"; continue; }
			row "fio $j: IOPS" IOPS higher
			add "$vmm" "fio $j: IOPS" "$t"
		else
			t=$(num "$kibps") || { miss+=" $j"; continue; }
			row "fio $j: MB/s" MB/s higher
			add "$vmm" "fio $j: MB/s" "$(awk -v k="$t" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }')"
		fi
		row "fio $j: mean latency" us lower
		row "fio $j: p99 completion latency" us lower
		add "$vmm" "fio $j: mean latency" "$(awk -v l="$lat" 'BEGIN { printf "%.1f", l }')"
		add "$vmm" "fio $j: p99 completion latency" "$p99"
		n=$((n + 1))
		: "$rw"
	done
	local tx rx
	tx=$(kv mbps "$(grep -m1 ' BENCH-NET name=tx ' "$log")")
	rx=$(kv mbps "$(grep -m1 ' BENCH-NET name=rx ' "$log")")
	row "iperf3 TCP guest -> host (TX): Mbit/s" Mbit/s higher
	row "iperf3 TCP host -> guest (RX, -R): Mbit/s" Mbit/s higher
	if [ -n "$(num "$tx")" ]; then n=$((n + 1)); add "$vmm" "iperf3 TCP guest -> host (TX): Mbit/s" "$tx"; else miss+=" iperf3-tx"; fi
	if [ -n "$(num "$rx")" ]; then n=$((n + 1)); add "$vmm" "iperf3 TCP host -> guest (RX, -R): Mbit/s" "$rx"; else miss+=" iperf3-rx"; fi
	local errs
	errs=$(grep -c ' BENCH-ERR' "$log")
	[ "$n" = "$want" ] && [ "$errs" = 0 ]
	check "$tag: all $want figures present ($n; missing:${miss:- none}), $errs BENCH-ERR line(s)" $?
	[ "$errs" = 0 ] || grep ' BENCH-ERR' "$log" | head -n 3 | sed 's/^/  | /'

	# The iperf3 server's own view: its summary lines of this boot, in
	# order the TX test's (receiver) then the RX test's (sender). TX: the
	# bytes it received are the guest's figure (within 5%: iperf3 prints 3
	# digits); RX: it sent at least what the guest says it received (slirp
	# and the sockets hold what was sent but not yet received at the end).
	local srv stx srx gtx grx
	mapfile -t srv < <(grep -E ' (sender|receiver)$' "$IPERF_LOG" | tail -n +$((srv0 + 1)))
	stx=$(bytes_of "${srv[0]:-}") srx=$(bytes_of "${srv[1]:-}")
	gtx=$(kv bytes "$(grep -m1 ' BENCH-NET name=tx ' "$log")")
	grx=$(kv bytes "$(grep -m1 ' BENCH-NET name=rx ' "$log")")
	awk -v a="$gtx" -v b="$stx" -v c="$grx" -v d="$srx" -v n="${#srv[@]}" 'BEGIN {
		ok = n == 2 && a > 0 && b > 0 && c > 0 && d > 0 && a / b > 0.95 && a / b < 1.05 && d >= 0.95 * c
		exit !ok }'
	check "$tag: the host's iperf3 server agrees (${#srv[@]} test(s); TX: guest ${gtx:-?} / server ${stx:-?} bytes received; RX: guest received ${grx:-?}, server sent ${srx:-?} bytes)" $?

	# The image holds what fio wrote: of 16 sampled 1 MiB blocks in the
	# first 192 MiB (the jobs' range), how many are not all zero.
	local nz
	nz=$(python3 - "$IMG" <<'EOF'
import sys
n = 0
with open(sys.argv[1], "rb") as f:
    for i in range(16):
        f.seek(i * 12 << 20)
        if f.read(1 << 20).strip(b"\0"):
            n += 1
print(n)
EOF
	)
	local size
	size=$(stat -c %s "$IMG")
	[ "$size" = $((IMG_MB << 20)) ] && [ "${nz:-0}" -ge 12 ]
	check "$tag: the image file holds the guest's writes ($nz of 16 sampled MiB in the written range not zero, size $size)" $?
}

make_image
for i in $(seq "$RUNS"); do
	if [ "${SKIP_BOOT:-0}" != 1 ]; then
		run_boot kestrel "$i"
		run_boot qemu "$i"
	fi
	if [ "${SKIP_WORK:-0}" != 1 ]; then
		run_work kestrel "$i"
		run_work qemu "$i"
	fi
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END {
	if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo
echo "== medians of $RUNS run(s); ratio = Kestrel/QEMU; 'better' is the direction that favours Kestrel"
[ "${KESTREL_KVMHOST_INSIDE:-0}" = 1 ] &&
	echo "   (nested guests in a TCG-emulated outer VM: absolute figures are emulated times, only ratios compare)"
printf '%-56s %-7s %11s %11s %7s %-7s | %s\n' figure unit Kestrel QEMU K/Q better "runs K ; Q"
for r in "${ROWS[@]}"; do
	k=$(median <<<"${VALS[kestrel|$r]:-}") q=$(median <<<"${VALS[qemu|$r]:-}")
	ratio=$(awk -v a="$k" -v b="$q" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }')
	printf '%-56s %-7s %11s %11s %7s %-7s | %s; %s\n' "$r" "${UNIT[$r]}" "${k:--}" "${q:--}" "$ratio" "${BETTER[$r]}" \
		"${VALS[kestrel|$r]:-}" "${VALS[qemu|$r]:-}"
done
echo "logs: $LOGDIR"
linux_summary
