#!/usr/bin/env bash
# qcow2 crash consistency: a writer (crash_writer.c, linked against
# build/libkestrel.a) does random writes/discards/zeroes/compressed writes
# with periodic flushes on a qcow2 image and is killed with SIGKILL at a
# random moment. Every image must then pass `qemu-img check` (exit 0, or 3
# = leaked clusters only) and hold all data it had flushed. The writer
# alternates between the synchronous image API and the VMM's qcow2 block
# node (up to 8 requests in flight; cache=writeback and cache=none).
#
# usage: tests/qcow2/test-crash.sh [RUNS] [BUILD_DIR]    (default 30, build)
# Ends with "N passed, N failed".
set -u
RUNS=${1:-30}
O=${2:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
if [ ! -f "$O/libkestrel.a" ]; then
	make "$O/libkestrel.a" >/dev/null || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
fi
mkdir -p "$O/qcow2"
W="$O/qcow2/crash_writer"
Q="$O/qcow2/qtool"
CFLAGS="-O2 -g -std=gnu11 -Wall -Wextra -Werror -Wshadow -Isrc -D_GNU_SOURCE"
LIBS="$O/libkestrel.a -luring -lz -lzstd -lpthread -lutil"
gcc $CFLAGS -o "$W" tests/qcow2/crash_writer.c $LIBS || { echo "0 passed, 1 failed"; exit 1; }
gcc $CFLAGS -o "$Q" tests/qcow2/qtool.c $LIBS || { echo "0 passed, 1 failed"; exit 1; }
QEMU_IMG=$(command -v qemu-img || true)
[ -n "$QEMU_IMG" ] || echo "note: qemu-img not found; using our own check only"

DIR=$(mktemp -d /var/tmp/kestrel-crash-XXXXXX)
trap 'rm -rf "$DIR"' EXIT
passed=0 failed=0
# Configurations cycled through the runs: cluster size, compat, extras.
CONFIGS=(
	"cluster_size=65536 compat=1.1"
	"cluster_size=4096 compat=0.10"
	"cluster_size=512 compat=1.1 refcount_bits=4"
	"cluster_size=65536 compat=1.1 compression_type=zstd"
	"cluster_size=2M compat=1.1"
	"cluster_size=16384 compat=1.1 extended_l2=on"
	"cluster_size=65536 compat=1.1 lazy_refcounts=on"
)
MODES=("write" "nwrite" "nwrite none")
for i in $(seq 1 "$RUNS"); do
	cfg=${CONFIGS[$(( (i - 1) % ${#CONFIGS[@]} ))]}
	mode=${MODES[$(( (i - 1) % ${#MODES[@]} ))]}
	vmode=verify
	[[ "$mode" == nwrite* ]] && vmode=nverify
	set -- $mode
	wcmd=$1 wopt=${2:-}
	img="$DIR/crash.qcow2"
	log="$DIR/log"
	rm -f "$img" "$log"
	"$Q" create "$img" 32M $cfg || { failed=$((failed + 1)); continue; }
	seed=$((i * 7919 + 13))
	"$W" $wcmd "$img" $seed $wopt >"$log" 2>"$DIR/werr" &
	pid=$!
	# 50..1500 ms
	sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.3f", 0.05 + (r % 1450) / 1000 }')"
	kill -9 $pid 2>/dev/null
	wait $pid 2>/dev/null
	if [ -s "$DIR/werr" ]; then
		echo "FAIL run $i ($cfg, $mode): writer error: $(head -1 "$DIR/werr")"
		failed=$((failed + 1))
		continue
	fi
	ops=$(grep -c '^O' "$log")
	flushes=$(grep -c '^F' "$log")
	why=""
	if [[ "$cfg" == *lazy_refcounts=on* ]]; then
		# Dirty with lazy refcounts: repaired on a read-write open.
		"$Q" check "$img" all >"$DIR/ours" 2>&1 || why="repair: $(tail -1 "$DIR/ours")"
	fi
	if [ -z "$why" ] && [ -n "$QEMU_IMG" ]; then
		"$QEMU_IMG" check "$img" >"$DIR/qcheck" 2>&1
		rc=$?
		if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
			why="qemu-img check exit $rc: $(grep -m3 -E 'ERROR|Leaked|corrupt' "$DIR/qcheck" | tr '\n' ' ')"
		fi
	fi
	if [ -z "$why" ]; then
		"$Q" check "$img" >"$DIR/ours" 2>&1
		rc=$?
		if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
			why="our check exit $rc: $(tail -1 "$DIR/ours")"
		fi
	fi
	if [ -z "$why" ]; then
		"$W" $vmode "$img" $seed "$log" >"$DIR/verify" 2>&1 || why="$(tail -1 "$DIR/verify")"
	fi
	if [ -z "$why" ]; then
		leaks=$(sed -n "s/^\([0-9]*\) leaked clusters were found.*/\1/p" "$DIR/qcheck" 2>/dev/null | head -1)
		echo "ok   run $i ($cfg, $mode): $ops ops, $flushes flushes, leaks=${leaks:-0}"
		passed=$((passed + 1))
	else
		echo "FAIL run $i ($cfg, $mode): $ops ops, $flushes flushes: $why"
		cp "$img" "$DIR/../kestrel-crash-fail-$i.qcow2" 2>/dev/null && cp "$log" "$DIR/../kestrel-crash-fail-$i.log"
		failed=$((failed + 1))
	fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
