#!/usr/bin/env bash
# Tier 3, virtio: boot the Linux test kernel with an ext4 root file system on a
# virtio-blk disk (plus a virtio-console and a virtio-rng) and check what the
# kernel reports, what it wrote to the console devices and, from the host
# afterwards, what it did to the disk image.
#
# Usage: tests/linux/test-linux-virtio.sh [--vmm VMM] [--cases "LIST"] [--timeout S] [--keep] [--image-dir D]
#
#   --vmm VMM     kestrel (default: $KESTREL or <repo>/build/kestrel), a path to a
#                 Kestrel binary, or qemu (to validate the checks). Also $VMM.
#   --cases LIST  space-separated, default "pci mmio ro snapshot" (one boot each):
#                   pci       --disk path=IMG --console file=HVC --rng on
#                   mmio      the same with cache=none,transport=mmio on the disk
#                             and transport=mmio on the console and the rng
#                   ro        --disk path=IMG,readonly=on (root still asked rw)
#                   snapshot  --disk path=IMG,snapshot=on
#                 and two more, not run by default, to separate the transport
#                 from the cache mode in the time-to-mount comparison:
#                   pci-nocache  pci with cache=none on the disk
#                   mmio-wb      mmio with the default cache (writeback)
#                 QEMU: virtio-blk-pci (-drive if=virtio), virtconsole on
#                 virtio-serial-pci, virtio-rng-pci; "mmio" is skipped (QEMU's
#                 pc machine has no virtio-mmio), as are the Kestrel-only checks.
#   --timeout S   per boot (default 900)
#   --keep        keep the disk images (in the work directory under /var/tmp)
#   --image-dir D where the work directory (images) goes, default /var/tmp.
#                 The file system matters for cache=none: Kestrel offers the
#                 guest the host's O_DIRECT alignment as the logical block size
#                 (statx STATX_DIOALIGN; 4096 when not reported, e.g. tmpfs).
#
# Kernel command line (boot.sh adds console=ttyS0, the host quirks, panic=-1):
#   root=/dev/vda rw rdinit=/nonexistent console=hvc0
# rdinit=/nonexistent makes the kernel skip its built-in initramfs's /init and
# mount root=/dev/vda itself. The image (mkfs.ext4 -d) holds /kestrel-marker
# and /sbin/init, an executable file that is neither ELF nor a script: the
# kernel looks it up on the mounted root, reads its first bytes and fails with
# ENOEXEC ("Starting init: /sbin/init exists but couldn't execute it (error
# -8)"), which proves it read the file system through virtio-blk, without
# running any guest user space. It then panics "No working init found" and,
# with panic=-1 and --no-reboot, the VMM exits 0.
#
# Each check prints "PASS ..." / "FAIL ..." ("SKIP ..." when it does not apply
# to the VMM); the last line is "N passed, M failed". Exit status 0 if all
# passed, 1 otherwise, 2 on a usage/build/setup error.
# Logs: $KESTREL_CACHE/logs/test-linux-virtio-<vmm>-<date>/ (<case>.log is the
# serial console and the VMM's stderr, <case>.hvc.log the virtio-console file,
# <case>.host.txt the host-side e2fsck/dumpe2fs output).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"

VMM="${VMM:-kestrel}"
CASES="pci mmio ro snapshot"
TIMEOUT=900
KEEP=0
IMAGE_DIR=/var/tmp
SIZE_MB=64
while (($#)); do
    case "$1" in
        --vmm) VMM="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --image-dir) IMAGE_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-linux-virtio.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for c in $CASES; do
    case "$c" in pci|mmio|ro|snapshot|pci-nocache|mmio-wb) ;; *) echo "test-linux-virtio.sh: unknown case $c" >&2; exit 2 ;; esac
done

if [[ "$VMM" != qemu ]]; then
    bin="$VMM"; [[ "$VMM" == kestrel ]] && bin="${KESTREL:-$HERE/../../build/kestrel}"
    [[ -x "$bin" ]] || { echo "test-linux-virtio.sh: Kestrel binary $bin not found; build it first" >&2; exit 2; }
    VMM="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    vmmname=kestrel
else
    command -v qemu-system-x86_64 >/dev/null || { echo "test-linux-virtio.sh: qemu-system-x86_64 not installed" >&2; exit 2; }
    vmmname=qemu
