#!/usr/bin/env bash
# `kestrel` command-line behaviour: exit statuses and one-line errors that
# name the bad value, for options and for files that are not kernels,
# initrds or disk images. Input errors are checked with no /dev at all (as
# on a host without KVM): they must be found before /dev/kvm is opened.
# Checks that need a real KVM print "SKIP NAME: no /dev/kvm" without one.
# Ends with "N passed, N failed, N skipped".
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K=${KESTREL:-$ROOT/build/kestrel}
G=${GUESTS:-$ROOT/build/guests}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
passed=0 failed=0 skipped=0

# no_dev CMD...: runs CMD with an empty /dev in a private mount namespace,
# so with no /dev/kvm whatever the host has.
no_dev() {
	unshare -m sh -c 'mount -t tmpfs none /dev && exec "$@"' no-dev "$@"
}

# expect NAME STATUS REGEX -- ARGS...: runs kestrel, checks status and that
# stderr is exactly one line matching REGEX. With NO_KVM=1, kestrel runs
# under no_dev.
expect() {
	local name=$1 want=$2 re=$3
	shift 4
	local err=$T/err
	if [ "${NO_KVM:-0}" = 1 ]; then
		no_dev "$K" "$@"
	else
		"$K" "$@"
	fi </dev/null >"$T/out" 2>"$err"
	local st=$? lines
	lines=$(wc -l <"$err")
	if [ "$st" -ne "$want" ]; then
		echo "FAIL $name: status $st, want $want; stderr: $(head -3 "$err")"
		failed=$((failed + 1))
	elif [ -n "$re" ] && { [ "$lines" -ne 1 ] || ! grep -qE -- "$re" "$err"; }; then
		echo "FAIL $name: stderr does not match /$re/ in one line: $(head -3 "$err")"
		failed=$((failed + 1))
	else
		echo "PASS $name"
		passed=$((passed + 1))
	fi
}

# expect_no_kvm: expect, for errors in what the user gave, which must be
# reported as such before (and so without) /dev/kvm.
expect_no_kvm() {
	NO_KVM=1 expect "$@"
}

# needs_kvm NAME: true on a host with /dev/kvm; otherwise prints a SKIP line
# and is false. For checks that boot a guest or reach what only the VM's
# build does (network backends, the permission on /dev/kvm itself).
needs_kvm() {
	[ -e /dev/kvm ] && return 0
	echo "SKIP $1: no /dev/kvm"
	skipped=$((skipped + 1))
	return 1
}

printf 'not a kernel at all\n' >"$T/text"
head -c 600 /dev/zero >"$T/zeros"
: >"$T/empty"
# A bzImage whose header claims more kernel than the file has.
python3 - "$T/trunc-bz" <<'PY'
import struct, sys
b = bytearray(5 * 512 + 64)
b[0x1f1] = 4
struct.pack_into('<I', b, 0x1f4, 0x100000)
b[0x1fe:0x200] = b'\x55\xaa'
b[0x200:0x202] = b'\xeb\x66'
b[0x202:0x206] = b'HdrS'
struct.pack_into('<H', b, 0x206, 0x020f)
b[0x211] = 1
struct.pack_into('<H', b, 0x236, 1)
struct.pack_into('<Q', b, 0x258, 0x1000000)
open(sys.argv[1], 'wb').write(b)
PY
# An ELF without the PVH note.
cp /bin/true "$T/plain.elf"
# Disk images: good ones, and text where a qcow2 header should be.
head -c 1M /dev/zero >"$T/disk.raw"
"$K" img create -q -f qcow2 "$T/disk.qcow2" 16M
printf 'not a qcow2 image, just text long enough to hold a header: %080d\n' 0 >"$T/garbage.qcow2"

