"""sched-stats end to end over a fake Session: two samples, table and JSON."""

from __future__ import annotations

import argparse
import json

import pytest

import xentool.host
from domain_builder.xenctrl import CpupoolInfo, DomainInfo, SchedCredit
from xentool.cli.commands import schedctl


def dom(domid: int, pool: int, cpu_ns: int, vcpus: int = 1) -> DomainInfo:
    return DomainInfo(domid, 0, 0, 0, 0, 0, 0, 0, cpu_ns, vcpus, vcpus - 1, 0,
                      bytes(16), pool)


class FakeXc:
    def __init__(self) -> None:
        self.samples = [
            [dom(0, 0, 0, 2), dom(1, 1, 0), dom(2, 1, 0), dom(3, 1, 0)],
            # 2 s later (the fake clock below): pCPU 1 split 1:2:4 between 1, 2 and 3.
            [dom(0, 0, int(0.2e9), 2), dom(1, 1, int(2e9 / 7)), dom(2, 1, int(4e9 / 7)),
             dom(3, 1, int(8e9 / 7))],
        ]
        self.weights = {0: SchedCredit(256, 0), 1: SchedCredit(256, 0),
                        2: SchedCredit(512, 0), 3: SchedCredit(1024, 0)}

    def domains(self) -> list[DomainInfo]:
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]

    def cpupools(self) -> list[CpupoolInfo]:
        return [CpupoolInfo(0, 6, 1, frozenset({0})), CpupoolInfo(1, 5, 3, frozenset({1}))]

    def sched_credit(self, domid: int) -> SchedCredit:
        return self.weights[domid]

    sched_credit2 = sched_credit


class FakeSession:
    def __init__(self) -> None:
        self.xc = FakeXc()
        self.xs = self
        self.nodes = {"/local/pool/0/name": "Pool-0", "/local/pool/1/name": "fair"}

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *a: object) -> None:
        pass

    def close(self) -> None:
        pass

    def get(self, path: str, default=None):
        return self.nodes.get(path, default)

    def names(self, domids):
        return {d: "Domain-0" if d == 0 else f"g{d}" for d in domids}

    def resolve(self, q: str) -> int:
        return int(q[1:]) if q.startswith("g") else int(q)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]

    def sleep(s: float) -> None:
        now[0] += s

    monkeypatch.setattr(xentool.host, "Session", FakeSession)
    monkeypatch.setattr(schedctl, "_clock", lambda: now[0])
    monkeypatch.setattr(schedctl, "_sleep", sleep)


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    schedctl.configure_sched_stats(p)
    return p.parse_args(argv)


def test_json_shares_match_weights(fake, capsys) -> None:
    assert schedctl.cmd_sched_stats(args("--json", "-i", "2", "-p", "fair")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in doc] == ["g1", "g2", "g3"]
    for r, want in zip(doc, (100 / 7, 200 / 7, 400 / 7), strict=True):
        assert r["scheduler"] == "credit" and r["cpupool"] == "fair"
        assert r["share_pct"] == pytest.approx(want, abs=1e-3)
        assert r["expected_pct"] == pytest.approx(want, abs=1e-3)


def test_table_for_named_domains(fake, capsys) -> None:
    assert schedctl.cmd_sched_stats(args("-i", "2", "g3", "0")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["Name", "ID"]
    assert lines[1].split() == ["Domain-0", "0", "Pool-0", "credit2", "256", "0", "2", "10.0",
                                "10.0", "100.0"]
    assert lines[2].split() == ["g3", "3", "fair", "credit", "1024", "0", "1", "57.1", "57.1",
                                "57.1"]
    assert len(lines) == 3


def test_unknown_pool_and_bad_interval(fake) -> None:
    from xentool.errors import UsageError

    with pytest.raises(UsageError, match="unknown cpupool 'nope'"):
        schedctl.cmd_sched_stats(args("-p", "nope"))
    with pytest.raises(UsageError, match="--interval must be positive"):
        schedctl.cmd_sched_stats(args("-i", "0"))
