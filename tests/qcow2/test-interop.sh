#!/usr/bin/env bash
# qcow2 interop smoke against qemu-img (needs qemu-utils):
#  - images qemu-img makes (v2, v3, zstd, compressed, extended L2, cluster
#    sizes, refcount widths, backing chains) read through image_read exactly
#    as `qemu-img convert -O raw` gives them;
#  - images we write (tests/qcow2/qtool.c convert, plain and compressed)
#    pass `qemu-img check` and convert back to the source bytes;
#  - snapshots we take are listed by qemu-img, and the other way round.
# usage: tests/qcow2/test-interop.sh [BUILD_DIR]. Ends with "N passed, N failed".
set -u
O=${1:-build}
cd "$(dirname "$0")/../.."
if ! command -v qemu-img >/dev/null; then
	echo "qemu-img not found (apt-get install qemu-utils): skipped"
	echo "0 passed, 0 failed"
	exit 0
fi
[ -f "$O/libkestrel.a" ] || make "$O/libkestrel.a" >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
mkdir -p "$O/qcow2"
Q="$O/qcow2/qtool"
gcc -O2 -g -std=gnu11 -Wall -Wextra -Werror -Wshadow -Isrc -D_GNU_SOURCE -o "$Q" tests/qcow2/qtool.c \
	"$O/libkestrel.a" -luring -lz -lzstd -lpthread -lutil || { echo "0 passed, 1 failed"; exit 1; }
Q=$(realpath "$Q")
D=$(mktemp -d /var/tmp/kestrel-interop-XXXXXX)
trap 'rm -rf "$D"' EXIT
cd "$D"
passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

# A 48 MiB source with random data, runs of constant bytes and holes.
python3 - <<'EOF'
import os, random
random.seed(7)
size = 48 << 20
with open('src.raw', 'wb') as f:
    f.truncate(size - 1024)
    for i in range(250):
        off = random.randrange(0, size - 300000)
        n = random.randrange(1, 300000)
        f.seek(off)
        f.write(os.urandom(n) if random.random() < 0.5 else bytes([random.randrange(256)]) * n)
EOF
size=$(stat -c %s src.raw)

for opts in "-o compat=0.10" "-o compat=1.1" "-o compression_type=zstd" "-o cluster_size=512" \
	"-o cluster_size=4096" "-o cluster_size=2M" "-o extended_l2=on" "-o extended_l2=on,cluster_size=2M" \
	"-o refcount_bits=1" "-o refcount_bits=64,cluster_size=4096" "-o lazy_refcounts=on"; do
	for c in "" "-c"; do
		rm -f q.qcow2 out.raw
		qemu-img convert -f raw -O qcow2 $c $opts src.raw q.qcow2 || { bad "qemu-img convert $opts $c"; continue; }
		if "$Q" dump q.qcow2 out.raw qcow2 && cmp -s out.raw src.raw; then
			ok "read qemu-img image $opts $c"
		else
			bad "read qemu-img image $opts $c"
		fi
	done
done

for opts in "compat=0.10" "compat=1.1" "compression_type=zstd" "cluster_size=512" "cluster_size=2M" \
	"extended_l2=on" "refcount_bits=1" "refcount_bits=64 cluster_size=4096" "lazy_refcounts=on"; do
	for c in "" "-c"; do
		rm -f o.qcow2 back.raw
		"$Q" convert src.raw o.qcow2 $c $opts || { bad "our convert $opts $c"; continue; }
		if ! qemu-img check -q o.qcow2; then
			bad "qemu-img check of our image $opts $c"
			continue
		fi
		qemu-img convert -O raw o.qcow2 back.raw
		if cmp -s back.raw src.raw; then ok "qemu-img reads our image $opts $c"; else bad "qemu-img reads our image $opts $c"; fi
	done
done

# Backing chains made by qemu-img: raw <- qcow2 (v2) <- qcow2 (v3, 4K).
rm -f mid.qcow2 top.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 -b src.raw -F raw mid.qcow2 &&
	qemu-io -c 'write -P 0x33 1M 300k' -c 'write -z 8M 1M' mid.qcow2 >/dev/null &&
	qemu-img create -q -f qcow2 -o cluster_size=4096 -b mid.qcow2 -F qcow2 top.qcow2 &&
	qemu-io -c 'write -P 0x44 1100k 5k' -c 'discard 2M 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 want.raw
if "$Q" dump top.qcow2 got.raw qcow2 && cmp -s got.raw want.raw; then ok "qemu-img backing chain"; else bad "qemu-img backing chain"; fi
# ...and a chain we create over qemu-img's.
"$Q" create ours.qcow2 0 backing=top.qcow2 backing_fmt=qcow2 cluster_size=65536
if "$Q" dump ours.qcow2 got2.raw qcow2 && cmp -s got2.raw want.raw; then ok "our overlay on a qemu-img chain"; else bad "our overlay on a qemu-img chain"; fi
qemu-img convert -O raw ours.qcow2 got3.raw
if cmp -s got3.raw want.raw; then ok "qemu-img reads our overlay"; else bad "qemu-img reads our overlay"; fi

# Snapshots both ways.
rm -f s.qcow2
qemu-img convert -f raw -O qcow2 src.raw s.qcow2
qemu-img snapshot -c qsnap s.qcow2
qemu-io -c 'write -P 0x55 0 1M' s.qcow2 >/dev/null
"$Q" snap s.qcow2 create ksnap && "$Q" snap s.qcow2 apply qsnap && qemu-img check -q s.qcow2 &&
	qemu-img snapshot -l s.qcow2 | grep -q ksnap && qemu-img convert -O raw s.qcow2 snap.raw && cmp -s snap.raw src.raw &&
	qemu-img snapshot -a ksnap s.qcow2 && "$Q" snap s.qcow2 delete qsnap && "$Q" check s.qcow2 >/dev/null &&
	qemu-img check -q s.qcow2 && ok "snapshots both ways" || bad "snapshots both ways"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
