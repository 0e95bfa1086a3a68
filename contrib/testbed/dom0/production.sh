#!/bin/sh
# The production profile's set-up (contrib/testbed/run --production), run by
# xentool-testbed-setup.service while systemd boots dom0; Debian's own xen.service starts
# xenstored and xenconsoled meanwhile, as on any Debian 12 dom0.  It does what the README
# tells an operator: installs the xentool package built on the host with apt (no network:
# the image holds its dependencies), puts the example scheduler policy in place and enables
# xentoold.  The checkout is mounted only for the job agent and the tests it runs:
# nothing of it is on any path of the installed xentool.
src=$1
tb=/run/xentool-testbed
say() { echo "XENTOOL-TESTBED: $*" > /dev/hvc0; }
die() { echo "XENTOOL-TESTBED-FATAL: $*" > /dev/hvc0; exit 1; }
set -u

mkdir -p $tb/spool $tb/kit /var/cache/xentool-testbed
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 spool $tb/spool || die "no spool share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose kit $tb/kit \
    || die "no guest kit share"

# The package contrib/testbed/run had contrib/build-deb leave in the checkout's dist/.
set -- "$src"/dist/xentool_*.deb
[ $# = 1 ] && [ -f "$1" ] || die "expected one package in $src/dist, found: $*"
deb=$(basename "$1")
cp "$1" /var/cache/xentool-testbed/ || die "cannot copy $1"
cd /var/cache/xentool-testbed || die "no /var/cache/xentool-testbed"
if ! DEBIAN_FRONTEND=noninteractive apt install -y -o DPkg::Lock::Timeout=300 "./$deb" \
        > $tb/apt.log 2>&1; then
    die "apt install ./$deb failed: $(grep -E '^(E|W): ' $tb/apt.log | tr '\n' ' ')"
fi
cp /usr/share/doc/xentool/examples/sched-policy.toml /etc/xen/ \
    || die "the package has no example policy"
systemctl enable xentoold.service >> $tb/apt.log 2>&1 || die "cannot enable xentoold"
# Enabled now, xentoold is wanted by multi-user.target (its socket by sockets.target), whose
# start jobs were queued before the units existed: asking for the targets again queues
# theirs, ordered after xen.service as at any later boot; the target (and so the job agent)
# waits for them.
systemctl start --no-block sockets.target multi-user.target || die "cannot start the targets"
for unit in xentoold.socket xentoold.service; do
    systemctl list-jobs --no-legend "$unit" | grep -q . || systemctl is-active -q "$unit" \
        || die "enabling $unit queued no start job for it"
done
echo "XENTOOL_SRC=$src" > $tb/env
say "xentool $(dpkg-query -W -f '${Version}' xentool) installed with apt install ./$deb;" \
    "xentoold enabled"
