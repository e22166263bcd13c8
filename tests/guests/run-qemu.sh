#!/usr/bin/env bash
# Runs the micro-guests on QEMU (KVM).  Usage: run-qemu.sh [CASE...]
# QEMU_BIOS: firmware for -bios; empty (default) means QEMU's SeaBIOS.
# QEMU_BIOS=qboot picks /usr/share/qemu/qboot.rom, which also handles PVH
# and boots ~20x faster where firmware runs emulated (~0.15 s vs ~3.3 s).
set -u
VMM=qemu
QEMU=${QEMU:-qemu-system-x86_64}
QEMU_BIOS=${QEMU_BIOS:-}
[ "$QEMU_BIOS" = qboot ] && QEMU_BIOS=/usr/share/qemu/qboot.rom
. "$(dirname "$0")/runner.sh"

# A case disk (runner.sh: DISK_IMG, DISK_OPTS) becomes -drive + virtio-blk-pci,
# or virtio-blk-device on -M microvm (its own qboot firmware; virtio-mmio
# forced to version 2) for transport=mmio.
disk_args() {
	local drive="file=$DISK_IMG,format=raw,if=none,id=d0" dev=",drive=d0" model=virtio-blk-pci o
	MICROVM=0
	for o in "${DISK_OPTS[@]}"; do
		case $o in
		ro) drive+=",readonly=on" ;;
		snapshot) drive+=",snapshot=on" ;;
		discard) drive+=",discard=unmap" ;;
		cache=*) drive+=",$o" ;;
		serial=*) dev+=",$o" ;;
		queues=*) dev+=",num-queues=${o#queues=}" ;;
		transport=mmio) model=virtio-blk-device MICROVM=1 ;;
		transport=*) ;;
		qemu:*) drive+=",${o#qemu:}" ;;
		kestrel:*) ;;
		*) echo "run-qemu.sh: unknown disk option '$o'" >&2 ;;
		esac
	done
	DISK_ARGS=(-drive "$drive" -device "$model$dev")
	[ $MICROVM = 1 ] && DISK_ARGS=(-M microvm -global virtio-mmio.force-legacy=false "${DISK_ARGS[@]}")
}

vmm_command() {
	local bios=$QEMU_BIOS
	DISK_ARGS=()
	if [ -n "$DISK_IMG" ]; then
		disk_args
		[ $MICROVM = 1 ] && bios=""
	fi
	# shellcheck disable=SC2054  # the commas belong to -device
	CMD=("$QEMU" -enable-kvm -nographic -no-reboot "${DISK_ARGS[@]}" -kernel "$1"
		-device isa-debug-exit,iobase=0xf4,iosize=4 -m "$2" -smp "$3")
	[ -n "$4" ] && CMD+=(-append "$4")
	[ -n "$bios" ] && CMD+=(-bios "$bios")
	# With -no-reboot a triple fault ends QEMU with status 0, like a
	# power-off; the KVM_EXIT_SHUTDOWN (reason 8) trace tells them apart.
	[ "$5" = triplefault ] && CMD+=(-trace kvm_run_exit)
}

vmm_status() {
	if [ "$1" = triplefault ]; then
		[ "$2" -eq 0 ] || { echo "status $2, want 0"; return 1; }
		grep -q 'kvm_run_exit .*reason 8$' "$3" || { echo "no KVM_EXIT_SHUTDOWN"; return 1; }
		return 0
	fi
	local want
	want=$(debug_exit_status "$1")
	[ "$2" -eq "$want" ] || { echo "status $2, want $want"; return 1; }
}

run_cases
