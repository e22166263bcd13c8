#!/usr/bin/env bash
# Foundation figures (prints numbers, asserts nothing):
#   1. process start -> first KVM_RUN, and exec overhead
#   2. micro-guest hello run-to-exit: Kestrel vs QEMU (SeaBIOS and qboot),
#      runs alternating K, Q, Q...
#   3. VMM RSS minus guest RAM touched, --memory 128M --cpus 1
#   4. cost of a PIO exit: exits/s of a ring-3 guest hammering an unclaimed
#      port, and the VMM's userspace share of it; Kestrel and QEMU alternate
# Ratios are Kestrel/QEMU; for these times below 1 favours Kestrel.
# Linux boot times, Kestrel vs QEMU: bench/bench-linux.sh.
# Environment: N (repetitions, default 5), PIO_N (PIO runs per VMM,
# default 3), PIO_COUNT (exits per PIO run, default 200000; 20000 inside
# tools/kvmhost's outer VM, where each exit costs ~0.5 ms), SKIP_QEMU=1.
# Inside tools/kvmhost's outer VM (KESTREL_KVMHOST_INSIDE=1) QEMU and
# Kestrel run nested under TCG: only the ratios compare.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
N=${N:-5}
PIO_N=${PIO_N:-3}
INSIDE=${KESTREL_KVMHOST_INSIDE:-0}
PIO_COUNT=${PIO_COUNT:-$([ "$INSIDE" = 1 ] && echo 20000 || echo 200000)}
# shellcheck disable=SC2054  # the commas belong to -device
QEMU=(qemu-system-x86_64 -accel kvm -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4)
TMP=$(mktemp -d) || exit 2
trap 'rm -rf "$TMP"' EXIT

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.4f\n", b - a }'; }

echo "== host"
echo "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB; load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep -m1 'model name' /proc/cpuinfo | sed 's/.*: /cpu: /'
[ -d /sys/module/kvm_pvm ] && echo "kvm: kvm_pvm (nested; guest CPL0 is emulated)"
if [ "$INSIDE" = 1 ]; then
	echo "NOTE: inside tools/kvmhost's outer VM (QEMU TCG, nested KVM): every absolute figure below is"
	echo "      a nested guest's or VMM's under TCG emulation; only the Kestrel/QEMU ratios compare."
fi

echo
echo "== 1. start-up (median of $N)"
for _ in $(seq "$N"); do
	"$K" run -v --kernel "$G/hello.elf" --serial off 2>&1 | sed -n 's/.*first KVM_RUN \([0-9.]*\) ms.*/\1/p'
done | median | awk '{ printf "main() -> first KVM_RUN: %.3f ms\n", $1 }'
for _ in $(seq "$N"); do
	t=$(now); "$K" --version >/dev/null; elapsed "$t"
done | median | awk '{ printf "exec + dynamic linking + exit (kestrel --version): %.3f ms\n", $1 * 1000 }'

echo
echo "== 2. hello micro-guest, run to exit (wall seconds, median of $N, runs alternating)"
BIOSES=(default qboot)
[ "${SKIP_QEMU:-0}" = 1 ] && BIOSES=()
for _ in $(seq "$N"); do
	t=$(now); "$K" run --kernel "$G/hello.elf" --serial off </dev/null >/dev/null 2>&1; elapsed "$t" >>"$TMP/k"
	for bios in "${BIOSES[@]}"; do
		extra=()
		[ "$bios" = qboot ] && extra=(-bios /usr/share/qemu/qboot.rom)
		t=$(now); "${QEMU[@]}" "${extra[@]}" -m 256M -kernel "$G/hello.elf" </dev/null >/dev/null 2>&1; elapsed "$t" >>"$TMP/q-$bios"
	done
done
km=$(median <"$TMP/k")
printf 'kestrel:          %.4f s\n' "$km"
for bios in "${BIOSES[@]}"; do
	awk -v q="$(median <"$TMP/q-$bios")" -v k="$km" -v b="$bios" \
		'BEGIN { printf "qemu (%-7s):  %.4f s   ratio kestrel/qemu = %.3f (lower is better for Kestrel)\n", b, q, k / q }'
