# The README's first command (scripts/boot-linux): show the machine, then a
# shell on the console (kestrel.demo=shell) or a short script (otherwise).
echo
echo "Debian's stock kernel $(uname -r) is up under Kestrel: $(grep -c ^processor /proc/cpuinfo) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
for a in $(cat /proc/cmdline); do
	case $a in kestrel.demo=*) mode=${a#kestrel.demo=} ;; esac
done
if [ "${mode:-script}" = shell ]; then
	echo "A busybox shell on ttyS0: 'poweroff -f' (or exit) powers the VM off; Ctrl-A x quits Kestrel."
	setsid cttyhack sh -l
else
	echo "No terminal: running a short script, then powering off."
	for c in "uname -a" "cat /proc/cmdline" "ls /sys/bus/pci/devices" "free -m" "date -u"; do
		echo "# $c"
		$c
	done
fi
