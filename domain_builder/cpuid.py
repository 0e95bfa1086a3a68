"""xl.cfg's ``cpuid="host,NAME=VALUE,..."`` as the CPUID policy libxl hands to libxenguest.

libxl turns each ``NAME=VALUE`` into a 32-character policy string for one register of
one CPUID leaf (``xc_xend_cpuid``): bit 31 first, each character ``0``/``1`` (force),
``x`` (Xen's default), ``k`` or ``s`` (the host's value); the first item must be
``host``.  The entries keep the order in which their leaves first appear, which is also
the order libxl stores them in (``b_info.cpuid`` of the domain's configuration).

Names are libxl's one-bit names (``LEGACY``, looked at first) and Xen's featureset
(public/arch-x86/cpufeatureset.h, lower case), from the table the binding was compiled
with.  Multi-bit fields (family, model, ...) and MSR-backed features are refused by name:
xentool does not apply them yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NA = 0xFFFFFFFF  # XEN_CPUID_INPUT_UNUSED: a leaf without subleaves
REGS = ("eax", "ebx", "ecx", "edx")
EAX, EBX, ECX, EDX = range(4)

#: featureset word -> (leaf, subleaf, register), libxl's feature_to_policy for 4.17.
WORDS: dict[int, tuple[int, int, int]] = {
    0: (0x00000001, NA, EDX), 1: (0x00000001, NA, ECX), 2: (0x80000001, NA, EDX),
    3: (0x80000001, NA, ECX), 4: (0x0000000D, 1, EAX), 5: (0x00000007, 0, EBX),
    6: (0x00000007, 0, ECX), 7: (0x80000007, NA, EDX), 8: (0x80000008, NA, EBX),
    9: (0x00000007, 0, EDX), 10: (0x00000007, 1, EAX), 11: (0x80000021, NA, EAX),
    12: (0x00000007, 1, EBX), 13: (0x00000007, 2, EDX), 14: (0x00000007, 1, ECX),
    15: (0x00000007, 1, EDX), 18: (0x80000021, NA, ECX),
}
#: Words that are MSR_ARCH_CAPS bits, not CPUID.
MSR_WORDS = frozenset({16, 17})
#: One-bit names libxl takes besides the featureset (checked first, as libxl does):
#: name -> (leaf, subleaf, register, bit).
LEGACY: dict[str, tuple[int, int, int, int]] = {
    "est": (1, NA, ECX, 7), "cntxid": (1, NA, ECX, 10), "cmpxchg16": (1, NA, ECX, 13),
    "sse4_1": (1, NA, ECX, 19), "sse4.1": (1, NA, ECX, 19), "sse4_2": (1, NA, ECX, 20),
    "sse4.2": (1, NA, ECX, 20), "aes": (1, NA, ECX, 25), "cmpxchg8": (1, NA, EDX, 8),
    "sysenter": (1, NA, EDX, 11), "psn": (1, NA, EDX, 18), "clfsh": (1, NA, EDX, 19),
    "tm": (1, NA, EDX, 29), "ia64": (1, NA, EDX, 30), "pbe": (1, NA, EDX, 31),
    "arat": (6, NA, EAX, 2), "tsc_adjust": (7, 0, EBX, 1), "cmt": (7, 0, EBX, 12),
    "lahfsahf": (0x80000001, NA, ECX, 0), "cmplegacy": (0x80000001, NA, ECX, 1),
    "altmovcr8": (0x80000001, NA, ECX, 4), "nodeid": (0x80000001, NA, ECX, 19),
    "perfctr_core": (0x80000001, NA, ECX, 23), "perfctr_nb": (0x80000001, NA, ECX, 24),
    "invtsc": (0x80000007, NA, EDX, 8), "ppin": (0x80000008, NA, EBX, 23),
    "btc-no": (0x80000008, NA, EBX, 29), "svm_npt": (0x8000000A, NA, EDX, 0),
    "svm_lbrv": (0x8000000A, NA, EDX, 1), "svm_nrips": (0x8000000A, NA, EDX, 3),
    "svm_tscrate": (0x8000000A, NA, EDX, 4), "svm_vmcbclean": (0x8000000A, NA, EDX, 5),
    "svm_decode": (0x8000000A, NA, EDX, 7), "svm_pausefilt": (0x8000000A, NA, EDX, 10),
    "lfence+": (0x80000021, NA, EAX, 2),
}
#: Multi-bit fields libxl takes: not applied here.
MULTI_BIT = frozenset({"maxleaf", "stepping", "model", "family", "brandid", "clflush",
                       "proccount", "localapicid", "procpkg", "nc", "apicidsize",
                       "maxhvleaf"})


class CpuidError(ValueError):
    """A ``cpuid=`` value xentool cannot turn into a policy."""


@dataclass(frozen=True)
class CpuidEntry:
    leaf: int
    subleaf: int  # NA when the leaf has none
    regs: tuple[str | None, str | None, str | None, str | None]

    def to_libxl(self) -> dict[str, object]:
        """As libxl's JSON keeps it: leaf, subleaf if any, then the registers set."""
        out: dict[str, object] = {"leaf": self.leaf}
        if self.subleaf != NA:
            out["subleaf"] = self.subleaf
        for name, value in zip(REGS, self.regs, strict=True):
            if value is not None:
                out[name] = value
        return out