done

echo
echo "== 3. VMM memory: --memory 128M --cpus 1, guest idling"
# The guest idles for up to 60 s; measured once its RAM mapping has pages
# (slow starts inside kvmhost's outer VM), then stopped with SIGTERM.
"$K" run --kernel "$G/idle.elf" --memory 128M --cpus 1 --serial off --cmdline seconds=60 </dev/null >/dev/null 2>&1 &
pid=$!
guest_rss() { awk -v want=$((128 * 1024)) '/^Size:/ { insz = ($2 == want) } /^Rss:/ && insz { g += $2 } END { print g + 0 }' \
	"/proc/$pid/smaps" 2>/dev/null; }
for _ in $(seq 300); do
	[ "$(guest_rss)" -gt 0 ] 2>/dev/null && break
	kill -0 $pid 2>/dev/null || break
	sleep 0.1
done
sleep 1
if [ -r /proc/$pid/smaps ]; then
	# The guest RAM mapping is the one anonymous mapping of exactly 128 MiB.
	awk -v want=$((128 * 1024)) '
		/^[0-9a-f]+-[0-9a-f]+ / { insz = 0 }
		/^Size:/ { insz = ($2 == want) }
		/^Rss:/ { total += $2; if (insz) guest += $2 }
		END { printf "RSS total %d KiB, guest RAM touched %d KiB, VMM overhead %d KiB (%.1f MiB)\n",
			total, guest, total - guest, (total - guest) / 1024 }' /proc/$pid/smaps
	grep -E 'VmRSS|VmHWM|Threads' /proc/$pid/status | tr '\n' ' '; echo
else
	echo "kestrel exited before it could be measured"
fi
kill $pid 2>/dev/null
wait $pid 2>/dev/null

echo
echo "== 4. PIO exits to userspace (ring-3 guest writing an unclaimed port; $PIO_COUNT writes, median of $PIO_N, alternating)"
for _ in $(seq "$PIO_N"); do
	out=$( { /usr/bin/time -f 'TIME %e %U %S' "$K" run -v --kernel "$G/pio.elf" --cmdline "count=$PIO_COUNT" --serial stdio </dev/null; } 2>&1 )
	sed -n 's/^pio: .*(\([0-9]*\) ns each).*/\1/p' <<<"$out" >>"$TMP/pio-k"
	sed -n 's/.*vcpu0: .*(\([0-9]*\) ns each).*/\1/p' <<<"$out" >>"$TMP/pio-kh"
	if [ "${SKIP_QEMU:-0}" != 1 ]; then
		out=$("${QEMU[@]}" -bios /usr/share/qemu/qboot.rom -m 256M -kernel "$G/pio.elf" -append "count=$PIO_COUNT" </dev/null 2>&1)
		sed -n 's/^pio: .*(\([0-9]*\) ns each).*/\1/p' <<<"$out" >>"$TMP/pio-q"
	fi
done
guest_ns=$(median <"$TMP/pio-k") handler_ns=$(median <"$TMP/pio-kh")
awk -v g="$guest_ns" -v h="$handler_ns" 'BEGIN {
	if (g == "") { print "kestrel: no result"; exit }
	printf "kestrel: %.0f ns per write seen by the guest (%.0f exits/s)\n", g, 1e9 / g;
	printf "kestrel: %.0f ns of that in Kestrel'"'"'s userspace exit handler (%.2f%%); the rest is KVM and the host\n", h, h / g * 100 }'
if [ "${SKIP_QEMU:-0}" != 1 ]; then
	awk -v q="$(median <"$TMP/pio-q")" -v k="$guest_ns" 'BEGIN {
		if (q == "" || k == "") { print "qemu:    no result"; exit }
		printf "qemu:    %.0f ns per write seen by the guest (%.0f exits/s); ratio kestrel/qemu %.2f (lower is better for Kestrel)\n", q, 1e9 / q, k / q }'
fi
echo "(on a host that withholds IOPL from guest ring 3, each write is a #GP trip to the guest's ring 0 first)"
echo
echo "Linux guests (boot, fio, iperf3), Kestrel vs QEMU: bench/bench-linux.sh"
