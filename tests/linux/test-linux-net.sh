#!/usr/bin/env bash
# Tier 3, networking: boot the Linux test kernel with a NIC and check what the
# kernel's own network code does before init: DHCP (ip=dhcp, the in-kernel
# IP autoconfiguration) over user-mode networking and over a bridge, and the
# whole kernel log streamed over UDP by netconsole.
#
# Usage: tests/linux/test-linux-net.sh [--vmm VMM] [--cases "LIST"] [--timeout S] [--mac MAC]
#
#   --vmm VMM     kestrel (default: $KESTREL or <repo>/build/kestrel), a path to a
#                 Kestrel binary, or qemu (to validate the checks). Also $VMM.
#   --cases LIST  space-separated, default "user bridge e1000" (one boot each):
#                   user        --net user,mac=MAC (virtio-net on virtio-pci,
#                               libslirp); netconsole to 10.0.2.2 (slirp hands
#                               it to the host's 127.0.0.1)
#                   bridge      in a fresh network namespace: bridge br0
#                               (192.168.77.1/24) with dnsmasq on it, the VMM
#                               in the namespace with --net bridge,br=br0,mac=MAC;
#                               netconsole to 192.168.77.1
#                   e1000       bridge with model=e1000 (82540EM)
#                 and, not run by default:
#                   user-e1000  user with model=e1000
#                   user-mmio   user with transport=mmio (Kestrel only)
#                 QEMU: -machine q35 (its _PRT is a static table; the pc
#                 machine's _PRT loop runs into ACPICA's 30 s loop timeout
#                 here and the e1000 then gets no IRQ), -nic user,model=... or
#                 -netdev tap on a tap the test puts on br0, vhost=off.
#   --timeout S   per boot (default 900)
#   --mac MAC     the guest's MAC (default 52:54:00:12:34:56)
#
# Kernel command line (boot.sh adds console=ttyS0, the host quirks, panic=-1):
#   ip=dhcp netconsole=6665@SRC/eth0,PORT@DST/[DSTMAC]
# Both run as late initcalls, netconsole first (drivers/ links before net/):
# netpoll opens eth0 ("device eth0 not up yet, forcing it"), waits for the
# carrier and, since the built-in netconsole is registered with
# CON_PRINTBUFFER, replays the whole log buffer over UDP, then streams every
# new message; then ip_auto_config runs DHCP on eth0. The source address is
# given because eth0 has none yet. Then the kernel runs the built-in
# initramfs's /init, which cannot execute, and panics "No working init found"
# (see README.md); with panic=-1 and --no-reboot the VMM exits 0. Nothing in
# guest user space runs.
#
# The bridge cases need root, ip(8) and dnsmasq; the namespace
# (kestrel-lnet-PID), dnsmasq and the UDP listeners are removed at the end.
#
# Each check prints "PASS ..." / "FAIL ..." ("SKIP ..." when it does not apply);
# the last line is "N passed, M failed". Exit status 0 if all passed, 1
# otherwise, 2 on a usage/build/setup error.
# Logs: $KESTREL_CACHE/logs/test-linux-net-<vmm>-<date>/: <case>.log (serial
# console and the VMM's stderr), <case>.udp (what netconsole sent),
# <case>.udp.src (the sender of each datagram), <case>.dnsmasq.log,
# <case>.leases, <case>.links (the bridge's ports seen during the run).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"

VMM="${VMM:-kestrel}"
CASES="user bridge e1000"
TIMEOUT=900
MAC=52:54:00:12:34:56
while (($#)); do
    case "$1" in
        --vmm) VMM="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --mac) MAC="${2,,}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-linux-net.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for c in $CASES; do
    case "$c" in user|bridge|e1000|user-e1000|user-mmio) ;; *) echo "test-linux-net.sh: unknown case $c" >&2; exit 2 ;; esac
done
[[ $MAC =~ ^([0-9a-f]{2}:){5}[0-9a-f]{2}$ ]] || { echo "test-linux-net.sh: bad --mac $MAC" >&2; exit 2; }

