#!/usr/bin/env bash
# Tier 3: boot Linux 6.1 on Kestrel and check what the kernel reports.
#
# Usage: tests/linux/test-linux.sh [--vmm VMM] [--boots "LIST"] [--timeout S] [--initrd FILE]
#
#   --vmm VMM     kestrel (default: $KESTREL or <repo>/build/kestrel), a path to a
#                 Kestrel binary, or qemu (for comparison). Also settable as $VMM.
#   --boots LIST  space-separated KERNEL:CPUS items, KERNEL being vmlinux or
#                 bzImage (default "vmlinux:1 vmlinux:2 bzImage:1"); also $BOOTS.
#   --timeout S   per boot (default 900)
#   --check-log LOG  do not boot: run the checks on a log boot.sh wrote before
#                 (LOG and LOG.result); repeatable. With --initrd when that
#                 boot had one.
#   --initrd FILE boot with this initramfs (the normal busybox path of
#                 mkinitramfs.sh, for hosts where guest user space works); the
#                 checks then expect its KESTREL-INIT-DONE line instead of the
#                 kernel-only path's "No working init found" panic.
#
# The kernel is built (or taken from the cache) by build-kernel.sh. Every boot
# is checked for:
#   - "Run /init as init process" reached (host-side time reported)
#   - "smp: Brought up 1 node, N CPU(s)" for the N CPUs given
#   - the RTC line "rtc_cmos <dev>: setting system clock to ..."
#   - no "ACPI Error" / "ACPI BIOS Error" / "ACPI Warning" lines (listed if any)
#   - "Kernel command line: <exactly what was passed>"
#   - no "BUG:" / "WARNING:" / "Oops" / general protection fault lines
#   - the expected end: kernel-only path: panic "No working init found";
#     with --initrd: the busybox /init's "KESTREL-INIT-DONE" line
#   - the VMM exited by itself, with status 0, within the timeout
# Each check prints "PASS ..." or "FAIL ..."; the last line is "N passed, M failed".
# Exit status: 0 if everything passed, 1 otherwise, 2 on a usage/build error.
# Logs: $KESTREL_CACHE/logs/test-linux-<vmm>-<date>/.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"