def split(text: str) -> tuple[tuple[str, str], ...]:
    """``host,NAME=VALUE,...`` -> the (NAME, VALUE) items; syntax only (xl_parse's
    strtok on ','; empty items are skipped as strtok skips them)."""
    words = [w for w in text.split(",") if w]
    if not words or words[0] != "host":
        raise CpuidError('the first word must be "host"')
    items = []
    for w in words[1:]:
        name, sep, value = w.partition("=")
        if not sep:
            raise CpuidError(f'missing "=" in {w!r}')
        items.append((name, value))
    return tuple(items)


def _bits(value: str, name: str) -> str:
    """A one-bit field's policy character, as libxl's cpuid_add reads VALUE."""
    num = _strtoul(value)
    if num is not None:
        return "01"[num & 1]
    if value[:1] in ("x", "k", "s"):
        return value[0]
    raise CpuidError(f"invalid value {value!r} for CPUID flag {name!r} (0, 1, x, k or s)")


def _strtoul(text: str) -> int | None:
    """strtoul(text, &end, 0) when it consumes at least one character, else None."""
    import re

    m = re.match(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(1)
    v = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if \
        digits.startswith("0") else int(digits)
    return -v & 0xFFFFFFFFFFFFFFFF if text.lstrip().startswith("-") else v


def _locate(name: str, features: Mapping[str, int]) -> tuple[int, int, int, int]:
    """(leaf, subleaf, register, bit) of a one-bit flag."""
    if name in LEGACY:
        return LEGACY[name]
    if name in MULTI_BIT:
        raise CpuidError(f"CPUID field {name!r} is not applied by xentool yet (only "
                         "one-bit flags are)")
    bit = features.get(name)
    if bit is None:
        raise CpuidError(f"unknown CPUID flag name {name!r}")
    word = bit // 32
    if word in MSR_WORDS:
        raise CpuidError(f"CPUID flag {name!r} is an MSR_ARCH_CAPS bit, which xentool "
                         "does not apply yet")
    if word not in WORDS:
        raise CpuidError(f"CPUID flag {name!r} is in featureset word {word}, which "
                         "xentool does not know")
    leaf, subleaf, reg = WORDS[word]
    return leaf, subleaf, reg, bit % 32


def policy(items: Sequence[tuple[str, str]], features: Mapping[str, int]
           ) -> tuple[CpuidEntry, ...]:
    """The policy entries for ``items`` (from :func:`split`); ``features`` maps
    featureset names to bit numbers (``domain_builder.xenctrl.cpu_feature_bits()``)."""
    order: list[tuple[int, int]] = []
    regs: dict[tuple[int, int], list[list[str] | None]] = {}
    for name, value in items:
        leaf, subleaf, reg, bit = _locate(name, features)
        key = (leaf, subleaf)
        if key not in regs:
            order.append(key)
            regs[key] = [None, None, None, None]
        chars = regs[key][reg] or list("x" * 32)
        chars[31 - bit] = _bits(value, name)
        regs[key][reg] = chars
    out = []
    for key in order:
        r = regs[key]
        out.append(CpuidEntry(key[0], key[1], ("".join(r[0]) if r[0] else None,
                                               "".join(r[1]) if r[1] else None,
                                               "".join(r[2]) if r[2] else None,
                                               "".join(r[3]) if r[3] else None)))
    return tuple(out)
