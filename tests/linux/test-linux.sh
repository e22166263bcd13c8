#!/usr/bin/env bash
# Tier 3, platform: Debian's stock kernel with a busybox user space
# (tests/linux/lib.sh) on 1, 2 and 4 vCPUs. Run it where KVM runs Linux:
#
#   tools/kvmhost/kvmhost -q -- tests/linux/test-linux.sh
#
# Three boots of the guest script tests/linux/guest/platform.sh, each with
# --rng on and -v. In each, the guest checks:
#   - CPUs: /sys/devices/system/cpu/online is 0..N-1 and /proc/cpuinfo lists
#     N processors; a busy loop pinned to each CPU with taskset reports that
#     CPU in /proc/PID/stat (field 39), has that CPU alone as its affinity
#     mask, used CPU time, and that CPU's /proc/stat ticks grew
#   - clocks: date is after the host's time passed on the command line +
#     uptime, by at most 300 s (uptime misses the early boot, and lags on a
#     loaded host: the host's own checks below are the exact ones);
#     /dev/rtc0 exists and `hwclock -r` reads it within 10 s of date; a
#     clocksource is current and listed as available; the monotonic clock
#     advances 1 to 5 s over `sleep 1` (wake-ups are late on a loaded
#     host); monotonic time and the RTC agree within 2 s over the script
#   - virtio-rng: hw_random's rng_current is virtio_rng, 4 KiB read from
#     /dev/hwrng with more than 200 distinct byte values
#   - no "ACPI Error/Warning" in dmesg, and ACPI did initialise
# and the host checks (linux_results) that the script ran to its end, no
# oops/BUG/WARNING/panic, and that poweroff from user space (busybox
# poweroff -f) ended Kestrel with status 0; then that the guest's
# /proc/cmdline starts with console=ttyS0 and holds the arguments given
# intact, that the guest's date was within the host's start..end of that
# boot, and that Kestrel served the guest at least those 4096 bytes of
# entropy ("virtio-rng: served N bytes").
# Besides:
#   1 vCPU: hvc0 login. --console socket=PATH; the guest runs busybox getty
#     on hvc0 with an /etc/passwd and /etc/shadow (password "kestrel-pw");
#     the host (a python3 client on the socket) sees the login prompt, is
#     refused with a wrong password, logs in with the right one, runs a
#     command and reads back its output: 6*7 computed by the guest's shell
#     and the guest's boot_id, which must equal the one the guest printed on
#     the serial console; the guest in turn checks the command left that
#     boot_id in /run/hvc-ok. The guest's `date +%s` read this way must be
#     within 10 s of the host's clock.
#   2 vCPUs: reboot (its time limit doubled). Without --no-reboot and with
#     a 1 MiB disk serial=bootmark: the first boot writes "KESTREL-BOOT1 <boot_id>" to its
#     first sector and reboots (busybox reboot -f); Kestrel rebuilds the VM;
#     the second boot finds that marker, writes "KESTREL-BOOT2 <boot_id>" to
#     the second sector and powers off. The host checks two GUEST-START and
#     two GUEST-DONE lines, Kestrel's "guest reset: rebooting", status 0, and
#     reads both markers back from the disk file: boot_ids as the two boots
#     printed them, and different.
# One PASS/FAIL/SKIP line per check; the last line "N passed, N failed,
# N skipped"; exit status 0 only if nothing failed (2: no kernel or no
# Kestrel build). Logs in $KESTREL_CACHE/linux/logs/test-linux-<date>/.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/linux/lib.sh
. "$ROOT/tests/linux/lib.sh"
linux_setup
PYTHON=$(command -v /usr/bin/python3 python3 | head -1)
WORK=$(mktemp -d /var/tmp/kestrel-platform.XXXXXX) || exit 2
trap 'rm -rf "$WORK"' EXIT

# The host side of the hvc0 login: connects to the console socket as soon
# as Kestrel creates it and writes what it saw, one line per step, to OUT
# (the raw transcript to OUT.transcript).
cat >"$WORK/hvc-login.py" <<'EOF'
import os, re, socket, sys, time
path, out, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
res = open(out, "w")
transcript = open(out + ".transcript", "wb")
def say(line):
    res.write(line + "\n")
    res.flush()
deadline = time.time() + limit
s = None
while time.time() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        break
    except OSError:
        s.close()
        s = None
        time.sleep(0.1)
