# shellcheck shell=bash
# Tier 3, the host side shared by every Linux test script (sourced).
# Debian's stock kernel (package linux-image-amd64, unmodified) boots with an
# initramfs built from tests/linux/guest/: busybox, the kernel's own modules
# for our devices, and check scripts. /init runs the script named by
# kestrel.test=NAME, which prints GUEST-PASS/GUEST-FAIL lines; linux_results
# counts them with the host's own checks.
#
# The caller sets ROOT (the checkout). Provides:
#   pass/fail/skip TEXT, check TEXT STATUS: count and print one result
#   linux_setup [-b PROGRAM]...  KVER, KERNEL, INITRD (built once, cached by
#                  content), LOGDIR; exits 2 with one line if no kernel
#   linux_boot NAME [KESTREL-ARG...]   one boot; log $LOGDIR/NAME.log,
#                  status in BOOT_STATUS (124: killed at $LINUX_TIMEOUT);
#                  the VMM runs under "${LINUX_WRAP[@]}" if set;
#                  LINUX_REBOOT=1 leaves out --no-reboot (a guest reset
#                  rebuilds the VM)
#   linux_results NAME [EXPECT_STATUS]  counts the guest's lines, checks it
#                  finished, the VMM's status, and no oops in the log
#   linux_flaked NAME  true (once per script) when NAME's boot ended in a
#                  guest triple fault inside kvmhost's outer VM: the caller
#                  boots it once more; printed as RETRY and counted
#   linux_summary  the last line "N passed, N failed, N skipped"; its status
LINUX_CACHE=${KESTREL_CACHE:-/var/tmp/kestrel-cache}/linux
KESTREL=${KESTREL:-$ROOT/build/kestrel}
LINUX_TIMEOUT=${LINUX_TIMEOUT:-300}
LINUX_MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net virtio_console virtio-rng
	e1000 ext4 crc32c_generic netconsole)
# A command the VMM runs under, e.g. (ip netns exec NS): linux_boot runs
# timeout ... "${LINUX_WRAP[@]}" kestrel run ...
LINUX_WRAP=()
passed=0 failed=0 skipped=0 LINUX_RETRIED=""

pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
skip() { echo "SKIP $*"; skipped=$((skipped + 1)); }
check() { if [ "$2" = 0 ]; then pass "$1"; else fail "$1"; fi; }

