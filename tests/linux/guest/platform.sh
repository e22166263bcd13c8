# Platform checks (tests/linux/test-linux.sh), sourced by /init.
# Kernel command line from the host:
#   kestrel.cpus=N        the --cpus given
#   kestrel.hosttime=S    the host's clock (epoch seconds) just before the VMM
#                         started
#   kestrel.login=1       start getty on hvc0 and wait for the host to log in
#                         and create /run/hvc-ok
# A disk with serial=bootmark turns on the reboot check: the first boot
# writes "KESTREL-BOOT1 <boot_id>" to its first sector and reboots; the next
# boot finds it, writes "KESTREL-BOOT2 <boot_id>" to the second sector and
# powers off.
ncpu=$(kparam cpus)
hosttime=$(kparam hosttime)
boot_id=$(cat /proc/sys/kernel/random/boot_id)
echo "GUEST-INFO boot_id=$boot_id"
echo "GUEST-INFO cmdline=$(cat /proc/cmdline)"
mono0=$(cut -d' ' -f1 /proc/uptime | tr -d .)
rtc0=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null)

# --- CPUs --------------------------------------------------------------------
cpu_checks() {
	want=0
	[ "$ncpu" -gt 1 ] && want=0-$((ncpu - 1))
	online=$(cat /sys/devices/system/cpu/online)
	check "all $ncpu CPUs online (/sys/devices/system/cpu/online: $online)" [ "$online" = "$want" ]
	n=$(grep -c '^processor' /proc/cpuinfo)
	check "/proc/cpuinfo lists $ncpu processors (saw $n)" [ "$n" = "$ncpu" ]
}
cpu_checks

# --- the reboot check: which boot is this? ------------------------------------
mark=$(disk_by_serial bootmark)
if [ -n "$mark" ]; then
	first=$(dd if="$mark" bs=512 count=1 2>/dev/null | tr -d '\0')
	case $first in
	KESTREL-BOOT1\ *)
		prev=${first#KESTREL-BOOT1 }
		prev=${prev%% *}
		echo "KESTREL-BOOT2 $boot_id" | dd of="$mark" bs=512 seek=1 conv=sync,notrunc,fsync 2>/dev/null
		check "second boot after the guest's reboot: $mark holds the first boot's marker (boot_id $prev, now $boot_id)" \
			[ -n "$prev" -a "$prev" != "$boot_id" ]
		end=poweroff
		return 0
		;;
	esac
fi

# --- work scheduled on every CPU ----------------------------------------------
# A busy loop pinned to each CPU with taskset; afterwards each must report
# that CPU as its last (/proc/PID/stat field 39), its affinity mask must be
# that CPU alone, it must have run (utime), and /proc/stat's user+system
# ticks of that CPU must have grown.
cpu_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 }' /proc/stat; }
pids="" before=""
i=0
while [ $i -lt "$ncpu" ]; do
	before="$before $(cpu_ticks $i)"
	taskset -c $i sh -c 'while :; do :; done' &
	pids="$pids $!"
	i=$((i + 1))
done
sleep 3
i=0
set -- $before
for pid in $pids; do
	stat=$(cat /proc/$pid/stat)
	where=$(echo "$stat" | awk '{ print $39 }')
	utime=$(echo "$stat" | awk '{ print $14 }')
	mask=$(taskset -p $pid | sed 's/.*: *//')
	after=$(cpu_ticks $i)
	check "CPU $i: pinned busy loop ran there (processor $where, mask $mask, utime $utime ticks; cpu$i ticks $1 -> $after)" \
		[ "$where" = $i -a "$mask" = "$(printf %x $((1 << i)))" -a "$utime" -gt 0 -a "$after" -gt "$1" ]
	kill $pid
	shift
	i=$((i + 1))
done
wait 2>/dev/null

# --- clocks --------------------------------------------------------------------
now=$(date +%s)
up=$(cut -d. -f1 /proc/uptime)
echo "GUEST-INFO epoch=$now uptime=$up"
# Not exact: uptime leaves out the kernel's decompression and early boot,
# and counts jiffies until the clocksource switch, which lose ticks on a
# loaded host (minutes, seen here). The host checks the date against its
# own clock (test-linux.sh); here: not before the host's start, and at most
# 5 min more than uptime says after it.
skew=$((now - hosttime - up))
check "date ($now) after the host's time at start ($hosttime) + uptime ($up s), by 300 s at most (by $skew s)" \
	[ "$now" -ge "$hosttime" -a "$skew" -ge -5 -a "$skew" -le 300 ]
