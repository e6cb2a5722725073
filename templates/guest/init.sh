#!/bin/busybox sh
# /init of herd's test guest (built by `herd lab image`): a busybox initramfs that
# reads its NoCloud seed the way cloud-init would and prints what it found on the
# serial console, one "HERD-TEST key=value" line per fact, so a test (or an operator
# with `herd server console-log`) can see what the guest really received.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "HERD-TEST $*"; }
say "booting kernel=$(uname -r)"
# IPv4 only, before the NIC's driver loads: a bridged guest sends nothing unasked
# (no router solicitation, no duplicate-address probe) onto the lab's provider LAN.
for knob in all default; do
    echo 1 > "/proc/sys/net/ipv6/conf/$knob/disable_ipv6" 2>/dev/null
done
ip link set lo up

# Drivers the cloud kernel has only as modules, in dependency order.
while read -r module; do
    insmod "/lib/modules/$module.ko" || say "insmod-failed=$module"
done < /etc/herd-modules

# The seed: an iso9660 filesystem labelled cidata, on any disk (as cloud-init finds it).
mkdir -p /seed
seed=""
tries=0
while [ -z "$seed" ] && [ "$tries" -lt 100 ]; do
    for dev in /dev/vd? /dev/sr?; do
        [ -b "$dev" ] || continue
        if mount -t iso9660 -o ro "$dev" /seed 2>/dev/null; then
            if [ -f /seed/meta-data ]; then seed="$dev"; break; fi
            umount /seed
        fi
    done
    [ -n "$seed" ] || { tries=$((tries + 1)); sleep 0.1; }
done
if [ -z "$seed" ]; then
    say "seed=none"
else
    say "seed=$seed"
    value() { sed -n "s/^$1: *//p" /seed/meta-data | head -n 1 | tr -d "\"'"; }
    say "instance-id=$(value instance-id)"
    say "local-hostname=$(value local-hostname)"
    hostname "$(value local-hostname)"
    grep -E '^ *- *"?(ssh|ecdsa)-' /seed/meta-data | sed 's/^ *- *//; s/"//g' | while read -r key; do
        say "ssh-key=$key"
    done
fi

# The root disk, grown by herd to the flavor's size.
if [ -e /sys/block/vda/size ]; then
    say "root-disk-bytes=$(( $(cat /sys/block/vda/size) * 512 ))"
fi
# Every disk (root, seed, volumes) by name, size and serial (herd gives a volume's
# UUID as its serial: the kernel names disks in the order it finds them, whatever name
# libvirt was asked for), then a watcher that says when a disk is hot-plugged, removed
# or grown: "disk-added=vdc bytes=N serial=S".
disks() {
    for block in /sys/block/vd*; do
        [ -e "$block/size" ] || continue
        serial=$(cat "$block/serial" 2>/dev/null | tr -cd 'A-Za-z0-9._-')
        echo "${block##*/} $(( $(cat "$block/size") * 512 )) ${serial:--}"
    done
}
disks | while read -r name bytes serial; do say "disk=$name bytes=$bytes serial=$serial"; done
(
    disks > /tmp/disks.seen
    while sleep 0.5; do
        disks > /tmp/disks.now
        awk 'NR == FNR { old[$1] = $2; next }
             { now[$1] = $2
               if (!($1 in old)) print "disk-added=" $1 " bytes=" $2 " serial=" $3
               else if (old[$1] != $2) print "disk-resized=" $1 " bytes=" $2 " serial=" $3 }
             END { for (d in old) if (!(d in now)) print "disk-removed=" d }' \
            /tmp/disks.seen /tmp/disks.now | while read -r line; do say "$line"; done
        mv /tmp/disks.now /tmp/disks.seen
    done
) &

