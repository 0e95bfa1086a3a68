"""The vif specification of ``xl-network-configuration(5)``.

A vif spec is ``key=value`` settings separated by commas (xl splits with ``strtok``, so
empty items are skipped, and strips leading spaces).  xl only prints a message for an
unknown key or a bad MAC and carries on; we refuse them, naming the key and its position.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal, Required, TypedDict

from xentool.config.limits import script_escapes
from xentool.config.model import NicType, VifSpec

UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1


class VifSpecError(ValueError):
    """A bad vif spec; ``offset`` is the 0-based index of the bad item in the spec."""

    def __init__(self, message: str, spec: str, offset: int) -> None:
        self.message = message
        self.spec = spec
        self.offset = offset
        super().__init__(f"{message} in vif spec '{spec}'")


@dataclass(frozen=True)
class VifWarning:
    message: str
    offset: int


class _VifFields(TypedDict, total=False):
    """The ``VifSpec`` fields a spec sets (all but the MAC), as they are parsed."""

    devid: Required[int]
    trusted: bool
    nictype: NicType
    bridge: str
    ip: str
    script: str
    backend_domname: str
    vifname: str
    model: str
    gatewaydev: str
    rate_bytes_per_interval: int
    rate_interval_usecs: int
    mtu: int


_StringField = Literal["bridge", "ip", "script", "backend_domname", "vifname", "model",
                       "gatewaydev"]
_STRING_KEYS: dict[str, _StringField] = {
    "bridge": "bridge", "ip": "ip", "script": "script", "backend": "backend_domname",
    "vifname": "vifname", "model": "model", "gatewaydev": "gatewaydev"}
_MAC_RE = re.compile(r"([0-9a-fA-F]{1,2})[:-]([0-9a-fA-F]{1,2})[:-]([0-9a-fA-F]{1,2})[:-]"
                     r"([0-9a-fA-F]{1,2})[:-]([0-9a-fA-F]{1,2})[:-]([0-9a-fA-F]{1,2})")


def _strtoull0(s: str) -> tuple[int, int]:
    """C ``strtoull(s, &end, 0)`` for the digit strings the rate regexes allow."""
    if s.startswith(("0x", "0X")) and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        m = re.match(r"[0-9a-fA-F]+", s[2:])
        assert m is not None  # s[2] is a hex digit
        return int(m.group(0), 16), 2 + m.end()
    if s.startswith("0"):
        m = re.match(r"[0-7]*", s[1:])
        assert m is not None  # matches the empty string at least
        return (int(m.group(0), 8) if m.group(0) else 0), 1 + m.end()
    m = re.match(r"[0-9]+", s)
    assert m is not None  # the callers' regexes start s with a digit
    return int(m.group(0)), m.end()


def parse_rate(rate: str) -> tuple[int, int]:
    """``rate=`` value -> (bytes per interval, interval in µs), as ``xlu_vif_parse_rate``."""
    amount, at, interval = rate.partition("@")
    if amount == "":
        raise ValueError(f"no rate specified in rate '{rate}'")
    if not re.fullmatch(r"[0-9]+[GMK]?[Bb]/s", amount):
        raise ValueError(f"invalid rate '{amount}' (expected e.g. 10Mb/s or 1GB/s)")
    n, end = _strtoull0(amount)
    if n == 0 or n > UINT32_MAX:
        raise ValueError(f"rate overflow in '{amount}'")
    unit = amount[end:]
    n *= {"G": 10**9, "M": 10**6, "K": 10**3}.get(unit[0], 1)
    if unit[0] == "b" or unit[1] == "b":
        n //= 8
    usecs = 50000
    if at:
        if not re.fullmatch(r"[0-9]+[mu]?s?", interval):
            raise ValueError(f"invalid replenishment interval '{interval}' "
                             "(expected e.g. 50ms, 1s or 100us)")
        t, end = _strtoull0(interval)
        if t == 0 or t > UINT32_MAX:
            raise ValueError(f"replenishment interval overflow in '{interval}'")
        u = interval[end:end + 1]
        if u in ("s", ""):
            t *= 10**6
        elif u == "m":
            t *= 1000
        if t > UINT32_MAX:
            raise ValueError(f"replenishment interval overflow in '{interval}'")
        usecs = t
    if usecs and n > UINT64_MAX // usecs:
        raise ValueError(f"rate overflow in '{rate}'")
    return n * usecs // 10**6, usecs


def generated_mac(seed: str, devid: int) -> str:
    """A stable locally-administered-looking Xen MAC, ``00:16:3e:xx:xx:xx``.

    libxl draws the last three bytes at random on every create (top bit of the fourth
    byte clear); we derive them from the domain identity and devid instead, so a guest
    keeps its MAC across restarts.
    """
    r = hashlib.sha256(f"{seed}/{devid}".encode()).digest()
    return f"00:16:3e:{r[0] & 0x7f:02x}:{r[1]:02x}:{r[2]:02x}"


def _ulong10(value: str, key: str, offset: int, spec: str) -> int:
    """xl's parse_ulong (strtoul base 10), but the whole value must be a number."""
    if not re.fullmatch(r"[0-9]+", value):
        raise VifSpecError(f"{key}='{value}' is not a number", spec, offset)
    return int(value)


