# Helpers for the guest's check scripts (busybox sh, sourced by /init).
pass() { echo "GUEST-PASS $*"; }
fail() { echo "GUEST-FAIL $*"; }
# check TEXT CMD...: runs CMD; PASS TEXT when it succeeds, else FAIL TEXT.
check() {
	t=$1
	shift
	if "$@"; then pass "$t"; else fail "$t"; fi
}
# wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds.
wait_for() {
	n=$(($1 * 5))
	shift
	while [ "$n" -gt 0 ]; do
		"$@" && return 0
		sleep 0.2
		n=$((n - 1))
	done
	return 1
}
# kparam NAME: the value of kestrel.NAME=VALUE on the kernel command line.
kparam() {
	for a in $(cat /proc/cmdline); do
		case $a in "kestrel.$1="*) echo "${a#kestrel.$1=}"; return 0 ;; esac
	done
	return 1
}
# disk_by_serial ID: /dev/vdX of the virtio-blk disk given --disk serial=ID.
disk_by_serial() {
	for s in /sys/block/vd*/serial; do
		[ "$(cat "$s" 2>/dev/null)" = "$1" ] || continue
		s=${s%/serial}
		echo "/dev/${s##*/}"
		return 0
	done
	return 1
}
