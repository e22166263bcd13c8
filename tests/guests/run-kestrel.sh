#!/usr/bin/env bash
# Runs the micro-guests on Kestrel.  Usage: run-kestrel.sh [CASE...]
# KESTREL: path to the VMM binary (default build/kestrel).
set -u
VMM=kestrel
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KESTREL=${KESTREL:-$ROOT/build/kestrel}
. "$(dirname "$0")/runner.sh"

[ -x "$KESTREL" ] || { echo "run-kestrel.sh: $KESTREL not built" >&2; exit 2; }

vmm_command() {
	CMD=("$KESTREL" run --kernel "$1" --memory "$2" --cpus "$3"
		--serial stdio --no-reboot)
	[ -n "$4" ] && CMD+=(--cmdline "$4")
	if [ -n "$DISK_IMG" ]; then
		local disk="path=$DISK_IMG" o
		for o in "${DISK_OPTS[@]}"; do
			case $o in
			ro) disk+=",readonly=on" ;;
			snapshot) disk+=",snapshot=on" ;;
			queues=*) disk+=",num_queues=${o#queues=}" ;;
			discard | qemu:*) ;; # Kestrel discards whenever the file can
			kestrel:*) disk+=",${o#kestrel:}" ;;
			*) disk+=",$o" ;; # serial=, transport=, cache=
			esac
		done
		CMD+=(--disk "$disk")
	fi
}

vmm_status() {
	if [ "$1" = triplefault ]; then
		# Non-zero and even: distinct from power-off and any debug exit.
		if [ "$2" -eq 0 ] || [ $(($2 % 2)) -ne 0 ]; then
			echo "status $2, want non-zero even"
			return 1
		fi
		grep -qi 'triple fault' "$3" || { echo "stderr lacks 'triple fault'"; return 1; }
		return 0
	fi
	local want
	want=$(debug_exit_status "$1")
	[ "$2" -eq "$want" ] || { echo "status $2, want $want"; return 1; }
}

run_cases
