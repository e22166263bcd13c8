#!/usr/bin/env bash
# Installs what Kestrel needs to build and test on Debian 12 (run as root).
# Idempotent: packages already present are not touched.
set -euo pipefail

packages=(
	# build
	build-essential make pkg-config
	# tier 1: unit tests
	libcmocka-dev
	# block layer: io_uring; qcow2 compressed clusters (deflate, zstd)
	liburing-dev zlib1g-dev libzstd-dev
	# networking: user-mode networking; tests: namespaces, DHCP server
	libslirp-dev iproute2 dnsmasq-base
	# tier 2: QEMU as a peer for side-by-side runs and benchmarks
	qemu-system-x86 qemu-utils
	# tier 3: the test kernel (Debian's linux-source-6.1) and its build deps
	linux-source-6.1 bc bison flex libelf-dev libssl-dev cpio xz-utils busybox-static
	# test/bench tools
	e2fsprogs python3 procps
)

if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: run as root (it installs Debian packages)" >&2
	exit 1
fi
if [ ! -e /etc/debian_version ]; then
	echo "setup.sh: this script knows Debian/Ubuntu's apt only" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -e /dev/kvm ]; then
	echo "setup.sh: warning: /dev/kvm is missing; Kestrel needs KVM (VT-x/AMD-V)" >&2
fi
echo "setup.sh: done"
