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
	# QEMU: the peer for side-by-side runs and benchmarks, and (under TCG)
	# tools/kvmhost's outer VM where this machine's KVM cannot run Linux
	qemu-system-x86 qemu-utils
	# tier 3 and the outer VM: Debian's stock kernel (unmodified), busybox
	# initramfs, a debootstrap'd Debian 12, ssh into it
	linux-image-amd64 busybox-static cpio kmod debootstrap openssh-client
	# benchmarks inside Linux guests
	fio iperf3
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

# Where Kestrel's guests will run: this machine's KVM, or the outer VM.
"$(dirname "$0")/../tools/kvmhost/kvmhost" --probe | sed 's/^/setup.sh: KVM: /' || true
echo "setup.sh: done"
