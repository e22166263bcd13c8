#!/usr/bin/env bash
# Networking figures (prints numbers, asserts nothing).
#
# The ring-3 micro-guests (tests/guests/virtio-net.c, e1000.c) poll their
# rings (no interrupts) and time themselves with the TSC; every register
# access or doorbell they make is counted ("traps/pkt"). Each VMM runs in a
# fresh network namespace of this script's own, on a tap, with the host end
# being build/netpeer on that tap:
#   TX: guest mode=tx (frames of SIZE bytes as fast as it can, BATCH frames
#       per doorbell) -> tap -> `netpeer sink --go` (which also counts;
#       the guest starts when the sink's go frame arrives)
#   RX: `netpeer blast` (sendmmsg, a frame refused by a full tap queue is
#       sent again) -> tap -> guest mode=rx (counts from its first frame)
# for virtio-net and e1000 on Kestrel and on QEMU (-M pc, qboot,
# vhost=off), with 64- and 1514-byte frames (no FCS). Prints a table of
# pps, MB/s (10^6 bytes) and traps/pkt, and the ratios Kestrel/QEMU and
# virtio/e1000. Kestrel's "exits/pkt" is the -v exit count of the whole run
# over the frames moved (an upper bound: set-up exits included).
# Each figure is the median of RUNS runs, Kestrel and QEMU alternating; K/Q
# is Kestrel/QEMU pps (above 1 favours Kestrel). Inside tools/kvmhost's
# outer VM (KESTREL_KVMHOST_INSIDE=1) both run nested under TCG: only the
# ratios compare.
#
# Environment:
#   BENCH_SECS   seconds per figure (default 5; each run adds ~1-2 s)
#   RUNS         runs per figure and VMM (default 3)
#   SIZES        frame sizes (default "64 1514"), NICS (default "virtio e1000"),
#   DIRS         (default "tx rx")
#   BATCHES      frames per doorbell / RX-ring refill (default "32 1"): with 1,
#                every frame costs the driver a register write, as a driver
#                that notifies per packet does; that is where an emulated
#                NIC (an MMIO exit to userspace) and virtio (an ioeventfd,
#                or nothing with EVENT_IDX) part ways
#   SKIP_QEMU=1, SKIP_KESTREL=1, KESTREL, GUESTS, NETPEER, QEMU
#   VERBOSE=1    also print each run's guest and peer result lines
#   LOGDIR       per-run logs (default build/bench-net)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
PEER=${NETPEER:-$ROOT/build/netpeer}
QEMU=${QEMU:-qemu-system-x86_64}
QBOOT=/usr/share/qemu/qboot.rom
SECS=${BENCH_SECS:-5}
RUNS=${RUNS:-3}
SIZES=${SIZES:-"64 1514"}
NICS=${NICS:-"virtio e1000"}
DIRS=${DIRS:-"tx rx"}
BATCHES=${BATCHES:-"32 1"}
LOGDIR=${LOGDIR:-$ROOT/build/bench-net}
TAP=kbtap0
MAC=52:54:00:12:34:56
NS=kestrel-nb-$$
VMMS=""
[ "${SKIP_KESTREL:-0}" != 1 ] && VMMS+=" kestrel"
[ "${SKIP_QEMU:-0}" != 1 ] && VMMS+=" qemu"

if [ "$(id -u)" != 0 ] || [ ! -c /dev/net/tun ]; then
	echo "bench-net.sh: needs root and /dev/net/tun (network namespace, tap)" >&2
	exit 2
fi
for f in "$PEER" "$G/virtio-net.elf" "$G/e1000.elf"; do
	[ -e "$f" ] || { echo "bench-net.sh: $f missing (make)" >&2; exit 2; }
done
if [[ $VMMS == *kestrel* ]] && [ ! -x "$K" ]; then
	echo "bench-net.sh: $K missing (make)" >&2
	exit 2
fi
mkdir -p "$LOGDIR" || exit 2

# shellcheck source=tests/net/lib.sh
. "$ROOT/tests/net/lib.sh"
trap net_ns_cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$NS" || exit 2
ip -n "$NS" link set lo up
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null

NET_OPTS_EXTRA=",vhost=off"
vmm_command() { net_vmm_command "$1" "$2" "$3" "$4" 256M -v; }

# The value of NAME=X in TEXT (first match).
field() { sed -n "s/\(^\|.* \)$1=\([0-9.]*\).*/\2/p" <<<"$2" | head -n 1; }

