#!/usr/bin/env bash
# `kestrel img` next to qemu-img on the same files: the median wall time of
# RUNS runs of each, and the ratio (Kestrel / qemu-img; below 1 is faster).
#
#   convert raw->qcow2 and qcow2->raw of a mostly-data image and of a sparse
#   one, convert -c (zlib and zstd), check of a large image, create of a
#   1 TiB image.
#
# Files are in the page cache (each input is read once first); outputs are
# deleted and `sync`ed between runs, outside the timing. Environment:
#   RUNS (default 5), SIZE_MB (default 1024), BENCH_DIR (default a
#   directory under /var/tmp), KESTREL (default build/kestrel).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K=$(realpath "${KESTREL:-$ROOT/build/kestrel}")
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-1024}
QI=qemu-img
command -v $QI >/dev/null || { echo "qemu-img is missing (apt-get install qemu-utils)"; exit 1; }
[ -x "$K" ] || { echo "$K is missing (make)"; exit 1; }
D=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-img.XXXXXX")
trap 'rm -rf "$D"' EXIT
cd "$D" || exit 1

echo "kestrel img vs $($QI --version | head -1); $RUNS runs each, median wall time"
echo "images: ${SIZE_MB} MiB; host: $(nproc) CPUs, $(uname -r)"
echo

# A mostly-data image: 64 KiB blocks, half random, half compressible
# (text-like), 5% holes. And a sparse one: 3% data in scattered extents.
python3 - "$SIZE_MB" <<'PY'
import os, random, sys
mib = int(sys.argv[1])
r = random.Random(7)
rnd = [os.urandom(65536) for _ in range(64)]
words = [bytes(r.choice(b'abcdefghijklmnopqrstuvwxyz ') for _ in range(r.randrange(3, 9))) for _ in range(500)]
def text():
    b = bytearray()
    while len(b) < 65536:
        b += r.choice(words) + b' '
    return bytes(b[:65536])
txt = [text() for _ in range(64)]
with open('data.raw', 'wb') as f:
    f.truncate(mib << 20)
    for i in range(mib * 16):
        x = r.random()
        if x < 0.05:
            continue
        f.seek(i << 16)
        f.write((rnd if x < 0.5 else txt)[r.randrange(64)])
with open('sparse.raw', 'wb') as f:
    f.truncate(mib << 20)
    for _ in range(mib * 16 * 3 // 100 // 4):
        f.seek(r.randrange(mib * 16) << 16)
        f.write(b''.join(rnd[r.randrange(64)] for _ in range(4)))
PY
[ -s data.raw ] || { echo "cannot generate the test images"; exit 1; }
$QI convert -O qcow2 data.raw data.qcow2 &&
	$QI convert -O qcow2 sparse.raw sparse.qcow2 &&
	$QI convert -O qcow2 -o cluster_size=4k data.raw data4k.qcow2 || exit 1
cat data.raw sparse.raw data.qcow2 sparse.qcow2 data4k.qcow2 >/dev/null

now() { date +%s%N; }
# median of RUNS timings (seconds) of: "$@" (after `pre`, untimed)
measure() {
	local ts=() i s e
	for ((i = 0; i < RUNS; i++)); do
		rm -f out.img
		sync
		s=$(now)
		"$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; echo NaN; return; }
		e=$(now)
		ts+=($(((e - s) / 1000)))
	done
	printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f\n", m / 1e6}'
}
printf '%-40s %12s %12s %8s\n' "operation" "kestrel (s)" "qemu-img (s)" "ratio"
row() {
	local name=$1 kcmd=$2 qcmd=$3 kt qt
	kt=$(measure sh -c "$kcmd")
	qt=$(measure sh -c "$qcmd")
	printf '%-40s %12s %12s %8s\n' "$name" "$kt" "$qt" "$(awk -v a="$kt" -v b="$qt" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')"
}
row "convert raw->qcow2 (data)" "$K img convert -O qcow2 data.raw out.img" "$QI convert -O qcow2 data.raw out.img"
row "convert qcow2->raw (data)" "$K img convert -O raw data.qcow2 out.img" "$QI convert -O raw data.qcow2 out.img"
row "convert raw->qcow2 (sparse)" "$K img convert -O qcow2 sparse.raw out.img" "$QI convert -O qcow2 sparse.raw out.img"
row "convert qcow2->raw (sparse)" "$K img convert -O raw sparse.qcow2 out.img" "$QI convert -O raw sparse.qcow2 out.img"
row "convert qcow2->qcow2 (data)" "$K img convert -O qcow2 data.qcow2 out.img" "$QI convert -O qcow2 data.qcow2 out.img"
row "convert -c zlib (data)" "$K img convert -c -O qcow2 data.raw out.img" "$QI convert -c -O qcow2 data.raw out.img"
row "convert -c zstd (data)" "$K img convert -c -O qcow2 -o compression_type=zstd data.raw out.img" "$QI convert -c -O qcow2 -o compression_type=zstd data.raw out.img"
row "check (64k clusters, data)" "$K img check data.qcow2" "$QI check data.qcow2"
row "check (4k clusters, data)" "$K img check data4k.qcow2" "$QI check data4k.qcow2"
row "create qcow2 1 TiB" "$K img create -q -f qcow2 out.img 1T" "$QI create -q -f qcow2 out.img 1T"
row "create qcow2 1 TiB preallocation=metadata" "$K img create -q -f qcow2 -o preallocation=metadata out.img 1T" "$QI create -q -f qcow2 -o preallocation=metadata out.img 1T"
row "compare qcow2 vs raw (data)" "$K img compare data.qcow2 data.raw" "$QI compare data.qcow2 data.raw"
row "map (4k clusters)" "$K img map --output=json data4k.qcow2" "$QI map --output=json data4k.qcow2"

echo
$K img convert -c -O qcow2 data.raw kz.qcow2 && $QI convert -c -O qcow2 data.raw qz.qcow2
$K img convert -c -O qcow2 -o compression_type=zstd data.raw kzs.qcow2 && $QI convert -c -O qcow2 -o compression_type=zstd data.raw qzs.qcow2
$K img convert -O qcow2 sparse.raw ks.qcow2 && $QI convert -O qcow2 sparse.raw qs.qcow2
printf '%-40s %12s %12s\n' "output size (MiB)" "kestrel" "qemu-img"
sz() { awk -v b="$(stat -c %b "$1")" 'BEGIN {printf "%.1f", b * 512 / 1048576}'; }
printf '%-40s %12s %12s\n' "convert -c zlib" "$(sz kz.qcow2)" "$(sz qz.qcow2)"
printf '%-40s %12s %12s\n' "convert -c zstd" "$(sz kzs.qcow2)" "$(sz qzs.qcow2)"
printf '%-40s %12s %12s\n' "convert raw->qcow2 (sparse)" "$(sz ks.qcow2)" "$(sz qs.qcow2)"