if [[ "$VMM" != qemu ]]; then
    bin="$VMM"; [[ "$VMM" == kestrel ]] && bin="${KESTREL:-$HERE/../../build/kestrel}"
    [[ -x "$bin" ]] || { echo "test-linux-net.sh: Kestrel binary $bin not found; build it first" >&2; exit 2; }
    VMM="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    vmmname=kestrel
else
    command -v qemu-system-x86_64 >/dev/null || { echo "test-linux-net.sh: qemu-system-x86_64 not installed" >&2; exit 2; }
    vmmname=qemu
fi
command -v python3 >/dev/null || { echo "test-linux-net.sh: python3 not found (the UDP listener)" >&2; exit 2; }

passed=0; failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
skip() { echo "SKIP $*"; }
check() { # check NAME STATUS [detail]: STATUS 0 is a pass
    if [[ $2 == 0 ]]; then pass "$1${3:+ ($3)}"; else fail "$1${3:+ ($3)}"; fi
}

# Why the bridge cases cannot run here, or nothing.
BRIDGE_SKIP=""
if ((EUID != 0)); then BRIDGE_SKIP="needs root (network namespace, bridge, dnsmasq)"
elif ! command -v ip >/dev/null; then BRIDGE_SKIP="ip (iproute2) not found"
elif [[ ! -x "${DNSMASQ:=/usr/sbin/dnsmasq}" ]] && ! DNSMASQ="$(command -v dnsmasq)"; then
    BRIDGE_SKIP="dnsmasq not found (Debian: dnsmasq-base)"
elif [[ ! -c /dev/net/tun ]]; then BRIDGE_SKIP="/dev/net/tun missing"
fi

echo "== building the kernel (cached)"
kout="$("$HERE/build-kernel.sh")" || { echo "test-linux-net.sh: kernel build failed" >&2; exit 2; }
eval "$kout"
echo "   vmlinux: $VMLINUX"
for o in CONFIG_IP_PNP_DHCP=y CONFIG_NETCONSOLE=y CONFIG_VIRTIO_NET=y CONFIG_E1000=y; do
    if ! grep -qx "$o" "$CACHE/linux/config" 2>/dev/null; then
        echo "test-linux-net.sh: the cached kernel's config lacks $o (tests/linux/kernel.config)" >&2; exit 2
    fi
done

LOGDIR="$CACHE/logs/test-linux-net-$vmmname-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$LOGDIR"
NS="kestrel-lnet-$$"
LISTENER_PID=""; DNSMASQ_PID=""; WATCH_PID=""
cleanup() {
    local p
    for p in "$WATCH_PID" "$LISTENER_PID" "$DNSMASQ_PID"; do
        [[ -n "$p" ]] && { kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
    done
    WATCH_PID=""; LISTENER_PID=""; DNSMASQ_PID=""
    if ip netns list 2>/dev/null | grep -qw "$NS"; then ip netns del "$NS"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "== logs in $LOGDIR"

# start_listener ADDR FILE [NETNS]: a UDP listener on ADDR, an ephemeral port,
# appending every datagram to FILE and its sender to FILE.src. Sets
# LISTENER_PID and LISTENER_PORT.
start_listener() {
    local addr="$1" file="$2" ns="${3:-}" pre=() i
    [[ -n "$ns" ]] && pre=(ip netns exec "$ns")
    rm -f "$file" "$file.src" "$file.port"
    "${pre[@]}" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 0))
f = open(sys.argv[2], "ab", buffering=0)
src = open(sys.argv[2] + ".src", "a", buffering=1)
with open(sys.argv[2] + ".port.tmp", "w") as p:
    p.write("%d\n" % s.getsockname()[1])
import os; os.rename(sys.argv[2] + ".port.tmp", sys.argv[2] + ".port")
while True:
    d, a = s.recvfrom(65536)
    f.write(d)
    src.write("%s:%d %d\n" % (a[0], a[1], len(d)))
' "$addr" "$file" &
    LISTENER_PID=$!
    for ((i = 0; i < 100; i++)); do
        [[ -s "$file.port" ]] && break
        kill -0 "$LISTENER_PID" 2>/dev/null || break
        sleep 0.1
    done
    LISTENER_PORT="$(cat "$file.port" 2>/dev/null)"
    [[ -n "$LISTENER_PORT" ]]
}