if s is None:
    say("NO-CONNECTION")
    sys.exit(1)
say("CONNECTED")
buf = b""
def expect(pattern, seconds, poke=None):
    """Waits for pattern; with poke, sends it every 10 s meanwhile."""
    global buf
    end = min(time.time() + seconds, deadline)
    last = time.time()
    while time.time() < end:
        m = re.search(pattern, buf)
        if m:
            buf = buf[m.end():]
            return m
        if poke and time.time() - last > 10:
            s.sendall(poke)
            last = time.time()
        s.settimeout(0.5)
        try:
            data = s.recv(4096)
        except socket.timeout:
            continue
        if not data:
            break
        transcript.write(data)
        transcript.flush()
        buf += data
    return None
def step(name, pattern, seconds, poke=None):
    if not expect(pattern, seconds, poke):
        say("TIMEOUT " + name)
        sys.exit(1)
    say(name)
step("LOGIN-PROMPT", rb"login: ", limit, b"\r")
s.sendall(b"root\r")
step("PASSWORD-PROMPT", rb"Password: ", 60)
s.sendall(b"not-the-password\r")
step("BAD-PASSWORD-REFUSED", rb"Login incorrect", 60)
step("LOGIN-PROMPT-AGAIN", rb"login: ", 60)
s.sendall(b"root\r")
step("PASSWORD-PROMPT-AGAIN", rb"Password: ", 60)
s.sendall(b"kestrel-pw\r")
step("SHELL-PROMPT", rb"# ", 60)
s.sendall(b"echo HVC-OUT-$((6*7))-$(cat /proc/sys/kernel/random/boot_id); "
          b"cat /proc/sys/kernel/random/boot_id >/run/hvc-ok\r")
m = expect(rb"HVC-OUT-(\d+)-([0-9a-f-]{36})", 60)
if not m:
    say("TIMEOUT OUTPUT")
    sys.exit(1)
say("OUTPUT %s %s" % (m.group(1).decode(), m.group(2).decode()))
s.sendall(b"echo HVC-DATE-$(date +%s)\r")
m = expect(rb"HVC-DATE-(\d+)", 60)
if not m:
    say("TIMEOUT DATE")
    sys.exit(1)
say("DATE %s %d" % (m.group(1).decode(), int(time.time())))
s.sendall(b"exit\r")
time.sleep(1)
EOF

