#!/usr/bin/env python3
"""Checks that blocks 0..N of IMG hold what virtio-durable (run RUN) wrote.

Usage: check-durable.py IMG RUN N
Exit status 0 if every block matches, 1 otherwise (the first few
mismatches are printed)."""
import struct
import sys

MAGIC = 0x4B44555241424C45
MASK = (1 << 64) - 1


def expected(run, block):
    words = [MAGIC, run, block]
    base = (run * 0x9E3779B97F4A7C15) & MASK
    words += [base ^ ((block << 20) & MASK) ^ i for i in range(3, 512)]
    return struct.pack("<512Q", *words)


def main():
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    img, run, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    bad = 0
    with open(img, "rb") as f:
        for k in range(last + 1):
            f.seek(k * 4096)
            got = f.read(4096)
            if got != expected(run, k):
                bad += 1
                if bad <= 5:
                    w = struct.unpack("<3Q", got[:24]) if len(got) >= 24 else ()
                    print(f"block {k}: wrong contents (first words {[hex(x) for x in w]})")
    if bad:
        print(f"{bad} of {last + 1} blocks wrong")
        return 1
    print(f"blocks 0..{last} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
