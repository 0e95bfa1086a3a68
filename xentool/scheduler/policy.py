"""Weight policy: the TOML file, xl.cfg values as libxl stored them, and the pure
decision of what a domain's weight and cap should be (see :mod:`xentool.scheduler`)."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

from xentool.errors import XentoolError
from xentool.logs import get_logger
from xentool.state import LIBXL_USERDATA_DIR, libxl_userdata_path

log = get_logger("xentool.scheduler")

SCHEDULERS = {5: "credit", 6: "credit2"}  # XEN_SCHEDULER_* ids the controller manages
WEIGHT_MIN, WEIGHT_MAX = 1, 65535
DEFAULT_WEIGHT = 256
DOM0_NAME = "Domain-0"
MAX_POLICY_BYTES = 1 << 20



class PolicyError(XentoolError):
    """A policy file that cannot be used; the message names the file and the offending spot."""


# --------------------------------------------------------------------------------------
# Policy model and parsing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """A weight and a cap, each optional (None: this source says nothing about it)."""

    weight: int | None = None
    cap: int | None = None

    def over(self, lower: Params) -> Params:
        """Fields of ``self``, falling back to ``lower`` where ``self`` has none."""
        return Params(self.weight if self.weight is not None else lower.weight,
                      self.cap if self.cap is not None else lower.cap)

    @property
    def empty(self) -> bool:
        return self.weight is None and self.cap is None


@dataclass(frozen=True)
class Rule:
    index: int  # 1-based, in file order: the first match wins
    patterns: tuple[str, ...]
    params: Params
    pools: tuple[str, ...] | None = None
    schedulers: frozenset[str] | None = None

    @property
    def label(self) -> str:
        return f"rule {self.index} ({', '.join(self.patterns)})"

    def matches(self, name: str, pool: str | None, scheduler: str) -> bool:
        if not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
            return False
        if self.schedulers is not None and scheduler not in self.schedulers:
            return False
        if self.pools is not None:
            return pool is not None and any(fnmatch.fnmatchcase(pool, p) for p in self.pools)
        return True


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    default: Params = Params()
    source: str = "<policy>"

    def rule_for(self, name: str, pool: str | None, scheduler: str) -> Rule | None:
        return next((r for r in self.rules if r.matches(name, pool, scheduler)), None)


def _where(source: str, what: str) -> str:
    return f"{source}: {what}"


def _int_field(source: str, ctx: str, table: Mapping[str, object], key: str, lo: int,
               hi: int) -> int | None:
    if key not in table:
        return None
    v = table[key]
    # TOML booleans are not numbers here, even though Python says bool is an int.
    if isinstance(v, bool) or not isinstance(v, int):
        raise PolicyError(_where(source, f"{ctx}: {key} must be an integer, not {v!r}"))
    if not lo <= v <= hi:
        raise PolicyError(_where(source, f"{ctx}: {key} {v} is out of range {lo}-{hi}"))
    return v


def _params(source: str, ctx: str, table: Mapping[str, object]) -> Params:
    # The cap is per domain and may exceed 100 for multi-vcpu guests; checked per domain.
    return Params(_int_field(source, ctx, table, "weight", WEIGHT_MIN, WEIGHT_MAX),
                  _int_field(source, ctx, table, "cap", 0, 100 * 4096))


def _globs(source: str, ctx: str, key: str, v: object) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(
            isinstance(s, str) and s for s in items):
        raise PolicyError(_where(source, f"{ctx}: {key} must be a non-empty string or list of "
                                 f"non-empty strings, not {v!r}"))
    return tuple(items)


def _check_keys(source: str, ctx: str, table: Mapping[str, object], allowed: set[str]
                ) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(_where(source, f"{ctx}: unknown key '{unknown[0]}' (allowed: "
                                 f"{', '.join(sorted(allowed))})"))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy text; every problem is one ``PolicyError`` line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib says "... (at line L, column C)": keep it, prefixed by the file.
        raise PolicyError(_where(source, str(e))) from None
    _check_keys(source, "top level", doc, {"default", "rule"})
    default = doc.get("default", {})
    if not isinstance(default, dict):
        raise PolicyError(_where(source, "[default] must be a table"))
    _check_keys(source, "[default]", default, {"weight", "cap"})
    rules_doc = doc.get("rule", [])
    if not isinstance(rules_doc, list):
        raise PolicyError(_where(source, "'rule' must be an array of tables ([[rule]])"))
    rules = []
    for i, r in enumerate(rules_doc, 1):
        ctx = f"[[rule]] #{i}"
        if not isinstance(r, dict):
            raise PolicyError(_where(source, f"{ctx} must be a table"))
        _check_keys(source, ctx, r, {"match", "pool", "scheduler", "weight", "cap"})
        if "match" not in r:
            raise PolicyError(_where(source, f"{ctx}: 'match' is missing"))
        patterns = _globs(source, ctx, "match", r["match"])
        ctx = f"{ctx} (match {', '.join(patterns)})"
        params = _params(source, ctx, r)
        if params.empty:
            raise PolicyError(_where(source, f"{ctx}: sets neither weight nor cap"))
        pools = _globs(source, ctx, "pool", r["pool"]) if "pool" in r else None
        scheds = None
        if "scheduler" in r:
            scheds = frozenset(_globs(source, ctx, "scheduler", r["scheduler"]))
            bad = sorted(scheds - set(SCHEDULERS.values()))
            if bad:
                raise PolicyError(_where(source, f"{ctx}: scheduler '{bad[0]}' is not credit "
                                         "or credit2"))
        rules.append(Rule(i, patterns, params, pools, scheds))
    return Policy(tuple(rules), _params(source, "[default]", default), source)


def load_policy(path: str) -> Policy:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy: {e.strerror}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: policy is larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise PolicyError(f"{path}: invalid UTF-8 byte 0x{data[e.start]:02x} (at line {line}, "
                          f"column {col})") from None
    return parse_policy(text, path)


# --------------------------------------------------------------------------------------
# xl.cfg values as libxl stored them
# --------------------------------------------------------------------------------------


def sched_params_from_libxl_json(text: str) -> Params:
    """``cpu_weight``/``cap`` from a libxl domain-config JSON (-1 or absent: not set)."""
    try:
        # libxl stores its userdata with the C string's terminating NUL.
        doc = json.loads(text.split("\0", 1)[0])
        sp = doc.get("b_info", {}).get("sched_params", {})
    except (ValueError, AttributeError):
        return Params()
    if not isinstance(sp, dict):
        return Params()

    def val(key: str, lo: int, hi: int) -> int | None:
        v = sp.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else None

    return Params(val("weight", WEIGHT_MIN, WEIGHT_MAX), val("cap", 0, 100 * 4096))


def libxl_config_path(domid: int, uuid: str, root: str = LIBXL_USERDATA_DIR) -> str:
    """libxl's stored domain config, written by ``xl create``, removed with the domain."""
    return libxl_userdata_path(domid, uuid, "libxl-json", root)


