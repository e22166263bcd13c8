#!/usr/bin/env bash
# Tier 3, networking with real user space: Debian's stock kernel and the
# shared busybox initramfs (tests/linux/lib.sh); the guest side is
# tests/linux/guest/net.sh (with guest/udhcpc.script), the host side of every
# transfer tests/linux/net-peer.py.
#
# Usage: tests/linux/test-linux-net.sh [BOOT...]   (default: all three)
#        run inside tools/kvmhost/kvmhost here (it needs KVM that runs Linux):
#        tools/kvmhost/kvmhost -q -- tests/linux/test-linux-net.sh
# BOOT: user-virtio, user-e1000, tap. Environment: KNET_MIB (default 64) the
#   guest's upload on each NIC, KNET_DOWN_MIB (16) the download on each NIC,
#   KNET_FWD_MIB (4) what the host fetches through hostfwd, all in MiB;
#   KNET_E1000_MIB (4) the e1000's upload, KNET_E1000_DOWN_MIB (2) its
#   download on slirp, KNET_E1000_FWD_MIB (1) its hostfwd fetch (the e1000
#   takes an exit per frame; its upload to slirp ran at 0.24 MiB/s here,
#   a tenth of virtio-net's, and a 16 MiB one once took over 6 minutes);
#   LINUX_TIMEOUT per boot (default 420 s + 40 s per KNET_MIB MiB); KESTREL,
#   KESTREL_CACHE as in lib.sh. Needs python3; the tap boot needs root, ip,
#   dnsmasq and /dev/net/tun (else it prints SKIP with the reason).
#
# Each boot, 1 vCPU, kestrel -v: the guest makes /tmp/data, KNET_MIB MiB from
# /dev/urandom, and its sha256; per NIC it downloads the host's
# KNET_DOWN_MIB MiB file (made on the host in a scratch folder under $TMPDIR
# or /tmp, removed at exit) and uploads /tmp/data; both ends print sha256s.
#
#   net-user-virtio  --net user,model=virtio,hostfwd=tcp:127.0.0.1:HPORT-:8080
#   net-user-e1000   the same with model=e1000
#       udhcpc's lease (10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3, server
#       10.0.2.2) applied by guest/udhcpc.script; the download from and the
#       upload to 10.0.2.2 (slirp: net-peer.py on the host's 127.0.0.1); then
#       the guest's nc -l on port 8080 serves the first KNET_FWD_MIB MiB of
#       /tmp/data, which the host fetches from 127.0.0.1:HPORT (hostfwd); then
#       netconsole (the module, loaded with a target, replays the kernel log)
#       to a UDP port on the host, compared line by line with the serial
#       console
#   net-tap          in a fresh network namespace kestrel-lnet-PID, Kestrel run
#       under `ip netns exec`: --net tap,ifname=ktap0,model=virtio,vhost=off
#       on a tap the test made (192.168.78.1/24 on the host side, the guest
#       static 192.168.78.2/24) and --net bridge,br=br0,model=e1000 (br0
#       192.168.77.1/24 with dnsmasq; the guest's e1000 gets its address by
#       udhcpc); the download and the upload through each NIC, net-peer.py
#       listening in the namespace. vhost=off: the counters see the data.
#
# Checks: the guest's (GUEST-PASS/FAIL lines of net.sh: driver and PCI ID,
# carrier, the lease applied, download size and sha256, nc statuses, no
# watchdog/TX hang/csum/GSO lines in dmesg), then the host's: the lease's
# values (slirp's; dnsmasq's ACK and lease file for the bridge), for each
# transfer the bytes the host sent or received and the sha256 of what it
# received (re-read from the file) against the guest's sha256 (downloads: the
# guest's sha256 against the host's file), the source address of each
# connection (the NIC it went through), hostfwd's bytes against the first
# KNET_FWD_MIB MiB of what the upload brought,
# netconsole's UDP stream against the serial console, Kestrel's NIC
# creation lines and no network error lines, the NIC counters of the exit
# line (-v) against the bytes moved, the tap left in br0 removed at exit,
# and linux_results (the guest ran to the end, status 0, no oops). It
# prints the throughput of each transfer (uploads and hostfwd: host-side
# seconds; downloads: the guest's, since slirp takes the host's data at once).
#
# Throughput seen here (MiB/s; 2026-12-07, the outer VM otherwise idle):
#   virtio-net on slirp 2.70 up, 3.46 down, hostfwd 1.62
#   e1000 on slirp      0.24 up, 1.0 down, hostfwd 0.06 (2 MiB/1 MiB runs,
#                       two outer VMs at once)
# Under load (8-13 on the 2 cores) a tenth of that and less.
# Every exit and interrupt of the guest goes through TCG's nested SVM; the
# e1000 takes about one register exit per packet.
#
# Logs in $LOGDIR (lib.sh): NAME.log, NAME.results (net-peer.py), NAME.udp
# and NAME.udp.src (netconsole), net-tap.dnsmasq.log, net-tap.leases.
# Last line "N passed, N failed, N skipped"; exit 0 only if nothing failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MIB=${KNET_MIB:-64} DOWN_MIB=${KNET_DOWN_MIB:-16} FWD_MIB=${KNET_FWD_MIB:-4}
E_MIB=${KNET_E1000_MIB:-4} E_DOWN_MIB=${KNET_E1000_DOWN_MIB:-2} E_FWD_MIB=${KNET_E1000_FWD_MIB:-1}
for v in "$MIB" "$DOWN_MIB" "$FWD_MIB" "$E_MIB" "$E_DOWN_MIB" "$E_FWD_MIB"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || { echo "test-linux-net.sh: KNET_*MIB '$v' is not a number" >&2; exit 2; }
done
((FWD_MIB <= MIB && E_FWD_MIB <= E_MIB && E_MIB <= MIB && E_DOWN_MIB <= DOWN_MIB)) || {
	echo "test-linux-net.sh: need KNET_FWD_MIB <= KNET_MIB, KNET_E1000_FWD_MIB <= KNET_E1000_MIB <= KNET_MIB, KNET_E1000_DOWN_MIB <= KNET_DOWN_MIB" >&2
	exit 2
}
# Loaded, the e1000's upload on slirp moved 0.09-0.15 MiB/s here (see the
# header): each transfer may take 20 s per MiB, a boot all of them.
TMO=$((60 + 20 * MIB))
LINUX_TIMEOUT=${LINUX_TIMEOUT:-$((300 + 2 * TMO))}
BOOTS=("$@")
[ ${#BOOTS[@]} -gt 0 ] || BOOTS=(user-virtio user-e1000 tap)
for b in "${BOOTS[@]}"; do
	case $b in user-virtio | user-e1000 | tap) ;; *) echo "test-linux-net.sh: unknown boot '$b'" >&2; exit 2 ;; esac
