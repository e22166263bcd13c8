#!/usr/bin/env bash
# `kestrel img` against Debian's qemu-img as the oracle, in both directions:
# images Kestrel writes must satisfy qemu-img (check, compare, info, snapshot
# -l), images qemu-img writes must read identically through Kestrel (convert
# -O raw, compare, info, map). Plus check/repair exit statuses, convert's
# sparseness, compression and overlays, resize, rebase, commit, measure, and
# bad input (one line, the right status, no file left behind).
# Ends with "N passed, N failed".
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K=$(realpath "${KESTREL:-$ROOT/build/kestrel}")
QI=qemu-img
QIO=qemu-io
if ! command -v $QI >/dev/null || ! command -v $QIO >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-utils >/dev/null 2>&1
	fi
fi
if ! command -v $QI >/dev/null; then
	echo "qemu-img is missing (apt-get install qemu-utils)"
	echo "0 passed, 1 failed"
	exit 1
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
passed=0 failed=0

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
# t NAME CMD...: passes when CMD succeeds.
t() {
	local name=$1
	shift
	local out
	if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$out" | tail -3 | tr '\n' ' ')"; fi
}
# st NAME WANT CMD...: passes when CMD exits with status WANT.
st() {
	local name=$1 want=$2
	shift 2
	"$@" >"$T/st.out" 2>"$T/st.err"
	local s=$?
	if [ "$s" = "$want" ]; then pass "$name"; else fail "$name" "status $s, want $want: $(head -c 300 "$T/st.err")"; fi
}
# err1 NAME WANT REGEX CMD...: status WANT and stderr exactly one line matching REGEX.
err1() {
	local name=$1 want=$2 re=$3
	shift 3
	"$@" >"$T/e.out" 2>"$T/e.err" </dev/null
	local s=$? lines
	lines=$(wc -l <"$T/e.err")
	if [ "$s" != "$want" ]; then
		fail "$name" "status $s, want $want: $(head -c 300 "$T/e.err")"
	elif [ "$lines" != 1 ] || ! grep -qE -- "$re" "$T/e.err"; then
		fail "$name" "stderr not one line matching /$re/: $(head -c 300 "$T/e.err")"
	else
		pass "$name"
	fi
}
# Same status from Kestrel and qemu-img.
same_status() {
	local name=$1 kcmd=$2 qcmd=$3
	eval "$kcmd" >/dev/null 2>&1
	local ks=$?
	eval "$qcmd" >/dev/null 2>&1
	local qs=$?
	if [ "$ks" = "$qs" ]; then pass "$name (status $ks)"; else fail "$name" "kestrel $ks, qemu-img $qs"; fi
}
qcheck() { $QI check "$1" >/dev/null 2>&1; }
qcmp() { $QI compare "$1" "$2" >/dev/null 2>&1; }
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }
disk_size() { stat -c %b "$1" | awk '{print $1 * 512}'; }

