#!/usr/bin/env bash
# Tier 3, first step, on this host (where the Debian archive is reachable,
# and not in the slow outer VM): builds what the Linux tests boot, each
# cached by content under $KESTREL_CACHE: the guest initramfs (lib.sh's
# linux_setup) and the debootstrap'd Debian 12 image (mkdistro.sh).
# Ends with "N passed, N failed".
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/tests/linux/lib.sh"
t0=$SECONDS
( linux_setup >/dev/null )
check "guest initramfs for Debian's stock kernel ($((SECONDS - t0)) s)" $?
t0=$SECONDS
out=$("$ROOT/tests/linux/mkdistro.sh" 2>&1)
st=$?
[ $st = 0 ] || echo "$out" | tail -n 20
check "Debian 12 image (debootstrap, cached; $((SECONDS - t0)) s)" $st
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
