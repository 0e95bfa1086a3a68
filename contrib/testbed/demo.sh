#!/bin/sh
# Runs inside the testbed dom0: xentool builds the busybox PV guest (Debian kernel + busybox
# initrd) with its own Python domain builder, shows its console, and destroys it.
set -eu
name=demo-guest
cfg=/tmp/$name.cfg
cat > "$cfg" <<CFG
name = "$name"
type = "pv"
kernel = "$XENTOOL_GUEST_DIR/vmlinuz"
ramdisk = "$XENTOOL_GUEST_DIR/initrd.img"
extra = "console=hvc0 xentool.mode=wait"
memory = 128
vcpus = 2
CFG
echo "# xentool create $cfg"
xentool create "$cfg"
xentool list
log=/var/log/xen/console/guest-$name.log
i=0
until grep -q XENTOOL-GUEST-READY "$log" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || { echo "demo: guest did not come up" >&2; xentool destroy $name; exit 1; }
    sleep 0.2
done
echo "# console of $name (last lines):"
grep -a XENTOOL- "$log"
xentool destroy "$name"
echo "# destroyed $name"
xentool list