# Test data: a 64 MiB raw image with random extents of several sizes (some
# not cluster aligned), holes, and a stretch of written (non-sparse) zeroes.
mkdata() {
	python3 - "$1" "${2:-64}" "${3:-1}" <<'PY'
import os, random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = mib << 20
r = random.Random(seed)
with open(path, 'wb') as f:
    f.truncate(size)
    for _ in range(mib * 2):
        ln = r.choice([512, 4096, 65536, 100000, 1 << 20])
        off = r.randrange(0, size - ln) & ~511
        f.seek(off)
        f.write(r.randbytes(ln) if r.random() < 0.8 else bytes([r.randrange(1, 255)]) * ln)
    f.seek(size // 2)
    f.write(bytes(4 << 20))          # explicit zeroes: must become sparse
    f.seek(0)
    f.write(b'KESTREL-TEST' + r.randbytes(500))
PY
}
mkdata src.raw 64 1
mkdata src2.raw 64 2
cp src.raw mod.raw
python3 - mod.raw <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
    for off in (0, 5 << 20, 33 << 20, (40 << 20) + 4096):
        f.seek(off); f.write(b'\xa5' * 70000)
    f.seek(10 << 20); f.write(bytes(1 << 20))   # zeroes over data
PY

# map comparison: the same (present, zero, data[, depth]) everywhere.
cat >mapcmp.py <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
keys = sys.argv[3].split(',')
def pts(m):
    return {e['start'] for e in m} | {e['start'] + e['length'] for e in m}
def at(m, x):
    for e in m:
        if e['start'] <= x < e['start'] + e['length']:
            return tuple(e.get(k) for k in keys)
    return None
bounds = sorted(pts(a) | pts(b))
for x in bounds[:-1]:
    if at(a, x) != at(b, x):
        print('differ at', x, at(a, x), at(b, x)); sys.exit(1)
PY
mapcmp() { # FILE [keys]
	$K img map --output=json "$1" >k.map 2>k.err && $QI map --output=json "$1" >q.map 2>/dev/null &&
		python3 mapcmp.py k.map q.map "${2:-present,zero,data,depth}"
}
# info: the fields both tools report must agree.
cat >infocmp.py <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
if isinstance(a, dict): a, b = [a], [b]
if len(a) != len(b): print('chain lengths', len(a), len(b)); sys.exit(1)
for x, y in zip(a, b):
    for k in ('virtual-size', 'cluster-size', 'format', 'backing-filename', 'backing-filename-format',
              'full-backing-filename', 'actual-size', 'dirty-flag', 'filename'):
        if x.get(k) != y.get(k): print(k, x.get(k), y.get(k)); sys.exit(1)
    fx = x.get('format-specific', {}).get('data', {}); fy = y.get('format-specific', {}).get('data', {})
    for k in ('compat', 'compression-type', 'lazy-refcounts', 'refcount-bits', 'corrupt', 'extended-l2'):
        if fx.get(k) != fy.get(k): print(k, fx.get(k), fy.get(k)); sys.exit(1)
    sx = [(s['id'], s['name'], s['vm-state-size'], s['date-sec']) for s in x.get('snapshots', [])]
    sy = [(s['id'], s['name'], s['vm-state-size'], s['date-sec']) for s in y.get('snapshots', [])]
    if sx != sy: print('snapshots', sx, sy); sys.exit(1)
PY
infocmp() { # FILE [extra args]
	local f=$1
	shift
	$K img info --output=json "$@" "$f" >k.info 2>k.err && $QI info --output=json "$@" "$f" >q.info 2>/dev/null &&
		python3 infocmp.py k.info q.info
}
# Reads through Kestrel as qemu-img does.
reads_same() { # FILE
	rm -f k.raw q.raw
	$K img convert -O raw "$1" k.raw && $QI convert -O raw "$1" q.raw && cmp -s k.raw q.raw
}

echo "--- help and usage"
st "img --help" 0 $K img --help
for v in create info check convert resize snapshot commit rebase compare map measure; do
	st "img $v --help" 0 $K img $v --help
done
err1 "unknown verb" 1 "^kestrel img: unknown verb 'frob'" $K img frob

echo "--- create: Kestrel writes, qemu-img checks"
for compat in 0.10 1.1; do
	for cs in 512 4096 65536 2M; do
		n=c-$compat-$cs.qcow2
		t "create compat=$compat cluster_size=$cs" $K img create -q -f qcow2 -o compat=$compat,cluster_size=$cs $n 64M
		t "  qemu-img check" qcheck $n
		t "  info agrees" infocmp $n
		rm -f k-$n
		t "  convert data in: check + compare" sh -c "$K img convert -O qcow2 -o compat=$compat,cluster_size=$cs src.raw k-$n && $QI check k-$n >/dev/null && $QI compare src.raw k-$n >/dev/null"
		t "  map agrees" mapcmp k-$n
	done
done
t "create: Formatting line like qemu-img" sh -c "$K img create -f qcow2 fmt.qcow2 1G | grep -qx \"Formatting 'fmt.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1073741824 lazy_refcounts=off refcount_bits=16\""
t "create: human info identical to qemu-img's" sh -c "$K img info fmt.qcow2 >k.txt && $QI info fmt.qcow2 >q.txt && diff k.txt q.txt"
t "create zstd" $K img create -q -f qcow2 -o compression_type=zstd z.qcow2 64M
t "  qemu-img info: zstd" sh -c "$QI info --output=json z.qcow2 | grep -q '\"compression-type\": \"zstd\"'"
t "  qemu-img check" qcheck z.qcow2
t "create lazy_refcounts" $K img create -q -f qcow2 -o lazy_refcounts=on lz.qcow2 64M
t "  qemu-img info: lazy refcounts" sh -c "$QI info --output=json lz.qcow2 | grep -q '\"lazy-refcounts\": true'"
t "  convert with lazy refcounts: check + compare" sh -c "$K img convert -O qcow2 -o lazy_refcounts=on src.raw lzd.qcow2 && $QI check lzd.qcow2 >/dev/null && $QI compare src.raw lzd.qcow2 >/dev/null"
for rb in 1 8 64; do
	t "create refcount_bits=$rb + data: check + compare" sh -c "$K img convert -O qcow2 -o refcount_bits=$rb src.raw rb$rb.qcow2 && $QI check rb$rb.qcow2 >/dev/null && $QI compare src.raw rb$rb.qcow2 >/dev/null"
done
t "create extended_l2" $K img create -q -f qcow2 -o extended_l2=on,cluster_size=64k x2.qcow2 64M
t "  qemu-img info: extended l2" sh -c "$QI info --output=json x2.qcow2 | grep -q '\"extended-l2\": true'"
t "  convert with extended_l2: check + compare" sh -c "$K img convert -O qcow2 -o extended_l2=on src.raw x2d.qcow2 && $QI check x2d.qcow2 >/dev/null && $QI compare src.raw x2d.qcow2 >/dev/null"
for pa in metadata falloc full; do
	t "create preallocation=$pa" $K img create -q -f qcow2 -o preallocation=$pa pa-$pa.qcow2 64M
	t "  qemu-img check" qcheck pa-$pa.qcow2
	t "  reads as zeroes" sh -c "$QI compare -f qcow2 -F raw pa-$pa.qcow2 \"\$(truncate -s 64M zero64.raw; echo zero64.raw)\" >/dev/null"
	t "  map agrees" mapcmp pa-$pa.qcow2 present,zero,data
done
t "  preallocation=full takes the space" sh -c "[ \$(stat -c %b pa-full.qcow2) -ge $((64 * 2048)) ]"
t "create raw preallocation=full" sh -c "$K img create -q -f raw -o preallocation=full rf.raw 8M && [ \$(stat -c %b rf.raw) -ge 16384 ]"
t "create raw" sh -c "$K img create -q r.raw 3G && [ \$(stat -c %s r.raw) = $((3 << 30)) ] && [ \$(stat -c %b r.raw) -lt 64 ]"
t "create size suffixes (1.5k)" sh -c "$K img create -q -f qcow2 s.qcow2 1.5k && $QI info --output=json s.qcow2 | grep -q '\"virtual-size\": 1536'"
$QI convert -O qcow2 src.raw base.qcow2
t "create -b (size from the backing file)" $K img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
t "  qemu-img info --backing-chain" sh -c "$QI info --backing-chain ov.qcow2 | grep -q '^image: base.qcow2'"
t "  info --backing-chain agrees" infocmp ov.qcow2 --backing-chain
t "  human info --backing-chain identical" sh -c "$K img info --backing-chain ov.qcow2 >k.txt && $QI info --backing-chain ov.qcow2 >q.txt && diff k.txt q.txt"
t "  reads the backing data" qcmp ov.qcow2 src.raw
t "  map agrees" mapcmp ov.qcow2
t "create -b without -F records the probed format" sh -c "$K img create -q -f qcow2 -b base.qcow2 ov2.qcow2 && $QI info ov2.qcow2 | grep -q '^backing file format: qcow2'"
t "create -b raw backing" sh -c "$K img create -q -f qcow2 -b src.raw -F raw ovr.qcow2 && $QI compare ovr.qcow2 src.raw >/dev/null && $QI check ovr.qcow2 >/dev/null"
mkdir -p sub
t "create -b relative to the image's directory" sh -c "cp base.qcow2 sub/b.qcow2 && $K img create -q -f qcow2 -b b.qcow2 -F qcow2 sub/o.qcow2 && $QI compare sub/o.qcow2 src.raw >/dev/null"
t "create -u with a missing backing file" sh -c "$K img create -q -f qcow2 -u -b nothere.qcow2 -F qcow2 u.qcow2 1G && $QI info --output=json -U u.qcow2 2>/dev/null | grep -q nothere.qcow2"

echo "--- snapshots made by Kestrel"
$K img convert -O qcow2 src.raw snap.qcow2
t "snapshot -c" $K img snapshot -c first snap.qcow2
t "  qemu-img snapshot -l lists it" sh -c "$QI snapshot -l snap.qcow2 | grep -q ' first '"
t "  qemu-img check" qcheck snap.qcow2
$QIO -c "write -P 0x5a 0 1M" -c "write -P 0x33 20M 3M" snap.qcow2 >/dev/null
t "snapshot -c second" $K img snapshot -c second snap.qcow2
t "snapshot -l like qemu-img's" sh -c "$K img snapshot -l snap.qcow2 >k.txt && $QI snapshot -l snap.qcow2 >q.txt && diff k.txt q.txt"
t "  info agrees (snapshots)" infocmp snap.qcow2
t "  human info identical" sh -c "$K img info snap.qcow2 >k.txt && $QI info snap.qcow2 >q.txt && diff k.txt q.txt"
t "snapshot -a first restores the data" sh -c "$K img snapshot -a first snap.qcow2 && $QI compare snap.qcow2 src.raw >/dev/null && $QI check snap.qcow2 >/dev/null"
t "snapshot -d second" sh -c "$K img snapshot -d second snap.qcow2 && ! $QI snapshot -l snap.qcow2 | grep -q second && $QI check snap.qcow2 >/dev/null"
err1 "snapshot -a of a missing one" 1 "^kestrel img: .*snap.qcow2.*nosuch" $K img snapshot -a nosuch snap.qcow2
err1 "snapshot on raw" 1 "^kestrel img: src.raw: " $K img snapshot -l src.raw

echo "--- images made by qemu-img, read by Kestrel"
$QI convert -O qcow2 -o compat=0.10 src.raw q-v2.qcow2
$QI convert -O qcow2 src.raw q-v3.qcow2
$QI convert -O qcow2 -o cluster_size=4k src.raw q-4k.qcow2
$QI convert -O qcow2 -o cluster_size=2M src.raw q-2m.qcow2
$QI convert -O qcow2 -o compression_type=zstd -c src.raw q-zstd.qcow2
$QI convert -O qcow2 -c src.raw q-zlib.qcow2
$QI convert -O qcow2 -o extended_l2=on src.raw q-xl2.qcow2
$QI create -q -f qcow2 -o extended_l2=on q-xl2b.qcow2 64M
$QIO -c "write -P 0x11 4k 4k" -c "write -P 0x12 70k 10k" -c "write -z 8M 64k" q-xl2b.qcow2 >/dev/null
$QI convert -O qcow2 src.raw q-snap.qcow2
$QI snapshot -c s1 q-snap.qcow2
$QIO -c "write -P 0x44 1M 2M" -c "write -z 8M 1M" q-snap.qcow2 >/dev/null
$QI snapshot -c s2 q-snap.qcow2
$QIO -c "discard 16M 4M" q-snap.qcow2 >/dev/null
# chains: 2 and 3 deep, data at each level, zero clusters over data
$QI convert -O qcow2 src.raw q-base.qcow2
$QI create -q -f qcow2 -b q-base.qcow2 -F qcow2 q-mid.qcow2
$QIO -c "write -P 0x21 0 64k" -c "write -P 0x22 3M 1M" -c "write -z 6M 2M" -c "write -P 0x23 100k 1k" q-mid.qcow2 >/dev/null
$QI create -q -f qcow2 -b q-mid.qcow2 -F qcow2 q-top.qcow2
$QIO -c "write -P 0x31 32k 64k" -c "write -z 3M 64k" -c "write -P 0x32 50M 1M" q-top.qcow2 >/dev/null
$QI create -q -f qcow2 -b src.raw -F raw q-onraw.qcow2
$QIO -c "write -P 0x41 1M 64k" q-onraw.qcow2 >/dev/null
for f in q-v2 q-v3 q-4k q-2m q-zstd q-zlib q-xl2 q-xl2b q-snap q-mid q-top q-onraw; do
	t "$f: convert -O raw reads like qemu-img" reads_same $f.qcow2
	t "$f: info agrees" infocmp $f.qcow2
	t "$f: map agrees" mapcmp $f.qcow2
	same_status "$f: compare with the source agrees" "$K img compare $f.qcow2 src.raw" "$QI compare $f.qcow2 src.raw"
done
t "q-top: info --backing-chain agrees" infocmp q-top.qcow2 --backing-chain
t "q-top: human info --backing-chain identical" sh -c "$K img info --backing-chain q-top.qcow2 >k.txt && $QI info --backing-chain q-top.qcow2 >q.txt && diff k.txt q.txt"
t "q-snap: human info identical" sh -c "$K img info q-snap.qcow2 >k.txt && $QI info q-snap.qcow2 >q.txt && diff k.txt q.txt"
t "q-v2: human info identical" sh -c "$K img info q-v2.qcow2 >k.txt && $QI info q-v2.qcow2 >q.txt && diff k.txt q.txt"
t "q-zstd: human info identical" sh -c "$K img info q-zstd.qcow2 >k.txt && $QI info q-zstd.qcow2 >q.txt && diff k.txt q.txt"
t "raw: human info identical" sh -c "$K img info src.raw >k.txt && $QI info src.raw 2>/dev/null >q.txt && diff k.txt q.txt"
t "q-top: human map identical" sh -c "$K img map q-top.qcow2 >k.txt && $QI map q-top.qcow2 >q.txt && diff k.txt q.txt"
t "q-snap: snapshot -l identical" sh -c "$K img snapshot -l q-snap.qcow2 >k.txt && $QI snapshot -l q-snap.qcow2 >q.txt && diff k.txt q.txt"
t "q-snap: snapshot -a s1 (Kestrel) reads as the source" sh -c "cp q-snap.qcow2 q-snap2.qcow2 && $K img snapshot -a s1 q-snap2.qcow2 && $QI compare q-snap2.qcow2 src.raw >/dev/null && $QI check q-snap2.qcow2 >/dev/null"
same_status "compare: a 512-byte difference" "$K img compare q-v3.qcow2 mod.raw" "$QI compare q-v3.qcow2 mod.raw"
t "compare: same mismatch offset as qemu-img" sh -c "$K img compare q-v3.qcow2 mod.raw >k.txt; $QI compare q-v3.qcow2 mod.raw >q.txt; diff k.txt q.txt"
t "compare: same mismatch offset (unallocated side)" sh -c "$QI create -q -f qcow2 e.qcow2 64M; $K img compare e.qcow2 mod.raw >k.txt; $QI compare e.qcow2 mod.raw >q.txt; diff k.txt q.txt"
truncate -s 80M big.raw
dd if=src.raw of=big.raw conv=notrunc status=none
same_status "compare: larger image with a zero tail" "$K img compare src.raw big.raw" "$QI compare src.raw big.raw"
t "  same messages" sh -c "$K img compare src.raw big.raw >k.txt; $QI compare src.raw big.raw >q.txt; diff k.txt q.txt"
same_status "compare -s: sizes differ" "$K img compare -s src.raw big.raw" "$QI compare -s src.raw big.raw"
printf 'x' | dd of=big.raw bs=1 seek=$((70 << 20)) conv=notrunc status=none
same_status "compare: data in the larger image's tail" "$K img compare src.raw big.raw" "$QI compare src.raw big.raw"
t "  same messages" sh -c "$K img compare src.raw big.raw >k.txt; $QI compare src.raw big.raw >q.txt; diff k.txt q.txt"
$QI convert -O raw q-top.qcow2 q-top.raw
same_status "compare: a chain vs its flattening" "$K img compare q-top.qcow2 q-top.raw" "$QI compare q-top.qcow2 q-top.raw"
err1 "compare: a missing file" 2 "^kestrel img: .*nothere" $K img compare src.raw nothere.raw

echo "--- check"
# leak: drop the L2 entry of an allocated cluster (refcount 1, no reference)
cat >qcow2edit.py <<'PY'
import struct, sys
path, what = sys.argv[1], sys.argv[2]
f = open(path, 'r+b')
h = f.read(104)
cb = struct.unpack('>I', h[20:24])[0]
l1_off = struct.unpack('>Q', h[40:48])[0]
rt_off = struct.unpack('>Q', h[48:56])[0]
f.seek(l1_off); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2); e = struct.unpack('>Q', f.read(8))[0]
data = e & 0x00fffffffffffe00
if what == 'leak':
    f.seek(l2); f.write(bytes(8))
