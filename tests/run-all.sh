#!/usr/bin/env bash
# `make test`: every tier, then one total line "N passed, N failed".
#   tier 1  unit tests (cmocka, plain + ASan/UBSan) and command-line checks
#   tier 2  micro-guests on Kestrel
#   tier 3  Linux guest kernel on Kestrel (set KESTREL_SKIP_LINUX=1 to skip)
set -u
cd "$(dirname "$0")/.."
total_p=0 total_f=0

tier() {
	local name=$1
	shift
	echo "=== $name"
	local log
	log=$(mktemp)
	"$@" 2>&1 | tee "$log"
	local line
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
	if [ -z "$line" ]; then
		echo "$name: no summary line: counted as 1 failure"
		total_f=$((total_f + 1))
	else
		local p f
		p=$(sed -E 's/^(.*[^0-9])?([0-9]+) passed.*/\2/' <<<"$line")
		f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
		total_p=$((total_p + p)) total_f=$((total_f + f))
	fi
	rm -f "$log"
}

tier "tier 1: unit tests" tests/run-unit.sh build
tier "tier 1: command line" tests/cli/test-cli.sh
tier "tier 1: kestrel img against qemu-img" tests/img/test-img.sh
tier "tier 1: qcow2 interop with qemu-img" tests/qcow2/test-interop.sh
tier "tier 1: qcow2 crash consistency (SIGKILL writers)" tests/qcow2/test-crash.sh
# The lifecycle checks run on the ASan+UBSan build of the VMM.
tier "tier 2: process lifecycle and consoles (ASan+UBSan VMM)" env KESTREL=build/kestrel-san tests/cli/test-lifecycle.py
tier "tier 2: micro-guests on Kestrel" tests/guests/run-kestrel.sh
tier "tier 2: virtio-blk durability (SIGKILL after FLUSH)" tests/virtio/test-durability.sh
tier "tier 2: networking micro-guests (virtio-net, e1000; tap in a netns)" tests/net/test-net-guests.sh
if [ "${KESTREL_SKIP_LINUX:-0}" = 1 ]; then
	echo "=== tier 3: skipped (KESTREL_SKIP_LINUX=1)"
else
	tier "tier 3: Linux guest kernel on Kestrel" tests/linux/test-linux.sh
	tier "tier 3: Linux on virtio (root on vda, hvc0, rng, mmio, ro, snapshot)" tests/linux/test-linux-virtio.sh
	tier "tier 3: Linux root on a qcow2 overlay over a raw base" tests/linux/test-linux-qcow2.sh
	tier "tier 3: Linux networking (DHCP via user-mode and a bridge, netconsole, e1000)" tests/linux/test-linux-net.sh
fi
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
