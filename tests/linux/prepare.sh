#!/usr/bin/env bash
# Tier 3, first step, on this host (not in the slow outer VM): builds what
# the Linux tests boot, cached by content under $KESTREL_CACHE: the guest
# initramfs (lib.sh's linux_setup).
# Ends with "N passed, N failed".
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/tests/linux/lib.sh"
t0=$SECONDS
( linux_setup >/dev/null )
check "guest initramfs for Debian's stock kernel ($((SECONDS - t0)) s)" $?
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
