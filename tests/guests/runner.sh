# shellcheck shell=bash
# Shared driver for run-qemu.sh / run-kestrel.sh (sourced, not executed).
# The VMM script defines:
#   VMM                   name, also the cmdline token prefix it accepts
#   vmm_command ELF MEM CPUS CMDLINE EXPECT   fills the array CMD
#   vmm_status EXPECT STATUS ERRFILE          returns 0 if acceptable,
#                                             else prints why
# Usage of the VMM script: [CASE...]  (default: all cases)
# Environment: GUESTS (dir with *.elf), LOGDIR, TMPDIR (disk images).
#
# Disks: `case_disk SIZE [OPT...]` before a case_def gives that case a fresh
# sparse raw image of SIZE (removed afterwards). The VMM script reads
# DISK_IMG (empty: no disk) and DISK_OPTS (array) in vmm_command and maps
# the VMM-neutral options:
#   ro  serial=ID  transport=pci|mmio  cache=MODE  discard  snapshot  queues=N
# plus "kestrel:OPT" (appended to --disk) and "qemu:OPT" (appended to -drive).

GUESTS=${GUESTS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/guests}
LOGDIR=${LOGDIR:-$GUESTS/logs/$VMM}
CASES_FILE=$(dirname "${BASH_SOURCE[0]}")/cases.sh

passed=0
failed=0
selected=("$@")
DISK_IMG=""
DISK_OPTS=()
NEXT_DISK_SIZE=""
NEXT_DISK_OPTS=()
DISK_DIR=""

case_disk() {
	NEXT_DISK_SIZE=$1
	shift
	NEXT_DISK_OPTS=("$@")
}

# Keeps plain tokens and this VMM's "vmm:" tokens (prefix removed).
filter_cmdline() {
	local kept=() tok
	for tok in $1; do
		case $tok in
		"$VMM":*) kept+=("${tok#"$VMM":}") ;;
		qemu:* | kestrel:*) ;;
		*) kept+=("$tok") ;;
		esac
	done
	echo "${kept[*]}"
}

want_case() {
	local s
	[ ${#selected[@]} -eq 0 ] && return 0
	for s in "${selected[@]}"; do
		[ "$s" = "$1" ] && return 0
	done
	return 1
}

case_def() {
	local name=$1 guest=$2 mem=$3 cpus=$4 cmdline=$5 expect=$6 tmo=$7
	# Inside tools/kvmhost's outer VM guests run emulated: more time.
	[ -n "${KESTREL_KVMHOST_INSIDE:-}" ] && tmo=$((tmo * 4))
	shift 7
	local disk_size=$NEXT_DISK_SIZE
	# shellcheck disable=SC2034  # read by vmm_command
	DISK_OPTS=("${NEXT_DISK_OPTS[@]}")
	NEXT_DISK_SIZE=""
	NEXT_DISK_OPTS=()
	DISK_IMG=""
	want_case "$name" || return 0
	if [ -n "$disk_size" ]; then
		if [ -z "$DISK_DIR" ]; then
			DISK_DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/kestrel-guest-disks.XXXXXX") || exit 2
			# shellcheck disable=SC2064  # expand now
			trap "rm -rf '$DISK_DIR'" EXIT
		fi
		DISK_IMG=$DISK_DIR/$name.img
		rm -f "$DISK_IMG"
		truncate -s "$disk_size" "$DISK_IMG" || exit 2
	fi

	local elf=$GUESTS/$guest.elf out=$LOGDIR/$name.out err=$LOGDIR/$name.err
	local why="" status t0 t1 secs re
	if [ ! -f "$elf" ]; then
		echo "FAIL $name: $elf missing (make -C tests/guests)"
		failed=$((failed + 1))
		return 0
	fi
	vmm_command "$elf" "$mem" "$cpus" "$(filter_cmdline "$cmdline")" "$expect"
	echo "${CMD[*]}" >"$LOGDIR/$name.cmd"

	t0=$(date +%s%N)
	timeout -k 5 "$tmo" "${CMD[@]}" </dev/null >"$out.raw" 2>"$err"
	status=$?
	t1=$(date +%s%N)
	secs=$(printf '%d.%02d' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 10000000 % 100)))
	tr -d '\r' <"$out.raw" >"$out"
	rm -f "$out.raw"
	[ -n "$DISK_IMG" ] && rm -f "$DISK_IMG"

	if [ $status -eq 124 ] || [ $status -eq 137 ]; then
		why="timeout after ${tmo}s"
	else
		why=$(vmm_status "$expect" "$status" "$err") || why=${why:-"status $status"}
	fi
	for re in "$@"; do
		[ -n "$why" ] && break
		if [ "${re:0:1}" = "!" ]; then
			grep -Eq -- "${re:1}" "$out" && why="output matches /${re:1}/"
		else
			grep -Eq -- "$re" "$out" || why="output lacks /$re/"
		fi
	done

	if [ -z "$why" ]; then
		echo "PASS $name (${secs}s)"
		passed=$((passed + 1))
	else
		echo "FAIL $name (${secs}s): $why [status $status, logs $LOGDIR/$name.*]"
		tail -n 5 "$out" | sed 's/^/    | /'
		failed=$((failed + 1))
	fi
}

run_cases() {
	mkdir -p "$LOGDIR" || exit 2
	# shellcheck source=cases.sh
	. "$CASES_FILE"
	echo "$passed passed, $failed failed"
	[ $failed -eq 0 ]
}

# Status for the debug-exit style expectations, shared by both VMMs.
debug_exit_status() {
	case $1 in
	poweroff) echo 0 ;;
	pass) echo 33 ;;
	fail) echo 35 ;;
	exit:*) echo $(((${1#exit:} << 1 | 1) & 255)) ;;
	*) echo -1 ;;
	esac
}
