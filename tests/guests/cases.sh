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

# virtio-blk through the ring-3 driver in virtio_drv.c (polling). Each case
# gets a fresh sparse image: case_disk SIZE OPT... (see runner.sh). The QEMU
# runner maps transport=mmio to -M microvm.
case_disk 64M serial=kestrel-vblk-0 discard queues=4
case_def virtio-blk-pci virtio-blk 128M 1 "serial=kestrel-vblk-0 size_mb=64 discard_zeroes irq" pass 120 \
	'^virtio-blk: pci, capacity 131072 sectors' \
	'^virtio-blk: 32 writes .* read back: ok$' \
	'^virtio-blk: MSI-X masking: held in the PBA under vector and function masks' \
	'^virtio-blk: MSI-X interrupts: 3/3 requests signalled, 0 with NO_INTERRUPT$' \
	'^virtio-blk: EVENT_IDX: 1 interrupt\(s\) for 4 requests' \
	'^virtio-blk: 4 queue\(s\), a write and a read on each: ok$' \
	'^virtio-blk: BAR[0-9] moved .* and back' '^virtio-blk: PASS$'

# QEMU's microvm routes virtio-mmio interrupts elsewhere: IRQs on Kestrel only.
case_disk 64M serial=kestrel-vblk-0 transport=mmio discard
case_def virtio-blk-mmio virtio-blk 128M 1 "transport=mmio serial=kestrel-vblk-0 size_mb=64 discard_zeroes kestrel:irq" pass 120 \
	'^virtio-blk: mmio, capacity 131072 sectors' \
	'^virtio-blk: 32 writes .* read back: ok$' '^virtio-blk: PASS$'

case_disk 64M ro serial=ro-disk
case_def virtio-blk-ro virtio-blk 128M 1 "ro serial=ro-disk size_mb=64" pass 120 \
	'^virtio-blk: read-only: F_RO offered, write -> IOERR, data unchanged$' '^virtio-blk: PASS$'

case_disk 64M ro transport=mmio
case_def virtio-blk-ro-mmio virtio-blk 128M 1 "ro transport=mmio size_mb=64" pass 120 \
	'^virtio-blk: read-only: F_RO offered' '^virtio-blk: PASS$'

# O_DIRECT, the thread-pool engine and a dedicated I/O thread (Kestrel).
case_disk 64M cache=none kestrel:aio=threads kestrel:iothread=on discard
case_def virtio-blk-direct-threads virtio-blk 128M 1 "size_mb=64 count=64" pass 120 \
	'^virtio-blk: 64 writes .* read back: ok$' '^virtio-blk: PASS$'

case_disk 64M snapshot
case_def virtio-blk-snapshot virtio-blk 128M 1 "size_mb=64" pass 120 \
	'^virtio-blk: 32 writes .* read back: ok$' '^virtio-blk: PASS$'

# Malformed chains, rings and register writes, resets with reads in flight.
# QEMU completes requests whose buffers are unassigned memory, uses buffers
# before DRIVER_OK, follows un-negotiated indirect descriptors and accepts
# FEATURES_OK for unoffered features or without VERSION_1: allowed there only
# (the lenient_* tokens).
case_disk 64M
case_def virtio-hostile-pci virtio-hostile 128M 1 "qemu:lenient_early qemu:lenient_dma qemu:lenient_indirect qemu:lenient_features" pass 120 \
	'^hostile: [0-9]+ cases: .* 0 failures$' '!FAIL' '^hostile: PASS$'

case_disk 64M transport=mmio
case_def virtio-hostile-mmio virtio-hostile 128M 1 "transport=mmio qemu:lenient_early qemu:lenient_dma qemu:lenient_indirect qemu:lenient_features" pass 120 \
	'^hostile: [0-9]+ cases: .* 0 failures$' '!FAIL' '^hostile: PASS$'

case_disk 64M kestrel:iothread=on kestrel:aio=threads
case_def virtio-hostile-iothread virtio-hostile 128M 1 "qsize=64 qemu:lenient_early qemu:lenient_dma qemu:lenient_indirect qemu:lenient_features" pass 120 \
	'^hostile: [0-9]+ cases: .* 0 failures$' '!FAIL' '^hostile: PASS$'

# The durability writer, run to completion (tests/virtio/test-durability.sh
# kills it instead).
case_disk 64M
case_def virtio-durable virtio-durable 128M 1 "run=3 count=256" pass 120 \
	'^durable: 255$' '^durable: all 256 blocks read back$' '^durable: PASS$'