# network-config v2: give each NIC, matched by MAC, the addresses herd allocated,
# and the default route where herd gave a gateway.
if [ -f /seed/network-config ]; then
    awk '/macaddress:/ { gsub(/["'\'']/, "", $2); mac = tolower($2) }
         /^ *- *[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\/[0-9]+/ { if (mac != "") print "addr", mac, $2 }
         /^ *via: */ { if (mac != "") print "via", mac, $2 }' \
        /seed/network-config > /tmp/addresses
    while read -r kind mac value; do
        for nic in /sys/class/net/*; do
            [ "$(cat "$nic/address")" = "$mac" ] || continue
            name="${nic##*/}"
            ip link set "$name" up
            if [ "$kind" = addr ]; then
                ip addr add "$value" dev "$name"
                say "ip=$value nic=$name mac=$mac"
            else
                ip route add default via "$value" dev "$name"
                say "route=default via $value nic=$name"
            fi
        done
    done < /tmp/addresses
    for nic in /sys/class/net/*; do
        [ "${nic##*/}" = lo ] && continue
        say "nic=${nic##*/} mac=$(cat "$nic/address")"
    done
fi

# Reachability end to end: the guest answers HTTP on port 80 with its instance-id.
# /cgi-bin/disk lets a test look inside from outside: ?op=list names the disks,
# ?op=write&dev=vdc&marker=M writes "HERD-MARKER M" 1 MiB into the disk (and syncs it),
# ?op=read&dev=vdc reads it back.
if [ -n "$seed" ]; then
    mkdir -p /www/cgi-bin
    value instance-id > /www/index.html
    cat > /www/cgi-bin/disk <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
arg() { echo "&$QUERY_STRING" | sed -n "s/.*&$1=\([A-Za-z0-9._-]*\).*/\1/p"; }
op=$(arg op); dev=$(arg dev); marker=$(arg marker)
case "$op" in
list)
    for block in /sys/block/vd*; do echo "${block##*/} $(( $(cat "$block/size") * 512 ))"; done
    exit 0 ;;
esac
case "$dev" in vd[a-z]) ;; *) echo "error: dev must be vda..vdz"; exit 0 ;; esac
[ -b "/dev/$dev" ] || { echo "error: no /dev/$dev"; exit 0; }
case "$op" in
write)
    [ -n "$marker" ] || { echo "error: no marker"; exit 0; }
    printf 'HERD-MARKER %s\n' "$marker" | dd of="/dev/$dev" bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null
    sync
    echo "wrote $marker to $dev" ;;
read)
    echo 3 > /proc/sys/vm/drop_caches
    dd if="/dev/$dev" bs=512 skip=2048 count=1 2>/dev/null | tr -d '\000' | head -n 1 ;;
*)
    echo "error: op must be list, write or read" ;;
esac
CGI
    chmod 755 /www/cgi-bin/disk
    httpd -p 80 -h /www && say "httpd=80"
fi

if [ -f /seed/user-data ]; then
    say "user-data-bytes=$(wc -c < /seed/user-data)"
    echo "HERD-TEST user-data-begin"
    head -n 40 /seed/user-data
    echo "HERD-TEST user-data-end"
    # A peer named in the user data ("# herd-test-peer: ADDRESS"): fetch its page, to
    # show one guest reaching another by the address herd gave it.
    peer=$(sed -n 's/^# *herd-test-peer: *\([0-9.]*\).*/\1/p' /seed/user-data | head -n 1)
    if [ -n "$peer" ]; then
        reply=""
        tries=0
        while [ -z "$reply" ] && [ "$tries" -lt 30 ]; do
            # nc rather than wget, which crashes in the static busybox.
            reply=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$peer" 80 2>/dev/null | tail -n 1)
            [ -n "$reply" ] || { tries=$((tries + 1)); sleep 1; }
        done
        say "peer=$peer reply=${reply:-none}"
    fi
fi

say "ready"
# A root shell on the serial console for `herd server console`; respawned on exit.
while true; do
    setsid cttyhack sh -l
done
