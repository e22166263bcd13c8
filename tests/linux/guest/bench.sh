# Benchmark workload (bench/bench-linux.sh), sourced by /init; the same
# script runs on Kestrel and on QEMU. Kernel command line from the host:
#   kestrel.bench=boot   only the boot figures (then /init powers off)
#   kestrel.bench=work   fio on the virtio-blk disk with serial=bench, then
#                        iperf3 against kestrel.iperf=ADDR:PORT over eth0
#                        (user-mode networking: 10.0.2.15/24, gateway 10.0.2.2)
#   kestrel.secs=N       seconds per fio job and per iperf3 direction (5)
#   kestrel.jobs=LIST    fio jobs, comma-separated NAME:RW:BS:QD (default
#                        the six below)
# Machine-readable lines for the host (one per figure, key=value, no spaces
# in values):
#   BENCH-BOOT run_init_s=S init_s=S    kernel clock: "Run /init" (dmesg) and
#                                       this script's start (/proc/uptime)
#   BENCH-FIO name=N rw=RW bs=B qd=Q iops=N kibps=N lat_us=N p99_us=N
#   BENCH-NET name=tx|rx mbps=N bytes=N   iperf3's receiver-side figure
#   BENCH-ERR what failed (the host counts these)
#   BENCH-END uptime_s=S                the end (boot: 3 s after BENCH-BOOT)
# Absolute numbers inside a nested or TCG-emulated host are emulated times:
# only the host's Kestrel/QEMU ratios compare.
bench_arg() {
	# shellcheck disable=SC2013  # words, not lines
	for a in $(cat /proc/cmdline); do
		case $a in "kestrel.$1="*) echo "${a#"kestrel.$1="}"; return 0 ;; esac
	done
	echo "$2"
}
bench_mode=$(bench_arg bench boot)
bench_secs=$(bench_arg secs 5)
bench_jobs=$(bench_arg jobs "randread-4k-qd1:randread:4k:1,randread-4k-qd32:randread:4k:32,randwrite-4k-qd1:randwrite:4k:1,randwrite-4k-qd32:randwrite:4k:32,read-1M-qd8:read:1M:8,write-1M-qd8:write:1M:8")
bench_iperf=$(bench_arg iperf 10.0.2.2:5201)

# Boot: the kernel's own clock, from its start.
init_s=$(cut -d' ' -f1 /proc/uptime)
run_init=$(dmesg | sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' | head -n 1)
echo "BENCH-BOOT run_init_s=${run_init:-?} init_s=$init_s"
[ -n "$run_init" ] || echo "BENCH-ERR no 'Run /init as init process' in dmesg"

# bench_fio NAME RW BS QD DEV: one fio job (libaio, O_DIRECT) on DEV. Its
# terse v3 line: read fields 6-46 (7 KiB/s, 8 IOPS, 18-37 clat percentiles
# "P%=usec", 40 mean total latency in usec), write fields the same + 41.
bench_fio() {
	out=$(fio --name="$1" --filename="$5" --rw="$2" --bs="$3" --iodepth="$4" --direct=1 \
		--ioengine=libaio --runtime="$bench_secs" --time_based --norandommap --randrepeat=0 \
		--size=192M --output-format=terse --terse-version=3 2>&1)
	line=$(echo "$out" | grep '^3;' | head -n 1)
	if [ -z "$line" ]; then
		echo "BENCH-ERR fio $1: $(echo "$out" | tail -n 1)"
		return
	fi
	echo "$line" | awk -F';' -v n="$1" -v rw="$2" -v bs="$3" -v qd="$4" '{
		o = (rw ~ /write/) ? 41 : 0
		p99 = "?"
		for (i = 18 + o; i <= 37 + o; i++) if ($i ~ /^99\.000000%=/) { split($i, f, "="); p99 = f[2] }
		printf "BENCH-FIO name=%s rw=%s bs=%s qd=%s iops=%s kibps=%s lat_us=%s p99_us=%s\n",
			n, rw, bs, qd, $(8 + o), $(7 + o), $(40 + o), p99
	}'
}

# bench_iperf NAME [-R]: iperf3 against the host side for $bench_secs.
bench_iperf() {
	name=$1
	shift
	out=$(iperf3 -c "${bench_iperf%:*}" -p "${bench_iperf##*:}" -t "$bench_secs" -f m "$@" 2>&1)
	line=$(echo "$out" | grep ' receiver$' | tail -n 1)
	mbps=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") print $i }')
	if [ -z "$mbps" ]; then
		echo "BENCH-ERR iperf3 $name: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
		return
	fi
	bytes=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) {
		if ($(i + 1) == "KBytes") printf "%.0f\n", $i * 1024
		if ($(i + 1) == "MBytes") printf "%.0f\n", $i * 1048576
		if ($(i + 1) == "GBytes") printf "%.0f\n", $i * 1073741824 } }')
	echo "BENCH-NET name=$name mbps=$mbps bytes=${bytes:-?}"
}

if [ "$bench_mode" = work ]; then
	mkdir -p /tmp
	echo "BENCH-NOTE absolute figures in a nested or TCG-emulated host are emulated times; only Kestrel/QEMU ratios compare"
	dev=""
	for s in /sys/block/vd*/serial; do
		[ "$(cat "$s" 2>/dev/null)" = bench ] && { dev=${s%/serial}; dev=/dev/${dev##*/}; }
	done
	if [ -n "$dev" ]; then
		echo "BENCH-INFO disk $dev $(cat "/sys/block/${dev#/dev/}/size") sectors, scheduler $(cat "/sys/block/${dev#/dev/}/queue/scheduler")"
		for j in $(echo "$bench_jobs" | tr ',' ' '); do
			IFS=:
			# shellcheck disable=SC2086  # split NAME:RW:BS:QD
			set -- $j
			IFS=' 	
'
			bench_fio "$1" "$2" "$3" "$4" "$dev"
		done
	else
		echo "BENCH-ERR no virtio-blk disk with serial=bench"
	fi

	ip link set lo up
	if ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; then
		echo "BENCH-INFO eth0 $(cat /sys/class/net/eth0/address) driver $(basename "$(readlink /sys/class/net/eth0/device/driver)")"
		bench_iperf tx
		bench_iperf rx -R
	else
		echo "BENCH-ERR cannot configure eth0"
	fi
fi
# The guest's clock against the host's: the host time-stamps BENCH-BOOT and
# BENCH-END and compares the two intervals.
[ "$bench_mode" = boot ] && sleep 3
echo "BENCH-END uptime_s=$(cut -d' ' -f1 /proc/uptime)"