elif what == 'corrupt':          # the data cluster's refcount to 0
    f.seek(rt_off); rb = struct.unpack('>Q', f.read(8))[0]
    f.seek(rb + 2 * (data >> cb)); f.write(b'\0\0')
PY
$QI convert -O qcow2 src.raw leak.qcow2
python3 qcow2edit.py leak.qcow2 leak
cp leak.qcow2 leak2.qcow2
same_status "leaked cluster: exit 3 from both" "$K img check leak.qcow2" "$QI check leak.qcow2"
st "  kestrel exit 3" 3 $K img check leak.qcow2
t "  json agrees with qemu-img's" sh -c "$K img check --output=json leak.qcow2 >k.json; $QI check --output=json leak.qcow2 >q.json; python3 -c 'import json,sys; a,b=json.load(open(\"k.json\")),json.load(open(\"q.json\")); sys.exit(0 if all(a.get(k)==b.get(k) for k in (\"leaks\",\"corruptions\",\"total-clusters\",\"check-errors\",\"image-end-offset\",\"allocated-clusters\")) else 1)'"
st "  check -r leaks repairs (exit 0)" 0 $K img check -r leaks leak.qcow2
t "  qemu-img check clean afterwards" qcheck leak.qcow2
t "  human output of the repair" sh -c "$K img check -r leaks leak2.qcow2 | grep -q 'The following inconsistencies were found and repaired'"
$QI convert -O qcow2 src.raw bad.qcow2
python3 qcow2edit.py bad.qcow2 corrupt
cp bad.qcow2 bad2.qcow2
same_status "corrupted refcount: same status as qemu-img" "$K img check bad.qcow2" "$QI check bad.qcow2"
st "  kestrel exit 2" 2 $K img check bad.qcow2
st "  check -r leaks leaves the corruption (exit 2)" 2 $K img check -r leaks bad.qcow2
st "  check -r all repairs (exit 0)" 0 $K img check -r all bad.qcow2
t "  qemu-img check clean afterwards" qcheck bad.qcow2
t "  data intact" qcmp bad.qcow2 src.raw
st "qemu-img repairs what Kestrel flagged (control)" 0 $QI check -r all bad2.qcow2
st "check of a clean image: exit 0" 0 $K img check q-v3.qcow2
t "check output like qemu-img's" sh -c "$K img check q-v3.qcow2 >k.txt && $QI check q-v3.qcow2 >q.txt && diff k.txt q.txt"
same_status "check on raw" "$K img check src.raw" "$QI check src.raw"
err1 "check -r bogus" 1 "^kestrel img: check: -r 'bogus'" $K img check -r bogus q-v3.qcow2
err1 "check of a missing file" 1 "^kestrel img: .*nothere" $K img check nothere.qcow2

