"""Declarative CPU weights for the credit and credit2 schedulers.

Three layers, kept apart so the middle one is tested without Xen:

* **Policy** (``parse_policy``/``load_policy``): a TOML file mapping domain-name patterns to
  a weight and/or cap, optionally restricted to cpupools or schedulers::

      [default]              # guests no rule matches and whose xl.cfg sets nothing
      weight = 256

      [[rule]]
      match = ["web-*", "db"]  # fnmatch globs on the domain name, case-sensitive
      pool = "Pool-0"          # optional: cpupool name globs
      scheduler = "credit2"    # optional: "credit" and/or "credit2"
      weight = 512             # 1-65535
      cap = 50                 # percent of one pCPU, 0 = uncapped

* **Decisions** (``decide``, ``expected_shares``, ``usage``): pure functions.  For each field
  (weight, cap) the value comes from the first rule that matches the domain; when that rule
  leaves the field out, from the domain's own xl.cfg (``cpu_weight``/``cap``, as libxl stored
  it), then from ``[default]``; otherwise the field is left as it is.  Domain-0 is managed only
  by rules: xl.cfg and ``[default]`` concern guests.

* **Controller** (``Controller``): applies decisions through a small ``Backend`` (XenCtrl +
  XenStore in production, fakes in tests), on every ``@introduceDomain``, on policy reload
  and periodically; survives xenstored restarts and domains vanishing mid-update.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import math
import os
import signal
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from xentool.errors import XentoolError

log = logging.getLogger("xentool.sched")

SCHEDULERS = {5: "credit", 6: "credit2"}  # XEN_SCHEDULER_* ids the controller manages
WEIGHT_MIN, WEIGHT_MAX = 1, 65535
DEFAULT_WEIGHT = 256
DOM0_NAME = "Domain-0"
MAX_POLICY_BYTES = 1 << 20

# libxl's stored domain config, ``userdata-d.<domid>.<uuid>.libxl-json`` (written by ``xl
# create``, removed when the domain is destroyed).
LIBXL_USERDATA_DIR = "/var/lib/xen"


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


def _int_field(source: str, ctx: str, table: Mapping[str, Any], key: str, lo: int,
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


def _params(source: str, ctx: str, table: Mapping[str, Any]) -> Params:
    # The cap is per domain and may exceed 100 for multi-vcpu guests; checked per domain.
    return Params(_int_field(source, ctx, table, "weight", WEIGHT_MIN, WEIGHT_MAX),
                  _int_field(source, ctx, table, "cap", 0, 100 * 4096))


def _globs(source: str, ctx: str, key: str, v: Any) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(
            isinstance(s, str) and s for s in items):
        raise PolicyError(_where(source, f"{ctx}: {key} must be a non-empty string or list of "
                                 f"non-empty strings, not {v!r}"))
    return tuple(items)


def _check_keys(source: str, ctx: str, table: Mapping[str, Any], allowed: set[str]) -> None:
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
    return os.path.join(root, f"userdata-d.{domid}.{uuid}.libxl-json")


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


@dataclass(frozen=True)
class Demand:
    weight: int
    cap: int = 0  # percent of one pCPU, 0 = none
    vcpus: int = 1


def expected_shares(demands: Mapping[Any, Demand], capacity: float) -> dict[Any, float]:
    """Weight-proportional fair shares of ``capacity`` (percent of one pCPU times pCPUs)
    for domains that all want as much CPU as they can get.

    A domain never gets more than its cap or one pCPU per vcpu; what it cannot use is
    shared again among the others by weight (water-filling), as credit and credit2 do.
    """
    limits = {k: min(d.cap if d.cap > 0 else math.inf, 100.0 * d.vcpus)
              for k, d in demands.items()}
    shares: dict[Any, float] = {}
    free = dict(demands)
    left = float(capacity)
    while free:
        total = sum(d.weight for d in free.values())
        fair = {k: left * d.weight / total for k, d in free.items()}
        capped = [k for k in free if fair[k] >= limits[k]]
        if not capped:
            shares.update(fair)
            break
        for k in capped:
            shares[k] = limits[k]
            left -= limits[k]
            del free[k]
        left = max(left, 0.0)
    return shares


@dataclass(frozen=True)
class Usage:
    domid: int
    cpu_ns: int  # cpu time used during the interval
    cpu_pct: float  # percent of one pCPU (xentop's CPU%)
    share_pct: float  # percent of the pool's capacity
    expected_pct: float | None  # fair share of the pool's capacity (None: not comparable)


def usage(before: Mapping[int, int], after: Mapping[int, int], seconds: float,
          pool_of: Mapping[int, int], pool_cpus: Mapping[int, int],
          demands: Mapping[int, Demand], active_pct: float = 1.0) -> dict[int, Usage]:
    """Per-domain CPU use between two ``{domid: cpu_time_ns}`` samples ``seconds`` apart.

    Expected shares are computed per cpupool among the domains that used at least
    ``active_pct`` percent of a pCPU, as if they were all CPU-bound; domains of a scheduler
    without weights (no entry in ``demands``) get None.
    """
    if seconds <= 0:
        raise ValueError("the interval must be positive")
    out: dict[int, Usage] = {}
    delta = {d: max(0, after[d] - before[d]) for d in after if d in before}
    by_pool: dict[int, dict[int, Demand]] = {}
    for d, ns in delta.items():
        pct = ns / (seconds * 1e9) * 100
        if d in demands and pct >= active_pct:
            by_pool.setdefault(pool_of[d], {})[d] = demands[d]
    expected: dict[int, float] = {}
    for pool, dem in by_pool.items():
        cap = 100.0 * pool_cpus.get(pool, 0)
        for d, pct in expected_shares(dem, cap).items():
            expected[d] = pct / cap * 100 if cap else 0.0
    for d, ns in delta.items():
        cpu_pct = ns / (seconds * 1e9) * 100
        ncpu = pool_cpus.get(pool_of[d], 0)
        share = cpu_pct / ncpu if ncpu else 0.0
        exp = expected.get(d, 0.0 if d in demands else None)
        out[d] = Usage(d, ns, cpu_pct, share, exp)
    return out


@dataclass(frozen=True)
class StatRow:
    """One line of ``sched-stats``."""

    domid: int
    name: str | None
    pool: str | None
    scheduler: str
    weight: int | None
    cap: int | None
    vcpus: int
    use: Usage

    def as_json(self) -> dict[str, Any]:
        u = self.use
        return {"domid": self.domid, "name": self.name, "cpupool": self.pool,
                "scheduler": self.scheduler, "weight": self.weight, "cap": self.cap,
                "vcpus": self.vcpus, "cpu_ns": u.cpu_ns, "cpu_pct": round(u.cpu_pct, 3),
                "share_pct": round(u.share_pct, 3),
                "expected_pct": None if u.expected_pct is None else round(u.expected_pct, 3)}


STATS_HEADER = (f"{'Name':<24} {'ID':>5} {'Pool':<12} {'Sched':<8} {'Weight':>6} {'Cap':>4} "
                f"{'VCPUs':>5} {'CPU%':>7} {'Share%':>7} {'Expect%':>7}")


def format_stats(rows: Iterable[StatRow]) -> str:
    """The ``sched-stats`` table: CPU% of one pCPU, shares in percent of the pool."""
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def opt(v: int | None) -> str:
        return "-" if v is None else str(v)

    lines = [STATS_HEADER]
    for r in rows:
        lines.append(f"{(r.name or '(null)')[:24]:<24} {r.domid:>5} {(r.pool or '-')[:12]:<12} "
                     f"{r.scheduler[:8]:<8} {opt(r.weight):>6} {opt(r.cap):>4} {r.vcpus:>5} "
                     f"{num(r.use.cpu_pct):>7} {num(r.use.share_pct):>7} "
                     f"{num(r.use.expected_pct):>7}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainBrief:
    """The hypervisor's view of a domain the controller needs (from getdomaininfolist)."""

    domid: int
    uuid: str
    cpupool: int
    vcpus: int
    dying: bool = False


