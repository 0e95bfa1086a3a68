"""Name/id resolution (xentool.session) and scheduler option checks, with small fakes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from xentool import session
from xentool.cli.commands import sched
from xentool.errors import DomainNotFound, XentoolError
from xentool.scheduler.params import check_weight_cap


@dataclass(frozen=True)
class _Dom:
    domid: int


class FakeXc:
    def __init__(self, domids: list[int]) -> None:
        self.domids = domids
        self.listed = 0

    def domains(self) -> list[_Dom]:
        self.listed += 1
        return [_Dom(d) for d in self.domids]

    def domain_info(self, domid: int) -> _Dom | None:
        return _Dom(domid) if domid in self.domids else None


class FakeXs:
    def __init__(self, nodes: dict[str, str]) -> None:
        self.nodes = nodes
        self.reads: list[str] = []

    def get(self, path: str, default: str | None = None) -> str | None:
        self.reads.append(path)
        return self.nodes.get(path, default)


XS = FakeXs({"/local/domain/0/name": "Domain-0", "/local/domain/3/name": "web",
             "/local/domain/4/name": "db",
             # stale node of a dead domain: must never win over the hypervisor's list
             "/local/domain/9/name": "ghost"})


def test_name_resolves_through_xenstore() -> None:
    assert session.resolve(FakeXc([0, 3, 4]), XS, "db") == 4
    assert session.resolve(FakeXc([0, 3, 4]), XS, "Domain-0") == 0


def test_numeric_qualifier_is_a_domid_and_must_exist() -> None:
    xc = FakeXc([0, 3])
    assert session.resolve(xc, XS, "3") == 3
    assert xc.listed == 0  # a domid needs no name scan
    with pytest.raises(DomainNotFound, match="domain '5' does not exist"):
        session.resolve(xc, XS, "5")


def test_stale_xenstore_names_are_ignored() -> None:
    with pytest.raises(DomainNotFound) as ei:
        session.resolve(FakeXc([0, 3]), XS, "ghost")
    assert str(ei.value) == "domain 'ghost' does not exist"


def test_names_of_reports_missing_as_none() -> None:
    assert session.names_of(XS, [3, 7]) == {3: "web", 7: None}


@pytest.mark.parametrize("q,ok", [("0", True), ("12", True), ("", False), ("1a", False),
                                  ("-1", False), ("+1", False), ("١", False)])
def test_is_domid(q: str, ok: bool) -> None:
    assert session.is_domid(q) is ok


def test_parse_domid() -> None:
    assert session.parse_domid("7") == 7
    for bad in ("x", "", "32752", "-3"):
        with pytest.raises(XentoolError, match="invalid domain id"):
            session.parse_domid(bad)


def _ns(**kw: object) -> argparse.Namespace:
    base = {"domain": None, "weight": None, "cap": None, "schedparam": False, "cpupool": None,
                "ratelimit_us": None, "tslice_ms": None, "migration_delay_us": None}
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("kind,kw,msg", [
    ("credit", {"weight": 5}, "must specify a domain"),
    ("credit", {"domain": "g", "schedparam": True}, "not allowed with domain options"),
    ("credit", {"cap": 5, "cpupool": "p"}, "not allowed with domain options"),
    ("credit", {"tslice_ms": 5}, "must specify schedparam"),
    ("credit2", {"domain": "g", "cpupool": "p"}, "not allowed with other options"),
    ("credit2", {"cap": 1}, "must specify a domain"),
])
def test_sched_option_rules(kind: str, kw: dict, msg: str) -> None:
    with pytest.raises(XentoolError, match=msg):
        sched.validate(kind, _ns(**kw))


def test_sched_valid_combinations() -> None:
    sched.validate("credit", _ns(domain="g", weight=512))
    sched.validate("credit", _ns(schedparam=True, tslice_ms=10))
    sched.validate("credit2", _ns(schedparam=True, ratelimit_us=500))
    sched.validate("credit2", _ns())


def test_weight_and_cap_ranges() -> None:
    check_weight_cap(1, 0, 0)
    check_weight_cap(65535, 200, 1)
    with pytest.raises(XentoolError, match="weight 0 out of range"):
        check_weight_cap(0, None, 0)
    with pytest.raises(XentoolError, match="weight 65536 out of range"):
        check_weight_cap(65536, None, 0)
    with pytest.raises(XentoolError, match="from 0 to 200"):
        check_weight_cap(None, 201, 1)


@pytest.mark.parametrize("text,value", [("512", 512), ("  12x", 12), ("-3", -3), ("+7", 7)])
def test_int_arg_is_strtol_like(text: str, value: int) -> None:
    assert sched._int_arg(text) == value


def test_int_arg_rejects_no_digits() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a number: 'abc'"):
        sched._int_arg("abc")
