"""Host and domain operations of xl's misc verbs: the Xen console ring, debug keys,
runtime parameters, triggers, sysrq, core dumps, NUMA and CPU topology.

The parsing here follows libxl 4.17 (``libxl_set_parameters``, ``libxl_trigger``) and is
pure; the functions taking a :class:`~xentool.session.Session` do the side effects.
"""

from __future__ import annotations

import os

from xenstore.paths import domain_path
from xentool.errors import HostError, UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from xentool.session import Session

#: Where libxl (and so xl's coredump-* actions) writes a domain's core: ``<dir>/<name>``.
DUMP_DIR = "/var/lib/xen/dump"

#: libxl_trigger names (matched without regard to case, as libxl does) and the
#: XEN_DOMCTL_SENDTRIGGER_* code each sends; "unknown" and "s3resume" send none.
TRIGGERS: dict[str, int | None] = {
    "unknown": None, "power": 3, "sleep": 4, "nmi": 0, "init": 2, "reset": 1,
    "s3resume": None,
}

#: libxl's ERROR_INVAL, which s3resume reports for a guest that is not HVM.
_ERROR_INVAL = -6


def parse_parameters(params: str) -> list[tuple[str, str]]:
    """``set-parameters`` text as libxl splits it: blank-separated ``name=value`` items
    (split at spaces only), ``noNAME`` meaning ``NAME=no``.  Returns (hypfs path, value)
    pairs, written in this order."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(params)
    while i < n and params[i] in " \t":
        i += 1
    while i < n:
        end = params.find(" ", i)
        if end < 0:
            end = n
        item = params[i:end]
        eq = params.find("=", i)
        if (eq < 0 or eq > end) and item.startswith("no"):
            out.append((f"/params/{item[2:]}", "no"))
        elif eq < 0 or eq > end:
            # libxl indexes past a missing '=': refuse instead.
            raise UsageError(f"set-parameters: '{item}' is not name=value or noname")
        else:
            out.append((f"/params/{params[i:eq]}", params[eq + 1:end]))
        i = end
        while i < n and params[i] in " \t":
            i += 1
    return out


def parse_trigger(name: str) -> str | None:
    """The libxl trigger ``name`` names (case-insensitively), or None."""
    low = name.lower()
    return low if low in TRIGGERS else None


def c_strtol(text: str) -> tuple[int, bool]:
    """``strtol(text, &end, 10)``: (value, whether any digit was read), clamped to C
    ``long`` and then, as xl stores it, to ``int``."""
    s = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for c in s:
        if not "0" <= c <= "9":
            break
        digits += c
    if not digits:
        return 0, False
    value = max(-(1 << 63), min((1 << 63) - 1, sign * int(digits)))
    value &= 0xFFFFFFFF  # long -> int: the low 32 bits
    return (value - (1 << 32) if value >= 1 << 31 else value), True


def core_dump_path(name: str | None, domid: int) -> str:
    """Where an on_* coredump action writes a domain's core (libxl's naming)."""
    return os.path.join(DUMP_DIR, name if name is not None else f"domain-{domid}")


def log_prefix(domid: int) -> str:
    """libxl's ``Domain N:`` before a message about a guest (none for dom0)."""
    return f"Domain {domid}:" if 0 < domid < 0x7FF0 else ""


def _errno_text(err: int) -> str:
    # libxl logs strerror(errno) as it is: a call that failed without setting errno
    # (libxenguest's dump of a guest without a p2m) reads "Success" there too.
    return os.strerror(err)


class TriggerFailed(HostError):
    """A trigger Xen (or libxl's rules) refused; xl reports it and still exits 0."""

    exit_code = 0