echo "--- convert"
t "raw -> qcow2 -> raw round trip" sh -c "$K img convert -O qcow2 src.raw c1.qcow2 && $K img convert -O raw c1.qcow2 c1.raw && cmp src.raw c1.raw"
t "  qemu-img check" qcheck c1.qcow2
ks=$(disk_size c1.qcow2)
$QI convert -O qcow2 src.raw qc1.qcow2
qs=$(disk_size qc1.qcow2)
t "sparse qcow2: disk size within 5% of qemu-img's ($ks vs $qs)" [ $((ks * 100)) -le $((qs * 105)) ]
t "  written zeroes became unallocated" sh -c "$K img map --output=json c1.qcow2 | python3 -c 'import json,sys; m=json.load(sys.stdin); z=32<<20; sys.exit(0 if any(e[\"start\"]<=z and e[\"start\"]+e[\"length\"]>=z+(4<<20) and not e[\"present\"] for e in m) else 1)'"
ks=$(disk_size c1.raw)
$QI convert -O raw c1.qcow2 qc1.raw
qs=$(disk_size qc1.raw)
t "sparse raw: disk size within 5% of qemu-img's ($ks vs $qs)" [ $((ks * 100)) -le $((qs * 105)) ]
t "-S 0 allocates everything" sh -c "$K img convert -S 0 -O raw c1.qcow2 full.raw && cmp src.raw full.raw && [ \$(stat -c %b full.raw) -ge $((64 * 2048)) ]"
t "-c: compressed, smaller, check-clean, same content" sh -c "$K img convert -c -O qcow2 src.raw cz.qcow2 && $QI check cz.qcow2 >/dev/null && $QI compare cz.qcow2 src.raw >/dev/null && [ \$(stat -c %b cz.qcow2) -lt \$(stat -c %b c1.qcow2) ]"
t "  map agrees" mapcmp cz.qcow2
t "  qemu-img check counts compressed clusters" sh -c "$QI check cz.qcow2 | grep 'compressed clusters' | grep -qv ' 0.00% compressed'"
t "-c zstd" sh -c "$K img convert -c -O qcow2 -o compression_type=zstd src.raw czs.qcow2 && $QI check czs.qcow2 >/dev/null && $QI compare czs.qcow2 src.raw >/dev/null && $QI info czs.qcow2 | grep -q 'compression type: zstd'"
t "-c with 4k clusters, v2" sh -c "$K img convert -c -O qcow2 -o cluster_size=4k,compat=0.10 src.raw cz4.qcow2 && $QI check cz4.qcow2 >/dev/null && $QI compare cz4.qcow2 src.raw >/dev/null"
t "-B: an overlay holding only what differs" sh -c "$K img convert -O qcow2 -B base.qcow2 -F qcow2 mod.raw bo.qcow2 && $QI check bo.qcow2 >/dev/null && $QI compare bo.qcow2 mod.raw >/dev/null"
t "  names its backing file" sh -c "$QI info bo.qcow2 | grep -q '^backing file: base.qcow2'"
t "  small (only the changed clusters)" sh -c "[ \$(stat -c %s bo.qcow2) -lt $((2 << 20)) ]"
t "  zeroes over backing data are recorded" sh -c "$QI map --output=json bo.qcow2 | grep -q '\"depth\": 0, \"present\": true, \"zero\": true'"
t "-B with a raw backing file" sh -c "$K img convert -O qcow2 -B src.raw -F raw mod.raw bor.qcow2 && $QI compare bor.qcow2 mod.raw >/dev/null && $QI check bor.qcow2 >/dev/null"
t "qcow2 chain -> qcow2 (flattened)" sh -c "$K img convert -O qcow2 q-top.qcow2 flat.qcow2 && $QI compare flat.qcow2 q-top.qcow2 >/dev/null && $QI check flat.qcow2 >/dev/null && ! $QI info flat.qcow2 | grep -q backing"
t "several sources are concatenated" sh -c "$K img convert -O raw src.raw q-v3.qcow2 cat.raw && cat src.raw src.raw | cmp - cat.raw"
t "extended_l2 output" sh -c "$K img convert -O qcow2 -o extended_l2=on,cluster_size=32k q-top.qcow2 xo.qcow2 && $QI compare xo.qcow2 q-top.qcow2 >/dev/null && $QI check xo.qcow2 >/dev/null"
t "-n into an existing image" sh -c "$QI create -q -f qcow2 ex.qcow2 64M && $QIO -c 'write -P 0x77 0 64M' ex.qcow2 >/dev/null && $K img convert -n -O qcow2 src.raw ex.qcow2 && $QI compare ex.qcow2 src.raw >/dev/null"
t "-p on a terminal draws a progress bar" sh -c "script -qc '$K img convert -p -O qcow2 src.raw p.qcow2' /dev/null | tr '\r' '\n' | grep -q '(100.00/100%)'"
t "-p off a terminal stays quiet" sh -c "[ -z \"\$($K img convert -p -O qcow2 src.raw p2.qcow2)\" ]"
t "-t none (O_DIRECT)" sh -c "$K img convert -t none -O qcow2 src.raw d.qcow2 && $QI compare d.qcow2 src.raw >/dev/null"
t "an empty image" sh -c ": >empty.raw && $K img convert -O qcow2 empty.raw empty.qcow2 && $QI check empty.qcow2 >/dev/null && $K img convert -O raw empty.qcow2 empty2.raw && [ ! -s empty2.raw ]"
t "an existing target is replaced" sh -c "echo junk >rep.raw && $K img convert -O raw src.raw rep.raw && cmp src.raw rep.raw"