fi
for t in mkfs.ext4 e2fsck dumpe2fs debugfs sha256sum; do
    command -v "$t" >/dev/null || { echo "test-linux-virtio.sh: $t not found (e2fsprogs, coreutils)" >&2; exit 2; }
done

passed=0; failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
skip() { echo "SKIP $*"; }
check() { # check NAME STATUS [detail]: STATUS 0 is a pass
    if [[ $2 == 0 ]]; then pass "$1${3:+ ($3)}"; else fail "$1${3:+ ($3)}"; fi
}

echo "== building the kernel (cached)"
kout="$("$HERE/build-kernel.sh")" || { echo "test-linux-virtio.sh: kernel build failed" >&2; exit 2; }
eval "$kout"
echo "   vmlinux: $VMLINUX"

LOGDIR="$CACHE/logs/test-linux-virtio-$vmmname-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$LOGDIR"
WORK="$(mktemp -d "$IMAGE_DIR/kestrel-virtio-XXXXXX")" || exit 2
cleanup() { if [[ $KEEP == 1 ]]; then echo "== images kept in $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "== logs in $LOGDIR, images in $WORK"

# The root file system's contents.
MARKER="kestrel-virtio-$(date +%s)-$RANDOM$RANDOM"
ROOTDIR="$WORK/rootdir"
mkdir -p "$ROOTDIR/sbin" "$ROOTDIR/dev"
echo "$MARKER" > "$ROOTDIR/kestrel-marker"
printf 'KESTREL-NOT-AN-EXECUTABLE\n' > "$ROOTDIR/sbin/init"
chmod 755 "$ROOTDIR/sbin/init"

make_image() { # make_image IMG: a fresh ext4 image of SIZE_MB MiB
    rm -f "$1"
    truncate -s "${SIZE_MB}M" "$1" &&
    mkfs.ext4 -q -F -L kestrel-root -E lazy_itable_init=0,lazy_journal_init=0 -d "$ROOTDIR" "$1"
}

sb_field() { # sb_field IMG "Field name": value from dumpe2fs -h
    dumpe2fs -h "$1" 2>/dev/null | sed -n "s/^$2: *//p" | head -1
}

NBLOCKS=$((SIZE_MB * 1024 * 1024 / 512))
KCMD="root=/dev/vda rw rdinit=/nonexistent console=hvc0"
declare -A T_MOUNT_HOST T_MOUNT_KERNEL T_PROBE_HOST T_PROBE_KERNEL T_MOUNT_PHASE

run_case() {
    local c="$1" img="$WORK/$1.img" hvc="$LOGDIR/$1.hvc.log" log="$LOGDIR/$1.log"
    local host="$LOGDIR/$1.host.txt" tag="$vmmname $1" args=() r text hvctext line
    local sha_before sha_after mc_before mc_after t_start t_end

    if [[ $c == mmio* && $vmmname == qemu ]]; then
        skip "$tag: QEMU's pc machine has no virtio-mmio transport"
        return
    fi
    echo "== case $c"
    if ! make_image "$img"; then
        fail "$tag: mkfs.ext4 failed"
        return
    fi
    sha_before="$(sha256sum < "$img")"
    mc_before="$(sb_field "$img" "Mount count")"
    : > "$hvc"

    case "$vmmname:$c" in
        kestrel:pci)      args=(--disk "path=$img" --console "file=$hvc" --rng on) ;;
        kestrel:mmio)     args=(--disk "path=$img,cache=none,transport=mmio" --console "file=$hvc,transport=mmio"
                                --rng "on,transport=mmio") ;;
        kestrel:ro)       args=(--disk "path=$img,readonly=on" --console "file=$hvc" --rng on) ;;
        kestrel:snapshot) args=(--disk "path=$img,snapshot=on" --console "file=$hvc" --rng on) ;;
        kestrel:pci-nocache) args=(--disk "path=$img,cache=none" --console "file=$hvc" --rng on) ;;
        kestrel:mmio-wb)  args=(--disk "path=$img,transport=mmio" --console "file=$hvc,transport=mmio"
                                --rng "on,transport=mmio") ;;
        qemu:*)
            local drive="file=$img,if=virtio,format=raw"
            [[ $c == ro ]] && drive+=",readonly=on"
            [[ $c == snapshot ]] && drive+=",snapshot=on"
            [[ $c == pci-nocache ]] && drive+=",cache=none"
            # shellcheck disable=SC2054 # commas inside QEMU option values
            args=(-drive "$drive" -device virtio-rng-pci -device virtio-serial-pci
                  -device virtconsole,chardev=hvc -chardev "file,id=hvc,path=$hvc") ;;
    esac
    [[ $vmmname == kestrel ]] && args+=(-v)
    local bargs=(--timeout "$TIMEOUT" --log "$log" --quiet --extra-cmdline "$KCMD")
    for a in "${args[@]}"; do bargs+=(--vmm-arg "$a"); done

    t_start=$(date +%s)
    "$HERE/boot.sh" "$VMM" "$VMLINUX" "${bargs[@]}" > /dev/null
    t_end=$(date +%s)
    if [[ ! -f "$log.result" ]]; then
        fail "$tag: boot.sh did not run (see above)"
        return
    fi
    # shellcheck disable=SC1090
    source "$log.result"
    echo "   exit status $BOOT_EXIT ($BOOT_END), total ${BOOT_T_TOTAL}s"

    # Console text without the host-time prefix, the printk time and "#" notes.
    text="$(grep -v '^#' "$log" | sed -E 's/^\[ *[0-9.]+\] //; s/^\[ *[0-9]+\.[0-9]+\] //')"
    hvctext="$(tr -d '\r' < "$hvc" | sed -E 's/^\[ *[0-9]+\.[0-9]+\] //')"
    has() { grep -qE -- "$1" <<<"$text"; }
    first() { grep -oE -- "$1" <<<"$text" | head -1; }
    # host and kernel time of the first log line matching a pattern
    times_of() {
        grep -v '^#' "$log" | grep -E -- "$1" | head -1 |
            sed -nE 's/^\[ *([0-9.]+)\] \[ *([0-9]+\.[0-9]+)\] .*/\1 \2/p'
    }

    # --- the VMM and the devices -----------------------------------------
    if [[ $vmmname == kestrel ]]; then
        case $c in
            mmio*) r=0
                  for d in virtio-blk0 virtio-console virtio-rng; do
                      has "^kestrel: $d: virtio-mmio at 0x[0-9a-f]+, GSI [0-9]+\$" || { r=1; echo "       no 'kestrel: $d: virtio-mmio at' line"; }
                  done
                  check "$tag: Kestrel put disk, console and rng on virtio-mmio" $r "$(first '^kestrel: virtio-blk0: virtio-mmio at .*')" ;;
            *)    has '^kestrel: virtio-blk0: PCI 00:[0-9a-f]{2}\.0, BAR0 '; r=$?
                  check "$tag: Kestrel put the disk on virtio-pci" $r "$(first '^kestrel: virtio-blk0: PCI .*' || echo 'no such line')" ;;
        esac
        if [[ $c == ro ]]; then
            has "^kestrel: virtio-blk0: '.*', $NBLOCKS sectors, read-only,"; r=$?
            check "$tag: Kestrel opened the image read-only" $r "$(first '^kestrel: virtio-blk0: .*sectors.*' || echo 'no such line')"
        fi
    fi

    # PCI enumeration lists a virtio-blk function (1af4:1001 transitional,
    # 1af4:1042 modern) only on the PCI transport.
    case $c in
        mmio*) ! has '^pci [0-9a-f:.]+: \[1af4:'; r=$?
              check "$tag: no virtio PCI function enumerated (all on virtio-mmio)" $r \
                  "$( ((r)) && first '^pci [0-9a-f:.]+: \[1af4:.*')" ;;
        *)    has '^pci [0-9a-f:.]+: \[1af4:(1001|1042)\]'; r=$?
              check "$tag: kernel enumerated the virtio-blk PCI function" $r \
                  "$(first '^pci [0-9a-f:.]+: \[1af4:(1001|1042)\].*' || echo 'no pci [1af4:1001/1042] line')" ;;
    esac

    has "^virtio_blk virtio[0-9]+: \[vda\] $NBLOCKS 512-byte logical blocks \([0-9.]+ MB/$SIZE_MB\.0 MiB\)\$"; r=$?
    check "$tag: virtio_blk probed vda with the image's size" $r \
        "$(first '^virtio_blk virtio[0-9]+: \[vda\].*' || echo 'no virtio_blk [vda] line')"

    # --- the root file system --------------------------------------------
    has '^EXT4-fs \(vda\): mounted filesystem (.* )?with ordered data mode'; r=$?
    check "$tag: ext4 mounted from vda" $r "$(first '^EXT4-fs \(vda\): .*' || echo 'no EXT4-fs (vda) line')"
    if [[ $c == ro ]]; then
        # get_tree_bdev() logs the EACCES of the rw open, once per file
        # system type tried, before the read-only retry.
        has '^/dev/root: Can.t open blockdev$'; r=$?
        check "$tag: kernel's rw open of vda refused" $r \
            "$(grep -cE '^/dev/root: Can.t open blockdev$' <<<"$text") x \"/dev/root: Can't open blockdev\""
        # rw open of a read-only block device fails with EACCES; the kernel
        # retries the mount read-only (init/do_mounts.c, mount_block_root).
        has '^VFS: Mounted root \(ext4 filesystem\) readonly on device [0-9]+:0\.$'; r=$?
        check "$tag: root fell back to a read-only mount" $r "$(first '^VFS: .*' || echo 'no VFS line')"
    else
        has '^VFS: Mounted root \(ext4 filesystem\) on device [0-9]+:0\.$'; r=$?
        check "$tag: root mounted read-write" $r "$(first '^VFS: .*' || echo 'no VFS line')"
    fi
    has '^devtmpfs: mounted$'; check "$tag: devtmpfs mounted on the ext4 root's /dev" $? \
        "$(first '^devtmpfs: (mounted|error).*' || echo 'no devtmpfs mount line')"
    has "^Starting init: /sbin/init exists but couldn't execute it \(error -8\)\$"; r=$?
    check "$tag: kernel read /sbin/init from the ext4 root (ENOEXEC)" $r \
        "$( ((r)) && { first '^(Starting init|Run /sbin/init|Failed to execute).*' || echo 'no such line'; } )"

    line="$(grep -E '(I/O error|Buffer I/O|EXT4-fs (error|warning)|EXT4-fs \(vda\): (error|warning|Remounting)|blk_update_request|critical (medium|target) error|JBD2: .*(error|failed))' <<<"$text" | head -3)"
    if [[ -z "$line" ]]; then pass "$tag: no I/O or file-system error lines"
    else fail "$tag: I/O or file-system error lines:"; sed 's/^/       /' <<<"$line"; fi

    line="$(grep -E 'ACPI (BIOS )?(Error|Warning)' <<<"$text" || true)"
    if [[ $vmmname == qemu && -n "$line" ]]; then
        # Known and QEMU's own (README.md): its DSDT's PCI _PRT runs into
        # ACPICA's loop timeout at this host's speed, 30 s per PCI device.
        r="$(grep -c '_PRT due to previous error (AE_AML_LOOP_TIMEOUT)' <<<"$line")"
        ((r)) && echo "   QEMU: $r known \"ACPI Error: ... \\_SB.PCI0._PRT ... AE_AML_LOOP_TIMEOUT\" lines (not counted)"
        line="$(grep -v '_PRT due to previous error (AE_AML_LOOP_TIMEOUT)' <<<"$line" || true)"
    fi
    if [[ -z "$line" ]]; then pass "$tag: no ACPI Error/Warning lines"
    else fail "$tag: ACPI Error/Warning lines:"; sed 's/^/       /' <<<"$line" | head -5; fi

    line="$(grep -E '^(BUG:|WARNING:|Oops|general protection fault|invalid opcode:|Unable to handle kernel)' <<<"$text" || true)"
    if [[ -z "$line" ]]; then pass "$tag: no kernel BUG/WARNING/Oops lines"
    else fail "$tag: kernel BUG/WARNING/Oops lines:"; sed 's/^/       /' <<<"$line"; fi

    # --- virtio-console (hvc0) --------------------------------------------
    has '^printk: console \[hvc0\] enabled$'; check "$tag: hvc0 registered as a console" $?
    # Linux 6.1 loses the replay of the older log on hvc0: virtio_console's
    # init_port_console() calls hvc_alloc(), which registers the console and
    # replays the buffer, before it adds the port to the list put_chars()
    # searches, so those writes fail with -EPIPE and are dropped. From the
    # next message on, hvc0 must get exactly what ttyS0 got (same printk
    # timestamps), in the same order.
    local want got
    want="$(grep -v '^#' "$log" | grep -E '^\[ *[0-9.]+\] \[ *[0-9]+\.[0-9]+\] ' | sed -E 's/^\[ *[0-9.]+\] //' |
            sed -n '/printk: console \[hvc0\] enabled$/,$p' | sed 1d)"
    got="$(tr -d '\r' < "$hvc")"
    r=0
    [[ -n "$want" && "$want" == "$got" ]] || r=1
    check "$tag: hvc0 file = the ttyS0 kernel lines after hvc0 registered" $r \
        "$(grep -c . <<<"$got") lines in the file, $(grep -c . <<<"$want") expected"
    if ((r)); then diff <(echo "$want") <(echo "$got") | head -6 | sed 's/^/       /'; fi
    r=0
    # (On QEMU the virtconsole's hvc0 comes up later, after the vda probe:
    # virtio-serial announces the console port through its control queue.)
    for p in '^EXT4-fs \(vda\): mounted filesystem' '^VFS: Mounted root ' \
             '^Kernel panic - not syncing: No working init found'; do
        grep -qE -- "$p" <<<"$hvctext" || { r=1; echo "       hvc0 file lacks: $p"; }
    done
    check "$tag: hvc0 file has the EXT4, VFS and panic lines" $r

    # --- virtio-rng ---------------------------------------------------------
    if [[ $vmmname == kestrel ]]; then
        line="$(first '^kestrel: virtio-rng: served [0-9]+ bytes$')"
        local n="${line//[^0-9]/}"
        check "$tag: the kernel pulled entropy from virtio-rng" "$([[ -n "$n" && $n -gt 0 ]]; echo $?)" \
            "${line:-no served line}"
    else
        skip "$tag: virtio-rng byte count (Kestrel -v only)"
    fi
    line="$(first '^random: .*')"; [[ -n "$line" ]] && echo "   kernel: $line"

    # --- the end ---------------------------------------------------------------
    has '^Kernel panic - not syncing: No working init found'; r=$?
    check "$tag: ended with the panic \"No working init found\"" $r \
        "$( ((r)) && { grep -E 'Kernel panic|KVM internal error' <<<"$text" | head -2 | tr '\n' ' ' || echo 'no panic line'; } )"
    check "$tag: VMM exited by itself with status 0" "$([[ $BOOT_END == exited && $BOOT_EXIT == 0 ]]; echo $?)" \
        "$BOOT_END, status $BOOT_EXIT after ${BOOT_T_TOTAL}s"
    if [[ "$BOOT_END" == kvm-internal-error ]]; then
        grep -E 'KVM internal error|RIP=|emulation failure' <<<"$text" | head -4 | sed 's/^/       /'
    fi

    # --- the image, from the host -------------------------------------------
    sha_after="$(sha256sum < "$img")"
    mc_after="$(sb_field "$img" "Mount count")"
    {
        echo "# e2fsck -fn $img"; e2fsck -fn "$img" 2>&1; echo "# exit status $?"
        echo "# dumpe2fs -h $img"; dumpe2fs -h "$img" 2>&1
    } > "$host"
    local fsck_rc; fsck_rc="$(sed -n 's/^# exit status //p' "$host")"
    check "$tag: e2fsck -fn clean afterwards" "$([[ $fsck_rc == 0 ]]; echo $?)" "exit $fsck_rc"
    if ((fsck_rc)); then sed -n '2,/^# exit status/p' "$host" | head -8 | sed 's/^/       /'; fi
    line="$(debugfs -R 'cat /kestrel-marker' "$img" 2>/dev/null)"
    check "$tag: marker file intact" "$([[ $line == "$MARKER" ]]; echo $?)"

    case $c in
        pci|mmio|pci-nocache|mmio-wb)
            # The guest panics with the file system mounted, so it is left
            # with needs_recovery set: replay the journal on a copy and check
            # the result too.
            local copy="$WORK/$c.copy.img" rc1 rc2
            cp --sparse=always "$img" "$copy"
            { echo "# e2fsck -fy (journal replay) on a copy"; e2fsck -fy "$copy" 2>&1; echo "# exit status $?"
              echo "# e2fsck -fn on the replayed copy"; e2fsck -fn "$copy" 2>&1; echo "# exit status $?"; } >> "$host"
            read -r rc1 rc2 <<<"$(sed -n 's/^# exit status //p' "$host" | tail -2 | tr '\n' ' ')"
            line="e2fsck -fy exit $rc1 (replayed: $(grep -qi 'recovering journal' "$host" && echo yes || echo no)), then -fn exit $rc2"
            check "$tag: journal replays on a copy and leaves it clean" \
                "$([[ ($rc1 == 0 || $rc1 == 1) && $rc2 == 0 ]]; echo $?)" "$line"
            rm -f "$copy"
            check "$tag: superblock mount count went $mc_before -> $((mc_before + 1))" \
                "$([[ $mc_after == $((mc_before + 1)) ]]; echo $?)" "now $mc_after"
            local lm lms
            lm="$(sb_field "$img" "Last mount time")"
            lms="$(date -d "$lm" +%s 2>/dev/null || echo 0)"
            check "$tag: superblock last mount time within the run" \
                "$((lms >= t_start - 5 && lms <= t_end + 5 ? 0 : 1))" \
                "$lm; run $(date -d "@$t_start" '+%T')..$(date -d "@$t_end" '+%T')"
            ;;
        ro|snapshot)
            check "$tag: image byte-for-byte unchanged (sha256)" "$([[ $sha_before == "$sha_after" ]]; echo $?)"
            check "$tag: superblock mount count unchanged" "$([[ $mc_after == "$mc_before" ]]; echo $?)" \
                "$mc_before -> $mc_after"
            ;;
    esac
    if [[ $c == snapshot && $vmmname == kestrel ]]; then
        line="$(find "$WORK" "$IMAGE_DIR" /var/tmp "${TMPDIR:-/tmp}" -maxdepth 1 -name 'kestrel-snapshot-*' -newer "$ROOTDIR/kestrel-marker" 2>/dev/null | head -3)"
        check "$tag: no snapshot overlay file left behind" "$([[ -z "$line" ]]; echo $?)" "$line"
    fi

    # --- times -----------------------------------------------------------------
    read -r "T_PROBE_HOST[$c]" "T_PROBE_KERNEL[$c]" <<<"$(times_of 'virtio_blk virtio[0-9]+: \[vda\]')"
    read -r "T_MOUNT_HOST[$c]" "T_MOUNT_KERNEL[$c]" <<<"$(times_of 'VFS: Mounted root')"
    # The mount phase: from the kernel line before the first mount attempt's
    # line (the last initcall's) to "VFS: Mounted root", in kernel time.
    T_MOUNT_PHASE[$c]="$(grep -v '^#' "$log" | sed -nE 's/^\[ *[0-9.]+\] \[ *([0-9]+\.[0-9]+)\] (.*)/\1 \2/p' |
        awk '/ (\/dev\/root: Can.t open blockdev|EXT4-fs \(vda\)|VFS: )/ && !start { start = prev }
             / VFS: Mounted root/ && start { printf "%.3f", $1 - start; exit }
             { prev = $1 }')"
    echo "   vda probed at ${T_PROBE_HOST[$c]:-?}s (kernel ${T_PROBE_KERNEL[$c]:-?}), root mounted at" \
         "${T_MOUNT_HOST[$c]:-?}s (kernel ${T_MOUNT_KERNEL[$c]:-?}), mount phase ${T_MOUNT_PHASE[$c]:-?}s"
    rm -f "$img"
}

for c in $CASES; do
    run_case "$c"
done

echo "== time to mount the root"
echo "   host: seconds since the VMM started; kernel: printk time; mount phase: kernel seconds"
echo "   from the line before the first mount attempt (the last initcall's) to \"VFS: Mounted root\""
printf '   %-12s %10s %12s %10s %12s %12s\n' case "probe host" "probe kernel" "mount host" "mount kernel" "mount phase"
for c in $CASES; do
    [[ -n "${T_MOUNT_HOST[$c]:-}${T_PROBE_HOST[$c]:-}" ]] || continue
    printf '   %-12s %10s %12s %10s %12s %12s\n' "$c" "${T_PROBE_HOST[$c]:--}" "${T_PROBE_KERNEL[$c]:--}" \
        "${T_MOUNT_HOST[$c]:--}" "${T_MOUNT_KERNEL[$c]:--}" "${T_MOUNT_PHASE[$c]:--}"
done

echo "$passed passed, $failed failed"
((failed == 0))