def send_trigger(s: Session, domid: int, trigger: str, vcpu: int) -> None:
    """Send ``trigger`` (a :data:`TRIGGERS` name) to vCPU ``vcpu`` of the domain as
    ``libxl_send_trigger`` does; :class:`TriggerFailed` carries libxl's message."""
    code = TRIGGERS[trigger]
    if trigger == "s3resume":
        info = s.xc.domain_info(domid)
        if info is not None and info.hvm:
            raise UsageError("trigger s3resume: an HVM guest wakes through its device "
                             "model (qemu), which xentool does not drive")
        # libxl wakes only HVM guests; any other gets ERROR_INVAL.
        raise TriggerFailed(f"{log_prefix(domid)}Send trigger 's3resume' failed, "
                            f"rc={_ERROR_INVAL}", 22, "s3resume")
    err = 22  # EINVAL: libxl's answer for a trigger it has no code for
    if code is not None:
        try:
            s.xc.send_trigger(domid, code, vcpu & 0xFFFFFFFF)
            return
        except OSError as e:
            err = e.errno or 5
    raise TriggerFailed(f"{log_prefix(domid)}Send trigger '{trigger}' failed: "
                        f"{_errno_text(err)}", err, "send_trigger")


def send_sysrq(s: Session, domid: int, letter: str) -> None:
    """Write the sysrq ``letter`` to the guest's ``control/sysrq`` (its kernel acts on it)."""
    if len(letter) != 1:
        raise UsageError("Invalid sysrq.")
    s.xs.write(f"{domain_path(domid)}/control/sysrq", letter)


def dump_core(s: Session, domid: int, path: str) -> None:
    """Write the domain's ELF core to ``path``; failures read as libxl's."""
    try:
        s.xc.dump_core(domid, path)
    except OSError as e:
        raise HostError(f"{log_prefix(domid)}Core dumping domain to {path}: "
                        f"{_errno_text(e.errno or 0)}", e.errno or 0,
                        "dump_core") from e


def set_parameters(s: Session, params: str) -> None:
    """Set Xen's runtime parameters (``xl set-parameters``) through hypfs; the items
    before a failing one stay set, as with libxl."""
    for path, value in parse_parameters(params):
        name = path.removeprefix("/params/")
        if any(c.isspace() for c in name + value):
            raise UsageError(f"set-parameters: blanks inside '{name}={value}'")
        try:
            s.xc.set_parameters(f"{name}={value}")
        except OSError as e:
            raise HostError(f"setting parameters: {_errno_text(e.errno or 0)}",
                            e.errno or 0, "set_parameters") from e


def channel_devids(s: Session, domid: int) -> list[int]:
    """The domain's channels as libxl records them (consoles other than the first)."""
    try:
        entries = s.reader.ls(f"/libxl/{domid}/device/console")
    except OSError as e:
        if e.errno != 2:  # ENOENT: no consoles recorded at all
            raise
        entries = []
    return sorted(int(e) for e in entries if e.isdigit() and e != "0")


def is_stubdom(s: Session, domid: int) -> bool:
    """libxl_is_stubdom: the domain has a numeric ``target``."""
    target = s.reader.get(f"{domain_path(domid)}/target")
    return target is not None and target.isdigit()


def pci_devices(root: str = "/sys/bus/pci/devices") -> list[tuple[int, int, int]]:
    """(segment, bus, devfn) of the host's PCI devices in directory order, as libxl
    lists them for ``info -n``."""
    out = []
    for entry in os.listdir(root):
        if entry.startswith("."):
            continue
        seg, bus, rest = entry.split(":")
        dev, func = rest.split(".")
        out.append((int(seg, 16), int(bus, 16), (int(dev, 16) << 3) | int(func)))
    return out


def pci_topology() -> list[tuple[int, int, int, int | None]]:
    """(segment, bus, devfn, NUMA node or None) of every PCI device of the host."""
    from domain_builder.pcitopo import INVALID_DEV, INVALID_NODE_ID, pci_nodes

    devices = pci_devices()
    nodes = pci_nodes(devices)
    return [(seg, bus, devfn, None if node in (INVALID_NODE_ID, INVALID_DEV) else node)
            for (seg, bus, devfn), node in zip(devices, nodes, strict=True)]