expect usage 2 "" --
expect unknown-verb 2 "unknown verb 'frob'" -- frob
expect help 0 '' -- run --help
expect version 0 '' -- --version
expect no-kernel 2 '^kestrel: --kernel PATH is required$' -- run
expect bad-memory 2 "--memory '3X' is not a size" -- run --kernel "$T/text" --memory 3X
expect small-memory 2 "--memory '1M' is out of range \(accepted: 16M to 1T\)" -- run --kernel "$T/text" --memory 1M
expect bad-cpus 2 "--cpus '0' is not a CPU count \(accepted: 1 to 255\)" -- run --kernel "$T/text" --cpus 0
expect bad-serial 2 "--serial: 'udp' is not a console backend" -- run --kernel "$T/text" --serial udp
expect unknown-option 2 "unknown option '--bogus'" -- run --kernel "$T/text" --bogus
expect_no_kvm missing-file 2 "^kestrel: cannot open kernel '$T/nope': No such file or directory$" -- run --kernel "$T/nope" --serial off
expect_no_kvm directory 2 "kernel '$T' is not a regular file" -- run --kernel "$T" --serial off
expect_no_kvm empty-file 2 "kernel '$T/empty' is empty" -- run --kernel "$T/empty" --serial off
expect_no_kvm text-file 2 "kernel '$T/text' is neither a bzImage nor an ELF with a PVH note" -- run --kernel "$T/text" --serial off
expect_no_kvm zeros 2 "neither a bzImage nor an ELF" -- run --kernel "$T/zeros" --serial off
expect_no_kvm truncated-bzimage 2 "kernel '$T/trunc-bz': bzImage is truncated" -- run --kernel "$T/trunc-bz" --serial off
expect_no_kvm elf-without-pvh 2 "no PVH entry note" -- run --kernel "$T/plain.elf" --serial off
host_mib=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
expect_no_kvm memory-over-host 2 "--memory [0-9]+ MiB is more than this host's" -- run --kernel "$G/hello.elf" --memory "$((host_mib + 1024))M" --serial off
expect_no_kvm missing-initrd 2 "cannot open initrd '$T/nope'" -- run --kernel "$G/hello.elf" --initrd "$T/nope" --serial off
expect_no_kvm empty-initrd 2 "^kestrel: initrd '$T/empty' is empty$" -- run --kernel "$G/hello.elf" --initrd "$T/empty" --serial off
expect_no_kvm file-serial-unwritable 2 "cannot open console backend '/nonexistent/x.log'" -- run --kernel "$G/hello.elf" --serial file=/nonexistent/x.log
expect_no_kvm disk-missing 2 "^kestrel: --disk: cannot open image '$T/nope': No such file or directory$" -- run --kernel "$G/hello.elf" --serial off --disk "path=$T/nope"
expect_no_kvm disk-directory 2 "^kestrel: --disk: cannot open image '$T': Is a directory$" -- run --kernel "$G/hello.elf" --serial off --disk "path=$T"
expect_no_kvm disk-qcow2-garbage 2 "^kestrel: --disk: image '$T/garbage.qcow2': not a qcow2 image \(bad magic\)$" -- run --kernel "$G/hello.elf" --serial off --disk "path=$T/disk.raw" --disk "path=$T/garbage.qcow2,format=qcow2"

# No /dev/kvm, with inputs that are all fine: only then is /dev/kvm named
# (and the good disks were opened read-only and left alone). No permission
# (an unprivileged user, who can read the kernel).
nokvm="^kestrel: /dev/kvm does not exist: enable VT-x/AMD-V and load kvm-intel or kvm-amd$"
expect_no_kvm no-dev-kvm 2 "$nokvm" -- run --kernel "$G/hello.elf" --serial off
expect_no_kvm no-dev-kvm-after-inputs 2 "$nokvm" -- run --kernel "$G/hello.elf" --initrd "$T/text" --serial off \
	--disk "path=$T/disk.raw" --disk "path=$T/disk.qcow2,format=qcow2" --disk "path=$T/disk.raw,readonly=on"
