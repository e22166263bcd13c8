#!/usr/bin/env bash
# Boot a Linux kernel on QEMU or Kestrel and record its serial console.
#
# Usage:
#   tests/linux/boot.sh VMM KERNEL [--cpus N] [--memory SIZE] [--initrd FILE]
#                       [--extra-cmdline "ARGS"] [--timeout S] [--log FILE] [--quiet]
#                       [--vmm-arg ARG ...]
#
#   VMM     qemu              qemu-system-x86_64 -enable-kvm
#           kestrel           $KESTREL, default <repo>/build/kestrel
#           /path/to/binary   a Kestrel binary
#   KERNEL  a PVH vmlinux (fast) or a bzImage
#
# --vmm-arg ARG (repeatable) appends ARG, one word as given, to the VMM's own
# command line (after boot.sh's options): e.g. --vmm-arg --disk --vmm-arg
# path=root.img for Kestrel, --vmm-arg -drive --vmm-arg file=... for QEMU.
# (QEMU_EXTRA, split on spaces, still works for QEMU.)
#
# The command line is
#   console=ttyS0 <host workarounds> [ARGS] panic=-1
# where the host workarounds (see README.md) are the options the nested-KVM test
# host needs; set KESTREL_LINUX_QUIRKS=0 to leave them out. panic=-1 makes the
# kernel reset at once when it panics and -no-reboot / --no-reboot turns that
# reset into the VMM exiting, so a boot ends by itself.
#
# Every console line (the VMM's stderr too) is written to the log prefixed with
# the host-side time since the VMM was started: "[  12.345] text". Default
# log: $KESTREL_CACHE/logs/boot-<vmm>-<kernel>-<cpus>cpu-<date>.log.
#
# Output (stdout), also written to <log>.result as shell variables:
#   BOOT_VMM, BOOT_KERNEL, BOOT_CPUS, BOOT_CMDLINE, BOOT_LOG
#   BOOT_EXIT       the VMM's exit status (124: killed by --timeout,
#                   125: killed after a "KVM internal error")
#   BOOT_T_KERNEL   seconds until the kernel's first line ("Linux version")
#   BOOT_T_INIT     seconds until "Run /init as init process" (empty: not reached)
#   BOOT_T_TOTAL    seconds until the VMM exited
#   BOOT_END        how it ended: exited | timeout | kvm-internal-error
# boot.sh itself exits with BOOT_EXIT.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"