class Backend(Protocol):
    """Xen and XenStore as the controller uses them; errors are ``OSError``s."""

    def domains(self) -> list[DomainBrief]: ...

    def name(self, domid: int) -> str | None: ...

    def pool(self, poolid: int) -> tuple[str | None, str]: ...  # (name, scheduler label)

    def get(self, domid: int, scheduler: str) -> Current: ...

    def set(self, domid: int, scheduler: str, value: Current) -> None: ...

    def config(self, domid: int, uuid: str) -> Params: ...

    def introduced(self, domid: int) -> bool: ...  # xenstored serves it: its build is done


_GONE = (errno.ESRCH, errno.ENOENT, errno.EINVAL)  # what a vanished domain makes calls fail with


@dataclass
class Controller:
    """Keeps every domain's weight and cap as the policy says.

    ``reconcile`` is one pass; ``on_introduce`` the fast path for new domains (``Daemon``
    drives both).  In ``dry_run`` nothing is set and each intended change is reported once.
    """

    backend: Backend
    policy: Policy
    dry_run: bool = False
    report: Callable[[str], None] = log.info
    known: dict[int, str] = field(default_factory=dict)  # domid -> uuid already handled
    _reported: dict[int, Current] = field(default_factory=dict)
    _pools: dict[int, tuple[str | None, str]] = field(default_factory=dict)
    _nameless: set[int] = field(default_factory=set)  # seen before their name was written

    def _pool(self, poolid: int) -> tuple[str | None, str]:
        if poolid not in self._pools:
            self._pools[poolid] = self.backend.pool(poolid)
        return self._pools[poolid]

    def view(self, dom: DomainBrief) -> DomainView | None:
        name = self.backend.name(dom.domid)
        if name is None:  # not (or no longer) in XenStore: dying, or not yet set up
            self._nameless.add(dom.domid)
            return None
        self._nameless.discard(dom.domid)
        pool_name, sched = self._pool(dom.cpupool)
        if sched not in SCHEDULERS.values():
            return DomainView(dom.domid, name, pool_name, sched, dom.vcpus, Current(0, 0))
        current = self.backend.get(dom.domid, sched)
        config = self.backend.config(dom.domid, dom.uuid) if dom.domid != 0 else Params()
        return DomainView(dom.domid, name, pool_name, sched, dom.vcpus, current, config)

    def apply(self, dom: DomainBrief, retry: bool = True) -> Decision | None:
        """Bring one domain in line; a domain that vanishes meanwhile is skipped quietly."""
        try:
            v = self.view(dom)
            if v is None:
                return None
            d = decide(self.policy, v)
            if d is None:
                return None
            if d.problem:
                if self._reported.get(dom.domid) != d.target:
                    log.warning("%s", d.describe())
                    self._reported[dom.domid] = d.target
                return d
            if not d.changed:
                self._reported.pop(dom.domid, None)
                return d
            if self.dry_run:
                if self._reported.get(dom.domid) != d.target:
                    self.report(f"would set {d.describe()}")
                    self._reported[dom.domid] = d.target
                return d
            self.backend.set(dom.domid, d.scheduler, d.target)
            self.report(f"set {d.describe()}")
            return d
        except OSError as e:
            if e.errno not in _GONE:
                raise
            if self.backend_has(dom.domid) and dom.cpupool in self._pools and retry:
                # Alive but refused: the cached pool (and scheduler) may be stale.
                del self._pools[dom.cpupool]
                return self.apply(dom, retry=False)
            log.debug("domain %d went away during the update: %s", dom.domid, e)
            return None

    def backend_has(self, domid: int) -> bool:
        return any(d.domid == domid and not d.dying for d in self.backend.domains())

    def _ready(self, doms: list[DomainBrief]) -> list[DomainBrief]:
        # A domain still being built is left alone: its toolstack has yet to set the xl.cfg
        # weight, which would silently replace ours.  Introduction marks the end of the build.
        out = []
        for d in doms:
            try:
                if not d.dying and self.backend.introduced(d.domid):
                    out.append(d)
            except OSError as e:
                if e.errno not in _GONE:
                    raise
        return out

    def reconcile(self, refresh_pools: bool = True) -> list[Decision]:
        """One pass over every domain."""
        if refresh_pools:
            self._pools.clear()
        doms = self._ready(self.backend.domains())
        out = [d for d in map(self.apply, doms) if d is not None]
        self.known = {d.domid: d.uuid for d in doms}
        for gone in set(self._reported) - set(self.known):
            del self._reported[gone]
        return out

    def on_introduce(self) -> list[Decision]:
        """Handle domains not seen before (new domid, or a domid reused by a new uuid)."""
        doms = [d for d in self.backend.domains() if not d.dying]
        new = self._ready([d for d in doms if self.known.get(d.domid) != d.uuid])
        ready = {d.domid for d in new}
        out = []
        for d in new:
            dec = self.apply(d)
            if dec is not None:
                out.append(dec)
        # Domains still being built, or without a name yet, are tried again next time.
        self.known = {d.domid: d.uuid for d in doms
                      if (d.domid in ready or self.known.get(d.domid) == d.uuid)
                      and d.domid not in self._nameless}
        return out

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._reported.clear()


