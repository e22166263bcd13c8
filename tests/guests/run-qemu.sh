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

vmm_command() {
	# shellcheck disable=SC2054  # the commas belong to -device
	CMD=("$QEMU" -enable-kvm -nographic -no-reboot -kernel "$1"
		-device isa-debug-exit,iobase=0xf4,iosize=4 -m "$2" -smp "$3")
	[ -n "$4" ] && CMD+=(-append "$4")
	[ -n "$QEMU_BIOS" ] && CMD+=(-bios "$QEMU_BIOS")
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