# Options that let Linux run on the nested-KVM test host, whose guest-CPL0
# instruction emulator lacks XSAVE, CMPXCHG16B, POPCNT, CLAC/STAC, INVPCID,
# RDRAND, ... and whose KVM paravirt hypercalls loop. Harmless (only slower)
# elsewhere. Notes (details in README.md):
#  - noxsave is acted on although the kernel also reports it as "unknown"
#    (it is read by cpu_parse_early_param, not by a __setup handler); clearing
#    XSAVE also clears everything that depends on it (AVX*, FMA, VAES,
#    VPCLMULQDQ, PKU, XSAVEOPT/C/S), so those need no clearcpuid entry.
#  - Linux 6.1 reads only the first 127 characters of clearcpuid= (and only
#    the last clearcpuid= given): keep the list short, most important first.
#  - nopti is a no-op for this kernel (no PAGE_TABLE_ISOLATION); kept so the
#    same command line is safe for other kernels.
CLEARCPUID="smap,smep,cx16,popcnt,fsgsbase,rdrand,rdseed,pcid,invpcid,umip,rdpid,erms,fsrm,movbe,bmi1,bmi2,abm,adx,sse4_1,sse4_2,aes,gfni"
QUIRKS="noxsave nopv mitigations=off nopti clearcpuid=$CLEARCPUID"
if ((${#CLEARCPUID} > 127)); then
    echo "boot.sh: internal error: clearcpuid list longer than the 127 characters Linux reads" >&2
    exit 2
fi

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

(($# >= 2)) || usage
VMM="$1"; KERNEL="$2"; shift 2
CPUS=1; MEMORY=256M; INITRD=""; EXTRA=""; TIMEOUT=900; LOG=""; QUIET=0; VMM_ARGS=()
while (($#)); do
    case "$1" in
        --cpus) CPUS="$2"; shift 2 ;;
        --memory) MEMORY="$2"; shift 2 ;;
        --initrd) INITRD="$2"; shift 2 ;;
        --extra-cmdline) EXTRA="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --log) LOG="$2"; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        --vmm-arg) VMM_ARGS+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        *) echo "boot.sh: unknown option $1" >&2; usage ;;
    esac
done
[[ -f "$KERNEL" ]] || { echo "boot.sh: kernel $KERNEL not found" >&2; exit 2; }
[[ -z "$INITRD" || -f "$INITRD" ]] || { echo "boot.sh: initrd $INITRD not found" >&2; exit 2; }

CMDLINE="console=ttyS0"
[[ "${KESTREL_LINUX_QUIRKS:-1}" != 0 ]] && CMDLINE+=" $QUIRKS"
[[ -n "$EXTRA" ]] && CMDLINE+=" $EXTRA"
CMDLINE+=" panic=-1"

case "$VMM" in
    qemu)
        VMMNAME=qemu
        # -nic none: no default e1000, so no iPXE option ROM (~16 s in
        # SeaBIOS here) and no evaluation of QEMU's PCI _PRT, whose AML loop
        # exceeds ACPICA's 30 s loop timeout at this host's emulation speed.
        # qboot instead of SeaBIOS: SeaBIOS takes ~16 s before it jumps to the
        # kernel here (its real-mode code is emulated), qboot ~7 s. Same
        # QEMU-generated ACPI tables. QEMU_BIOS=default keeps SeaBIOS.
        bios=()
        QEMU_BIOS="${QEMU_BIOS:-/usr/share/qemu/qboot.rom}"
        [[ "$QEMU_BIOS" != default && -f "$QEMU_BIOS" ]] && bios=(-bios "$QEMU_BIOS")
        # shellcheck disable=SC2206
        cmd=(qemu-system-x86_64 -enable-kvm -nographic -no-reboot -nic none "${bios[@]}"
             -m "$MEMORY" -smp "$CPUS" -kernel "$KERNEL" -append "$CMDLINE"
             ${QEMU_EXTRA:-})
        [[ -n "$INITRD" ]] && cmd+=(-initrd "$INITRD")
        ;;
    *)
        VMMNAME=kestrel
        if [[ "$VMM" == kestrel ]]; then BIN="${KESTREL:-$ROOT/build/kestrel}"; else BIN="$VMM"; fi
        [[ -x "$BIN" ]] || { echo "boot.sh: Kestrel binary $BIN not found or not executable" >&2; exit 2; }
        cmd=("$BIN" run --kernel "$KERNEL" --memory "$MEMORY" --cpus "$CPUS"
             --cmdline "$CMDLINE" --no-reboot --serial stdio)
        [[ -n "$INITRD" ]] && cmd+=(--initrd "$INITRD")
        ;;
esac
cmd+=("${VMM_ARGS[@]}")

if [[ -z "$LOG" ]]; then
    mkdir -p "$CACHE/logs"
    LOG="$CACHE/logs/boot-$VMMNAME-$(basename "$KERNEL")-${CPUS}cpu-$(date +%Y%m%d-%H%M%S).log"
fi
mkdir -p "$(dirname "$LOG")"
: > "$LOG"

work="$(mktemp -d)"
fifo="$work/console"
mkfifo "$fifo"
cleanup() {
    [[ -n "${watch_pid:-}" ]] && kill "$watch_pid" 2>/dev/null
    [[ -n "${vmm_pid:-}" ]] && kill "$vmm_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "# boot.sh $(date -u '+%Y-%m-%dT%H:%M:%SZ') vmm=$VMMNAME cpus=$CPUS kernel=$KERNEL"
    printf '# command:'; printf ' %q' "${cmd[@]}"; echo
} >> "$LOG"
[[ $QUIET == 1 ]] || echo "boot.sh: $VMMNAME, $CPUS CPU(s), $(basename "$KERNEL"), log $LOG" >&2

T0=$EPOCHREALTIME
# timeout(1) sends SIGTERM, then SIGKILL 10 s later.
timeout -k 10 "$TIMEOUT" "${cmd[@]}" < /dev/null > "$fifo" 2>&1 &
vmm_pid=$!

# A "KVM internal error" leaves QEMU alive with the VM paused: stop it once
# the register dump has had time to arrive.
(
    while sleep 1; do
        if grep -q "KVM internal error\|emulation failure" "$LOG" 2>/dev/null; then
            sleep 3
            touch "$work/internal-error"
            kill "$vmm_pid" 2>/dev/null
            exit 0
        fi
    done
) &
watch_pid=$!

T_INIT=""; T_KERNEL=""
elapsed() { # microsecond-precision difference of two $EPOCHREALTIME values
    local a=${1/./} b=${2/./}
    local d=$(( 10#$b - 10#$a ))
    printf '%d.%03d' $((d / 1000000)) $(((d % 1000000) / 1000))
}
while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line//$'\r'/}"
    now=$(elapsed "$T0" "$EPOCHREALTIME")
    printf '[%9s] %s\n' "$now" "$line" >> "$LOG"
    [[ $QUIET == 1 ]] || printf '[%9s] %s\n' "$now" "$line"
    if [[ -z "$T_KERNEL" && "$line" == *"Linux version "* ]]; then
        T_KERNEL=$now
    fi
    if [[ -z "$T_INIT" && "$line" == *"Run /init as init process"* ]]; then
        T_INIT=$now
    fi
done < "$fifo"
wait "$vmm_pid"; rc=$?
vmm_pid=""
T_TOTAL=$(elapsed "$T0" "$EPOCHREALTIME")
kill "$watch_pid" 2>/dev/null; wait "$watch_pid" 2>/dev/null; watch_pid=""

END=exited
if [[ -e "$work/internal-error" ]]; then
    END=kvm-internal-error; rc=125
elif ((rc == 124 || rc == 137)); then
    END=timeout; rc=124
fi
echo "# end: $END, exit status $rc, ${T_TOTAL}s" >> "$LOG"

result() {
    printf 'BOOT_VMM=%q\nBOOT_KERNEL=%q\nBOOT_CPUS=%q\nBOOT_CMDLINE=%q\nBOOT_LOG=%q\n' \
        "$VMMNAME" "$KERNEL" "$CPUS" "$CMDLINE" "$LOG"
    printf 'BOOT_EXIT=%q\nBOOT_T_KERNEL=%q\nBOOT_T_INIT=%q\nBOOT_T_TOTAL=%q\nBOOT_END=%q\n' \
        "$rc" "$T_KERNEL" "$T_INIT" "$T_TOTAL" "$END"
}
result > "$LOG.result"
result
if [[ $QUIET == 0 ]]; then
    echo "boot.sh: exit status $rc ($END)" >&2
    echo "boot.sh: \"Linux version\" (first kernel line) after ${T_KERNEL:-(never)}${T_KERNEL:+ s}" >&2
    echo "boot.sh: \"Run /init as init process\" after ${T_INIT:-(not reached)}${T_INIT:+ s}" >&2
    echo "boot.sh: total ${T_TOTAL} s" >&2
fi
exit "$rc"