# --------------------------------------------------------------------------------------
# Pure decisions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Current:
    weight: int
    cap: int


@dataclass(frozen=True)
class DomainView:
    """What a decision needs to know about one domain."""

    domid: int
    name: str
    pool: str | None
    scheduler: str  # "credit", "credit2", or another scheduler's name
    vcpus: int  # max_vcpu_id + 1: the cap limit is per possible vcpu, like libxl's
    current: Current
    config: Params = Params()  # the domain's xl.cfg cpu_weight/cap


@dataclass(frozen=True)
class Decision:
    domid: int
    name: str
    scheduler: str
    current: Current
    target: Current
    origin: str  # where the values came from, for the log
    problem: str | None = None  # set when the policy cannot be applied to this domain

    @property
    def changed(self) -> bool:
        return self.problem is None and self.target != self.current

    def describe(self) -> str:
        who = f"domain {self.domid} ({self.name})"
        if self.problem:
            return f"{who}: not changed: {self.problem}"
        parts = [f"{k} {getattr(self.current, k)} -> {getattr(self.target, k)}"
                 for k in ("weight", "cap")
                 if getattr(self.current, k) != getattr(self.target, k)]
        what = ", ".join(parts) if parts else "unchanged"
        return f"{who} [{self.scheduler}]: {what} ({self.origin})"


def decide(policy: Policy, dom: DomainView) -> Decision | None:
    """The weight and cap ``dom`` should have, or None when the policy leaves it alone."""
    if dom.scheduler not in SCHEDULERS.values():
        return None
    rule = policy.rule_for(dom.name, dom.pool, dom.scheduler)
    sources: list[tuple[str, Params]] = []
    if rule is not None:
        sources.append((rule.label, rule.params))
    if dom.domid != 0:
        sources += [("xl.cfg", dom.config), ("default", policy.default)]
    origins = []
    merged = Params()
    for label, p in sources:
        new = merged.over(p)
        if new != merged:
            origins.append(label)
        merged = new
    if merged.empty:
        return None
    target = Current(merged.weight if merged.weight is not None else dom.current.weight,
                     merged.cap if merged.cap is not None else dom.current.cap)
    origin = " + ".join(origins)
    limit = 100 * dom.vcpus
    problem = None
    if target.cap > limit:
        problem = (f"cap {target.cap} from {origin} is more than {limit} "
                   f"({dom.vcpus} vcpu{'s' if dom.vcpus != 1 else ''})")
    return Decision(dom.domid, dom.name, dom.scheduler, dom.current, target, origin, problem)