check "/dev/rtc0 is a character device" [ -c /dev/rtc0 ]
hw=$(hwclock -r -u 2>&1)
st=$?
hwt=$(date -u -D '%a %b %e %H:%M:%S %Y' -d "$(echo "$hw" | cut -c1-24)" +%s 2>/dev/null)
now=$(date +%s)
d=$((${hwt:-0} - now))
check "hwclock -r reads the RTC within 10 s of date (status $st: $hw; off by $d s)" \
	[ "$st" = 0 -a -n "$hwt" -a "$d" -ge -10 -a "$d" -le 10 ]
rtcname=$(cat /sys/class/rtc/rtc0/name 2>/dev/null)
echo "GUEST-INFO rtc0: $rtcname"
cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
avail=$(cat /sys/devices/system/clocksource/clocksource0/available_clocksource)
check "clocksource '$cs' in use and listed (available: $avail)" \
	eval '[ -n "$cs" ] && case " $avail " in *" $cs "*) true ;; *) false ;; esac'
t0=$(cut -d' ' -f1 /proc/uptime | tr -d .)
sleep 1
t1=$(cut -d' ' -f1 /proc/uptime | tr -d .)
dt=$(((t1 - t0) * 10))
check "monotonic clock advanced $dt ms over sleep 1 (1000 to 5000 expected: wake-ups are late on a loaded host)" [ "$dt" -ge 1000 -a "$dt" -le 5000 ]

# --- virtio-rng -------------------------------------------------------------------
cur=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
check "hw_random's rng_current names virtio_rng ($cur)" eval 'case $cur in virtio_rng*) true ;; *) false ;; esac'
dd if=/dev/hwrng of=/tmp/rng bs=4096 count=1 iflag=fullblock 2>/dev/null
size=$(wc -c </tmp/rng)
distinct=$(od -An -v -tx1 /tmp/rng | tr -s ' ' '\n' | grep . | sort -u | wc -l)
check "read $size bytes from /dev/hwrng with $distinct distinct byte values (4096 and > 200 expected)" \
	[ "$size" = 4096 -a "$distinct" -gt 200 ]

# --- a login on hvc0 -------------------------------------------------------------
if [ "$(kparam login)" = 1 ]; then
	check "/dev/hvc0 is a character device" [ -c /dev/hvc0 ]
	echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd
	echo 'root:x:0:' >/etc/group
	# openssl passwd -6 -salt kestrelsalt kestrel-pw
	echo 'root:$6$kestrelsalt$PQP522XN80GrrnYLVqkSoP32k6hGoQ9JCkfbuoJA/Nku9BgnJQ7ydBFJG9I4w6.HReX7ODXqhTR.5eJDwhiyF.:19000:0:99999:7:::' >/etc/shadow
	chmod 600 /etc/shadow
	mkdir -p /root
	setsid getty -L 115200 hvc0 vt100 &
	gpid=$!
	wait_for 180 [ -f /run/hvc-ok ]
	check "the host logged in on hvc0 and ran a command (/run/hvc-ok: $(cat /run/hvc-ok 2>/dev/null))" \
		[ "$(cat /run/hvc-ok 2>/dev/null)" = "$boot_id" ]
	kill -9 $gpid 2>/dev/null
fi

# --- the clock's rate over the whole script: monotonic vs the RTC ------------------
mono1=$(cut -d' ' -f1 /proc/uptime | tr -d .)
rtc1=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null)
dm=$(((mono1 - mono0) / 100))
dr=$((rtc1 - rtc0))
check "monotonic clock ($dm s) and RTC ($dr s) agree over the script within 2 s" \
	[ -n "$rtc0" -a $((dm - dr)) -ge -2 -a $((dm - dr)) -le 2 ]

# --- ACPI: no errors or warnings in the kernel log -------------------------------
acpi=$(dmesg | grep -E 'ACPI( BIOS)? (Error|Warning)' | head -3)
check "no ACPI errors or warnings in dmesg${acpi:+: $acpi}" [ -z "$acpi" ]
n=$(dmesg | grep -c 'ACPI: ')
check "ACPI initialised ($n 'ACPI: ' lines in dmesg)" [ "$n" -gt 0 ]

# --- the first of two boots: mark the disk, reboot --------------------------------
if [ -n "$mark" ]; then
	echo "KESTREL-BOOT1 $boot_id" | dd of="$mark" bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null
	check "first boot: marker written to $mark, rebooting" \
		[ "$(dd if="$mark" bs=512 count=1 2>/dev/null | tr -d '\0')" = "KESTREL-BOOT1 $boot_id" ]
	end=reboot
fi