echo "--- resize"
cp q-v3.qcow2 rs.qcow2
t "grow +1G" sh -c "$K img resize rs.qcow2 +1G && $QI info --output=json rs.qcow2 | grep -q '\"virtual-size\": $(((64 << 20) + (1 << 30)))' && $QI check rs.qcow2 >/dev/null"
t "  data kept, new area zero" sh -c "$QI compare rs.qcow2 src.raw >/dev/null"
err1 "shrink without --shrink refused" 1 "--shrink" $K img resize rs.qcow2 32M
t "  size unchanged" sh -c "$QI info --output=json rs.qcow2 | grep -q '\"virtual-size\": $(((64 << 20) + (1 << 30)))'"
t "shrink with --shrink" sh -c "$K img resize --shrink rs.qcow2 32M && $QI info --output=json rs.qcow2 | grep -q '\"virtual-size\": $((32 << 20))' && $QI check rs.qcow2 >/dev/null"
t "  the rest of the data is intact" sh -c "head -c $((32 << 20)) src.raw >h.raw && $QI compare rs.qcow2 h.raw >/dev/null"
t "shrink -16M relative" sh -c "$K img resize --shrink rs.qcow2 -- -16M && $QI info --output=json rs.qcow2 | grep -q '\"virtual-size\": $((16 << 20))'"
t "raw grow and shrink" sh -c "cp src.raw rr.raw && $K img resize -f raw rr.raw 100M && [ \$(stat -c %s rr.raw) = $((100 << 20)) ] && $K img resize -f raw --shrink rr.raw 1M && [ \$(stat -c %s rr.raw) = $((1 << 20)) ]"
t "resize output like qemu-img" sh -c "cp q-v3.qcow2 rs2.qcow2 && [ \"\$($K img resize rs2.qcow2 +1M)\" = 'Image resized.' ]"
err1 "resize bad size" 1 "12Q" $K img resize rs.qcow2 12Q
t "snapshot image refuses shrink" sh -c "cp q-snap.qcow2 rsn.qcow2; ! $K img resize --shrink rsn.qcow2 1M 2>/dev/null"

