#!/usr/bin/env bash
# `make test`: every tier, then the failed tiers, the skip count and the time,
# and last one total line "N passed, N failed".
#   tier 1  unit tests (cmocka, plain + ASan/UBSan), command line, kestrel img,
#           qcow2 interop and crash tests: on this host, no KVM needed
#   tier 2  micro-guests on Kestrel: need a KVM that runs them
#   tier 3  Debian's stock kernel with user-space checks: needs a KVM that
#           runs guest kernel code natively
# Where each KVM tier runs comes from tools/kvmhost/kvmhost --probe:
#   native KVM      tiers 2 and 3 here
#   emulated ring 0 (kvm-pvm) tier 2 here, tier 3 in one outer VM
#   no usable KVM   tiers 2 and 3 in one outer VM
# KESTREL_KVMHOST=direct|outer forces the path of both KVM tiers.
# KESTREL_SKIP_LINUX=1 skips tier 3 (printed and counted as a skip).
#
# --tiers LIST (e.g. 2,3) runs only those tiers here, as the outer VM does.
# A tier whose scripts ran nothing, or printed no summary, counts as failed.
set -u
cd "$(dirname "$0")/.."
tiers=1,2,3
[ "${1:-}" = --tiers ] && tiers=$2
total_p=0 total_f=0 total_s=0 failed_tiers=()

has_tier() { [[ ,$tiers, == *,$1,* ]]; }

# tier NAME CMD...: runs CMD, adds the counts of its last "N passed, N
# failed[, N skipped]" line (skips: that line's, else its SKIP lines).
tier() {
	local name=$1
	shift
	echo "=== $name"
	local log t0=$SECONDS
	log=$(mktemp)
	"$@" 2>&1 | tee "$log"
	local st=${PIPESTATUS[0]} line p f s
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
	if [ -z "$line" ]; then
		echo "--- $name: no summary line: counted as 1 failure"
		total_f=$((total_f + 1))
		failed_tiers+=("$name (no summary line)")
	else
		p=$(sed -E 's/^(.*[^0-9])?([0-9]+) passed.*/\2/' <<<"$line")
		f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
		if [[ $line =~ ([0-9]+)\ skipped ]]; then
			s=${BASH_REMATCH[1]}
		else
			s=$(grep -c '^SKIP' "$log")
		fi
		if [ $((p + f)) -eq 0 ]; then
			echo "--- $name: ran nothing: counted as 1 failure"
			f=1
		elif [ "$st" != 0 ] && [ "$f" = 0 ]; then
			# e.g. the outer VM died: the last summary seen is a sub-tier's
			echo "--- $name: exited with status $st after a summary without failures: counted as 1 failure"
			f=1
		fi
		total_p=$((total_p + p)) total_f=$((total_f + f)) total_s=$((total_s + s))
		[ "$f" -gt 0 ] && failed_tiers+=("$name ($f failed)")
		echo "--- $name: $p passed, $f failed, $s skipped in $((SECONDS - t0)) s"
	fi
	rm -f "$log"
}

tier1() {
	tier "tier 1: unit tests" tests/run-unit.sh build
	tier "tier 1: command line" tests/cli/test-cli.sh
	tier "tier 1: kestrel img against qemu-img" tests/img/test-img.sh
	tier "tier 1: qcow2 interop with qemu-img" tests/qcow2/test-interop.sh
	tier "tier 1: qcow2 crash consistency (SIGKILL writers)" tests/qcow2/test-crash.sh
}

tier2() {
	# The lifecycle checks run on the ASan+UBSan build of the VMM.
	tier "tier 2: process lifecycle and consoles (ASan+UBSan VMM)" env KESTREL=build/kestrel-san tests/cli/test-lifecycle.py
	tier "tier 2: micro-guests on Kestrel" tests/guests/run-kestrel.sh
	tier "tier 2: virtio-blk durability (SIGKILL after FLUSH)" tests/virtio/test-durability.sh
	tier "tier 2: networking micro-guests (virtio-net, e1000; tap in a netns)" tests/net/test-net-guests.sh
}

tier3() {
	tier "tier 3: Linux platform (SMP 1/2/4, clocks, hvc0 login, rng, poweroff, reboot)" tests/linux/test-linux.sh
	tier "tier 3: Linux storage (ext4 on virtio-blk raw/qcow2, pci/mmio, O_DIRECT, discard, ro, snapshot)" tests/linux/test-linux-storage.sh
	tier "tier 3: Linux networking (udhcpc, 64 MiB TCP via slirp and a tap, hostfwd; virtio-net, e1000)" tests/linux/test-linux-net.sh
}

# Inside the outer VM (or with --tiers): just the tiers asked for.
if [ "$tiers" != 1,2,3 ]; then
	has_tier 1 && tier1
	has_tier 2 && tier2
	has_tier 3 && tier3
	echo "$total_p passed, $total_f failed, $total_s skipped"
	[ "$total_f" -eq 0 ]
	exit
fi

# probe_path [--micro]: "here" or "outer", as kvmhost would run it.
probe_path() {
	local p
	p=$(tools/kvmhost/kvmhost "$@" --probe)
	p=${p#* }
	[ "${p%%:*}" = direct ] && echo here || echo outer
}
probe=$(tools/kvmhost/kvmhost --probe)
verdict=${probe%% *}
why=${probe#*: }
t2=$(probe_path --micro)
t3=$(probe_path)
[ "${KESTREL_SKIP_LINUX:-0}" = 1 ] && t3=skip
echo "=== paths: /dev/kvm verdict '$verdict' ($why)"
echo "    tier 1: on this host; tier 2: $([ $t2 = here ] && echo "on this host" || echo "in the outer VM");" \
	"tier 3: $(case $t3 in here) echo "on this host" ;; outer) echo "in the outer VM" ;; *) echo "skipped (KESTREL_SKIP_LINUX=1)" ;; esac)"

tier1
[ "$t2" = here ] && tier2
# Built here, not in the slow outer VM: the guest initramfs, cached.
[ "$t3" != skip ] && tier "tier 3: preparing the guest images (on this host)" tests/linux/prepare.sh
inside=""
[ "$t2" = outer ] && inside=2
[ "$t3" = outer ] && inside=${inside:+$inside,}3
if [ -n "$inside" ]; then
	# They take 11 to 17 minutes there; a wedged outer VM (README: "Nested
	# SVM under TCG") ends at the timeout with its console's report.
	tier "tiers ${inside/,/ and } in one outer VM" tools/kvmhost/kvmhost --batch --timeout 1800 -- tests/run-all.sh --tiers "$inside"
fi
[ "$t3" = here ] && tier3
if [ "$t3" = skip ]; then
	echo "SKIP tier 3: KESTREL_SKIP_LINUX=1"
	total_s=$((total_s + 1))
fi
for t in "${failed_tiers[@]}"; do echo "FAILED $t"; done
echo "$total_s skipped (each SKIP line above says why); $((SECONDS / 60)) min $((SECONDS % 60)) s in all"
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
