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