# One run: sets R_PPS R_MBPS R_TRAPS R_EXITS R_HOST (host-side pps) R_ERR.
run_one() { # VMM NIC DIR SIZE BATCH
	local vmm=$1 nic=$2 dir=$3 size=$4 batch=$5 guest=virtio-net
	[ "$nic" = e1000 ] && guest=e1000
	local tag=$vmm-$nic-$dir-$size-b$batch-r${RUN:-1}
	local out=$LOGDIR/$tag.out plog=$LOGDIR/$tag.peer
	R_PPS="" R_MBPS="" R_TRAPS="" R_EXITS="" R_HOST="" R_ERR=""
	local cmdline="mode=$dir seconds=$SECS batch=$batch"
	[ "$dir" = tx ] && cmdline+=" size=$size go"
	vmm_command "$vmm" "$nic" "$G/$guest.elf" "$cmdline"
	echo "ip netns exec $NS ${CMD[*]}" >"$LOGDIR/$tag.cmd"
	for _ in $(seq 50); do
		ip -n "$NS" link show "$TAP" >/dev/null 2>&1 || break
		sleep 0.1
	done
	: >"$out"
	ip netns exec "$NS" timeout -k 5 $((SECS + 60)) "${CMD[@]}" </dev/null >"$out" 2>&1 &
	VPID=$!
	for _ in $(seq 200); do
		ip -n "$NS" link show "$TAP" >/dev/null 2>&1 && break
		kill -0 "$VPID" 2>/dev/null || break
		sleep 0.05
	done
	if ip -n "$NS" link show "$TAP" >/dev/null 2>&1; then
		ip -n "$NS" link set "$TAP" up
		if [ "$dir" = tx ]; then
			ip netns exec "$NS" "$PEER" sink "$TAP" --go --dst "$MAC" >"$plog" 2>&1 &
			PPID_PEER=$!
		else
			for _ in $(seq 600); do
				grep -q "^$guest: rx: ready" "$out" 2>/dev/null && break
				kill -0 "$VPID" 2>/dev/null || break
				sleep 0.05
			done
			if grep -q "^$guest: rx: ready" "$out"; then
				ip netns exec "$NS" "$PEER" blast "$TAP" --count 0 --size "$size" --dst "$MAC" \
					--seconds $((SECS + 30)) >"$plog" 2>&1 &
				PPID_PEER=$!
			fi
		fi
	fi
	wait "$VPID"
	local status=$?
	VPID=""
	if [ -n "$PPID_PEER" ]; then
		kill "$PPID_PEER" 2>/dev/null
		wait "$PPID_PEER" 2>/dev/null
		PPID_PEER=""
	fi
	local line peer
	line=$(tr -d '\r' <"$out" | grep -m1 "^$guest: $dir: frames=")
	peer=$(grep -m1 "^netpeer: \(sink\|blast\): frames=" "$plog" 2>/dev/null)
	if [ -z "$line" ] || [ $status -ne 33 ]; then
		R_ERR="$tag: status $status: $(tr -d '\r' <"$out" | grep -m1 -E 'FAIL|error|kestrel: .*(fail|cannot|invalid)' || tail -n 1 "$out")"
		return
	fi
	R_PPS=$(field pps "$line") R_MBPS=$(field MBps "$line") R_TRAPS=$(field traps_per_pkt "$line")
	R_HOST=$(field pps "$peer")
	local exits frames
	exits=$(sed -n 's/.*vcpu0: \([0-9]*\) exits.*/\1/p' "$out" | head -n 1)
	frames=$(field frames "$line")
	[ -n "$exits" ] && R_EXITS=$(awk -v e="$exits" -v f="$frames" 'BEGIN { if (f > 0) printf "%.4f", e / f }')
	if [ "${VERBOSE:-0}" = 1 ]; then
		echo "    $tag: $line"
		[ -n "$peer" ] && echo "    $tag: $peer"
	fi
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END {
	if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

echo "== host"
echo "kernel $(uname -r), $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ -d /sys/module/kvm_pvm ] && echo "kvm: kvm_pvm (nested)"
if [ "${KESTREL_KVMHOST_INSIDE:-0}" = 1 ]; then
	echo "NOTE: inside tools/kvmhost's outer VM (QEMU TCG, nested KVM): every absolute figure below is"
	echo "      a nested guest's under TCG emulation; only the Kestrel/QEMU ratios compare."
fi
"$QEMU" --version 2>/dev/null | head -n 1
echo "${SECS} s per figure, median of $RUNS run(s), VMMs alternating; tap $TAP in netns $NS; vhost off; guests poll (no interrupts)"
echo

declare -A PPS MBPS TRAPS EXITS HOST L_PPS L_MBPS L_TRAPS L_EXITS L_HOST
ERRS=()
printf '%-3s %5s %5s %-6s | %9s %8s %8s %9s %9s | %9s %8s %8s %9s | %6s\n' dir size batch nic "K pps" "K MB/s" "K trp/pk" "K exit/pk" \
	"K host" "Q pps" "Q MB/s" "Q trp/pk" "Q host" "K/Q"
for dir in $DIRS; do
	for size in $SIZES; do
		for batch in $BATCHES; do
			for nic in $NICS; do
				for RUN in $(seq "$RUNS"); do
					for vmm in $VMMS; do
						run_one "$vmm" "$nic" "$dir" "$size" "$batch"
						k="$vmm:$nic:$dir:$size:$batch"
						L_PPS[$k]+=" $R_PPS" L_MBPS[$k]+=" $R_MBPS" L_TRAPS[$k]+=" $R_TRAPS"
						L_EXITS[$k]+=" $R_EXITS" L_HOST[$k]+=" $R_HOST"
						[ -n "$R_ERR" ] && ERRS+=("$R_ERR")
					done
				done
				for vmm in $VMMS; do
					k="$vmm:$nic:$dir:$size:$batch"
					PPS[$k]=$(median <<<"${L_PPS[$k]}") MBPS[$k]=$(median <<<"${L_MBPS[$k]}")
					TRAPS[$k]=$(median <<<"${L_TRAPS[$k]}") EXITS[$k]=$(median <<<"${L_EXITS[$k]}")
					HOST[$k]=$(median <<<"${L_HOST[$k]}")
					[ "${VERBOSE:-0}" = 1 ] && echo "    $k pps runs:${L_PPS[$k]}"
				done
				kk="kestrel:$nic:$dir:$size:$batch" qk="qemu:$nic:$dir:$size:$batch"
				printf '%-3s %5s %5s %-6s | %9s %8s %8s %9s %9s | %9s %8s %8s %9s | %6s\n' "$dir" "$size" "$batch" "$nic" \
					"${PPS[$kk]:--}" "${MBPS[$kk]:--}" "${TRAPS[$kk]:--}" "${EXITS[$kk]:--}" "${HOST[$kk]:--}" \
					"${PPS[$qk]:--}" "${MBPS[$qk]:--}" "${TRAPS[$qk]:--}" "${HOST[$qk]:--}" \
					"$(ratio "${PPS[$kk]:-}" "${PPS[$qk]:-}")"
			done
		done
	done
done

if [[ $NICS == *virtio* ]] && [[ $NICS == *e1000* ]]; then
	echo
	echo "virtio/e1000 (pps)"
	printf '%-3s %5s %5s | %8s %8s\n' dir size batch Kestrel QEMU
	for dir in $DIRS; do
		for size in $SIZES; do
			for batch in $BATCHES; do
				printf '%-3s %5s %5s | %8s %8s\n' "$dir" "$size" "$batch" \
					"$(ratio "${PPS[kestrel:virtio:$dir:$size:$batch]:-}" "${PPS[kestrel:e1000:$dir:$size:$batch]:-}")" \
					"$(ratio "${PPS[qemu:virtio:$dir:$size:$batch]:-}" "${PPS[qemu:e1000:$dir:$size:$batch]:-}")"
			done
		done
	done
fi
echo
echo "K/Q: Kestrel/QEMU pps, above 1 is better for Kestrel."
echo "K = Kestrel, Q = QEMU. pps and MB/s as the guest measured them (TX: frames the NIC completed; RX:"
echo "frames received, timed from the first). host = pps the netpeer end saw (TX: the sink; RX: the"
echo "blaster's accepted sends, which include frames still queued when the guest stopped)."
echo "trp/pk: the guest driver's register accesses and doorbells per frame; exit/pk: Kestrel -v exits"
echo "of the whole run per frame."
if [ ${#ERRS[@]} -gt 0 ]; then
	echo
	echo "failed runs (logs in $LOGDIR):"
	for e in "${ERRS[@]}"; do echo "  $e"; done
fi
