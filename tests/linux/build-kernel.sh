#!/usr/bin/env bash
# Build the Kestrel tier-3 test kernel (Linux 6.1 from Debian's linux-source-6.1).
#
# Usage: tests/linux/build-kernel.sh [--force]
#
# Environment:
#   KESTREL_CACHE   cache root (default /var/tmp/kestrel-cache); the kernel tree,
#                   build and results live in $KESTREL_CACHE/linux
#   JOBS            make -j value (default: number of CPUs)
#
# Result (stdout, nothing else is printed there):
#   VMLINUX=<cache>/linux/vmlinux     PVH-bootable ELF (boot this one: fast)
#   BZIMAGE=<cache>/linux/bzImage     LZ4-compressed bzImage
#   SYSTEM_MAP=<cache>/linux/System.map
# so callers can do:  eval "$(tests/linux/build-kernel.sh)"
#
# Idempotent: the result is keyed on a hash of kernel.config, initramfs.list,
# init-noexec, patches/*, this script and the source package version. With
# nothing changed a re-run only prints the paths. Progress goes to stderr; the
# build log is $KESTREL_CACHE/linux/build.log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KESTREL_CACHE:-/var/tmp/kestrel-cache}"
OUT="$CACHE/linux"
SRC="$OUT/src"
TARBALL=/usr/src/linux-source-6.1.tar.xz
SRCPKG=linux-source-6.1
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: ERROR: $*" >&2; exit 1; }

print_result() {
    echo "VMLINUX=$OUT/vmlinux"
    echo "BZIMAGE=$OUT/bzImage"
    echo "SYSTEM_MAP=$OUT/System.map"
}

# ---- fast path: nothing changed ---------------------------------------------
# The source package version is read from dpkg's status file (cheap) rather
# than by unpacking anything.
pkg_version() {
    dpkg-query -W -f='${Version}' "$SRCPKG" 2>/dev/null || echo none
}

inputs_hash() {
    {
        echo "srcpkg=$(pkg_version)"
        [[ -f "$TARBALL" ]] && stat -c 'tarball=%s %Y' "$TARBALL"
        for f in "$HERE/kernel.config" "$HERE/initramfs.list" "$HERE/init-noexec" \
                 "$HERE/build-kernel.sh" "$HERE"/patches/*.patch; do
            echo "== ${f#$HERE/}"
            cat "$f"
        done
    } | sha256sum | cut -d' ' -f1
}

KEY="$(inputs_hash)"
if [[ $FORCE == 0 && -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$KEY" &&
      -f "$OUT/vmlinux" && -f "$OUT/bzImage" ]]; then
    log "up to date (key ${KEY:0:12})"
    print_result
    exit 0
fi

# ---- build dependencies --------------------------------------------------------
need_pkgs=()
for p in "$SRCPKG" build-essential flex bison bc libelf-dev libssl-dev lz4 cpio xz-utils python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    log "installing build dependencies: ${need_pkgs[*]}"
    [[ $(id -u) == 0 ]] || die "missing packages (${need_pkgs[*]}) and not root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || apt-get update >&2
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 \
        || die "apt-get install ${need_pkgs[*]} failed"
    KEY="$(inputs_hash)"   # the source package version may have just appeared
fi
[[ -f "$TARBALL" ]] || die "$TARBALL not found (package $SRCPKG)"

mkdir -p "$OUT"

# ---- source tree: unpack + patch (only when the tarball or patches change) ------
SRCKEY="$( { pkg_version; stat -c '%s %Y' "$TARBALL"; cat "$HERE"/patches/*.patch; } | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$SRC/.kestrel-srckey" || "$(cat "$SRC/.kestrel-srckey")" != "$SRCKEY" ]]; then
    log "unpacking $TARBALL into $SRC"
    rm -rf "$SRC" "$OUT/src.tmp"
    mkdir -p "$OUT/src.tmp"
    tar -xf "$TARBALL" -C "$OUT/src.tmp" --strip-components=1
    for p in "$HERE"/patches/*.patch; do
        log "applying ${p#$HERE/}"
        patch -d "$OUT/src.tmp" -p1 --forward --batch --no-backup-if-mismatch -i "$p" >&2 \
            || die "patch ${p#$HERE/} does not apply to $SRCPKG $(pkg_version)"
        # patch may succeed with fuzz somewhere unexpected; insist on the marker.
        grep -rq "Kestrel test kernel" "$OUT/src.tmp/$(sed -n 's#^+++ b/##p' "$p" | head -1)" \
            || die "patch ${p#$HERE/} applied but its change is not in the tree"
    done
    echo "$SRCKEY" > "$OUT/src.tmp/.kestrel-srckey"
    mv "$OUT/src.tmp" "$SRC"
fi

# ---- configuration --------------------------------------------------------------
sed "s#@INIT@#$HERE/init-noexec#" "$HERE/initramfs.list" > "$SRC/kestrel-initramfs.list.new"
if ! cmp -s "$SRC/kestrel-initramfs.list.new" "$SRC/kestrel-initramfs.list" 2>/dev/null; then
    mv "$SRC/kestrel-initramfs.list.new" "$SRC/kestrel-initramfs.list"
else
    rm -f "$SRC/kestrel-initramfs.list.new"
fi

log "configuring (tinyconfig + kernel.config)"
{
    make -C "$SRC" ARCH=x86 tinyconfig
    (cd "$SRC" && ARCH=x86 scripts/kconfig/merge_config.sh -m .config "$HERE/kernel.config")
    make -C "$SRC" ARCH=x86 olddefconfig
} > "$OUT/config.log" 2>&1 || { tail -30 "$OUT/config.log" >&2; die "kernel configuration failed (see $OUT/config.log)"; }

# Every line of the fragment must be in the final .config.
missing=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF -- "$line" "$SRC/.config" || missing+=("$line   (have: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$SRC/.config" || echo 'absent'))")
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -q "^${BASH_REMATCH[1]}=" "$SRC/.config" || missing+=("$line   (have: $(grep "^${BASH_REMATCH[1]}=" "$SRC/.config"))")
    fi
done < "$HERE/kernel.config"
if ((${#missing[@]})); then
    echo "build-kernel: ERROR: these kernel.config settings are not in the final .config" >&2
    echo "build-kernel: (a dependency is missing or the option does not exist in this kernel):" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
cp "$SRC/.config" "$OUT/config"

# ---- build --------------------------------------------------------------------
log "building vmlinux + bzImage with -j$JOBS (log: $OUT/build.log)"
start=$SECONDS
make -C "$SRC" ARCH=x86 -j"$JOBS" vmlinux bzImage > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log" >&2; die "kernel build failed (see $OUT/build.log)"; }
log "built in $((SECONDS - start)) s"

# The PVH entry point must be there, or `--kernel vmlinux` cannot boot.
if command -v readelf >/dev/null; then
    readelf -n "$SRC/vmlinux" | grep -q "Xen.*0x00000012" \
        || die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
fi

cp "$SRC/vmlinux" "$OUT/vmlinux.tmp" && mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
cp "$SRC/arch/x86/boot/bzImage" "$OUT/bzImage.tmp" && mv "$OUT/bzImage.tmp" "$OUT/bzImage"
cp "$SRC/System.map" "$OUT/System.map"
echo "$KEY" > "$OUT/stamp"
log "done: $(stat -c %s "$OUT/vmlinux") bytes vmlinux, $(stat -c %s "$OUT/bzImage") bytes bzImage"
print_result
