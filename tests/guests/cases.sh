# shellcheck shell=bash
# Micro-guest case table, shared by run-qemu.sh and run-kestrel.sh.
#
#   case_def NAME GUEST MEMORY CPUS CMDLINE EXPECT TIMEOUT_S [CHECK...]
#
# MEMORY takes an M/G suffix; CMDLINE tokens written "qemu:tok" or
# "kestrel:tok" reach only that VMM (with the prefix removed).
# EXPECT is VMM-neutral; each runner maps it to exit statuses:
#   poweroff     ACPI S5 power-off                     (status 0)
#   pass / fail  debug_exit(0x10) / debug_exit(0x11)   (33 / 35)
#   exit:N       debug_exit(N)                         ((N << 1 | 1) & 255)
#   triplefault  the guest triple-faults               (runner-specific)
# Each CHECK is an extended regex that must match a line of the serial
# output; a leading '!' means it must match none.

case_def hello hello 128M 1 "hello=world" poweroff 120 \
	'^Hello from a Kestrel micro-guest$' \
	'^hello: memmap [1-9][0-9]* MiB RAM in [0-9]+ entries, 1 CPUs in MADT, cmdline "hello=world"$' \
	'^acpi: S5 via PM1a_CNT'

case_def exitcode exitcode 128M 1 "" exit:42 120 \
	'^exitcode: debug_exit\(42\)'

case_def exitcode-7 exitcode 128M 1 "code=7" exit:7 120 \
	'^exitcode: debug_exit\(7\)'

case_def smp2 smp 128M 2 "" pass 120 \
	'^smp: 2/2 CPUs checked in$' '^smp: PASS$'

case_def smp4 smp 128M 4 "" pass 120 \
	'^smp: 4/4 CPUs checked in$' '^smp: PASS$'

case_def timer timer 128M 1 "" pass 120 \
	'^timer: PIT [0-9]+ ticks, LAPIC timer [0-9]+ ticks' '^timer: PASS$'

# QEMU reads unassigned MMIO as 0; Kestrel must return all-ones.
case_def unclaimed unclaimed 128M 1 "qemu:allow_mmio_zero" pass 120 \
	'^unclaimed: PIO ok, MMIO ok' '^unclaimed: PASS$'

case_def ramtest ramtest 4608M 1 "" pass 300 \
	'^ramtest: [0-9]+ MiB verified \([1-9][0-9]* MiB above 4 GiB\)$' '^ramtest: PASS$'

case_def triplefault triplefault 128M 1 "" triplefault 120 \
	'^triplefault: loading an empty IDT' '!survived' '!\*\*\* exception'

# Reset requests: with --no-reboot / -no-reboot both VMMs exit 0.
case_def reset-cf9 reset 128M 1 "" poweroff 60 \
	'^reset: boot, asking for a reset via 0xcf9' '!still running'

case_def reset-kbd reset 128M 1 "method=kbd" poweroff 60 \
	'^reset: boot, asking for a reset via i8042' '!still running'

case_def pio pio 128M 1 "count=2000" pass 60 \
	'^pio: 2000 writes to port 0x2f0'

case_def idle idle 128M 1 "seconds=1" poweroff 60 \
	'^idle: 1 s$'
