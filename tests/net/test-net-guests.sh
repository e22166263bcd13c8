#!/usr/bin/env bash
# Networking micro-guests (tests/guests/virtio-net.c, e1000.c) against a
# host echo peer (build/netpeer), in a network namespace of the test's own:
#
#   ip netns add kestrel-nt-$$       (lo up, IPv6 off: no stray frames)
#     VMM --net tap,ifname=ktap0 ... the VMM creates the tap in there
#     netpeer echo ktap0             echoes every 0x88B5 frame, MACs swapped
#
# The guest probes until the peer answers, sends COUNT frames of 60..1514
# bytes (one, two or three buffers each) and checks every echo byte for
# byte; with `irq` it also checks an RX interrupt (MSI-X, IOAPIC pin, INTx).
# Nothing outside the namespace is touched; it is deleted on exit.
#
# Cases: Kestrel virtio-net over PCI, with MRG_RXBUF, over virtio-mmio, on
# a 2-queue-pair device (queues=2; the guest uses pair 0 only), and e1000; with KESTREL_NET_QEMU=1 also QEMU's virtio-net-pci and e1000 (the
# reference; QEMU's virtio-mmio needs -M microvm, so not that one).
# Prints PASS/FAIL/SKIP per case, then "N passed, N failed".
#
# Environment: KESTREL, GUESTS, NETPEER, QEMU, KESTREL_NET_QEMU=1,
# NET_COUNT (frames per echo case, default 1000), LOGDIR, CASES (names).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
PEER=${NETPEER:-$ROOT/build/netpeer}
QEMU=${QEMU:-qemu-system-x86_64}
QBOOT=/usr/share/qemu/qboot.rom
LOGDIR=${LOGDIR:-$G/logs/net}
COUNT=${NET_COUNT:-1000}
TMO=${NET_TIMEOUT:-90}
TAP=ktap0
MAC=52:54:00:12:34:56
NS=kestrel-nt-$$
passed=0 failed=0 skipped=0

skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); }
summary() {
	echo "$passed passed, $failed failed"
	[ $failed -eq 0 ]
}

want_case() {
	[ -z "${CASES:-}" ] && return 0
	local c
	for c in $CASES; do [ "$c" = "$1" ] && return 0; done
	return 1
}

ALL_CASES="kestrel-virtio-net-pci kestrel-virtio-net-mrg kestrel-virtio-net-mmio kestrel-virtio-net-queues2 kestrel-e1000"
QEMU_CASES="qemu-virtio-net-pci qemu-virtio-net-mrg qemu-e1000"

# ---- prerequisites: missing ones make every case a SKIP -----------------
why=""
if [ "$(id -u)" != 0 ]; then
	why="not root (network namespaces and taps need CAP_NET_ADMIN)"
elif [ ! -c /dev/net/tun ]; then
	why="no /dev/net/tun"
elif ! command -v ip >/dev/null; then
	why="no ip(8) (iproute2)"
elif [ ! -r /dev/kvm ]; then
	why="no /dev/kvm"
fi
if [ -n "$why" ]; then
	for c in $ALL_CASES; do want_case "$c" && skip "$c" "$why"; done
	summary
	exit
fi
for f in "$PEER" "$G/virtio-net.elf" "$G/e1000.elf"; do
	if [ ! -e "$f" ]; then
		echo "FAIL setup: $f missing (make)"
		failed=$((failed + 1))
		summary
		exit
	fi
done
mkdir -p "$LOGDIR" || exit 2

# shellcheck source=tests/net/lib.sh
. "$ROOT/tests/net/lib.sh"
trap net_ns_cleanup EXIT
trap 'exit 130' INT TERM

if ! ip netns add "$NS" 2>"$LOGDIR/netns.err"; then
	for c in $ALL_CASES; do want_case "$c" && skip "$c" "ip netns add failed: $(head -n 1 "$LOGDIR/netns.err")"; done
	summary
	exit
fi
ip -n "$NS" link set lo up
# No IPv6 on the tap: no router solicitations or DAD frames to ignore.
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null

vmm_command() { net_vmm_command "$1" "$2" "$3" "$4" 128M; }

