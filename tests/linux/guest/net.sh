# shellcheck shell=sh
# Networking from user space (tests/linux/test-linux-net.sh boots it with
# kestrel.test=net). Parameters on the kernel command line:
#   knet.nic=MAC,MODEL,ADDR,PEER[,UPMIB]  one per NIC, in order (repeatable):
#        the NIC with MAC, driven by MODEL's driver (virtio|e1000); ADDR "dhcp"
#        (busybox udhcpc with /checks/udhcpc.script) or a static A.B.C.D/N;
#        PEER the host end, whose net-peer.py listens on knet.up and
#        knet.down; UPMIB: upload only the first UPMIB MiB of /tmp/data
#   knet.up=PORT knet.down=PORT   net-peer.py's ports on PEER
#   knet.dsize=BYTES knet.dsha=SHA256  what the host sends on knet.down
#   knet.data=down|MIB  the file to upload, /tmp/data: the first NIC's
#        download, or MIB MiB from /dev/urandom made before the first NIC
#   knet.fwd=PORT,BYTES  (first NIC) serve the first BYTES of /tmp/data once
#        with nc -l on PORT after "KNET-FWD-READY": the host fetches them
#        through Kestrel's hostfwd
#   knet.nc=PORT    (first NIC) netconsole to PEER:PORT, then 10 marked lines
#   knet.tmo=S      each transfer's timeout (default 600)
# Per NIC: it has the MAC and the driver, link up; the address (DHCP: the
# lease is applied: address, default route, resolv.conf); a download from
# PEER (size and sha256 as the host said); /tmp/data uploaded to PEER (the
# host checks what it got against the sha256 printed here). Lines the host
# reads:
#   KNET-DATA BYTES SHA256 SECONDS   /tmp/data (generated or downloaded)
#   KNET-LEASE IF ip=... mask=... router=... dns=... server=... lease=...
#   KNET-RESULT down|up IF BYTES SHA256 SECONDS  (up: what was sent)
#   KNET-FWD-READY IF BYTES SHA256
k_nics="" k_dsize="" k_dsha="" k_up="" k_down="" k_data=down k_fwd="" k_nc="" k_tmo=600
# shellcheck disable=SC2013 # words, not lines
for a in $(cat /proc/cmdline); do
	case $a in
	knet.nic=*) k_nics="$k_nics ${a#knet.nic=}" ;;
	knet.dsize=*) k_dsize=${a#*=} ;;
	knet.dsha=*) k_dsha=${a#*=} ;;
	knet.up=*) k_up=${a#*=} ;;
	knet.down=*) k_down=${a#*=} ;;
	knet.data=*) k_data=${a#*=} ;;
	knet.fwd=*) k_fwd=${a#*=} ;;
	knet.nc=*) k_nc=${a#*=} ;;
	knet.tmo=*) k_tmo=${a#*=} ;;
	esac
done

# Seconds since boot, to 1/100 s.
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
short() { echo "$1" | cut -c1-12; }
# nic_by_mac MAC: the interface with that address.
nic_by_mac() {
	for d in /sys/class/net/*; do
		[ "$(cat "$d/address" 2>/dev/null)" = "$1" ] && { basename "$d"; return 0; }
	done
	return 1
}
# pci_id IF: vendor:device of the NIC's PCI function (virtio-net: the parent
# of the virtio device).
pci_id() {
	d=$(readlink -f "/sys/class/net/$1/device")
	case ${d##*/} in virtio*) d=${d%/*} ;; esac
	echo "$(cut -c3- "$d/vendor"):$(cut -c3- "$d/device")"
}
has_addr() { ip -4 -o addr show dev "$1" | grep -q "inet $2/"; }
listening() { netstat -ltn | grep -q ":$1 "; }
data_line() { # data_line SECONDS: the KNET-DATA line for /tmp/data
	k_size=$(wc -c </tmp/data) k_sha=$(sha256sum /tmp/data | cut -c1-64)
	echo "KNET-DATA $k_size $k_sha $1"
}

# Kernel lines the netconsole will replay when it is loaded with a target.
if [ -n "$k_nc" ]; then
	for i in 1 2 3 4 5; do echo "<3>knet: before netconsole, line $i of 5" >/dev/kmsg; done
fi
rm -f /tmp/data
if [ "$k_data" != down ]; then
	k_t0=$(now)
	dd if=/dev/urandom of=/tmp/data bs=1M count="$k_data" 2>/dev/null
	data_line "$(since "$k_t0")"
	check "made /tmp/data: $k_size bytes from /dev/urandom, sha256 $(short "$k_sha")..." [ "$k_size" = $((k_data << 20)) ]
fi

k_first=1
for spec in $k_nics; do
	IFS=, read -r mac model addr peer upmib <<EOF
$spec
EOF
	if ! ifc=$(nic_by_mac "$mac"); then
		fail "no interface with MAC $mac ($(cat /sys/class/net/*/address | tr '\n' ' '))"
		continue
	fi
	drv=$(basename "$(readlink -f "/sys/class/net/$ifc/device/driver")")
	id=$(pci_id "$ifc")
	case $model in
	virtio) want=virtio_net wid=1af4:1041 ;;
	e1000) want=e1000 wid=8086:100e ;;
	esac
	check "$ifc ($mac): driver $drv, PCI $id (want $want, $wid)" [ "$drv" = "$want" -a "$id" = "$wid" ]
	if [ "$model" = e1000 ]; then
		check "$ifc: e1000 probed it (dmesg: Intel(R) PRO/1000 Network Connection)" \
			sh -c "dmesg | grep -q 'e1000 .* $ifc: Intel(R) PRO/1000 Network Connection'"
	fi
	ip link set "$ifc" up
	check "$ifc: carrier up" wait_for 10 grep -qx 1 "/sys/class/net/$ifc/carrier"
	if [ "$model" = e1000 ]; then
		check "$ifc: e1000 link up (dmesg: NIC Link is Up 1000 Mbps Full Duplex)" \
			wait_for 5 sh -c "dmesg | grep -q 'e1000: $ifc NIC Link is Up 1000 Mbps Full Duplex'"
	fi

	if [ "$addr" = dhcp ]; then
		k_t0=$(now)
		udhcpc -i "$ifc" -s /checks/udhcpc.script -q -n -t 8 -T 2 >"/tmp/udhcpc.$ifc" 2>&1
		st=$?
		check "$ifc: udhcpc got a lease in $(since "$k_t0") s (status $st)" [ "$st" = 0 -a -s "/run/udhcpc.$ifc" ]
		[ "$st" = 0 ] || sed 's/^/  udhcpc: /' "/tmp/udhcpc.$ifc"
		echo "KNET-LEASE $ifc $(cat "/run/udhcpc.$ifc" 2>/dev/null)"
		ip4=$(sed -n 's/.*ip=\([0-9.]*\) .*/\1/p' "/run/udhcpc.$ifc" 2>/dev/null)
		gw=$(sed -n 's/.*router=\([0-9.]*\).*/\1/p' "/run/udhcpc.$ifc" 2>/dev/null)
		check "$ifc: the lease's address ${ip4:-?} is on $ifc" has_addr "$ifc" "${ip4:-x}"
		check "$ifc: default route via the lease's router ${gw:-?}" \
			sh -c "ip route show default | grep -q 'via ${gw:-x} dev $ifc'"
		dns=$(sed -n 's/.*dns=\([0-9.,]*\).*/\1/p' "/run/udhcpc.$ifc" 2>/dev/null)
		if [ -n "$dns" ]; then
			check "$ifc: /etc/resolv.conf has the lease's DNS $dns" \
				grep -qx "nameserver ${dns%%,*}" /etc/resolv.conf
		fi
	else
		ip addr add "$addr" dev "$ifc"
		ip4=${addr%/*}
		check "$ifc: static address $addr" has_addr "$ifc" "$ip4"
	fi

	# Host to guest.
	k_t0=$(now)
	timeout "$k_tmo" nc "$peer" "$k_down" </dev/null >/tmp/dl
	st=$? secs=$(since "$k_t0")
	dn=$(wc -c </tmp/dl) dsha=$(sha256sum /tmp/dl | cut -c1-64)
	echo "KNET-RESULT down $ifc $dn $dsha $secs"
	check "$ifc: download from $peer:$k_down: $dn bytes in $secs s, sha256 $(short "$dsha")... = the host's (nc status $st)" \
		[ "$st" = 0 -a "$dn" = "$k_dsize" -a "$dsha" = "$k_dsha" ]
	if [ ! -f /tmp/data ]; then
		mv /tmp/dl /tmp/data
		data_line 0
	fi
	rm -f /tmp/dl

	# Guest to host: /tmp/data (or its first UPMIB MiB); the host checks
	# what arrived.
	up=/tmp/data usize=$k_size usha=$k_sha
	if [ -n "$upmib" ]; then
		up=/tmp/up
		head -c $((upmib << 20)) /tmp/data >$up
		usize=$(wc -c <$up) usha=$(sha256sum $up | cut -c1-64)
	fi
	k_t0=$(now)
	timeout "$k_tmo" nc "$peer" "$k_up" <$up >/dev/null
	st=$? secs=$(since "$k_t0")
	rm -f /tmp/up
	echo "KNET-RESULT up $ifc $usize $usha $secs"
	check "$ifc: upload of $up ($usize bytes) to $peer:$k_up: nc finished in $secs s (status $st)" [ "$st" = 0 ]

	if [ "$k_first" = 1 ] && [ -n "$k_fwd" ]; then
		# The host fetches it through hostfwd once it sees the READY line.
		fport=${k_fwd%,*} fbytes=${k_fwd#*,}
		fsha=$(head -c "$fbytes" /tmp/data | sha256sum | cut -c1-64)
		head -c "$fbytes" /tmp/data | timeout "$k_tmo" nc -l -p "$fport" >/dev/null &
		pid=$!
		check "$ifc: nc listening on port $fport" wait_for 10 listening "$fport"
		k_t0=$(now)
		echo "KNET-FWD-READY $ifc $fbytes $fsha"
		wait "$pid"
		st=$?
		check "$ifc: hostfwd: nc -l served $fbytes bytes and exited after $(since "$k_t0") s (status $st)" [ "$st" = 0 ]
	fi

	if [ "$k_first" = 1 ] && [ -n "$k_nc" ]; then
		ko=$(grep '/netconsole\.ko' /lib/modules/*/load-order)
		rmmod netconsole 2>/dev/null
		check "$ifc: netconsole loaded, target $peer:$k_nc" \
			insmod "$ko" "netconsole=6665@$ip4/$ifc,$k_nc@$peer/"
		for i in 1 2 3 4 5 6 7 8 9 10; do echo "<3>knet: over netconsole, line $i of 10" >/dev/kmsg; done
		sleep 1
	fi
	k_first=0
done
rm -f /tmp/data

line=$(dmesg | grep -E 'NETDEV WATCHDOG|Tx Unit Hang|hw csum failure|bad gso|unexpected GSO|e1000.*(EEPROM|Invalid MAC|Reset adapter)' | head -2)
check "dmesg: no watchdog, TX hang, checksum or GSO complaints${line:+: $line}" [ -z "$line" ]
