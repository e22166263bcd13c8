# shellcheck shell=bash
# Shared by tests/net/test-net-guests.sh and bench/bench-net.sh (sourced).
# Needs K (Kestrel), QEMU, QBOOT, TAP, MAC and NS set by the caller.

# The EXIT trap of both scripts: stops the VMM ($VPID) and the peer
# ($PPID_PEER) if running, and deletes the namespace $NS.
VPID="" PPID_PEER=""
net_ns_cleanup() {
	[ -n "$PPID_PEER" ] && kill "$PPID_PEER" 2>/dev/null
	[ -n "$VPID" ] && kill "$VPID" 2>/dev/null
	wait 2>/dev/null
	ip netns del "$NS" 2>/dev/null
}

# The command line for one micro-guest run on a tap: fills the array CMD.
#   net_vmm_command VMM NIC ELF CMDLINE MEMORY [KESTREL_ARG...]
# VMM: kestrel|qemu; NIC: virtio, virtio-mmio, virtio-q2 (2 queue pairs),
# e1000 (QEMU knows virtio and e1000). $NET_OPTS_EXTRA is appended to
# Kestrel's --net value (e.g. ",vhost=off").
net_vmm_command() {
	local vmm=$1 nic=$2 elf=$3 cmdline=$4 mem=$5
	shift 5
	if [ "$vmm" = kestrel ]; then
		local net="tap,ifname=$TAP,mac=$MAC"
		case $nic in
		virtio-mmio) net+=",transport=mmio" ;;
		virtio-q2) net+=",queues=2" ;;
		e1000) net+=",model=e1000" ;;
		esac
		CMD=("$K" run "$@" --kernel "$elf" --memory "$mem" --cmdline "$cmdline" --serial stdio --no-reboot
			--net "$net${NET_OPTS_EXTRA:-}")
	else
		local dev=virtio-net-pci
		[ "$nic" = e1000 ] && dev=e1000
		# shellcheck disable=SC2054  # the commas belong to -device
		CMD=("$QEMU" -enable-kvm -display none -nodefaults -no-reboot -m "$mem" -kernel "$elf" -append "$cmdline"
			-serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4
			-netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=off"
			-device "$dev,netdev=n0,mac=$MAC,romfile=")
		[ -f "$QBOOT" ] && CMD+=(-bios "$QBOOT")
	fi
}
