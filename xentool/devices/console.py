"""The primary PV console: one row of the device table.

Unlike disks and vifs it comes from the build (the console page and event channel), is
served by xenconsoled without a hotplug script, and is never attached or detached at run
time; destroy removes it with the domain.
"""

from __future__ import annotations

from xenstore import paths
from xenstore.devices.common import DeviceNodes
from xenstore.devices.console import console_nodes

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from xentool.config.model import DomainConfig

KIND = paths.CONSOLE


def config_nodes(domid: int, config: DomainConfig) -> list[DeviceNodes]:
    """None from the config: the console's nodes are written once the guest is built
    (:func:`built_nodes`)."""
    return []


def preflight(config: DomainConfig) -> None:
    """Nothing in the config can make the console fail."""


def built_nodes(domid: int, evtchn: int, mfn: int) -> DeviceNodes:
    """The console's node set once the builder has its page and event channel."""
    return console_nodes(domid, evtchn, mfn)
