#!/bin/sh
# Brings up a Xen dom0 the way a Debian host with xen-utils would, minus systemd: kernel
# modules, xenfs, xenstored, xen-init-dom0, xenconsoled and a bridge. Then starts the job agent
# that runs the host's commands. Progress lines start with XENTOOL-TESTBED for the host's log.
src=$1
say() { echo "XENTOOL-TESTBED: $*" > /dev/hvc0; }
die() { echo "XENTOOL-TESTBED-FATAL: $*" > /dev/hvc0; sleep 2; poweroff -f; }
set -u

# The checkout is already mounted at its host path, which may lie under /tmp or /run: never
# cover it with a fresh tmpfs. The root disk is a throw-away snapshot, so /tmp can stay on it.
case "$src" in
    /run|/run/*) ;;
    *) mount -t tmpfs -o mode=0755 tmpfs /run ;;
esac
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname xentool-dom0
ip link set lo up

modprobe -a xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback xen-netback \
    loop bridge || die "modprobe failed"
mount -t xenfs xenfs /proc/xen || die "cannot mount xenfs"
grep -q control_d /proc/xen/capabilities || die "not running as a Xen dom0"

mkdir -p /run/xen /run/xenstored /var/lib/xen /var/log/xen/console /var/lib/xenstored
# systemd-tmpfiles makes /run/lock (= /var/lock) on Debian; xenconsole locks the console there.
mkdir -p -m 1777 /run/lock
bin=/usr/lib/xen-4.17/bin
$bin/xenstored --pid-file /run/xen/xenstored.pid || die "xenstored failed"
$bin/xen-init-dom0 > /var/log/xen/xen-init-dom0.log 2>&1 || die "xen-init-dom0 failed"
$bin/xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest \
    --log-dir=/var/log/xen/console || die "xenconsoled failed"
ip link add xenbr0 type bridge && ip link set xenbr0 up || die "cannot create xenbr0"
say "dom0 up: $(xl info | sed -n 's/^xen_version *: //p')"

spool=/run/xentool/spool
kit=/run/xentool/kit
mkdir -p $spool $kit
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 spool $spool || die "no spool share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose kit $kit || die "no guest kit share"
export XENTOOL_GUEST_DIR=$kit XENTOOL_REQUIRE_XEN=1 PYTHONPATH=$src
# No bytecode cache gets written next to the sources on the 9p share, so every command would
# recompile xentool from source (seconds under TCG), which an installed xentool never does.
# The cache lives on the throw-away root disk.
export PYTHONPYCACHEPREFIX=/var/cache/xentool/pycache
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
cd "$src" || die "no checkout"
# tini reaps the daemons' orphans while the agent runs jobs.
exec tini -s -- python3 -u "$src/contrib/testbed/dom0/agent.py" "$spool" > /dev/hvc0 2>&1
