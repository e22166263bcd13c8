#!/usr/bin/env bash
# The full qcow2 scribbler matrix (tests/qcow2/scribbler.c): cluster sizes
# 512/4K/64K/2M x v2/v3 x no backing/raw/qcow2/2-deep chain x variants
# (zstd + odd refcount widths + lazy refcounts, extended L2, O_DIRECT),
# each with OPS random operations compared against a raw reference, then
# qemu-img check and qemu-img convert compared (when qemu-img exists).
#
# usage: tests/qcow2/run-scribbler.sh [SEED] [OPS] [BUILD_DIR]
# Ends with "N passed, N failed".
set -u
SEED=${1:-1}
OPS=${2:-3000}
O=${3:-build}
cd "$(dirname "$0")/../.."
[ -f "$O/libkestrel.a" ] || make "$O/libkestrel.a" >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
mkdir -p "$O/qcow2"
gcc -O2 -g -std=gnu11 -Wall -Wextra -Werror -Wshadow -Isrc -D_GNU_SOURCE -o "$O/qcow2/scribbler" \
	tests/qcow2/scribbler.c "$O/libkestrel.a" -luring -lz -lzstd -lpthread -lutil ||
	{ echo "0 passed, 1 failed"; exit 1; }
out=$("$O/qcow2/scribbler" -s "$SEED" -n "$OPS" /var/tmp)
rc=$?
echo "$out"
p=$(grep -c '^ok' <<<"$out")
f=$(grep -c '^FAIL' <<<"$out")
[ $rc -ne 0 ] && [ "$f" -eq 0 ] && f=1
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