# --------------------------------------------------------------------------------------
# The daemon loop
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStamp:
    """Identity of the policy file's current contents, to notice edits without inotify."""

    mtime_ns: int
    size: int
    ino: int

    @classmethod
    def of(cls, path: str) -> FileStamp | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


class Daemon:
    """The ``sched-controller`` loop around a ``Controller``.

    Events: ``@introduceDomain`` (new domains, fast path), SIGHUP or a change of the policy file (reload, full pass), ``resync`` seconds without
    events (full pass: renames, pool moves, manual changes).  A lost xenstored connection is
    re-established with backoff and followed by a full pass.  A policy that fails to load
    is reported and the previous one stays in force.  Where the connection cannot watch
    (``/dev/xen/xenbus`` instead of xenstored's socket), new domains are found by polling
    the domain list every ``fast_poll`` seconds (one hypercall).
    """

    def __init__(self, controller: Controller, policy_path: str | None,
                 connect: Callable[[], Any], resync: float = 30.0,
                 poll: float = 1.0, fast_poll: float = 0.02) -> None:
        self.ctl = controller
        self.fast_poll = fast_poll
        self.policy_path = policy_path
        self.connect = connect
        self.resync = resync
        self.poll = poll
        self.stop = threading.Event()
        self.reload = threading.Event()
        self._stamp = FileStamp.of(policy_path) if policy_path else None

    def install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())

    def _maybe_reload(self) -> bool:
        if self.policy_path is None:
            return False
        stamp = FileStamp.of(self.policy_path)
        if not self.reload.is_set() and stamp == self._stamp:
            return False
        self.reload.clear()
        self._stamp = stamp
        try:
            policy = load_policy(self.policy_path)
        except PolicyError as e:
            log.error("%s (keeping the previous policy)", e)
            return False
        self.ctl.set_policy(policy)
        log.info("loaded policy %s: %d rule(s)", self.policy_path, len(policy.rules))
        return True

    def run(self) -> None:
        from domain_builder.xenctrl import preload

        preload()
        backoff = 0.1
        while not self.stop.is_set():
            try:
                store = self.connect()
            except OSError as e:
                log.warning("xenstored unreachable (%s); retrying in %.1fs", e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                self._serve(store)
                backoff = 0.1
            except OSError as e:
                log.warning("lost xenstored (%s); reconnecting", e)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    store.close()
                except Exception:  # noqa: BLE001 - the connection is gone either way
                    pass

    def _serve(self, store: Any) -> None:
        try:
            intro = store.watch("@introduceDomain")
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            log.warning("no watches on this xenstore connection (%s): looking for new domains "
                        "every %.0f ms instead", e, self.fast_poll * 1000)
            return self._serve_polling()
        with intro:
            intro.get(timeout=5)  # fires once at registration; the full pass covers it
            self._maybe_reload()
            self.ctl.reconcile()
            last_full = time.monotonic()
            while not self.stop.is_set():
                ev = intro.get(timeout=self.poll)
                if ev is not None:
                    t0 = time.monotonic()
                    for d in self.ctl.on_introduce():
                        if d.changed:
                            log.info("domain %d handled %.1f ms after @introduceDomain "
                                     "reached us", d.domid, (time.monotonic() - t0) * 1000)
                    continue
                if self._maybe_reload() or time.monotonic() - last_full >= self.resync:
                    self.ctl.reconcile()
                    last_full = time.monotonic()


    def _serve_polling(self) -> None:
        self._maybe_reload()
        self.ctl.reconcile()
        last_full = time.monotonic()
        while not self.stop.wait(self.fast_poll):
            self.ctl.on_introduce()
            if self._maybe_reload() or time.monotonic() - last_full >= self.resync:
                self.ctl.reconcile()
                last_full = time.monotonic()


# --------------------------------------------------------------------------------------
# Production backend
# --------------------------------------------------------------------------------------


class XenBackend:
    """``Backend`` over ``XenCtrl`` and a XenStore connection that may be replaced."""

    def __init__(self, xc: Any, store: Callable[[], Any],
                 userdata_dir: str = LIBXL_USERDATA_DIR) -> None:
        self.xc = xc
        self._store = store
        self.userdata_dir = userdata_dir

    def domains(self) -> list[DomainBrief]:
        return [DomainBrief(i.domid, i.uuid, i.cpupool, i.max_vcpu_id + 1, i.dying)
                for i in self.xc.domains()]

    def name(self, domid: int) -> str | None:
        return self._store().get(f"/local/domain/{domid}/name")

    def pool(self, poolid: int) -> tuple[str | None, str]:
        info = self.xc.cpupool_info(poolid)
        if info.poolid != poolid:  # libxenctrl returns the next pool up
            raise OSError(errno.ENOENT, f"cpupool {poolid} does not exist")
        name = self._store().get(f"/local/pool/{poolid}/name")
        return name, SCHEDULERS.get(info.sched_id, f"scheduler-{info.sched_id}")

    def get(self, domid: int, scheduler: str) -> Current:
        p = (self.xc.sched_credit if scheduler == "credit" else self.xc.sched_credit2)(domid)
        return Current(p.weight, p.cap)

    def set(self, domid: int, scheduler: str, value: Current) -> None:
        from domain_builder.xenctrl import SchedCredit

        setter = self.xc.set_sched_credit if scheduler == "credit" else \
            self.xc.set_sched_credit2
        setter(domid, SchedCredit(value.weight, value.cap))

    def introduced(self, domid: int) -> bool:
        return domid == 0 or self._store().is_domain_introduced(domid)

    def config(self, domid: int, uuid: str) -> Params:
        try:
            with open(libxl_config_path(domid, uuid, self.userdata_dir)) as f:
                return sched_params_from_libxl_json(f.read(MAX_POLICY_BYTES))
        except OSError:
            return Params()


def pool_cpus(pools: Iterable[Any]) -> dict[int, int]:
    return {p.poolid: len(p.cpus) for p in pools}


__all__ = [
    "Backend", "Controller", "Current", "Daemon", "Decision", "Demand", "DomainBrief",
    "DomainView", "Params", "Policy", "PolicyError", "Rule", "StatRow", "Usage", "XenBackend",
    "decide", "expected_shares", "format_stats", "load_policy", "parse_policy",
    "sched_params_from_libxl_json", "usage",
]
