"""The disk specification language of ``xl-disk-configuration(5)``.

xl parses a disk spec with a flex scanner (``libxlu_disk_l.l``): at each position the rule
with the longest match wins (a rule's trailing context counts towards its length), ties go
to the earlier rule.  That is what makes ``phy:/dev/sda`` a legacy prefix but ``hdc:cdrom``
a positional vdev, and ``target=`` swallow the rest of the spec.  We run the same rule table
the same way, so every spec means what it means to xl; the first error is raised with its
position instead of xl's "near `...'" on stderr.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict

from xentool.config.limits import script_escapes
from xentool.config.model import DiskBackend, DiskFormat, DiskSpec, DiskSpecification


class DiskSpecError(ValueError):
    """A bad disk spec: ``offset`` is the 0-based index into the spec of the bad part."""

    def __init__(self, message: str, spec: str, offset: int, near: str | None) -> None:
        self.message = message
        self.spec = spec
        self.offset = offset
        self.near = near
        text = message if near is None else f"{message}: '{near}'"
        super().__init__(f"{text} in disk spec '{spec}'")


_FORMATS = {"": DiskFormat.RAW, "raw": DiskFormat.RAW, "qcow": DiskFormat.QCOW,
            "qcow2": DiskFormat.QCOW2, "vhd": DiskFormat.VHD, "empty": DiskFormat.EMPTY,
            "qed": DiskFormat.QED}
_BACKENDS = {"phy": DiskBackend.PHY, "tap": DiskBackend.TAP, "qdisk": DiskBackend.QDISK,
             "standalone": DiskBackend.STANDALONE}
_SPECIFICATIONS = {"xen": DiskSpecification.XEN, "virtio": DiskSpecification.VIRTIO}


class _DiskFields(TypedDict, total=False):
    """What the rules have set so far: ``DiskSpec`` fields, the target as ``pdev_path``."""

    vdev: str
    pdev_path: str
    format: DiskFormat
    readwrite: bool
    is_cdrom: bool
    backend: DiskBackend
    backend_domname: str
    script: str
    specification: DiskSpecification
    direct_io_safe: bool
    discard_enable: bool
    trusted: bool
    colo_enable: bool
    colo_host: str
    colo_port: int
    colo_export: str
    active_disk: str
    hidden_disk: str


_StrField = Literal["vdev", "pdev_path", "backend_domname", "script", "colo_host",
                    "colo_export", "active_disk", "hidden_disk"]
_BoolField = Literal["is_cdrom", "direct_io_safe", "discard_enable", "colo_enable"]
_EnumField = Literal["format", "backend", "specification"]
_DiskEnum = DiskFormat | DiskBackend | DiskSpecification


@dataclass
class _State:
    """The mutable parse state (libxlu's DiskParseContext + the disk being filled)."""

    spec: str
    f: _DiskFields
    had_depr_prefix: bool = False
    access_set: bool = False
    pos: int = 0

    def err(self, message: str, near: str | None, offset: int | None = None) -> DiskSpecError:
        return DiskSpecError(message, self.spec, self.pos if offset is None else offset, near)

    def save(self, name: str, field: _StrField, value: str) -> None:
        cur = self.f.get(field)
        if cur:  # xl does not complain about overwriting an empty string
            if field == "pdev_path" and cur in ("trusted", "untrusted"):
                raise self.err(f"{name} respecified (Xen 4.17's xl reads '{cur}' as the "
                               "target: remove it)", value)
            raise self.err(f"{name} respecified", value)
        self.f[field] = value

    def dset(self, field: _EnumField, value: _DiskEnum, unknown: _DiskEnum, near: str,
             what: str) -> None:
        cur = self.f.get(field, unknown)
        if cur is not unknown and cur is not value:
            raise self.err(f"{what} respecified", near)
        self.f[field] = value

    def set_format(self, s: str) -> None:
        fmt = _FORMATS.get(s)
        if fmt is None:
            raise self.err("unknown value for format", s)
        self.dset("format", fmt, DiskFormat.UNKNOWN, s, "format")

    def set_access(self, s: str) -> None:
        if s in ("r", "ro"):
            self.f["readwrite"] = False
        elif s in ("rw", "w", ""):
            self.f["readwrite"] = True
        else:
            raise self.err("unknown value for access", s)

    def vdev_and_devtype(self, s: str) -> bool:
        """``<vdev>:<devtype>`` (deprecated form): True if ``s`` was one."""
        if ":" not in s:
            return False
        vdev, _, devtype = s.rpartition(":")
        self.save("vdev", "vdev", vdev)
        if devtype == "cdrom":
            self.f["is_cdrom"] = True
        elif devtype == "disk":
            self.f["is_cdrom"] = False
        else:
            raise self.err("unknown deprecated type", devtype)
        return True


def _strip(t: str) -> str:
    return t[:-1] if t.endswith(",") else t


def _value(t: str) -> str:
    return _strip(t)[t.index("=") + 1:]


def _positional(st: _State, t: str) -> None:
    t = _strip(t)
    f = st.f
    if f.get("pdev_path") is None:
        st.save("target", "pdev_path", t)
    elif not st.had_depr_prefix and f.get("format", DiskFormat.UNKNOWN) is DiskFormat.UNKNOWN:
        if not f["pdev_path"] and st.vdev_and_devtype(t):
            f["format"] = DiskFormat.EMPTY
        elif t not in _FORMATS:
            raise st.err("unknown value for format (the positional form is "
                         "target,format,vdev,access; give vdev= or a prefix such as phy:)", t)
        else:
            st.set_format(t)
    elif f.get("vdev") is None:
        if not st.vdev_and_devtype(t):
            st.save("vdev", "vdev", t)
    elif not st.access_set:
        st.access_set = True
        st.set_access(t)
    else:
        raise st.err("too many positional parameters", t)


def _legacy_script(st: _State, t: str) -> None:
    st.had_depr_prefix = True
    st.save("script", "script", f"block-{t[:-1]}")


def _unknown_prefix(st: _State, t: str) -> None:
    raise st.err("unknown deprecated disk prefix", st.spec[st.pos:])


def _colo_port(st: _State, t: str) -> None:
    v = _value(t)
    m = re.match(r"[ \t\n\v\f\r]*[+-]?[0-9]+", v)  # atoi()
    port = int(m.group(0)) if m else 0
    if not port:
        raise st.err("unknown value for colo_port", v)
    st.f["colo_port"] = port


def _setter(field: _BoolField, value: bool) -> Callable[[_State, str], None]:
    def act(st: _State, t: str) -> None:
        st.f[field] = value
    return act


def _saver(name: str, field: _StrField) -> Callable[[_State, str], None]:
    def act(st: _State, t: str) -> None:
        st.save(name, field, _value(t))
    return act


def _script(st: _State, t: str) -> None:
    v = _value(t)
    if script_escapes(v):
        raise st.err("relative script leaves the script directory (give an absolute path)", v)
    st.save("script", "script", v)


def _enum_setter(table: Mapping[str, _DiskEnum], field: _EnumField, unknown: _DiskEnum,
                 what: str) -> Callable[[_State, str], None]:
    def act(st: _State, t: str) -> None:
        v = _value(t)
        if v not in table:
            raise st.err(f"unknown value for {what}", v)
        st.dset(field, table[v], unknown, v, what)
    return act


def _depr_prefix(st: _State, t: str) -> None:
    st.had_depr_prefix = True


def _format_prefix(st: _State, t: str) -> None:
    st.had_depr_prefix = True
    st.set_format(t[:-1])


def _bad_type(st: _State, t: str) -> None:
    raise st.err("unknown value for type", t)


def _unknown_param(st: _State, t: str) -> None:
    name = t.split("=", 1)[0]
    raise st.err(f"unknown parameter '{name}'", None)


def _ignore(st: _State, t: str) -> None:
    pass


# (head regex, trailing-context regex or None, action), in libxlu's order.
_RULES: list[tuple[str, str | None, Callable[[_State, str], None]]] = [
    (r"[ \t\n]+", r"(?:[^ \t\n].*)?", _ignore),
    (r"format=[^,]*,?", None, lambda st, t: st.set_format(_value(t))),
    (r"cdrom,?", None, _setter("is_cdrom", True)),
    (r"devtype=cdrom,?", None, _setter("is_cdrom", True)),
    (r"devtype=disk,?", None, _setter("is_cdrom", False)),
    (r"devtype=[^,]*,?", None, _bad_type),
    (r"access=[^,]*,?", None, lambda st, t: st.set_access(_value(t))),
    (r"backend=[^,]*,?", None, _saver("backend", "backend_domname")),
    (r"backendtype=[^,]*,?", None,
     _enum_setter(_BACKENDS, "backend", DiskBackend.UNKNOWN, "backendtype")),
    (r"specification=[^,]*,?", None,
     _enum_setter(_SPECIFICATIONS, "specification", DiskSpecification.UNKNOWN,
                  "specification")),
    (r"vdev=[^,]*,?", None, _saver("vdev", "vdev")),
    (r"script=[^,]*,?", None, _script),
    (r"direct-io-safe,?", None, _setter("direct_io_safe", True)),
    (r"discard,?", None, _setter("discard_enable", True)),
    (r"no-discard,?", None, _setter("discard_enable", False)),
    (r"colo,?", None, _setter("colo_enable", True)),
    (r"no-colo,?", None, _setter("colo_enable", False)),
    (r"colo-host=[^,]*,?", None, _saver("colo-host", "colo_host")),
    (r"colo-port=[^,]*,?", None, _colo_port),
    (r"colo-export=[^,]*,?", None, _saver("colo-export", "colo_export")),
    (r"active-disk=[^,]*,?", None, _saver("active-disk", "active_disk")),
    (r"hidden-disk=[^,]*,?", None, _saver("hidden-disk", "hidden_disk")),
    # libxlu_disk_l.l also has "trusted"/"untrusted" rules, but the scanner Xen 4.17 ships
    # (the pre-generated libxlu_disk_l.c) predates them: there they are positional
    # parameters, so "vdev=x,trusted,target=/y" fails with "target respecified".
    (r"target=.*", None, _saver("target", "pdev_path")),
    (r"[a-z][-a-z0-9]*=[^,],?", None, _unknown_param),
    (r"(?:raw|qcow2?|vhd):", r".*", _format_prefix),
    (r"(?:iscsi|e?nbd|drbd):", r".*", _legacy_script),
    (r"tapdisk:", r".*", _depr_prefix),
    (r"tap2?:", r".*", _depr_prefix),
    (r"aio:", r".*", _depr_prefix),
    (r"ioemu:", r".*", _depr_prefix),
    (r"file:", r".*", _depr_prefix),
    (r"phy:", r".*", _depr_prefix),
    (r"[a-z][a-z0-9]*:", r"(?:[^a-z0-9].*)?", _unknown_prefix),
    (r"[^=,]*,|[^=,]+,?", None, _positional),
]
_Rule = tuple[re.Pattern[str], re.Pattern[str] | None, Callable[[_State, str], None]]


# The rule table is compiled and indexed on first use, not at import: importing this module
# must stay cheap for the verbs that never parse a disk spec (start-up cost of one-shot
# commands).
@functools.cache
def _compiled() -> tuple[_Rule, ...]:
    """``_RULES`` with their regexes compiled."""
    return tuple((re.compile(h), re.compile(t) if t else None, a) for h, t, a in _RULES)


def _first_chars(pattern: str) -> set[str]:
    """The ASCII chars a rule's head can start with (enough for the patterns above)."""
    if pattern.startswith("["):
        cls = pattern[:pattern.index("]", 2) + 1]
        if pattern[len(cls):len(cls) + 1] == "*":  # may match empty: anything can start it
            return {chr(c) for c in range(128)}
        return {chr(c) for c in range(128) if re.fullmatch(cls, chr(c))}
    if pattern.startswith("(?:"):
        firsts = set()
        for alt in pattern[3:pattern.index(")")].split("|"):
            firsts.add(alt[0])
            if alt[1:2] == "?":
                firsts.add(alt[2])
        return firsts
    return {pattern[0]}


@functools.cache
def _first_char_index() -> dict[str, tuple[_Rule, ...]]:
    """For each ASCII char, the rules (in order) whose head can start with it.

    Only a handful of the 36 rules can start at a given char; trying just those keeps a
    spec to a few dozen regex calls.
    """
    firsts = [(_first_chars(r[0].pattern), r) for r in _compiled()]
    return {chr(c): tuple(r for f, r in firsts if chr(c) in f) for c in range(128)}


def preload() -> None:
    """Compile and index the rules now: a resident process (xentoold) forks its commands
    with them ready, instead of building them in each one."""
    _first_char_index()


def _longest(spec: str, pos: int) -> tuple[int, str, Callable[[_State, str], None]] | None:
    best = None
    rules = _first_char_index().get(spec[pos], _compiled())
    for head, trail, act in rules:
        m = head.match(spec, pos)
        if m is None:
            continue
        total = m.end()
        if trail is not None:
            rest = trail.match(spec, m.end())
            assert rest is not None  # every trailing context matches the empty string
            total = rest.end()
        if best is None or total > best[0]:
            best = (total, m.group(0), act)
    return best


def parse_disk_spec(spec: str) -> DiskSpec:
    """Parse one disk spec exactly as ``xlu_disk_parse`` does (Xen 4.17)."""
    st = _State(spec, {})
    while st.pos < len(spec):
        hit = _longest(spec, st.pos)
        if hit is None:  # flex's catch-all "." rule: the rest of the line is reported
            rest = spec[st.pos:].split("\n", 1)[0]
            raise st.err("bad disk syntax", rest)
        _, text, act = hit
        act(st, text)
        st.pos += len(text)
        if not text:  # an empty head can only come from rules that raise; be safe
            raise st.err("bad disk syntax", spec[st.pos:])
    f = st.f
    fmt = f.get("format", DiskFormat.UNKNOWN)
    if fmt is DiskFormat.UNKNOWN:
        fmt = DiskFormat.RAW
    readwrite = f.get("readwrite", True)
    removable = False
    is_cdrom = f.get("is_cdrom", False)
    target = f.get("pdev_path")
    if is_cdrom:
        removable = True
        readwrite = False
        if not target:
            fmt = DiskFormat.EMPTY
    if f.get("vdev") is None:
        raise DiskSpecError("no vdev specified", spec, len(spec), None)
    if target is None and not removable:
        raise DiskSpecError("no target specified (and device not removable)", spec,
                            len(spec), None)
    return DiskSpec(
        vdev=f["vdev"], target=target, format=fmt, readwrite=readwrite, is_cdrom=is_cdrom,
        removable=removable, backend=f.get("backend", DiskBackend.UNKNOWN),
        backend_domname=f.get("backend_domname"), script=f.get("script"),
        specification=f.get("specification", DiskSpecification.UNKNOWN),
        direct_io_safe=f.get("direct_io_safe", False),
        discard_enable=f.get("discard_enable"), trusted=f.get("trusted"),
        colo_enable=f.get("colo_enable"), colo_host=f.get("colo_host"),
        colo_port=f.get("colo_port"), colo_export=f.get("colo_export"),
        active_disk=f.get("active_disk"), hidden_disk=f.get("hidden_disk"))