done
# shellcheck source=tests/linux/lib.sh
. "$ROOT/tests/linux/lib.sh"
command -v python3 >/dev/null || { echo "test-linux-net.sh: python3 not found (net-peer.py)" >&2; exit 2; }
# shellcheck disable=SC2119
linux_setup

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/kestrel-lnet.XXXXXX")
NS=kestrel-lnet-$$
PEER_PID="" DNSMASQ_PID=""
cleanup() {
	local p
	for p in "$PEER_PID" "$DNSMASQ_PID"; do
		[ -n "$p" ] && { kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
	done
	PEER_PID="" DNSMASQ_PID=""
	if ip netns list 2>/dev/null | grep -qw "$NS"; then ip netns del "$NS"; fi
}
trap 'cleanup; rm -rf "$SCRATCH"' EXIT
trap 'exit 130' INT TERM

# What each NIC downloads (DOWN_MIB MiB made here); what it uploads is
# the guest's own /tmp/data, MIB MiB it makes from /dev/urandom.
DATA=$SCRATCH/data
head -c $((DOWN_MIB << 20)) /dev/urandom >"$DATA"
DSIZE=$(stat -c %s "$DATA")
DSHA=$(sha256sum "$DATA" | cut -c1-64)
SIZE=$((MIB << 20))
# The e1000 on slirp downloads the first E_DOWN_MIB MiB of it.
E_DSIZE=$((E_DOWN_MIB << 20))
E_DSHA=$(head -c "$E_DSIZE" "$DATA" | sha256sum | cut -c1-64)
echo "boots: ${BOOTS[*]}; virtio-net: $MIB MiB up, $DOWN_MIB MiB down, $FWD_MIB MiB through hostfwd;" \
	"e1000: $E_MIB MiB up, $E_DOWN_MIB MiB down on slirp ($DOWN_MIB on the bridge), $E_FWD_MIB MiB through hostfwd; timeout $LINUX_TIMEOUT s per boot"
GPORT=8080

# start_peer NAME [NS] [net-peer.py args]: net-peer.py in $SCRATCH/NAME;
# sets PEER_PID, UP, DOWN (and UDP).
start_peer() {
	local name=$1 ns=$2 pre=() i
	shift 2
	[ -n "$ns" ] && pre=(ip netns exec "$ns")
	mkdir -p "$SCRATCH/$name"
	"${pre[@]}" python3 "$ROOT/tests/linux/net-peer.py" --dir "$SCRATCH/$name" --data "$DATA" "$@" &
	PEER_PID=$!
	for ((i = 0; i < 100; i++)); do
		[ -s "$SCRATCH/$name/ports" ] && break
		kill -0 "$PEER_PID" 2>/dev/null || break
		sleep 0.1
	done
	UP="" DOWN="" UDP=""
	# shellcheck source=/dev/null
	[ -s "$SCRATCH/$name/ports" ] && . "$SCRATCH/$name/ports"
	[ -n "$UP" ] && [ -n "$DOWN" ]
}
stop_peer() {
	local name=$1
	sleep 0.5 # the last datagrams
	[ -n "$PEER_PID" ] && { kill "$PEER_PID" 2>/dev/null; wait "$PEER_PID" 2>/dev/null; }
	PEER_PID=""
	cp "$SCRATCH/$name/results" "$LOGDIR/$name.results" 2>/dev/null
	cp "$SCRATCH/$name/udp" "$LOGDIR/$name.udp" 2>/dev/null
	cp "$SCRATCH/$name/udp.src" "$LOGDIR/$name.udp.src" 2>/dev/null
}
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# mibs BYTES SECONDS: MiB/s
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", b / 1048576 / s; else print "-" }'; }
# glines NAME PREFIX: the guest's lines starting with PREFIX, \r dropped
glines() { tr -d '\r' <"$LOGDIR/$1.log" | grep -E "^$2"; }

# check_xfers NAME IF CLIENT DSIZE DSHA USIZE: the download (DSIZE bytes
# whose sha256 is DSHA) and the upload through IF of USIZE bytes, /tmp/data
# or its start; CLIENT (a regex) is the address the host saw them come
# from. UPFILE: what the host got.
check_xfers() {
	local name=$1 ifc=$2 client=$3 dsize=$4 dsha=$5 usize=$6 res=$SCRATCH/$1/results r whole
	local gd gu gdata hd hu k n sha secs file fsha who=${3//\\/}
	gd=$(glines "$name" "KNET-RESULT down $ifc ")
	gu=$(glines "$name" "KNET-RESULT up $ifc ")
	gdata=$(glines "$name" "KNET-DATA " | head -1)
	hd=$(grep -E "^down [0-9]+ $client " "$res" 2>/dev/null | head -1)
	hu=$(grep -E "^up [0-9]+ $client " "$res" 2>/dev/null | head -1)
	# down: "down K CLIENT BYTES SECONDS"; guest: "... IF BYTES SHA SECONDS"
	read -r _ _ _ n secs <<<"$hd"
	[ -n "$hd" ] && [ "$n" = "$dsize" ] && [ "$(cut -d' ' -f4,5 <<<"$gd")" = "$dsize $dsha" ]
	r=$?
	check "$name: download via $ifc: the host sent ${n:-nothing} bytes to $who, the guest read $(cut -d' ' -f4 <<<"$gd") bytes whose sha256 is the host's" $r
	# (the host's side ends when slirp has taken it all: the guest's time)
	secs=$(cut -d' ' -f6 <<<"$gd")
	[ -n "$gd" ] && printf '  throughput %s %s down: %s MiB/s (%s MiB in %s s guest side)\n' \
		"$name" "$ifc" "$(mibs "$dsize" "$secs")" $((dsize >> 20)) "$secs"
	# up: "up K CLIENT BYTES SHA SECONDS", in the file up-K.bin
	read -r _ k _ n sha secs <<<"$hu"
	file=$SCRATCH/$name/up-${k:-x}.bin
	fsha=$(sha256sum "$file" 2>/dev/null | cut -c1-64)
	# All of /tmp/data: its KNET-DATA line too; its start: the guest's sha256
	# of what it sent.
	whole=$([ "$(cut -d' ' -f2 <<<"$gdata")" = "$usize" ] && cut -d' ' -f2,3 <<<"$gdata" || echo "$usize $fsha")
	[ -n "$hu" ] && [ "$n" = "$usize" ] && [ "$fsha" = "$sha" ] &&
		[ "$whole" = "$usize $fsha" ] && [ "$(cut -d' ' -f4,5 <<<"$gu")" = "$usize $fsha" ]
	r=$?
	UPFILE=$file
	check "$name: upload via $ifc: the host got ${n:-nothing} bytes from $who ($usize expected); sha256 re-read ${fsha:0:12}... = the guest's ($(cut -d' ' -f5 <<<"$gu" | cut -c1-12)...)" $r
	[ -n "$hu" ] && printf '  throughput %s %s up: %s MiB/s (%s MiB in %s s host side, %s s guest side)\n' \
		"$name" "$ifc" "$(mibs "$n" "$secs")" $((n >> 20)) "$secs" "$(cut -d' ' -f6 <<<"$gu")"
}

# check_counters NAME NIC TXMIN RXMIN: Kestrel's exit line for NIC (-v)
# "tx P pkts B bytes D dropped, rx P pkts B bytes D dropped, ...": at least
# TXMIN/RXMIN bytes each way (the payload moved), no more than 1.5 times
# that + 8 MiB (headers, ACKs, retransmissions), packets at least bytes /
# 65550 (the largest frame, TSO), none dropped on TX.
check_counters() {
	local name=$1 nic=$2 txmin=$3 rxmin=$4 st tp tb td rp rb rd r
	st=$(tr -d '\r' <"$LOGDIR/$name.log" | grep -E "^kestrel: $nic: tx [0-9]+ pkts" | head -1)
	read -r tp tb td rp rb rd <<<"$(sed -nE 's/.* tx ([0-9]+) pkts ([0-9]+) bytes ([0-9]+) dropped, rx ([0-9]+) pkts ([0-9]+) bytes ([0-9]+) dropped.*/\1 \2 \3 \4 \5 \6/p' <<<"$st")"
	if [ -z "$st" ] || [ -z "$tp" ]; then
		fail "$name: Kestrel's $nic counters at exit: no line"
		return
	fi
	[ "$tb" -ge "$txmin" ] && [ "$tb" -le $((txmin * 3 / 2 + (8 << 20))) ] && [ "$tp" -ge $((tb / 65550)) ] &&
		[ "$td" = 0 ] && [ "$rb" -ge "$rxmin" ] && [ "$rb" -le $((rxmin * 3 / 2 + (8 << 20))) ] &&
		[ "$rp" -ge $((rb / 65550)) ]
	r=$?
	check "$name: Kestrel's $nic counters: tx $tp pkts $tb bytes ($td dropped) for $txmin sent, rx $rp pkts $rb bytes ($rd dropped) for $rxmin received" $r
	echo "  $name $nic: mean frame tx $((tb / (tp ? tp : 1))) bytes, rx $((rb / (rp ? rp : 1))) bytes"
}

# check_kestrel_nic NAME NIC MAC BACKEND: its creation line; no error lines.
check_kestrel_nic() {
	local name=$1 nic=$2 mac=$3 be=$4 text line r
	text=$(tr -d '\r' <"$LOGDIR/$name.log")
	if [ "${nic%-*}" = e1000 ]; then
		grep -qE "^kestrel: $nic: PCI 00:[0-9a-f]{2}\.0, BAR0 0x[0-9a-f]+, MAC $mac, $be" <<<"$text"
	else
		grep -qE "^kestrel: $nic: PCI 00:[0-9a-f]{2}\.0, BAR0 " <<<"$text" &&
			grep -qE "^kestrel: $nic: $be backend.*, MAC $mac" <<<"$text"
	fi
	r=$?
	check "$name: Kestrel made $nic ($be, MAC $mac): $(grep -E "^kestrel: $nic: " <<<"$text" | grep -v ' pkts ' | tail -1)" $r
	line=$(grep -E "^kestrel: ($nic|net user|tap \"[^\"]*\"|bridge \"[^\"]*\"|--net)" <<<"$text" |
		grep -iE "cannot|can't|fail|error|unable|dropping|unusable|not in guest RAM|out of memory|refused|does not exist" | head -2)
	[ -z "$line" ]
	check "$name: no Kestrel error lines for $nic${line:+: $line}" $?
}

# check_netconsole NAME: the UDP datagrams against the serial console's kernel
# lines (printk time kept), up to the guest's last marked line.
check_netconsole() {
	local name=$1 want got live nlive nall miss_all miss_live last srcs ngot r
	last='\] knet: over netconsole, line 10 of 10$'
	want=$(tr -d '\r' <"$LOGDIR/$name.log" | grep -E '^\[ *[0-9]+\.[0-9]+\] ' | sed -n "1,/$last/p")
	got=$(tr -d '\r' <"$SCRATCH/$name/udp" 2>/dev/null | sed -n "1,/$last/p")
	live=$(grep -E '\] knet: over netconsole, line ' <<<"$want")
	nall=$(grep -c . <<<"$want")
	nlive=$(grep -c . <<<"$live")
	ngot=$(grep -c . <<<"$got")
	miss_all=$(grep -cvxFf <(echo "$got") <<<"$want")
	miss_live=$(grep -cvxFf <(echo "$got") <<<"$live")
	srcs=$(awk '{ split($1, a, ":"); n[a[1]]++ } END { for (s in n) printf "%s%s: %d", (k++ ? ", " : ""), s, n[s] }' \
		"$SCRATCH/$name/udp.src" 2>/dev/null)
	[ "$nlive" = 10 ] && [ "$miss_live" = 0 ]
	check "$name: netconsole: the 10 lines written after it started all arrived over UDP (datagrams from ${srcs:-nowhere})" $?
	[ "$((nall - nlive))" -ge 5 ] && [ "$((miss_all - miss_live))" = 0 ] &&
		[ "$(grep -c '\] knet: before netconsole, line' <<<"$got")" = 5 ]
	check "$name: netconsole: the $((nall - nlive)) kernel lines from before it started (5 marked) all replayed" $?
	[ -n "$want" ] && [ "$want" = "$got" ]
	r=$?
	check "$name: netconsole: UDP stream = the serial console's kernel lines, same order ($ngot over UDP, $nall on serial)" $r
	[ "$r" = 0 ] || diff <(echo "$want") <(echo "$got") | head -6 | sed 's/^/  | /'
}

# --- user-mode networking: one boot per NIC model ------------------------------
boot_user() {
	local model=$1 name=net-user-$1 mac hport nic lease r fb
	local mib=$MIB dsize=$DSIZE dsha=$DSHA fmib=$FWD_MIB
	mac=52:54:00:12:34:5$([ "$model" = virtio ] && echo 6 || echo 7)
	nic=virtio-net0
	[ "$model" = e1000 ] && nic=e1000-0 mib=$E_MIB dsize=$E_DSIZE dsha=$E_DSHA fmib=$E_FWD_MIB
	fb=$((fmib << 20))
	hport=$(free_port)
	while :; do
		if ! start_peer "$name" "" --listen 127.0.0.1 --udp --fwd "$hport" --log "$LOGDIR/$name.log" --down-bytes "$dsize"; then
			fail "$name: net-peer.py did not start"
			cleanup
			return
		fi
		linux_boot "$name" -v --net "user,model=$model,mac=$mac,hostfwd=tcp:127.0.0.1:$hport-:$GPORT" \
			--cmdline "kestrel.test=net printk.devkmsg=on knet.nic=$mac,$model,dhcp,10.0.2.2 knet.up=$UP knet.down=$DOWN knet.dsize=$dsize knet.dsha=$dsha knet.data=$mib knet.fwd=$GPORT,$fb knet.nc=$UDP knet.tmo=$TMO"
		stop_peer "$name"
		linux_flaked "$name" || break
		cleanup
		rm -rf "${SCRATCH:?}/$name"
	done
	linux_results "$name"

	lease=$(glines "$name" "KNET-LEASE eth0 ")
	[ "$lease" = "KNET-LEASE eth0 ip=10.0.2.15 mask=24 router=10.0.2.2 dns=10.0.2.3 server=10.0.2.2 lease=${lease##*lease=}" ]
	check "$name: slirp's lease: 10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3, from 10.0.2.2 (${lease#KNET-LEASE eth0 })" $?
	check_xfers "$name" eth0 '127\.0\.0\.1' "$dsize" "$dsha" $((mib << 20))

	# hostfwd: "fwd N BYTES SHA SECONDS ATTEMPTS", the file fwd-N.bin; the
	# guest served the first fmib MiB of /tmp/data, which the host also
	# has from the upload.
	local ready f k n sha secs att fsha want
	want=$(head -c "$fb" "$UPFILE" 2>/dev/null | sha256sum | cut -c1-64)
	ready=$(glines "$name" "KNET-FWD-READY eth0 ")
	f=$(grep -E '^fwd ' "$SCRATCH/$name/results" 2>/dev/null | head -1)
	read -r _ k n sha secs att <<<"$f"
	fsha=$(sha256sum "$SCRATCH/$name/fwd-${k:-x}.bin" 2>/dev/null | cut -c1-64)
	[ -n "$f" ] && [ "$n" = "$fb" ] && [ "$sha" = "$want" ] && [ "$fsha" = "$want" ] &&
		[ "$ready" = "KNET-FWD-READY eth0 $fb $want" ]
	r=$?
	check "$name: hostfwd 127.0.0.1:$hport -> guest :$GPORT: the host read ${n:-nothing} bytes, sha256 re-read ${fsha:0:12}... = the guest's and the uploaded file's first $fmib MiB (connection attempt ${att:-?})" $r
	[ -n "$f" ] && printf '  throughput %s hostfwd (guest to host): %s MiB/s (%s MiB in %s s)\n' \
		"$name" "$(mibs "$n" "$secs")" "$fmib" "$secs"
	rm -f "$SCRATCH/$name"/*.bin

	check_netconsole "$name"
	check_kestrel_nic "$name" "$nic" "$mac" user
	check_counters "$name" "$nic" $(((mib << 20) + fb)) "$dsize"
	cleanup
}

# --- a tap and a bridge in a network namespace ---------------------------------
TAP_MAC=52:54:00:12:34:61 BR_NIC_MAC=52:54:00:12:34:62 BR_MAC=52:54:00:77:00:01
setup_ns() {
	local i
	ip netns add "$NS" &&
		ip -n "$NS" link set lo up &&
		ip -n "$NS" tuntap add dev ktap0 mode tap &&
		ip -n "$NS" addr add 192.168.78.1/24 dev ktap0 &&
		ip -n "$NS" link set ktap0 up &&
		ip -n "$NS" link add br0 type bridge forward_delay 0 stp_state 0 &&
		ip -n "$NS" link set br0 address "$BR_MAC" &&
		ip -n "$NS" addr add 192.168.77.1/24 dev br0 &&
		ip -n "$NS" link set br0 up || return 1
	rm -f "$LOGDIR/net-tap.leases" "$LOGDIR/net-tap.dnsmasq.log"
	ip netns exec "$NS" "$DNSMASQ" --no-daemon --conf-file=/dev/null --port=0 --user=root \
		--interface=br0 --bind-interfaces --except-interface=lo \
		--dhcp-range=192.168.77.50,192.168.77.99,12h --dhcp-leasefile="$LOGDIR/net-tap.leases" \
		--log-dhcp --log-facility="$LOGDIR/net-tap.dnsmasq.log" 2>>"$LOGDIR/net-tap.dnsmasq.stderr" &
	DNSMASQ_PID=$!
	for ((i = 0; i < 100; i++)); do
		grep -q 'DHCP, sockets bound exclusively to interface br0' "$LOGDIR/net-tap.dnsmasq.log" 2>/dev/null && return 0
		kill -0 "$DNSMASQ_PID" 2>/dev/null || break
		sleep 0.1
	done
	tail -3 "$LOGDIR/net-tap.dnsmasq.stderr" 2>/dev/null | sed 's/^/  dnsmasq: /'
	return 1
}

boot_tap() {
	local name=net-tap why="" lease addr ack ports text btap r
	if ((EUID != 0)); then why="needs root (network namespace, tap, bridge)"
	elif ! command -v ip >/dev/null; then why="ip (iproute2) not found"
	elif [[ ! -x ${DNSMASQ:=/usr/sbin/dnsmasq} ]] && ! DNSMASQ=$(command -v dnsmasq); then
		why="dnsmasq not found (Debian: dnsmasq-base)"
	elif [ ! -c /dev/net/tun ]; then why="/dev/net/tun missing"
	fi
	if [ -n "$why" ]; then
		skip "$name: $why"
		return
	fi
	while :; do
		if ! setup_ns; then
			fail "$name: namespace $NS with ktap0, br0 and dnsmasq could not be set up"
			cleanup
			return
		fi
		if ! start_peer "$name" "$NS" --listen 0.0.0.0; then
			fail "$name: net-peer.py did not start in $NS"
			cleanup
			return
		fi
		LINUX_WRAP=(ip netns exec "$NS")
		linux_boot "$name" -v --net "tap,ifname=ktap0,model=virtio,vhost=off,mac=$TAP_MAC" \
			--net "bridge,br=br0,model=e1000,mac=$BR_NIC_MAC" \
			--cmdline "kestrel.test=net knet.nic=$TAP_MAC,virtio,192.168.78.2/24,192.168.78.1 knet.nic=$BR_NIC_MAC,e1000,dhcp,192.168.77.1,$E_MIB knet.up=$UP knet.down=$DOWN knet.dsize=$DSIZE knet.dsha=$DSHA knet.data=$MIB knet.tmo=$TMO"
		LINUX_WRAP=()
		ports=$(ip -n "$NS" -o link show master br0 2>/dev/null | sed -E 's/^[0-9]+: ([^:@]+).*/\1/' | tr '\n' ' ')
		stop_peer "$name"
		linux_flaked "$name" || break
		cleanup
		rm -rf "${SCRATCH:?}/$name"
	done
	linux_results "$name"

	# eth0 is the first NIC (virtio, tap), eth1 the e1000 on br0.
	check_xfers "$name" eth0 '192\.168\.78\.2' "$DSIZE" "$DSHA" "$SIZE"
	lease=$(glines "$name" "KNET-LEASE eth1 ")
	addr=$(sed -nE 's/.* ip=192\.168\.77\.([0-9]+) .*/\1/p' <<<"$lease")
	[ -n "$addr" ] && [ "$addr" -ge 50 ] && [ "$addr" -le 99 ] &&
		[[ $lease == *" router=192.168.77.1 "*" server=192.168.77.1 "* ]]
	check "$name: eth1's lease from dnsmasq: an address in .50-.99, router and server 192.168.77.1 (${lease#KNET-LEASE eth1 })" $?
	addr=192.168.77.${addr:-x}
	ack=$(grep -oE "DHCPACK\(br0\) [0-9.]+ $BR_NIC_MAC" "$LOGDIR/net-tap.dnsmasq.log" 2>/dev/null | tail -1)
	[ "$ack" = "DHCPACK(br0) $addr $BR_NIC_MAC" ] && grep -qE "^[0-9]+ $BR_NIC_MAC $addr " "$LOGDIR/net-tap.leases" 2>/dev/null
	check "$name: dnsmasq acked $addr to $BR_NIC_MAC and holds the lease (${ack:-no DHCPACK})" $?
	check_xfers "$name" eth1 "${addr//./\\.}" "$DSIZE" "$DSHA" $((E_MIB << 20))

	text=$(tr -d '\r' <"$LOGDIR/$name.log")
	grep -qE '^kestrel: tap "ktap0": existing, 1 queue\(s\)' <<<"$text"
	r=$?
	check "$name: Kestrel opened the namespace's tap ktap0 ($(grep -E '^kestrel: tap "ktap0"' <<<"$text" | head -1))" $r
	btap=$(sed -nE 's/^kestrel: tap "([^"]+)": created, .* in bridge "br0".*/\1/p' <<<"$text" | head -1)
	[ -n "$btap" ] && [ -z "${ports// /}" ]
	check "$name: Kestrel's tap ${btap:-?} was created in br0 and is gone after exit (ports left: ${ports:-none})" $?
	check_kestrel_nic "$name" virtio-net0 "$TAP_MAC" tap
	check_kestrel_nic "$name" e1000-1 "$BR_NIC_MAC" tap
	check_counters "$name" virtio-net0 "$SIZE" "$DSIZE"
	check_counters "$name" e1000-1 $((E_MIB << 20)) "$DSIZE"
	rm -f "$SCRATCH/$name"/*.bin
	cleanup
}

t0=$SECONDS
for b in "${BOOTS[@]}"; do
	case $b in
	user-virtio) boot_user virtio ;;
	user-e1000) boot_user e1000 ;;
	tap) boot_tap ;;
	esac
done
echo "test-linux-net: $((SECONDS - t0)) s for the boots (${BOOTS[*]}): $MIB MiB up and $DOWN_MIB MiB down on each NIC, $FWD_MIB MiB through hostfwd"
linux_summary