# setup_bridge CASE: namespace NS with br0 (192.168.77.1/24, MAC BR_MAC) and
# dnsmasq serving DHCP on it; for QEMU also the tap ktap0 on br0.
BR_MAC=52:54:00:77:00:01
setup_bridge() {
    local c="$1" i
    ip netns add "$NS" &&
    ip -n "$NS" link set lo up &&
    ip -n "$NS" link add br0 type bridge forward_delay 0 stp_state 0 &&
    ip -n "$NS" link set br0 address "$BR_MAC" &&
    ip -n "$NS" addr add 192.168.77.1/24 dev br0 &&
    ip -n "$NS" link set br0 up || return 1
    if [[ $vmmname == qemu ]]; then
        ip -n "$NS" tuntap add dev ktap0 mode tap &&
        ip -n "$NS" link set ktap0 master br0 &&
        ip -n "$NS" link set ktap0 up || return 1
    fi
    rm -f "$LOGDIR/$c.leases" "$LOGDIR/$c.dnsmasq.log"
    ip netns exec "$NS" "$DNSMASQ" --no-daemon --conf-file=/dev/null --port=0 --user=root \
        --interface=br0 --bind-interfaces --except-interface=lo \
        --dhcp-range=192.168.77.50,192.168.77.99,12h --dhcp-leasefile="$LOGDIR/$c.leases" \
        --log-dhcp --log-facility="$LOGDIR/$c.dnsmasq.log" 2>> "$LOGDIR/$c.dnsmasq.stderr" &
    DNSMASQ_PID=$!
    for ((i = 0; i < 100; i++)); do
        grep -q 'DHCP, sockets bound exclusively to interface br0' "$LOGDIR/$c.dnsmasq.log" 2>/dev/null && return 0
        kill -0 "$DNSMASQ_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "   dnsmasq did not start:"; sed 's/^/       /' "$LOGDIR/$c.dnsmasq.stderr" | tail -5
    return 1
}

declare -A T_NETCON T_DHCP_HOST T_DHCP_KERNEL T_DHCP_TOOK T_TOTAL