echo "--- rebase"
# top (over mid over base) rebased onto base: content must not change
cp q-base.qcow2 rb-base.qcow2
$QI create -q -f qcow2 -b rb-base.qcow2 -F qcow2 rb-mid.qcow2
$QIO -c "write -P 0x21 0 64k" -c "write -P 0x22 3M 1M" -c "write -z 6M 2M" rb-mid.qcow2 >/dev/null
$QI create -q -f qcow2 -b rb-mid.qcow2 -F qcow2 rb-top.qcow2
$QIO -c "write -P 0x31 32k 64k" -c "write -P 0x32 50M 1M" rb-top.qcow2 >/dev/null
$QI convert -O raw rb-top.qcow2 rb-before.raw
t "rebase (safe) onto the base" $K img rebase -b rb-base.qcow2 -F qcow2 rb-top.qcow2
t "  same content" qcmp rb-top.qcow2 rb-before.raw
t "  qemu-img check" qcheck rb-top.qcow2
t "  new backing file in the header" sh -c "$QI info rb-top.qcow2 | grep -q '^backing file: rb-base.qcow2'"
t "rebase onto a different image" sh -c "$QI convert -O qcow2 src2.raw other.qcow2 && $K img rebase -b other.qcow2 rb-top.qcow2 && $QI compare rb-top.qcow2 rb-before.raw >/dev/null && $QI check rb-top.qcow2 >/dev/null"
t "rebase -b '' flattens" sh -c "$K img rebase -b '' rb-top.qcow2 && $QI compare rb-top.qcow2 rb-before.raw >/dev/null && ! $QI info rb-top.qcow2 | grep -q backing"
t "rebase -u rewrites only the header" sh -c "$QI create -q -f qcow2 -b q-base.qcow2 -F qcow2 ru.qcow2 && cp q-base.qcow2 copy.qcow2 && $K img rebase -u -b copy.qcow2 -F qcow2 ru.qcow2 && $QI info ru.qcow2 | grep -q '^backing file: copy.qcow2' && [ \$($QI map --output=json ru.qcow2 | grep -c '\"depth\": 0') = 0 ] && $QI compare ru.qcow2 src.raw >/dev/null"
err1 "rebase without -b" 1 "-b" $K img rebase ru.qcow2

