#!/usr/bin/env bash
# Foundation figures (prints numbers, asserts nothing):
#   1. process start -> first KVM_RUN, and exec overhead
#   2. micro-guest hello run-to-exit: Kestrel vs QEMU (SeaBIOS and qboot)
#   3. VMM RSS minus guest RAM touched, --memory 128M --cpus 1
#   4. cost of a PIO exit: exits/s of a ring-3 guest hammering an unclaimed
#      port, and the VMM's userspace share of it
#   5. Linux: seconds to "Run /init", Kestrel vs QEMU (tests/linux/bench-boot.sh)
# Environment: N (repetitions, default 5), QEMU_N (default N),
# SKIP_LINUX=1, SKIP_QEMU=1.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
N=${N:-5}
QEMU_N=${QEMU_N:-$N}
QEMU=(qemu-system-x86_64 -enable-kvm -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4)

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.4f\n", b - a }'; }

echo "== host"
echo "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
grep -m1 'model name' /proc/cpuinfo | sed 's/.*: /cpu: /'
[ -d /sys/module/kvm_pvm ] && echo "kvm: kvm_pvm (nested; guest CPL0 is emulated)"

echo
echo "== 1. start-up (median of $N)"
for i in $(seq "$N"); do
	"$K" run -v --kernel "$G/hello.elf" --serial off 2>&1 | sed -n 's/.*first KVM_RUN \([0-9.]*\) ms.*/\1/p'
done | median | awk '{ printf "main() -> first KVM_RUN: %.3f ms\n", $1 }'
for i in $(seq "$N"); do
	t=$(now); "$K" --version >/dev/null; elapsed "$t"
done | median | awk '{ printf "exec + dynamic linking + exit (kestrel --version): %.3f ms\n", $1 * 1000 }'

echo
echo "== 2. hello micro-guest, run to exit (wall seconds, median of $N; QEMU $QEMU_N)"
for i in $(seq "$N"); do
	t=$(now); "$K" run --kernel "$G/hello.elf" --serial off </dev/null >/dev/null 2>&1; elapsed "$t"
done | median >"/tmp/bench.k.$$"
printf 'kestrel:          %.4f s\n' "$(cat /tmp/bench.k.$$)"
if [ "${SKIP_QEMU:-0}" != 1 ]; then
	for bios in default qboot; do
		extra=()
		[ $bios = qboot ] && extra=(-bios /usr/share/qemu/qboot.rom)
		for i in $(seq "$QEMU_N"); do
			t=$(now); "${QEMU[@]}" "${extra[@]}" -m 256M -kernel "$G/hello.elf" </dev/null >/dev/null 2>&1; elapsed "$t"
		done | median >"/tmp/bench.q.$$"
		awk -v q="$(cat /tmp/bench.q.$$)" -v k="$(cat /tmp/bench.k.$$)" -v b=$bios \
			'BEGIN { printf "qemu (%-7s):  %.4f s   ratio qemu/kestrel = %.0fx\n", b, q, q / k }'
	done
	rm -f "/tmp/bench.q.$$"
fi
rm -f "/tmp/bench.k.$$"

echo
echo "== 3. VMM memory: --memory 128M --cpus 1, guest idling"
"$K" run --kernel "$G/idle.elf" --memory 128M --cpus 1 --serial off --cmdline seconds=3 </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1.5
if [ -r /proc/$pid/smaps ]; then
	# The guest RAM mapping is the one anonymous mapping of exactly 128 MiB.
	awk -v want=$((128 * 1024)) '
		/^[0-9a-f]+-[0-9a-f]+ / { split($1, r, "-"); sz = 0; cur = $0; insz = 0 }
		/^Size:/ { insz = ($2 == want) }
		/^Rss:/ { total += $2; if (insz) guest += $2 }
		END { printf "RSS total %d KiB, guest RAM touched %d KiB, VMM overhead %d KiB (%.1f MiB)\n",
			total, guest, total - guest, (total - guest) / 1024 }' /proc/$pid/smaps
	grep -E 'VmRSS|VmHWM|Threads' /proc/$pid/status | tr '\n' ' '; echo
fi
wait $pid 2>/dev/null

echo
echo "== 4. PIO exits to userspace (ring-3 guest writing an unclaimed port)"
count=200000
out=$( { /usr/bin/time -f 'TIME %e %U %S' "$K" run -v --kernel "$G/pio.elf" --cmdline "count=$count" --serial stdio </dev/null; } 2>&1 )
read -r wall user sys <<<"$(sed -n 's/^TIME //p' <<<"$out")"
guest_ns=$(sed -n 's/^pio: .*(\([0-9]*\) ns each).*/\1/p' <<<"$out")
handler_ns=$(sed -n 's/.*vcpu0: .*(\([0-9]*\) ns each).*/\1/p' <<<"$out")
awk -v n=$count -v w="$wall" -v g="$guest_ns" -v h="$handler_ns" 'BEGIN {
	printf "kestrel: %d exits, %.0f ns per write seen by the guest (%.0f exits/s)\n", n, g, 1e9 / g;
	printf "kestrel: %.0f ns of that in Kestrel'"'"'s userspace exit handler (%.2f%%); the rest is KVM and the host\n", h, h / g * 100 }'
if [ "${SKIP_QEMU:-0}" != 1 ]; then
	out=$("${QEMU[@]}" -bios /usr/share/qemu/qboot.rom -m 256M -kernel "$G/pio.elf" -append "count=$count" </dev/null 2>&1)
	qemu_ns=$(sed -n 's/^pio: .*(\([0-9]*\) ns each).*/\1/p' <<<"$out")
	awk -v q="$qemu_ns" -v k="$guest_ns" 'BEGIN {
		printf "qemu:    %.0f ns per write seen by the guest (%.0f exits/s); ratio qemu/kestrel %.2f\n", q, 1e9 / q, q / k }'
fi
echo "(on a host that withholds IOPL from guest ring 3, each write is a #GP trip to the guest's ring 0 first)"

if [ "${SKIP_LINUX:-0}" != 1 ] && [ -x "$ROOT/tests/linux/bench-boot.sh" ]; then
	echo
	echo "== 5. Linux guest: seconds to 'Run /init' (tests/linux/bench-boot.sh)"
	"$ROOT/tests/linux/bench-boot.sh"
fi