VMM="${VMM:-kestrel}"
BOOTS="${BOOTS:-vmlinux:1 vmlinux:2 bzImage:1}"
TIMEOUT=900
INITRD=""
CHECK_LOGS=()
while (($#)); do
    case "$1" in
        --vmm) VMM="$2"; shift 2 ;;
        --boots) BOOTS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --initrd) INITRD="$2"; shift 2 ;;
        --check-log) CHECK_LOGS+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-linux.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ((${#CHECK_LOGS[@]})); then
    vmmname=log
elif [[ "$VMM" != qemu ]]; then
    bin="$VMM"; [[ "$VMM" == kestrel ]] && bin="${KESTREL:-$HERE/../../build/kestrel}"
    [[ -x "$bin" ]] || { echo "test-linux.sh: Kestrel binary $bin not found; build it first" >&2; exit 2; }
    VMM="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    vmmname=kestrel
else
    command -v qemu-system-x86_64 >/dev/null || { echo "test-linux.sh: qemu-system-x86_64 not installed" >&2; exit 2; }
    vmmname=qemu
fi


passed=0; failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { # check NAME STATUS [detail]: STATUS 0 is a pass
    if [[ $2 == 0 ]]; then pass "$1${3:+ ($3)}"; else fail "$1${3:+ ($3)}"; fi
}

# check_boot TAG LOG: the checks, on a log written by boot.sh (and LOG.result).
check_boot() {
    local tag="$1" log="$2" text r want acpi bad
    # shellcheck disable=SC1090
    source "$log.result"
    echo "   exit status $BOOT_EXIT ($BOOT_END), kernel started at ${BOOT_T_KERNEL:-never}," \
         "Run /init at ${BOOT_T_INIT:-never}, total ${BOOT_T_TOTAL}s"

    # Console text without the "[  12.345] " host-time prefix, the kernel's own
    # "[    1.234567] " printk time and boot.sh's "#" notes.
    text="$(grep -v '^#' "$log" | sed -E 's/^\[ *[0-9.]+\] //; s/^\[ *[0-9]+\.[0-9]+\] //')"
    has() { grep -qE -- "$1" <<<"$text"; }

    has 'Run /init as init process'; check "$tag: reached \"Run /init as init process\"" $? \
        "${BOOT_T_INIT:+after ${BOOT_T_INIT}s}"

    if [[ $BOOT_CPUS == 1 ]]; then want="smp: Brought up 1 node, 1 CPU"; else want="smp: Brought up 1 node, $BOOT_CPUS CPUs"; fi
    has "^$want\$"; r=$?
    check "$tag: CPU count line \"$want\"" $r \
        "$( ((r)) && { grep -oE 'smp: Brought up.*' <<<"$text" | head -1 || echo 'no smp line'; } )"

    has '^rtc_cmos [^ ]+: setting system clock to '; r=$?
    check "$tag: RTC line" $r \
        "$(grep -oE 'rtc_cmos [^ ]+: setting system clock to .*' <<<"$text" | head -1 || echo 'no RTC line')"

    acpi="$(grep -E 'ACPI (BIOS )?(Error|Warning)' <<<"$text" || true)"
    if [[ -z "$acpi" ]]; then
        pass "$tag: no ACPI Error/Warning lines"
    else
        fail "$tag: $(wc -l <<<"$acpi") ACPI Error/Warning line(s):"
        sed 's/^/       /' <<<"$acpi"
    fi

    grep -qxF -- "Kernel command line: $BOOT_CMDLINE" <<<"$text"; r=$?
    check "$tag: kernel command line echoed" $r \
        "$( ((r)) && { grep -oE 'Kernel command line: .*' <<<"$text" | head -1 || echo 'no command line echo'; } )"

    bad="$(grep -E '^(BUG:|WARNING:|Oops|general protection fault|invalid opcode:|Unable to handle kernel)' <<<"$text" || true)"
    if [[ -z "$bad" ]]; then
        pass "$tag: no kernel BUG/WARNING/Oops lines"
    else
        fail "$tag: kernel BUG/WARNING/Oops lines:"
        sed 's/^/       /' <<<"$bad"
    fi

    if [[ -n "$INITRD" ]]; then
        has 'KESTREL-INIT-DONE'; check "$tag: busybox /init ran to KESTREL-INIT-DONE" $?
    else
        has '^Kernel panic - not syncing: No working init found'; r=$?
        check "$tag: kernel-only path ended as expected (panic \"No working init found\")" $r \
            "$( ((r)) && { grep -E 'Kernel panic|BUG:|Oops|KVM internal error' <<<"$text" | head -3 | tr '\n' ' ' || echo 'no panic line'; } )"
    fi
    if [[ "$BOOT_END" == kvm-internal-error ]]; then
        grep -E 'KVM internal error|RIP=|emulation failure' <<<"$text" | head -4 | sed 's/^/       /'
    fi

    check "$tag: VMM exited by itself within the timeout" "$([[ $BOOT_END == exited ]]; echo $?)" \
        "$BOOT_END after ${BOOT_T_TOTAL}s"
    check "$tag: VMM exit status 0" "$([[ $BOOT_EXIT == 0 ]]; echo $?)" "status $BOOT_EXIT"
}

if ((${#CHECK_LOGS[@]})); then
    for log in "${CHECK_LOGS[@]}"; do
        [[ -f "$log" && -f "$log.result" ]] || { echo "test-linux.sh: $log or $log.result missing" >&2; exit 2; }
        echo "== log: $log"
        check_boot "$(basename "$log" .log)" "$log"
    done
    echo "$passed passed, $failed failed"
    ((failed == 0))
    exit
fi

echo "== building the kernel (cached)"
kout="$("$HERE/build-kernel.sh")" || { echo "test-linux.sh: kernel build failed" >&2; exit 2; }
eval "$kout"
echo "   vmlinux: $VMLINUX"
echo "   bzImage: $BZIMAGE"

LOGDIR="$CACHE/logs/test-linux-$vmmname-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$LOGDIR"
echo "== logs in $LOGDIR"

for item in $BOOTS; do
    kname="${item%%:*}"; cpus="${item##*:}"
    case "$kname" in
        vmlinux) kernel="$VMLINUX" ;;
        bzImage) kernel="$BZIMAGE" ;;
        *) echo "test-linux.sh: bad boot item $item" >&2; exit 2 ;;
    esac
    tag="$vmmname $kname ${cpus}cpu"
    log="$LOGDIR/$kname-${cpus}cpu.log"
    echo "== boot: $tag (timeout ${TIMEOUT}s)"
    args=(--cpus "$cpus" --timeout "$TIMEOUT" --log "$log" --quiet)
    [[ -n "$INITRD" ]] && args+=(--initrd "$INITRD")
    "$HERE/boot.sh" "$VMM" "$kernel" "${args[@]}" > /dev/null
    if [[ ! -f "$log.result" ]]; then
        fail "$tag: boot.sh did not run (see above)"
        continue
    fi
    check_boot "$tag" "$log"
done

echo "$passed passed, $failed failed"
((failed == 0))