echo "--- commit"
cp q-base.qcow2 cm-base.qcow2
$QI create -q -f qcow2 -b cm-base.qcow2 -F qcow2 cm-ov.qcow2
$QIO -c "write -P 0x61 0 1M" -c "write -z 5M 1M" -c "write -P 0x62 60M 100k" cm-ov.qcow2 >/dev/null
$QI convert -O raw cm-ov.qcow2 cm-before.raw
t "commit" sh -c "[ \"\$($K img commit cm-ov.qcow2)\" = 'Image committed.' ]"
t "  the base holds the overlay's data" qcmp cm-base.qcow2 cm-before.raw
t "  the overlay is empty" sh -c "[ \$($QI map --output=json cm-ov.qcow2 | grep -c '\"depth\": 0') = 0 ]"
t "  and still reads the same" qcmp cm-ov.qcow2 cm-before.raw
t "  both check clean" sh -c "$QI check cm-base.qcow2 >/dev/null && $QI check cm-ov.qcow2 >/dev/null"
cp q-base.qcow2 cm2-base.qcow2
$QI create -q -f qcow2 -b cm2-base.qcow2 -F qcow2 cm2-mid.qcow2
$QIO -c "write -P 0x71 1M 1M" cm2-mid.qcow2 >/dev/null
$QI create -q -f qcow2 -b cm2-mid.qcow2 -F qcow2 cm2-top.qcow2
$QIO -c "write -P 0x72 1536k 1M" cm2-top.qcow2 >/dev/null
$QI convert -O raw cm2-top.qcow2 cm2-before.raw
t "commit -d keeps the overlay's data" sh -c "$K img commit -d cm2-top.qcow2 && $QI compare cm2-mid.qcow2 cm2-before.raw >/dev/null && [ \$($QI map --output=json cm2-top.qcow2 | grep -c '\"depth\": 0') -gt 0 ]"
t "commit -b base through two layers" sh -c "$K img commit -b cm2-base.qcow2 cm2-top.qcow2 && $QI compare cm2-base.qcow2 cm2-before.raw >/dev/null && $QI check cm2-base.qcow2 >/dev/null"
t "commit into a smaller backing file grows it" sh -c "$QI create -q -f qcow2 sm.qcow2 1M && $QI create -q -f qcow2 -b sm.qcow2 -F qcow2 -o size=4M smo.qcow2 && $QIO -c 'write -P 1 3M 64k' smo.qcow2 >/dev/null && $K img commit smo.qcow2 >/dev/null && $QI info --output=json sm.qcow2 | grep -q '\"virtual-size\": 4194304'"
t "commit into a raw backing file" sh -c "cp src.raw cmr.raw && $QI create -q -f qcow2 -b cmr.raw -F raw cmr.qcow2 && $QIO -c 'write -P 0x66 1M 128k' -c 'write -z 8M 64k' cmr.qcow2 >/dev/null && $QI convert -O raw cmr.qcow2 cmr-before.raw && $K img commit cmr.qcow2 >/dev/null && cmp cmr.raw cmr-before.raw"
err1 "commit without a backing file" 1 "backing" $K img commit q-v3.qcow2