run_case() {
    local c="$1" log="$LOGDIR/$1.log" udp="$LOGDIR/$1.udp" links="$LOGDIR/$1.links"
    local tag="$vmmname $1" model=virtio transport=pci mode=user args=() pre=() r text line
    case $c in
        user) ;;
        user-e1000) model=e1000 ;;
        user-mmio) transport=mmio ;;
        bridge) mode=bridge ;;
        e1000) mode=bridge model=e1000 ;;
    esac
    if [[ $transport == mmio && $vmmname == qemu ]]; then
        skip "$tag: QEMU's q35/pc machines have no virtio-mmio transport"
        return
    fi
    if [[ $mode == bridge && -n "$BRIDGE_SKIP" ]]; then
        skip "$tag: $BRIDGE_SKIP"
        return
    fi
    echo "== case $c ($mode, $model${transport:+, $transport})"

    # Addresses: the guest's netconsole source, the listener, the gateway.
    local src dst gw dstmac=""
    if [[ $mode == user ]]; then
        src=10.0.2.15 dst=10.0.2.2 gw=10.0.2.2
        if ! start_listener 127.0.0.1 "$udp"; then fail "$tag: UDP listener did not start"; return; fi
    else
        # .2 is outside dnsmasq's range: netconsole needs a source address
        # before DHCP has given one.
        src=192.168.77.2 dst=192.168.77.1 gw=192.168.77.1 dstmac=$BR_MAC
        if ! setup_bridge "$c"; then fail "$tag: bridge/dnsmasq setup in namespace $NS failed"; cleanup; return; fi
        pre=(ip netns exec "$NS")
        if ! start_listener "$dst" "$udp" "$NS"; then fail "$tag: UDP listener did not start"; cleanup; return; fi
    fi
    local kcmd="ip=dhcp netconsole=6665@$src/eth0,$LISTENER_PORT@$dst/$dstmac"

    case "$vmmname:$mode" in
        kestrel:user)   args=(--net "user,model=$model,mac=$MAC$([[ $transport == mmio ]] && echo ,transport=mmio)" -v) ;;
        kestrel:bridge) args=(--net "bridge,br=br0,model=$model,mac=$MAC" -v) ;;
        qemu:user)      local qm=virtio-net-pci; [[ $model == e1000 ]] && qm=e1000
                        # shellcheck disable=SC2054 # commas inside QEMU option values
                        args=(-machine q35 -nic "user,model=$qm,mac=$MAC") ;;
        qemu:bridge)    local qd=virtio-net-pci; [[ $model == e1000 ]] && qd=e1000
                        # shellcheck disable=SC2054
                        args=(-machine q35 -netdev tap,id=n0,ifname=ktap0,script=no,downscript=no,vhost=off
                              -device "$qd,netdev=n0,mac=$MAC") ;;
    esac
    local bargs=(--timeout "$TIMEOUT" --log "$log" --quiet --extra-cmdline "$kcmd")
    for a in "${args[@]}"; do bargs+=(--vmm-arg "$a"); done

    # The bridge's ports while the VM runs (Kestrel adds and removes its tap).
    # Polled every 0.5 s into FILE.all until FILE.stop exists.
    : > "$links"; rm -f "$links.all" "$links.stop"
    if [[ $mode == bridge ]]; then
        ( while [[ ! -e "$links.stop" ]]; do
              ip -n "$NS" -o link show master br0 2>/dev/null >> "$links.all"
              sleep 0.5
          done ) &
        WATCH_PID=$!
    fi

    rm -f "$log.result"
    "${pre[@]}" "$HERE/boot.sh" "$VMM" "$VMLINUX" "${bargs[@]}" > /dev/null
    sleep 1 # the last datagrams
    if [[ $mode == bridge ]]; then
        local after
        after="$(ip -n "$NS" -o link show master br0 2>/dev/null | sed -E 's/^[0-9]+: ([^:@]+).*/\1/' | tr '\n' ' ')"
        touch "$links.stop"; wait "$WATCH_PID" 2>/dev/null; WATCH_PID=""
        # "NAME <FLAGS> state STATE", each distinct one once, in order of appearance
        sed -E 's/^[0-9]+: ([^:@]+)[:@][^<]*(<[^>]*>).*(state [A-Z]+).*/\1 \2 \3/' "$links.all" | awk '!seen[$0]++' > "$links"
        rm -f "$links.all" "$links.stop"
    fi
    if [[ ! -f "$log.result" ]]; then
        fail "$tag: boot.sh did not run (see above)"
        cleanup
        return
    fi
    # shellcheck disable=SC1090
    source "$log.result"
    echo "   exit status $BOOT_EXIT ($BOOT_END), total ${BOOT_T_TOTAL}s"
    T_TOTAL[$c]=$BOOT_T_TOTAL

    # Console text without the host-time prefix, the printk time and "#" notes.
    text="$(grep -v '^#' "$log" | sed -E 's/^\[ *[0-9.]+\] //; s/^\[ *[0-9]+\.[0-9]+\] //')"
    has() { grep -qE -- "$1" <<<"$text"; }
    first() { grep -oE -- "$1" <<<"$text" | head -1; }
    times_of() { # host and kernel time of the first log line matching a pattern
        grep -v '^#' "$log" | grep -E -- "$1" | head -1 |
            sed -nE 's/^\[ *([0-9.]+)\] \[ *([0-9]+\.[0-9]+)\] .*/\1 \2/p'
    }

    # --- the NIC ----------------------------------------------------------------
    local nic=virtio-net0
    [[ $model == e1000 ]] && nic=e1000-0
    if [[ $vmmname == kestrel ]]; then
        # Kestrel's -v lines: where the NIC went, its backend and MAC.
        case $model:$transport in
            e1000:*)     has "^kestrel: $nic: PCI 00:[0-9a-f]{2}\.0, BAR0 0x[0-9a-f]+, MAC $MAC, (user|tap)"; r=$? ;;
            *:mmio)      has "^kestrel: $nic: virtio-mmio at 0x[0-9a-f]+, GSI [0-9]+\$" &&
                         has "^kestrel: $nic: (user|tap) backend.*, MAC $MAC"; r=$? ;;
            *)           has "^kestrel: $nic: PCI 00:[0-9a-f]{2}\.0, BAR0 " &&
                         has "^kestrel: $nic: (user|tap) backend.*, MAC $MAC"; r=$? ;;
        esac
        check "$tag: Kestrel created $nic ($model, $transport) with MAC $MAC" $r \
            "$(grep -E "^kestrel: ($nic|net user|tap ).*" <<<"$text" | grep -v ' pkts ' | head -3 | paste -sd ';')"
        line="$(grep -E '^kestrel: (virtio-net[0-9]+|e1000-[0-9]+|net user|tap "[^"]*"|bridge "[^"]*"|--net)' <<<"$text" |
                grep -iE "cannot|can't|fail|error|unable|dropping|unusable|not in guest RAM|out of memory|refused|does not exist" | head -3)"
        check "$tag: no Kestrel network error lines" "$([[ -z "$line" ]]; echo $?)" "$line"
    fi
    if [[ $model == e1000 ]]; then
        has '^pci [0-9a-f:.]+: \[8086:100e\] type 00 class 0x020000$'; r=$?
        check "$tag: kernel enumerated the 82540EM PCI function" $r \
            "$(first '^pci [0-9a-f:.]+: \[8086:100e\].*' || echo 'no pci [8086:100e] line')"
        local fn
        fn="$(grep -oE '^e1000 [0-9a-f:.]+ eth0: \(PCI:' <<<"$text" | head -1 | cut -d' ' -f2)"
        has "^e1000 [0-9a-f:.]+ eth0: \(PCI:[0-9]+MHz:[0-9]+-bit\) $MAC\$"; r=$?
        check "$tag: e1000 probed eth0 with the MAC from its EEPROM" $r \
            "$(first '^e1000 [0-9a-f:.]+ eth0: \(PCI.*' || grep -E '^e1000' <<<"$text" | tail -2 | tr '\n' ' ')"
        has '^e1000 [0-9a-f:.]+ eth0: Intel\(R\) PRO/1000 Network Connection$'; r=$?
        check "$tag: e1000 registered eth0 (\"Intel(R) PRO/1000 Network Connection\")" $r
        has '^e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex'; r=$?
        check "$tag: e1000 link up" $r "$(first '^e1000: eth0 NIC Link is .*' || echo 'no link line')"
        line="$(grep -E '^e1000.*(EEPROM|Invalid MAC|Unable to|Tx Unit Hang|Reset adapter|failed)|NETDEV WATCHDOG|can.t derive routing for PCI INT' <<<"$text" | head -3)"
        check "$tag: no e1000 error lines" "$([[ -z "$line" ]]; echo $?)" "$line"
        [[ -n "$fn" ]] && echo "   e1000 at $fn"
    else
        if [[ $transport == mmio ]]; then
            ! has '^pci [0-9a-f:.]+: \[1af4:'; r=$?
            check "$tag: no virtio PCI function enumerated (virtio-net on virtio-mmio)" $r \
                "$( ((r)) && first '^pci [0-9a-f:.]+: \[1af4:.*')"
        else
            # 1af4:1041 modern virtio-net, 1af4:1000 transitional (QEMU).
            has '^pci [0-9a-f:.]+: \[1af4:(1000|1041)\] type 00 class 0x020000$'; r=$?
            check "$tag: kernel enumerated the virtio-net PCI function" $r \
                "$(first '^pci [0-9a-f:.]+: \[1af4:(1000|1041)\].*' || echo 'no pci [1af4:1000/1041] line')"
        fi
        # virtio_net prints nothing when it binds; eth0 is the only NIC, so
        # with no e1000 device eth0 is the virtio one.
        ! has '^e1000 [0-9a-f:.]+ eth'; r=$?
        check "$tag: no e1000 device (eth0 is virtio-net)" $r
    fi

    # --- netconsole: netpoll brings eth0 up --------------------------------------
    r=0
    for p in "^netpoll: netconsole: local IPv4 address $src\$" "^netpoll: netconsole: interface 'eth0'\$" \
             "^netpoll: netconsole: remote port $LISTENER_PORT\$" "^netpoll: netconsole: remote IPv4 address $dst\$" \
             '^printk: console \[netcon0\] enabled$' '^netconsole: network logging started$'; do
        has "$p" || { r=1; echo "       no line: $p"; }
    done
    line="$(grep -E '^netpoll: netconsole: .*(aborting|failed|timeout)|^netconsole: cleaning up' <<<"$text" | head -2)"
    # shellcheck disable=SC2001 # indent every line
    [[ -z "$line" ]] || { r=1; sed 's/^/       /' <<<"$line"; }
    check "$tag: netconsole set up on eth0 and started" $r \
        "$(grep -oE '^netpoll: netconsole: (device eth0 .*|carrier .*|timeout .*)' <<<"$text" | sed 's/^netpoll: netconsole: //' | paste -sd ';')"

    # --- DHCP (in-kernel IP autoconfiguration) -------------------------------------
    local addr
    addr="$(sed -nE "s/^IP-Config: Got DHCP answer from $gw, my address is ([0-9.]+)\$/\1/p" <<<"$text" | head -1)"
    check "$tag: IP-Config got a DHCP answer from $gw" "$([[ -n "$addr" ]]; echo $?)" \
        "$(first '^IP-Config: .*' || first '^Sending DHCP requests.*' || echo 'no IP-Config line')"
    if [[ $mode == user ]]; then
        check "$tag: address 10.0.2.15" "$([[ $addr == 10.0.2.15 ]]; echo $?)" "${addr:-none}"
    else
        local last=${addr##*.}
        check "$tag: address in dnsmasq's range 192.168.77.50-99" \
            "$([[ $addr == 192.168.77.* && $last -ge 50 && $last -le 99 ]]; echo $?)" "${addr:-none}"
    fi
    # "IP-Config: Complete:" and its detail line.
    local cl="^ +device=eth0, hwaddr=$MAC, ipaddr=${addr:-x}, mask=255\.255\.255\.0, gw=$gw\$"
    has '^IP-Config: Complete:$' && has "$cl"; r=$?
    check "$tag: IP-Config complete on eth0 with the NIC's MAC" $r \
        "$(first '^ +device=.*' | sed 's/^ *//' || echo 'no device= line')"
    if [[ $mode == user ]]; then
        has '^ +nameserver0=10\.0\.2\.3$'; r=$?
        check "$tag: slirp's DNS server 10.0.2.3 offered" $r "$(first '^ +nameserver0=.*' | sed 's/^ *//')"
    fi
    line="$(grep -E '^IP-Config: (Auto-configuration of network failed|Reopening|Retrying|No network devices|Device .* not found|Failed to open|Unable)|timed out!$' <<<"$text" | head -3)"
    check "$tag: no IP-Config failure/retry lines" "$([[ -z "$line" ]]; echo $?)" "$line"

    if [[ $mode == bridge ]]; then
        local dl="$LOGDIR/$c.dnsmasq.log" lease="$LOGDIR/$c.leases" ack
        ack="$(grep -E "DHCPACK\(br0\) [0-9.]+ $MAC" "$dl" 2>/dev/null | head -1 | sed -E 's/.*(DHCPACK.*)/\1/')"
        r=0
        for m in DHCPDISCOVER DHCPOFFER DHCPREQUEST DHCPACK; do
            grep -qE "$m\(br0\) ([0-9.]+ )?$MAC" "$dl" 2>/dev/null || { r=1; echo "       dnsmasq log lacks $m(br0) ... $MAC"; }
        done
        check "$tag: dnsmasq saw DISCOVER/OFFER/REQUEST/ACK from $MAC" $r "$ack"
        check "$tag: dnsmasq's DHCPACK is the kernel's address" \
            "$([[ -n "$addr" && $ack == "DHCPACK(br0) $addr $MAC"* ]]; echo $?)" "kernel ${addr:-none}"
        grep -qE "^[0-9]+ $MAC ${addr:-x} " "$lease" 2>/dev/null; r=$?
        check "$tag: lease file holds $MAC ${addr:-?}" $r "$(head -1 "$lease" 2>/dev/null)"
        # The tap: the one the test made (QEMU) or the one Kestrel made.
        local tap
        # up (UP) with its carrier on (LOWER_UP); a tap's operstate may read UNKNOWN
        local up_re='<([^>]*,)?UP,([^>]*,)?LOWER_UP[,>]'
        tap="$(grep -E "^[^ ]+ $up_re" "$links" | head -1 | cut -d' ' -f1)"
        check "$tag: a tap was up, with carrier, on br0 during the run" "$([[ -n "$tap" ]]; echo $?)" \
            "$(tr '\n' ';' < "$links")"
        if [[ $vmmname == kestrel ]]; then
            local ktap
            ktap="$(sed -nE 's/^kestrel: tap "([^"]+)": created, .* in bridge "br0".*/\1/p' <<<"$text" | head -1)"
            check "$tag: Kestrel created a tap in br0, and it was up there" \
                "$([[ -n "$ktap" ]] && grep -qE "^$ktap $up_re" "$links"; echo $?)" \
                "$(first '^kestrel: tap .*' || echo 'no "kestrel: tap" line')"
            check "$tag: Kestrel's tap gone from br0 after exit" "$([[ -n "$ktap" && -z "${after// /}" ]]; echo $?)" \
                "${after:-none left}"
        fi
    fi

    # --- netconsole: the log over UDP -----------------------------------------------
    # The serial console's kernel lines (printk time kept, host time dropped)
    # against what arrived over UDP. Built-in netconsole replays the log
    # buffer (CON_PRINTBUFFER), so both must be the same lines in the same
    # order; "live" are those after "netconsole: network logging started".
    local want got live nlive nall miss_all miss_live
    want="$(grep -v '^#' "$log" | sed -E 's/^\[ *[0-9.]+\] //' | grep -E '^\[ *[0-9]+\.[0-9]+\] ')"
    got="$(tr -d '\r' < "$udp" 2>/dev/null)"
    live="$(sed -n '/\] netconsole: network logging started$/,$p' <<<"$want" | sed 1d)"
    nall=$(grep -c . <<<"$want"); nlive=$(grep -c . <<<"$live")
    miss_all=$(grep -cvxFf <(echo "$got") <<<"$want")
    miss_live=$(grep -cvxFf <(echo "$got") <<<"$live")
    local srcs
    srcs="$(awk '{ n[$1]++; b += $2 } END { if (NR) { for (s in n) printf "%s%s: %d datagrams", (k++ ? ", " : ""), s, n[s]; printf ", %d bytes", b } }' "$udp.src" 2>/dev/null)"
    echo "   UDP: ${srcs:-nothing received}"
    check "$tag: netconsole: live lines after it started all arrived over UDP" \
        "$([[ $nlive -gt 10 && $miss_live == 0 ]]; echo $?)" "$nlive compared, $miss_live missing"
    check "$tag: netconsole: replayed log (before it started) all arrived" \
        "$([[ $((nall - nlive)) -gt 10 && $((miss_all - miss_live)) == 0 ]]; echo $?)" \
        "$((nall - nlive)) compared, $((miss_all - miss_live)) missing"
    r=0; [[ -n "$want" && "$want" == "$got" ]] || r=1
    check "$tag: netconsole: UDP stream = the serial kernel lines, same order" $r \
        "$(grep -c . <<<"$got") lines over UDP, $nall on the serial console"
    if ((r)); then diff <(echo "$want") <(echo "$got") | head -6 | sed 's/^/       /'; fi
    if [[ $mode == bridge ]]; then
        # The datagrams came from the guest's netconsole source, over the tap.
        line="$(awk '{ print $1 }' "$udp.src" 2>/dev/null | sort -u | tr '\n' ' ')"
        check "$tag: datagrams came from $src:6665" "$([[ $line == "$src:6665 " ]]; echo $?)" "${line:-none}"
    fi

    # Kestrel's NIC counters (printed at exit with -v): every datagram the
    # listener got and the two DHCP requests went out; the offer and the ack
    # came in.
    if [[ $vmmname == kestrel ]]; then
        local dg st tx txd rx rxd
        dg=$(grep -c . "$udp.src" 2>/dev/null); dg=${dg:-0}
        st="$(first "^kestrel: $nic: tx [0-9]+ pkts [0-9]+ bytes [0-9]+ dropped, rx [0-9]+ pkts [0-9]+ bytes [0-9]+ dropped")"
        read -r tx txd rx rxd <<<"$(sed -nE 's/.* tx ([0-9]+) pkts [0-9]+ bytes ([0-9]+) dropped, rx ([0-9]+) pkts [0-9]+ bytes ([0-9]+) dropped.*/\1 \2 \3 \4/p' <<<"$st")"
        check "$tag: Kestrel's $nic counters: tx >= $dg datagrams + 2 DHCP, 0 tx dropped, rx >= 2" \
            "$([[ -n "$tx" && $tx -ge $((dg + 2)) && $txd == 0 && $rx -ge 2 ]]; echo $?)" \
            "${st:+tx $tx ($txd dropped), rx $rx ($rxd dropped)}${st:-no counters line}"
    fi

    # --- the rest of the boot ----------------------------------------------------------
    line="$(grep -E 'ACPI (BIOS )?(Error|Warning)' <<<"$text" | head -3)"
    check "$tag: no ACPI Error/Warning lines" "$([[ -z "$line" ]]; echo $?)" "$line"
    line="$(grep -E '^(BUG:|WARNING:|Oops|general protection fault|invalid opcode:|Unable to handle kernel)' <<<"$text" | head -3)"
    check "$tag: no kernel BUG/WARNING/Oops lines" "$([[ -z "$line" ]]; echo $?)" "$line"
    has '^Kernel panic - not syncing: No working init found'; r=$?
    check "$tag: ended with the panic \"No working init found\"" $r \
        "$( ((r)) && { grep -E 'Kernel panic|KVM internal error' <<<"$text" | head -2 | tr '\n' ' ' || echo 'no panic line'; } )"
    check "$tag: VMM exited by itself with status 0" "$([[ $BOOT_END == exited && $BOOT_EXIT == 0 ]]; echo $?)" \
        "$BOOT_END, status $BOOT_EXIT after ${BOOT_T_TOTAL}s"
    if [[ "$BOOT_END" == kvm-internal-error ]]; then
        grep -E 'KVM internal error|RIP=|emulation failure' <<<"$text" | head -4 | sed 's/^/       /'
    fi

    # --- times ---------------------------------------------------------------------------
    local h k h2 k2
    read -r h k <<<"$(times_of '\] netconsole: network logging started$')"
    T_NETCON[$c]="${h:--}"
    read -r h k <<<"$(times_of '\] Sending DHCP requests')"
    read -r h2 k2 <<<"$(times_of '\] IP-Config: Got DHCP answer')"
    T_DHCP_HOST[$c]="${h2:--}"; T_DHCP_KERNEL[$c]="${k2:--}"
    T_DHCP_TOOK[$c]="$([[ -n "$k" && -n "$k2" ]] && awk -v a="$k" -v b="$k2" 'BEGIN { printf "%.3f", b - a }' || echo -)"
    echo "   netconsole started at ${T_NETCON[$c]}s, DHCP answer at ${T_DHCP_HOST[$c]}s (kernel ${T_DHCP_KERNEL[$c]}," \
         "${T_DHCP_TOOK[$c]}s after \"Sending DHCP requests\")"
    cleanup
}

for c in $CASES; do
    run_case "$c"
done

echo "== times (host seconds since the VMM started; DHCP: kernel seconds from \"Sending DHCP requests\" to the answer)"
printf '   %-11s %12s %12s %10s %8s\n' case netconsole "DHCP answer" "DHCP took" total
for c in $CASES; do
    [[ -n "${T_TOTAL[$c]:-}" ]] || continue
    printf '   %-11s %12s %12s %10s %8s\n' "$c" "${T_NETCON[$c]}" "${T_DHCP_HOST[$c]}" "${T_DHCP_TOOK[$c]}" "${T_TOTAL[$c]}"
done

echo "$passed passed, $failed failed"
((failed == 0))