# platform_boot CPUS [KESTREL-ARG...]: one boot of guest/platform.sh; its
# log name is platform-<CPUS>cpu (kestrel.test=platform given again last
# wins in /init). With RETRY_PREP (a command that resets what the boot
# uses) a boot lib.sh's linux_flaked names runs once more.
platform_boot() {
	local n=$1
	shift
	NAME=platform-${n}cpu
	while :; do
		${RETRY_PREP:-}
		T0=$(date +%s)
		linux_boot "$NAME" --cpus "$n" --rng on -v \
			--cmdline "kestrel.test=platform kestrel.cpus=$n kestrel.hosttime=$T0" "$@"
		T1=$(date +%s)
		if [ -z "${RETRY_PREP:-}" ] || ! linux_flaked "$NAME"; then break; fi
	done
	linux_results "$NAME"
	local want="kestrel.test=platform kestrel.cpus=$n kestrel.hosttime=$T0" got
	got=$(grep -a -m1 'GUEST-INFO cmdline=' "$LOGDIR/$NAME.log")
	got=${got#*cmdline=}
	got=${got%$'\r'}
	[[ $got == "console=ttyS0 "* && $got == *" $want"* ]]
	check "$NAME: host: the kernel's /proc/cmdline is the command line given ($got)" $?
}

# host_clock_rng NAME T0 T1: the guest's first "epoch=" within T0..T1, and
# Kestrel's virtio-rng byte count (the first boot's) at least 4096.
host_clock_rng() {
	local log=$LOGDIR/$1.log epoch served
	epoch=$(grep -o 'GUEST-INFO epoch=[0-9]*' "$log" | head -1 | cut -d= -f2)
	[ -n "$epoch" ] && [ "$epoch" -ge "$(($2 - 2))" ] && [ "$epoch" -le "$(($3 + 2))" ]
	check "$1: host: the guest's date ${epoch:-(none)} within the boot's host time $2..$3" $?
	served=$(grep -o 'virtio-rng: served [0-9]* bytes' "$log" | head -1 | tr -dc 0-9)
	[ -n "$served" ] && [ "$served" -ge 4096 ]
	check "$1: host: Kestrel's virtio-rng served ${served:-no count} bytes (>= 4096)" $?
}

# --- 1 vCPU, with the hvc0 login ------------------------------------------------
sock=$WORK/hvc.sock
"$PYTHON" "$WORK/hvc-login.py" "$sock" "$WORK/hvc.out" "$LINUX_TIMEOUT" &
client=$!
platform_boot 1 --console "socket=$sock" --cmdline kestrel.login=1
host_clock_rng "$NAME" "$T0" "$T1"
wait "$client"
cp "$WORK/hvc.out" "$LOGDIR/hvc-login.txt" 2>/dev/null
cp "$WORK/hvc.out.transcript" "$LOGDIR/hvc-login.transcript" 2>/dev/null
for step in CONNECTED LOGIN-PROMPT PASSWORD-PROMPT BAD-PASSWORD-REFUSED LOGIN-PROMPT-AGAIN \
	PASSWORD-PROMPT-AGAIN SHELL-PROMPT; do
	grep -qx "$step" "$WORK/hvc.out" 2>/dev/null
	check "hvc0 login: host saw $step on the console socket" $?
done
read -r _ product hvc_id < <(grep '^OUTPUT ' "$WORK/hvc.out" 2>/dev/null)
serial_id=$(grep -o 'GUEST-INFO boot_id=[0-9a-f-]*' "$LOGDIR/$NAME.log" | head -1 | cut -d= -f2)
[ "${product:-}" = 42 ] && [ -n "${hvc_id:-}" ] && [ "$hvc_id" = "$serial_id" ]
check "hvc0 login: the command's output came back: 6*7=${product:-?}, boot_id ${hvc_id:-?} (serial console: ${serial_id:-?})" $?
read -r _ gdate hdate < <(grep '^DATE ' "$WORK/hvc.out" 2>/dev/null)
[ -n "${gdate:-}" ] && [ $((gdate - hdate)) -ge -10 ] && [ $((gdate - hdate)) -le 10 ]
check "hvc0 login: the guest's date +%s (${gdate:-?}) within 10 s of the host's clock when it arrived (${hdate:-?})" $?

# --- 2 vCPUs, rebooting once ----------------------------------------------------
mark=$WORK/bootmark.raw
new_mark() { rm -f "$mark" && truncate -s 1M "$mark"; }
RETRY_PREP=new_mark LINUX_REBOOT=1 LINUX_TIMEOUT=$((2 * LINUX_TIMEOUT)) platform_boot 2 --disk "path=$mark,serial=bootmark"
host_clock_rng "$NAME" "$T0" "$T1"
log=$LOGDIR/$NAME.log
starts=$(grep -c 'GUEST-START' "$log")
dones=$(grep -c 'GUEST-DONE' "$log")
[ "$starts" = 2 ] && [ "$dones" = 2 ]
check "reboot: two boots in one run ($starts GUEST-START, $dones GUEST-DONE)" $?
n=$(grep -c 'guest reset: rebooting' "$log")
check "reboot: Kestrel rebuilt the VM once after the guest's reboot ($n \"guest reset: rebooting\")" \
	"$([ "$n" = 1 ]; echo $?)"
mapfile -t ids < <(grep -o 'GUEST-INFO boot_id=[0-9a-f-]*' "$log" | cut -d= -f2)
m1=$(dd if="$mark" bs=512 count=1 status=none | tr -d '\0')
m2=$(dd if="$mark" bs=512 skip=1 count=1 status=none | tr -d '\0')
[ "${#ids[@]}" = 2 ] && [ "${ids[0]}" != "${ids[1]}" ] &&
	[ "$m1" = "KESTREL-BOOT1 ${ids[0]}" ] && [ "$m2" = "KESTREL-BOOT2 ${ids[1]}" ]
check "reboot: host reads both boots' markers from the disk file ('$m1', '$m2'; boot_ids ${ids[*]})" $?

# --- 4 vCPUs (twice the time: on a 2-core host, 4 vCPUs crawl) ------------------
RETRY_PREP=: LINUX_TIMEOUT=$((2 * LINUX_TIMEOUT)) platform_boot 4
host_clock_rng "$NAME" "$T0" "$T1"

linux_summary