echo "--- measure"
for o in "" "-o cluster_size=4k" "-o compat=0.10" "-o preallocation=full" "-o extended_l2=on" "-o refcount_bits=1"; do
	t "measure --size 10G -O qcow2 $o like qemu-img" sh -c "$K img measure -O qcow2 $o --size 10G >k.txt && $QI measure -O qcow2 $o --size 10G >q.txt && diff k.txt q.txt"
done
for f in src.raw q-v3.qcow2 q-top.qcow2; do
	t "measure -O qcow2 $f like qemu-img (required within 1%)" sh -c "$K img measure --output=json -O qcow2 $f >k.json && $QI measure --output=json -O qcow2 $f >q.json && python3 -c 'import json; a,b=json.load(open(\"k.json\")),json.load(open(\"q.json\")); assert abs(a[\"required\"]-b[\"required\"]) <= b[\"required\"]//100 and a[\"fully-allocated\"]==b[\"fully-allocated\"], (a,b)'"
done
t "measure -O raw" sh -c "$K img measure -O raw --size 1G | grep -qx 'required size: 1073741824'"
t "measure vs the real thing" sh -c "req=\$($K img measure --output=json -O qcow2 src.raw | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"required\"])') && $K img convert -O qcow2 src.raw m.qcow2 && [ \$(stat -c %s m.qcow2) -le \$req ]"

echo "--- bad input"
err1 "info of a missing file" 1 "^kestrel img: .*nothere.qcow2" $K img info nothere.qcow2
err1 "create: size 12Q" 1 "^kestrel img: .*'12Q'" $K img create -f qcow2 bad1.qcow2 12Q
t "  no file left" test ! -e bad1.qcow2
err1 "create: -o foo=bar" 1 "^kestrel img: .*'foo'.*accepted" $K img create -f qcow2 -o foo=bar badopt.qcow2 1G
t "  no file left" test ! -e badopt.qcow2
err1 "create: -f vmdk" 1 "^kestrel img: unknown format 'vmdk' \(accepted: raw, qcow2\)" $K img create -f vmdk bad3.img 1G
t "  no file left" test ! -e bad3.img
err1 "create: cluster_size=3000" 1 "cluster_size='3000'" $K img create -f qcow2 -o cluster_size=3000 bad4.qcow2 1G
t "  no file left" test ! -e bad4.qcow2
err1 "create: lazy refcounts on v2" 1 "lazy_refcounts" $K img create -f qcow2 -o compat=0.10,lazy_refcounts=on bad5.qcow2 1G
t "  no file left" test ! -e bad5.qcow2
err1 "create: missing backing file" 1 "^kestrel img: .*nothere" $K img create -f qcow2 -b nothere.qcow2 -F qcow2 bad6.qcow2
t "  no file left" test ! -e bad6.qcow2
err1 "create: no size" 1 "^kestrel img: bad7.qcow2: .*size" $K img create -f qcow2 bad7.qcow2
err1 "create: bad compat" 1 "compat='9'" $K img create -f qcow2 -o compat=9 bad8.qcow2 1G
err1 "create: unknown option" 1 "unknown option" $K img create --frob x 1G
err1 "convert: missing source" 1 "^kestrel img: .*nothere.raw" $K img convert -O qcow2 nothere.raw bad9.qcow2
t "  no file left" test ! -e bad9.qcow2
err1 "convert: -O vmdk" 1 "unknown format 'vmdk'" $K img convert -O vmdk src.raw bad10.img
t "  no file left" test ! -e bad10.img
err1 "convert: -c to raw" 1 "qcow2" $K img convert -c src.raw bad11.raw
t "  no file left" test ! -e bad11.raw
echo keep >keep.raw
err1 "convert: write error (file size limit)" 1 "^kestrel img: .*keep.raw.*" bash -c "ulimit -f 2048; trap '' XFSZ; exec $K img convert -O raw src.raw keep.raw"
t "  the existing target is untouched" sh -c "[ \"\$(cat keep.raw)\" = keep ]"
t "  no temporary left" sh -c "! ls -a | grep -q kestrel-"
t "convert: SIGTERM leaves nothing behind" sh -c "truncate -s 4G huge.raw; python3 -c 'import os; f=os.open(\"huge.raw\", os.O_WRONLY); [os.pwrite(f, os.urandom(65536), i << 20) for i in range(4096)]'; ($K img convert -S 0 -O raw huge.raw int.raw & p=\$!; sleep 0.5; kill \$p; wait \$p); rm -f huge.raw; [ ! -e int.raw ] && ! ls -a | grep -q kestrel-"
cp src.raw locked.raw
python3 - locked.raw <<'PY' &
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hh4xqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))
open(sys.argv[1] + '.held', 'w').close()
time.sleep(30)
PY
lockpid=$!
for _ in $(seq 50); do [ -e locked.raw.held ] && break; sleep 0.1; done
err1 "create over an image in use (locked)" 1 "^kestrel img: locked.raw: in use" $K img create -f raw locked.raw 1M
t "  left alone" cmp src.raw locked.raw
err1 "resize of an image in use (locked)" 1 "locked.raw.*in use" $K img resize -f raw locked.raw 1G
kill $lockpid 2>/dev/null
wait $lockpid 2>/dev/null
err1 "map: bad --output" 1 "'xml'" $K img map --output=xml src.raw
err1 "measure: both --size and FILE" 1 "either" $K img measure --size 1G src.raw

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
