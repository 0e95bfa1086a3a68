"""Virtual network interfaces (``vif=`` in xl.cfg, ``network-attach``): one row of the
device table.  Specs are parsed by :mod:`xentool.config.vif` exactly as xl parses them and
mapped here onto what netback and the ``vif-bridge`` hotplug script need.

:mod:`xentool.config` (dataclasses, enums, hashlib) is imported by the functions that
read specs: ``destroy`` and the device list verbs load this module for its row of the
device table only and must not pay for that (start-up cost of one-shot commands)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from xenstore import paths
from xenstore.devices.common import DeviceNodes
from xenstore.devices.vif import MTU_DEFAULT, Vif, random_mac, vif_nodes
from xentool.errors import DeviceError, UsageError

if TYPE_CHECKING:
    from xentool.config.model import DomainConfig, VifSpec
    from xentool.config.xlconf import GlobalConfig

KIND = paths.VIF


def vif_from_spec(v: VifSpec) -> Vif:
    """Map a parsed xl vif spec onto what netback needs; refuse what needs qemu or a
    driver domain."""
    from xentool.config.support import vif_unsupported

    why = vif_unsupported(v)
    if why is not None:
        raise DeviceError(f"vif {v.devid}: {why}")
    rate = None
    if v.rate_bytes_per_interval is not None and v.rate_interval_usecs:
        rate = (v.rate_bytes_per_interval, v.rate_interval_usecs)
    return Vif(devid=v.devid, mac=v.mac, bridge=v.bridge or "xenbr0", script=v.script,
               ip=v.ip, vifname=v.vifname, gatewaydev=v.gatewaydev, rate=rate,
               mtu=v.mtu or MTU_DEFAULT, trusted=True if v.trusted is None else v.trusted)


def parse_vif_args(tokens: Sequence[str], devid: int,
                   gconf: GlobalConfig | None = None) -> Vif:
    """network-attach's ``key=value`` arguments to a ``Vif``; without ``mac=`` a random
    Xen MAC is drawn, as libxl does on attach.  xl.conf's vif defaults (``gconf``) apply
    to what the arguments leave out."""
    from xentool.config.vif import parse_vif_spec

    for tok in tokens:
        if "," in tok:
            raise UsageError(f"network-attach: one setting per argument, got '{tok}'")
    try:
        spec = parse_vif_spec(",".join(tokens), devid, mac_seed="")
    except ValueError as e:
        raise DeviceError(f"network-attach: {e}") from None
    if spec.mac_generated:
        spec = replace(spec, mac=random_mac())
    if gconf is not None:
        from xentool.config.xlconf import apply_nic_defaults

        spec = apply_nic_defaults(spec, gconf)
    return vif_from_spec(spec)


def next_devid(existing: Sequence[int]) -> int:
    """The devid a new vif gets: one past the highest in use, as libxl picks it."""
    return max(existing) + 1 if existing else 0


def config_nodes(domid: int, config: DomainConfig) -> list[DeviceNodes]:
    """The node set of every vif of ``config``, in xl's order."""
    return [vif_nodes(domid, vif_from_spec(v)) for v in config.vifs]


def preflight(config: DomainConfig) -> None:
    """What must hold before a create builds anything."""
    for v in config.vifs:
        vif_from_spec(v)