def parse_vif_spec(spec: str, index: int, mac_seed: str,
                   warnings: list[VifWarning] | None = None) -> VifSpec:
    """Parse vif spec number ``index`` (its default devid) of a domain.

    ``mac_seed`` identifies the domain (its uuid or name) for :func:`generated_mac`.
    """
    f: _VifFields = {"devid": index}
    mac: str | None = None
    pos = 0
    for tok in spec.split(","):
        start = pos
        pos += len(tok) + 1
        stripped = tok.lstrip(" ")
        at = start + len(tok) - len(stripped)
        if not stripped:
            continue
        key, eq, value = stripped.partition("=")
        if not eq:
            if stripped == "trusted":
                f["trusted"] = True
            elif stripped == "untrusted":
                f["trusted"] = False
            else:
                raise VifSpecError(f"unknown vif setting '{stripped}' (expected key=value)",
                                   spec, at)
            continue
        if key == "type":
            if value == "vif":
                f["nictype"] = NicType.VIF
            elif value == "ioemu":
                f["nictype"] = NicType.VIF_IOEMU
            else:
                raise VifSpecError(f"type='{value}' is not 'vif' or 'ioemu'", spec, at)
        elif key == "mac":
            m = _MAC_RE.fullmatch(value)
            if m is None:
                raise VifSpecError(f"mac='{value}' is not a MAC address "
                                   "(expected xx:xx:xx:xx:xx:xx)", spec, at)
            octets = [int(x, 16) for x in m.groups()]
            if octets[0] & 1 and warnings is not None:
                warnings.append(VifWarning(f"mac='{value}' is a multicast address", at))
            mac = ":".join(f"{o:02x}" for o in octets)
        elif key in _STRING_KEYS:
            if key == "script" and script_escapes(value):
                raise VifSpecError(f"script='{value}' leaves the script directory "
                                   "(give an absolute path)", spec, at)
            f[_STRING_KEYS[key]] = value
        elif key == "netdev":
            f["gatewaydev"] = value
            if warnings is not None:
                warnings.append(VifWarning("'netdev' is deprecated, use 'gatewaydev'", at))
        elif key == "rate":
            try:
                f["rate_bytes_per_interval"], f["rate_interval_usecs"] = parse_rate(value)
            except ValueError as exc:
                raise VifSpecError(str(exc), spec, at) from None
        elif key == "devid":
            f["devid"] = _ulong10(value, key, at, spec)
        elif key == "mtu":
            f["mtu"] = _ulong10(value, key, at, spec)
        elif key == "accel":
            if warnings is not None:
                warnings.append(VifWarning("'accel' is not supported (ignored, as by xl)",
                                           at))
        else:
            raise VifSpecError(f"unknown vif setting '{key}'", spec, at)
    if mac is None:
        return VifSpec(mac=generated_mac(mac_seed, f["devid"]), mac_generated=True, **f)
    return VifSpec(mac=mac, **f)
