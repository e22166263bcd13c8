#!/usr/bin/env bash
# Durability of acknowledged virtio-blk FLUSHes across kill -9 of the VMM.
#
# For each cache mode the virtio-durable guest writes numbered 4 KiB blocks
# to a fresh raw image, FLUSHing after every batch and printing
# "durable: N" once a FLUSH is acknowledged. When N >= MIN_DURABLE the VMM
# gets SIGKILL, and the host checks that blocks 0..N hold exactly what the
# guest wrote (tests/virtio/check-durable.py). A process kill keeps the host
# page cache, so this catches a VMM that acknowledges writes or FLUSHes it
# has not handed to the kernel yet (queued in userspace, io_uring SQEs not
# submitted, completions reported early); it is not a power-loss test.
#
# Then snapshot=on: the image's checksum must be unchanged after a kill -9
# and after a clean run (which also reads its writes back through the
# overlay), and the overlay scratch file must not be left behind.
#
# Usage: tests/virtio/test-durability.sh [CASE...]   (default: all)
# Environment: KESTREL, GUESTS, MIN_DURABLE (default 20), TMPDIR.
# Prints PASS/FAIL per case, then "N passed, N failed".
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
CHECK=$ROOT/tests/virtio/check-durable.py
MIN=${MIN_DURABLE:-20}
ELF=$G/virtio-durable.elf
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kestrel-durable.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT

for f in "$K" "$ELF" "$G/virtio-blk.elf"; do
	[ -e "$f" ] || { echo "test-durability.sh: $f missing (make; make guests)" >&2; exit 2; }
done

passed=0
failed=0
selected=("$@")