# run_case NAME VMM NIC GUEST CMDLINE REGEX...
run_case() {
	local name=$1 vmm=$2 nic=$3 guest=$4 cmdline=$5
	shift 5
	want_case "$name" || return 0
	local out=$LOGDIR/$name.out err=$LOGDIR/$name.err plog=$LOGDIR/$name.peer
	local why="" status t0 t1 secs re
	if [ "$vmm" = kestrel ] && [ ! -x "$K" ]; then
		echo "FAIL $name: $K not built (make)"
		failed=$((failed + 1))
		return
	fi
	# The previous VMM's tap must be gone (it vanishes with its fd).
	for _ in $(seq 50); do
		ip -n "$NS" link show "$TAP" >/dev/null 2>&1 || break
		sleep 0.1
	done
	if ip -n "$NS" link show "$TAP" >/dev/null 2>&1; then
		ip -n "$NS" link del "$TAP" 2>/dev/null
	fi
	vmm_command "$vmm" "$nic" "$G/$guest.elf" "$cmdline"
	echo "ip netns exec $NS ${CMD[*]}" >"$LOGDIR/$name.cmd"

	t0=$(date +%s%N)
	ip netns exec "$NS" timeout -k 5 "$TMO" "${CMD[@]}" </dev/null >"$out.raw" 2>"$err" &
	VPID=$!
	# Wait for the VMM's tap, bring it up (the VMM may have done so), and
	# start the echo peer on it. The guest probes until the peer answers.
	for _ in $(seq 200); do
		ip -n "$NS" link show "$TAP" >/dev/null 2>&1 && break
		kill -0 "$VPID" 2>/dev/null || break
		sleep 0.05
	done
	if ip -n "$NS" link show "$TAP" >/dev/null 2>&1; then
		ip -n "$NS" link set "$TAP" up
		ip netns exec "$NS" "$PEER" echo "$TAP" >"$plog" 2>&1 &
		PPID_PEER=$!
	elif kill -0 "$VPID" 2>/dev/null; then
		why="the VMM created no interface $TAP in 10 s"
		kill "$VPID" 2>/dev/null
	fi
	wait "$VPID"
	status=$?
	VPID=""
	t1=$(date +%s%N)
	if [ -n "$PPID_PEER" ]; then
		kill "$PPID_PEER" 2>/dev/null
		wait "$PPID_PEER" 2>/dev/null
		PPID_PEER=""
	fi
	secs=$(printf '%d.%02d' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 10000000 % 100)))
	tr -d '\r' <"$out.raw" >"$out"
	rm -f "$out.raw"

	if [ -z "$why" ]; then
		if [ $status -eq 124 ] || [ $status -eq 137 ]; then
			why="timeout after ${TMO}s"
		elif [ $status -ne 33 ]; then
			why="status $status, want 33 (PASS)"
			[ $status -eq 35 ] && why+=": the guest failed"
			[ $status -eq 2 ] && why+=": $(grep -v pni "$err" | head -n 1)"
		fi
	fi
	for re in "$@"; do
		[ -n "$why" ] && break
		grep -Eq -- "$re" "$out" || why="output lacks /$re/"
	done
	if [ -z "$why" ]; then
		echo "PASS $name (${secs}s)"
		passed=$((passed + 1))
	else
		echo "FAIL $name (${secs}s): $why [logs $LOGDIR/$name.*]"
		{ grep -E 'FAIL|state:' "$out" || tail -n 5 "$out"; } | head -n 8 | sed 's/^/    | /'
		grep -v pni "$err" | head -n 3 | sed 's/^/    ! /'
		failed=$((failed + 1))
	fi
}

N=$COUNT
ECHO_OK="echo $N/$N frames ok \(60\.\.1514 bytes\)$"
CM="count=$N wait_s=30"

for vmm in kestrel qemu; do
	if [ "$vmm" = qemu ]; then
		if [ "${KESTREL_NET_QEMU:-0}" != 1 ]; then
			echo "(QEMU reference cases: set KESTREL_NET_QEMU=1)"
			break
		fi
		if ! command -v "$QEMU" >/dev/null; then
			for c in $QEMU_CASES; do want_case "$c" && skip "$c" "$QEMU not found"; done
			break
		fi
	fi
	run_case "$vmm-virtio-net-pci" $vmm virtio virtio-net "$CM irq" \
		"^virtio-net: pci, mac $MAC, link up" "^virtio-net: $ECHO_OK" \
		'^virtio-net: irq: MSI-X: [1-9][0-9]* interrupt\(s\) for an RX frame, 0 while suppressed$' '^virtio-net: PASS$'
	run_case "$vmm-virtio-net-mrg" $vmm virtio virtio-net "$CM mrg" \
		'\(MRG_RXBUF\)' "^virtio-net: $ECHO_OK" '^virtio-net: mrg: [1-9][0-9]* frame\(s\) spanned several buffers' \
		'^virtio-net: PASS$'
	if [ "$vmm" = kestrel ]; then
		run_case "$vmm-virtio-net-mmio" $vmm virtio-mmio virtio-net "$CM transport=mmio irq" \
			"^virtio-net: mmio, mac $MAC, link up" "^virtio-net: $ECHO_OK" \
			'^virtio-net: irq: IOAPIC: [1-9][0-9]* interrupt\(s\) for an RX frame, 0 while suppressed$' \
			'^virtio-net: PASS$'
		# A driver without MQ on a 2-pair device over a multi-queue tap:
		# pair 0 must carry whatever arrives on either tap queue.
		run_case "$vmm-virtio-net-queues2" $vmm virtio-q2 virtio-net "$CM" \
			"^virtio-net: $ECHO_OK" '^virtio-net: PASS$'
	else
		want_case qemu-virtio-net-mmio && skip qemu-virtio-net-mmio "QEMU's virtio-mmio needs -M microvm (not tested)"
	fi
	run_case "$vmm-e1000" $vmm e1000 e1000 "$CM irq" \
		"^e1000: pci .* mac $MAC \(RAL0 = EEPROM, checksum 0xbaba\), link up" "^e1000: $ECHO_OK" \
		'^e1000: ICR after one echoed frame: 0x[0-9a-f]* \(TXDW set, RXT0 set\), then 0x0$' \
		'^e1000: irq: INTx pin [1-4], IRQ [0-9]+ -> GSI [0-9]+: [1-9][0-9]* interrupt' '^e1000: PASS$'
done
summary