if needs_kvm no-permission; then
	cp "$K" "$T/kestrel" && cp "$G/hello.elf" "$T/hello.elf" && chmod 755 "$T" "$T/kestrel" && chmod 644 "$T/hello.elf"
	err=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$T/kestrel" run --kernel "$T/hello.elf" --serial off 2>&1)
	st=$?
	if [ "$st" -eq 2 ] && [ "$err" = "kestrel: no permission to open /dev/kvm: run as root or join the 'kvm' group" ]; then
		echo "PASS no-permission"; passed=$((passed + 1))
	else
		echo "FAIL no-permission: status $st: $err"; failed=$((failed + 1))
	fi
fi

# Network backends that cannot be set up: one line naming what and why, and
# nothing left behind. The tap cases run in a private network namespace.
expect net-bad-option 2 "^kestrel: --net tap: queues='0' \(accepted: 1 to 8\)$" -- run --kernel "$G/hello.elf" --net tap,ifname=x,queues=0
# The backends are set up while the VM is built, after /dev/kvm is open.
if needs_kvm net-no-bridge; then
	expect net-no-bridge 2 '^kestrel: bridge "kestrel-nobr" does not exist$' -- run --kernel "$G/hello.elf" --serial off --net bridge,br=kestrel-nobr
	if ip link show kestrel-nobr >/dev/null 2>&1; then
		echo "FAIL net-no-bridge-clean: an interface was left behind"; failed=$((failed + 1))
	fi
fi
if needs_kvm net-hostfwd-busy; then
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	python3 -c 'import socket, sys, time; s=socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); time.sleep(30)' "$port" &
	holder=$!
	sleep 0.3
	expect net-hostfwd-busy 2 "^kestrel: net user: hostfwd tcp::$port-:22: cannot listen on host port $port: Address already in use$" -- run --kernel "$G/hello.elf" --serial off --net "user,hostfwd=tcp::$port-:22"
	kill "$holder" 2>/dev/null
	wait "$holder" 2>/dev/null
fi
if needs_kvm net-tap-not-a-tap; then
	err=$(unshare -n "$K" run --kernel "$G/hello.elf" --serial off --net tap,ifname=lo 2>&1)
	st=$?
	if [ "$st" -eq 2 ] && [ "$(wc -l <<<"$err")" -eq 1 ] && grep -q '^kestrel: tap "lo": .*not a tap' <<<"$err"; then
		echo "PASS net-tap-not-a-tap"; passed=$((passed + 1))
	else
		echo "FAIL net-tap-not-a-tap: status $st: $err"; failed=$((failed + 1))
	fi
fi
if needs_kvm net-tap-created-and-removed; then
	err=$(unshare -n sh -c "'$K' run --kernel '$G/hello.elf' --serial off --net tap,ifname=kt-cli0 && ! ip link show kt-cli0 2>/dev/null" 2>&1)
	st=$?
	if [ "$st" -eq 0 ] && [ -z "$err" ]; then
		echo "PASS net-tap-created-and-removed"; passed=$((passed + 1))
	else
		echo "FAIL net-tap-created-and-removed: status $st: $err"; failed=$((failed + 1))
	fi
fi

# Guest outcomes through the debug-exit port and ACPI.
needs_kvm poweroff && expect poweroff 0 '' -- run --kernel "$G/hello.elf" --serial off
needs_kvm debug-exit-7 && expect debug-exit-7 15 '' -- run --kernel "$G/exitcode.elf" --cmdline code=7 --serial off
needs_kvm debug-exit-255 && expect debug-exit-255 255 '' -- run --kernel "$G/exitcode.elf" --cmdline code=127 --serial off

# Serial to a file: the guest's output lands there.
if needs_kvm serial-file; then
	"$K" run --kernel "$G/hello.elf" --serial "file=$T/serial.log" </dev/null >/dev/null 2>&1
	if grep -q '^Hello from a Kestrel micro-guest' "$T/serial.log"; then
		echo "PASS serial-file"; passed=$((passed + 1))
	else
		echo "FAIL serial-file: $(head -c 200 "$T/serial.log")"; failed=$((failed + 1))
	fi
fi

echo "cli: $passed passed, $failed failed, $skipped skipped"