want() {
	[ ${#selected[@]} -eq 0 ] && return 0
	local s
	for s in "${selected[@]}"; do [ "$s" = "$1" ] && return 0; done
	return 1
}

ok() { echo "PASS $1${2:+ ($2)}"; passed=$((passed + 1)); }
bad() {
	echo "FAIL $1: $2"
	[ -n "${3:-}" ] && [ -f "$3" ] && tail -n 5 "$3" | sed 's/^/    | /'
	failed=$((failed + 1))
}

# Highest N of "durable: N" in a serial log, or -1.
last_durable() {
	local n
	n=$(tr -d '\r' <"$1" | sed -n 's/^durable: \([0-9][0-9]*\)$/\1/p' | tail -n 1)
	echo "${n:--1}"
}

# Starts the durability guest in the background: sets PID.
start_guest() { # IMG DISKOPTS CMDLINE OUT ERR
	"$K" run --kernel "$ELF" --memory 128M --disk "path=$1${2:+,$2}" --cmdline "$3" \
		--serial stdio --no-reboot </dev/null >"$4" 2>"$5" &
	PID=$!
}

# Waits (up to 60 s) until the log shows durable: N >= MIN or the VMM exits.
# Sets N. Returns 1 if the VMM exited first.
wait_durable() { # OUT
	local _
	for _ in $(seq 6000); do
		N=$(last_durable "$1")
		[ "$N" -ge "$MIN" ] && return 0
		kill -0 "$PID" 2>/dev/null || return 1
		sleep 0.01
	done
	return 1
}

kill_case() { # NAME DISKOPTS [CMDLINE-EXTRA]
	local name=$1 opts=$2 extra=${3:-}
	want "$name" || return 0
	local img=$WORK/$name.img out=$WORK/$name.out err=$WORK/$name.err
	local run=$((RANDOM * 32768 + RANDOM + 1)) status
	truncate -s 256M "$img"
	start_guest "$img" "$opts" "run=$run $extra" "$out" "$err"
	if ! wait_durable "$out"; then
		kill -9 "$PID" 2>/dev/null
		wait "$PID" 2>/dev/null
		bad "$name" "no 'durable: N >= $MIN' on serial (last $N)" "$out"
		sed 's/^/    ! /' "$err" | tail -n 3
		return
	fi
	kill -9 "$PID"
	wait "$PID" 2>/dev/null
	status=$?
	local after
	after=$(last_durable "$out")
	if [ "$status" -ne 137 ]; then
		bad "$name" "the VMM exited with status $status before the kill" "$out"
		return
	fi
	# Check through the newest acknowledged batch seen after the kill: the
	# guest may have printed more lines between our read and the kill.
	local msg
	if msg=$(python3 "$CHECK" "$img" "$run" "$after" 2>&1); then
		ok "$name" "killed at durable: $N (last line $after), $msg"
	else
		bad "$name" "after kill -9 at durable: $after: $msg" "$out"
	fi
	LAST_IMG=$img
}

kill_case writethrough cache=writethrough
kill_case none cache=none
kill_case writeback cache=writeback
kill_case directsync cache=directsync
kill_case writeback-threads cache=writeback,aio=threads
kill_case none-threads cache=none,aio=threads
kill_case writethrough-iothread cache=writethrough,iothread=on
kill_case none-mmio cache=none,transport=mmio transport=mmio
kill_case writeback-batch1 cache=writeback "batch=1"

# The image lock dies with the process: the killed image opens again.
if want lock-after-kill && [ -n "${LAST_IMG:-}" ]; then
	out=$WORK/lock.out
	timeout 60 "$K" run --kernel "$G/virtio-blk.elf" --memory 128M --disk "path=$LAST_IMG,readonly=on" \
		--cmdline ro --serial stdio --no-reboot </dev/null >"$out" 2>"$WORK/lock.err"
	st=$?
	if [ $st -eq 33 ]; then
		ok lock-after-kill "read-only virtio-blk test on the killed image"
	else
		bad lock-after-kill "status $st" "$WORK/lock.err"
	fi
fi

# snapshot=on: nothing reaches the image, whether the VMM is killed or exits.
snapshot_prepare() { # IMG
	truncate -s 64M "$1"
	head -c 4M /dev/urandom | dd of="$1" bs=1M conv=notrunc status=none
	head -c 1M /dev/urandom | dd of="$1" bs=1M seek=40 conv=notrunc status=none
}

if want snapshot-kill; then
	img=$WORK/snap.img out=$WORK/snap.out err=$WORK/snap.err scratch=$WORK/scratch
	mkdir -p "$scratch"
	snapshot_prepare "$img"
	before=$(sha256sum <"$img")
	TMPDIR=$scratch start_guest "$img" snapshot=on,cache=none "run=5" "$out" "$err"
	if wait_durable "$out"; then
		kill -9 "$PID"
		wait "$PID" 2>/dev/null
		after=$(sha256sum <"$img")
		left=$(find "$scratch" -mindepth 1 | wc -l)
		if [ "$before" != "$after" ]; then
			bad snapshot-kill "image checksum changed after kill -9 at durable: $N"
		elif [ "$left" -ne 0 ]; then
			bad snapshot-kill "$left file(s) left in the scratch directory"
		else
			ok snapshot-kill "durable: $N, checksum unchanged"
		fi
	else
		kill -9 "$PID" 2>/dev/null
		wait "$PID" 2>/dev/null
		bad snapshot-kill "no 'durable: N >= $MIN' on serial" "$out"
	fi
fi

if want snapshot-exit; then
	img=$WORK/snap2.img out=$WORK/snap2.out err=$WORK/snap2.err
	snapshot_prepare "$img"
	before=$(sha256sum <"$img")
	timeout 120 "$K" run --kernel "$ELF" --memory 128M --disk "path=$img,snapshot=on" \
		--cmdline "run=6 count=2048" --serial stdio --no-reboot </dev/null >"$out" 2>"$err"
	st=$?
	after=$(sha256sum <"$img")
	if [ $st -ne 33 ]; then
		bad snapshot-exit "status $st, want 33 (PASS)" "$out"
	elif [ "$before" != "$after" ]; then
		bad snapshot-exit "image checksum changed after a clean exit"
	else
		ok snapshot-exit "2048 blocks written and read back in the overlay, checksum unchanged"
	fi
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
