#!/usr/bin/env bash
# Compare Linux boot time on Kestrel and QEMU: seconds (host side) from starting
# the VMM to the kernel's "Run /init as init process", same PVH vmlinux, same
# command line, same CPU count.
#
# Usage: tests/linux/bench-boot.sh [--runs N] [--cpus N] [--vmm KESTREL] [--kernel FILE]
#                                  [--timeout S] [--skip-qemu | --skip-kestrel]
#   --runs N     boots per VMM (default 1: each boot takes minutes on the test host)
#   --cpus N     guest CPUs (default 1)
#   --vmm PATH   Kestrel binary (default $KESTREL or <repo>/build/kestrel)
#   --kernel F   kernel to boot (default the vmlinux from build-kernel.sh)
# Prints one line per boot, then the mean per VMM and the ratios kestrel/qemu,
# of the whole time and of the time after the kernel's first console line.
# Logs: $KESTREL_CACHE/logs/bench-<date>/.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"
RUNS=1; CPUS=1; KESTREL_BIN="${KESTREL:-$HERE/../../build/kestrel}"; KERNEL=""; TIMEOUT=900
VMMS="kestrel qemu"
while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --cpus) CPUS="$2"; shift 2 ;;
        --vmm) KESTREL_BIN="$2"; shift 2 ;;
        --kernel) KERNEL="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --skip-qemu) VMMS="kestrel"; shift ;;
        --skip-kestrel) VMMS="qemu"; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-boot.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ -z "$KERNEL" ]]; then
    kout="$("$HERE/build-kernel.sh")" || exit 2
    eval "$kout"
    KERNEL="$VMLINUX"
fi
if [[ "$VMMS" == *kestrel* && ! -x "$KESTREL_BIN" ]]; then
    echo "bench-boot.sh: Kestrel binary $KESTREL_BIN not found" >&2; exit 2
fi

LOGDIR="$CACHE/logs/bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$LOGDIR"
echo "bench-boot: $(basename "$KERNEL"), $CPUS CPU(s), $RUNS run(s) per VMM, logs in $LOGDIR"

declare -A sum ksum n
for vmm in $VMMS; do
    sum[$vmm]=0; ksum[$vmm]=0; n[$vmm]=0
    arg="$vmm"; [[ $vmm == kestrel ]] && arg="$KESTREL_BIN"
    for ((i = 1; i <= RUNS; i++)); do
        log="$LOGDIR/$vmm-$i.log"
        out="$("$HERE/boot.sh" "$arg" "$KERNEL" --cpus "$CPUS" --timeout "$TIMEOUT" --log "$log" --quiet)"
        eval "$out"
        if [[ -n "$BOOT_T_INIT" ]]; then
            kern=$(awk -v i="$BOOT_T_INIT" -v k="${BOOT_T_KERNEL:-0}" 'BEGIN { printf "%.3f", i - k }')
            printf '%-8s run %d: Run /init after %8.3f s (first console line at %s s, after it %s s; exit %s, %s, total %s s)\n' \
                "$vmm" "$i" "$BOOT_T_INIT" "${BOOT_T_KERNEL:-?}" "$kern" "$BOOT_EXIT" "$BOOT_END" "$BOOT_T_TOTAL"
            sum[$vmm]=$(awk -v a="${sum[$vmm]}" -v b="$BOOT_T_INIT" 'BEGIN { print a + b }')
            ksum[$vmm]=$(awk -v a="${ksum[$vmm]}" -v b="$kern" 'BEGIN { print a + b }')
            n[$vmm]=$((n[$vmm] + 1))
        else
            printf '%-8s run %d: Run /init NOT reached (exit %s, %s, total %s s; log %s)\n' \
                "$vmm" "$i" "$BOOT_EXIT" "$BOOT_END" "$BOOT_T_TOTAL" "$log"
        fi
    done
done

declare -A mean kmean
for vmm in $VMMS; do
    if ((n[$vmm])); then
        mean[$vmm]=$(awk -v s="${sum[$vmm]}" -v n="${n[$vmm]}" 'BEGIN { printf "%.3f", s / n }')
        kmean[$vmm]=$(awk -v s="${ksum[$vmm]}" -v n="${n[$vmm]}" 'BEGIN { printf "%.3f", s / n }')
        printf '%-8s mean: %s s to Run /init (%s s after the first console line) over %d boot(s)\n' \
            "$vmm" "${mean[$vmm]}" "${kmean[$vmm]}" "${n[$vmm]}"
    else
        printf '%-8s mean: n/a (no boot reached Run /init)\n' "$vmm"
    fi
done
# "after the first console line": from the kernel's first console line
# ("Linux version", printed when the serial console registers, together with
# all earlier messages) to "Run /init": leaves out QEMU's firmware and the
# earliest kernel setup, which Kestrel and QEMU should spend alike.
if [[ -n "${mean[kestrel]:-}" && -n "${mean[qemu]:-}" ]]; then
    awk -v k="${mean[kestrel]}" -v q="${mean[qemu]}" -v kk="${kmean[kestrel]}" -v kq="${kmean[qemu]}" \
        'BEGIN { printf "ratio kestrel/qemu: %.2f (VMM start to Run /init), %.2f (after the first console line)\n", k / q, kk / kq }'
fi
