#!/bin/bash
# kvmhost, inside the outer VM: runs chrooted in the host's root file system
# (read-only 9p). Mounts what the command needs, loads the modules the tests
# use, runs the command with the caller's environment and folder, and
# writes its exit status to rc in the run folder (the 9p tag "run", mounted
# at /run/kvmhost).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx 2>/dev/null
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
run=/run/kvmhost
mkdir -p $run
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 run $run; then
	echo "kvmhost: cannot mount the run folder"
	exit 1
fi
. $run/settings   # KVMHOST_RW (paths), KVMHOST_CWD, KVMHOST_TTY, KVMHOST_CMD (array)

# KVM: whichever of kvm_amd / kvm_intel the outer CPU's features allow.
# kvm_amd without virtual GIF: with it (the default where TCG offers vGIF),
# guests with more vCPUs than the outer VM has CPUs wedged or reset the
# outer VM, under QEMU as well as Kestrel (four-vCPU boots of the tier-3
# kernel on a 2-CPU outer VM: of 9, 3 wedged or reset it and 1 guest vCPU
# triple-faulted; with vgif=0, 6 of 6 ran clean). A fault of TCG's nested
# SVM, not of the inner VMM.
if grep -qw svm /proc/cpuinfo; then kvm_mod="kvm_amd vgif=0"; else kvm_mod=kvm_intel; fi
for m in "$kvm_mod" ext4 virtio_blk tun bridge veth 9p; do
	# shellcheck disable=SC2086 # module and parameters
	modprobe $m || echo "kvmhost: modprobe $m failed"
done
[ -e /dev/kvm ] || echo "kvmhost: the outer VM has no /dev/kvm after modprobe $kvm_mod"

# Scratch space that supports O_DIRECT (tmpfs in 6.1 does not): the
# outer VM's disk, an ext4 file system the host made, for /tmp and /var/tmp.
if mount -t ext4 /dev/vda /tmp; then
	chmod 1777 /tmp
	mkdir -p -m 1777 /tmp/.var-tmp
	mount --bind /tmp/.var-tmp /var/tmp
else
	echo "kvmhost: no scratch disk; /tmp is a tmpfs"
	mount -t tmpfs -o mode=1777 tmpfs /tmp
	mount -t tmpfs -o mode=1777 tmpfs /var/tmp
fi

# The read-write folders, over the read-only root (and over the scratch).
i=0
for p in "${KVMHOST_RW[@]}"; do
	mkdir -p "$p" 2>/dev/null
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 "rw$i" "$p" ||
		echo "kvmhost: cannot mount $p read-write"
	i=$((i + 1))
done

ip link set lo up 2>/dev/null
. "$run/env"
mkdir -p -m 700 /tmp/.home
export KESTREL_KVMHOST=direct KESTREL_KVMHOST_INSIDE=1 HOME=/tmp/.home
cd "$KVMHOST_CWD" || { echo 127 >"$run/rc"; exit 0; }
if [ "$KVMHOST_TTY" = 1 ]; then
	# Interactive: the command owns hvc0 as its controlling terminal.
	stty -F /dev/hvc0 sane
	setsid -c "${KVMHOST_CMD[@]}" </dev/hvc0 >/dev/hvc0 2>&1
else
	# Output only, byte for byte (no \r added).
	stty -F /dev/hvc0 raw -echo
	"${KVMHOST_CMD[@]}" </dev/null >/dev/hvc0 2>&1
fi
echo $? >"$run/rc"