linux_setup() {
	local v progs=()
	while [ $# -gt 0 ]; do
		case $1 in -b) progs+=(-b "$2"); shift 2 ;; *) shift ;; esac
	done
	KVER=$("$ROOT/tools/initramfs/mkinitramfs" --kver 2>/dev/null)
	if [ -z "$KVER" ]; then
		echo "tier 3: no Debian kernel in /boot with modules (apt-get install linux-image-amd64; scripts/setup.sh does)" >&2
		exit 2
	fi
	KERNEL=/boot/vmlinuz-$KVER
	[ -x "$KESTREL" ] || { echo "tier 3: $KESTREL is not built (make)" >&2; exit 2; }
	local sum mods=()
	for v in "${LINUX_MODULES[@]}"; do mods+=(-m "$v"); done
	sum=$({ cat "$ROOT"/tests/linux/guest/* "$ROOT/tools/initramfs/mkinitramfs"
		echo "$KVER ${LINUX_MODULES[*]} ${progs[*]}"; } | md5sum | cut -c1-12)
	INITRD=$LINUX_CACHE/initramfs-$KVER-$sum.cpio.gz
	mkdir -p "$LINUX_CACHE"
	if [ ! -s "$INITRD" ]; then
		local g args=()
		for g in "$ROOT"/tests/linux/guest/*; do
			[ "$(basename "$g")" = init ] || args+=(-f "$g:/checks/$(basename "$g")")
		done
		(
			flock 9
			[ -s "$INITRD" ] || "$ROOT/tools/initramfs/mkinitramfs" -o "$INITRD" \
				-i "$ROOT/tests/linux/guest/init" -k "$KVER" "${mods[@]}" "${progs[@]}" "${args[@]}"
		) 9>"$LINUX_CACHE/.lock" || { echo "tier 3: cannot build the guest initramfs" >&2; exit 2; }
	fi
	LOGDIR=${LOGDIR:-$LINUX_CACHE/logs/$(basename "$0" .sh)-$(date +%Y%m%d-%H%M%S)}
	mkdir -p "$LOGDIR"
	echo "tier 3: kernel $KERNEL (unmodified), initramfs $INITRD, logs in $LOGDIR"
}

# linux_boot NAME [KESTREL-ARG...]: --cmdline, --memory (default 512M) and
# --cpus may be given among the args; LINUX_CMDLINE is added to the command
# line. The serial console and the VMM's stderr go to $LOGDIR/NAME.log.
linux_boot() {
	local name=$1
	shift
	local log=$LOGDIR/$name.log extra="" a args=()
	while [ $# -gt 0 ]; do
		case $1 in
		--cmdline) extra+=" $2"; shift 2 ;;
		*) args+=("$1"); shift ;;
		esac
	done
	local mem=(--memory 512M) noreboot=(--no-reboot)
	[ "${LINUX_REBOOT:-0}" = 1 ] && noreboot=()
	for a in "${args[@]}"; do [ "$a" = --memory ] && mem=(); done
	local t0=$SECONDS
	timeout -k 5 "$LINUX_TIMEOUT" "${LINUX_WRAP[@]}" "$KESTREL" run --kernel "$KERNEL" --initrd "$INITRD" \
		--cmdline "console=ttyS0 loglevel=4 panic=-1 kestrel.test=$name${LINUX_CMDLINE:+ $LINUX_CMDLINE}$extra" \
		"${noreboot[@]}" --serial stdio "${mem[@]}" "${args[@]}" </dev/null >"$log" 2>&1
	BOOT_STATUS=$?
	echo "boot $name: status $BOOT_STATUS after $((SECONDS - t0)) s"
}

# linux_results NAME [EXPECT_STATUS]: PASS/FAIL from the guest's lines, then
# the host's: the script ran to GUEST-DONE, the VMM's exit status (default
# 0), no oops or BUG in the log.
linux_results() {
	local name=$1 want=${2:-0} log=$LOGDIR/$1.log line
	while IFS= read -r line; do
		line=${line%$'\r'}
		case $line in
		*GUEST-PASS\ *) pass "$name: ${line#*GUEST-PASS }" ;;
		*GUEST-FAIL\ *) fail "$name: ${line#*GUEST-FAIL }" ;;
		esac
	done <"$log"
	grep -q 'GUEST-DONE' "$log"
	check "$name: the guest's checks ran to the end" $?
	[ "$BOOT_STATUS" = "$want" ]
	check "$name: Kestrel exited with status $want (got $BOOT_STATUS)" $?
	! grep -qE '(^|\] )(BUG:|WARNING:|Oops|general protection fault|Kernel panic)' "$log"
	check "$name: no oops, BUG, WARNING or panic in the kernel log" $?
	if [ "$failed" -gt 0 ]; then
		echo "--- $name: the log's tail ($log)"
		tail -n 15 "$log" | sed 's/^/  | /'
	fi
}

# linux_flaked NAME: inside kvmhost's outer VM only, and once per script:
# NAME's boot ended in a guest triple fault. Nested SVM under TCG is not
# sound there (with virtual GIF it wedged and reset the outer VM under
# QEMU's guests too; kvmhost turns that off), and a guest vCPU still
# triple-faulted in about 1 of 20 boots there: one retry, printed and
# counted; a second one in the same script fails. On a host whose KVM runs
# guests natively, never. Moves NAME.log to NAME.try1.log.
linux_flaked() {
	[ "${KESTREL_KVMHOST_INSIDE:-0}" = 1 ] && [ -z "$LINUX_RETRIED" ] || return 1
	grep -q 'triple fault (KVM_EXIT_SHUTDOWN)' "$LOGDIR/$1.log" || return 1
	LINUX_RETRIED=$1
	mv "$LOGDIR/$1.log" "$LOGDIR/$1.try1.log"
	echo "RETRY $1: the guest triple-faulted inside the outer VM (nested SVM under TCG); booting it once more (first log: $LOGDIR/$1.try1.log)"
}

linux_summary() {
	[ -n "$LINUX_RETRIED" ] && echo "1 boot retried after a triple fault in the outer VM: $LINUX_RETRIED (RETRY above)"
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" = 0 ]
}
