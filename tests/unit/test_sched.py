"""Pure parts of the scheduler controller: policy parsing, decisions, fair shares, stats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xentool.scheduler import policy, stats
from xentool.scheduler.policy import Current, DomainView, Params, PolicyError, decide, parse_policy
from xentool.scheduler.stats import Demand, expected_shares, usage

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "examples" / "sched-policy.toml"


NO_PARAMS = Params()


def view(name: str = "web-1", domid: int = 5, *, pool: str | None = "Pool-0",
         scheduler: str = "credit2", vcpus: int = 1, weight: int = 256, cap: int = 0,
         config: Params = NO_PARAMS) -> DomainView:
    return DomainView(domid, name, pool, scheduler, vcpus, Current(weight, cap), config)


# -- parsing ---------------------------------------------------------------------------------


def test_example_policy_parses_and_means_what_it_says() -> None:
    p = policy.load_policy(str(EXAMPLE))
    assert p.default == Params(256, None)
    assert [r.patterns for r in p.rules] == [("Domain-0",), ("db-*", "web-*"), ("batch-*",),
                                             ("*",)]
    assert decide(p, view("web-7")).target == Current(1024, 0)
    assert decide(p, view("batch-3", weight=256)).target == Current(128, 50)
    assert decide(p, view("Domain-0", domid=0)).target == Current(512, 0)


def test_rules_keep_file_order_and_filters() -> None:
    p = parse_policy('''
        [[rule]]
        match = "a*"
        pool = ["gold-*"]
        scheduler = "credit"
        weight = 900
        [[rule]]
        match = ["a*", "b"]
        cap = 10
    ''', "p.toml")
    r1, r2 = p.rules
    assert (r1.index, r1.pools, r1.schedulers) == (1, ("gold-*",), frozenset({"credit"}))
    assert p.rule_for("ax", "gold-1", "credit") is r1
    assert p.rule_for("ax", "gold-1", "credit2") is r2  # scheduler filter
    assert p.rule_for("ax", "silver", "credit") is r2  # pool filter
    assert p.rule_for("ax", None, "credit") is r2  # no pool name known: pool filter fails
    assert p.rule_for("b", "gold-1", "credit") is r2
    assert p.rule_for("B", "gold-1", "credit") is None  # case-sensitive like domain names


@pytest.mark.parametrize("text, message", [
    ("[[rule]]\nmatch = 'x'\nweight = 0\n", "p.toml: [[rule]] #1 (match x): weight 0 is out "
     "of range 1-65535"),
    ("[[rule]]\nmatch = 'x'\nweight = 70000\n", "weight 70000 is out of range 1-65535"),
    ("[[rule]]\nmatch = 'x'\ncap = -1\n", "cap -1 is out of range"),
    ("[[rule]]\nmatch = 'x'\nweight = '5'\n", "weight must be an integer, not '5'"),
    ("[[rule]]\nmatch = 'x'\nweight = true\n", "weight must be an integer, not True"),
    ("[[rule]]\nweight = 5\n", "[[rule]] #1: 'match' is missing"),
    ("[[rule]]\nmatch = []\nweight = 5\n", "match must be a non-empty string or list"),
    ("[[rule]]\nmatch = 'x'\n", "(match x): sets neither weight nor cap"),
    ("[[rule]]\nmatch = 'x'\nweigth = 5\n", "unknown key 'weigth'"),
    ("[[rule]]\nmatch = 'x'\nweight = 5\nscheduler = 'rtds'\n",
     "scheduler 'rtds' is not credit or credit2"),
    ("[default]\nweight = 1\nfoo = 2\n", "[default]: unknown key 'foo'"),
    ("default = 3\n", "[default] must be a table"),
    ("[rule]\nmatch = 'x'\n", "'rule' must be an array of tables"),
    ("[[rule]]\nmatch = 'x'\nweight = \n", "p.toml: Invalid value (at line 3, column 10)"),
    ("[rules]\n", "top level: unknown key 'rules'"),
])
def test_bad_policy_is_one_line_naming_the_spot(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.toml")
    msg = str(ei.value)
    assert message in msg
    assert msg.startswith("p.toml: ") and "\n" not in msg


def test_load_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"/nope\.toml: cannot read policy"):
        policy.load_policy(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[default]\nweight = 2 # \xff\n")
    with pytest.raises(PolicyError, match=r"bad\.toml: invalid UTF-8 byte 0xff "
                                          r"\(at line 2, column 14\)"):
        policy.load_policy(str(bad))


def test_libxl_json_sched_params() -> None:
    doc = {"b_info": {"sched_params": {"sched": "unknown", "weight": 768, "cap": -1,
                                       "period": -1}}}
    assert policy.sched_params_from_libxl_json(json.dumps(doc)) == Params(768, None)
    doc["b_info"]["sched_params"] = {"weight": -1, "cap": 40}
    assert policy.sched_params_from_libxl_json(json.dumps(doc)) == Params(None, 40)
    # As libxl 4.17 writes the file (seen in the testbed): the C string's NUL at the end.
    assert policy.sched_params_from_libxl_json(json.dumps(doc) + "\0") == Params(None, 40)
    assert policy.sched_params_from_libxl_json("{not json") == Params()
    assert policy.sched_params_from_libxl_json("[]") == Params()
    assert policy.sched_params_from_libxl_json('{"b_info": {"sched_params": 3}}') == Params()
    assert policy.libxl_config_path(7, "ab-cd", "/x") == "/x/userdata-d.7.ab-cd.libxl-json"


# -- decisions -------------------------------------------------------------------------------


POLICY = parse_policy('''
    [default]
    weight = 300
    [[rule]]
    match = "web-*"
    weight = 512
    [[rule]]
    match = "capped"
    cap = 25
''')


def test_rule_beats_config_beats_default_field_by_field() -> None:
    d = decide(POLICY, view("web-1", config=Params(700, 30)))
    assert d.target == Current(512, 30) and d.origin == "rule 1 (web-*) + xl.cfg"
    d = decide(POLICY, view("capped", config=Params(None, 90)))
    assert d.target == Current(300, 25) and d.origin == "rule 2 (capped) + default"
    d = decide(POLICY, view("other", config=Params(700, None)))
    assert d.target == Current(700, 0) and d.origin == "xl.cfg"
    d = decide(POLICY, view("other", weight=300))
    assert d.target == Current(300, 0) and not d.changed
    assert "unchanged" in d.describe()


def test_nothing_to_say_leaves_the_domain_alone() -> None:
    assert decide(parse_policy(""), view("x")) is None
    assert decide(POLICY, view("web-1", scheduler="rtds")) is None


def test_dom0_only_by_rule() -> None:
    assert decide(POLICY, view("Domain-0", domid=0, config=Params(5, 5))) is None
    p = parse_policy("[[rule]]\nmatch = 'Domain-*'\nweight = 1000\n")
    assert decide(p, view("Domain-0", domid=0)).target == Current(1000, 0)


def test_cap_beyond_vcpus_is_a_problem_not_a_change() -> None:
    p = parse_policy("[[rule]]\nmatch = '*'\ncap = 150\n")
    d = decide(p, view("g", vcpus=1))
    assert not d.changed and "cap 150 from rule 1 (*) is more than 100 (1 vcpu)" in d.problem
    assert decide(p, view("g", vcpus=2)).target == Current(256, 150)


def test_describe_lists_only_what_changes() -> None:
    d = decide(POLICY, view("web-1", domid=9, weight=256, cap=0))
    assert d.describe() == "domain 9 (web-1) [credit2]: weight 256 -> 512 (rule 1 (web-*))"


# -- fair shares -----------------------------------------------------------------------------


def test_expected_shares_issue_scenarios() -> None:
    one_pcpu = 100.0
    s = expected_shares({"a": Demand(256), "b": Demand(512), "c": Demand(1024)}, one_pcpu)
    assert s == pytest.approx({"a": 100 / 7, "b": 200 / 7, "c": 400 / 7})
    # A cap below the fair share: the rest is shared by weight among the others.
    s = expected_shares({"a": Demand(256), "b": Demand(512), "c": Demand(1024, cap=25)},
                        one_pcpu)
    assert s == pytest.approx({"a": 25, "b": 50, "c": 25})
    # A single vcpu cannot use more than one of two pCPUs.
    s = expected_shares({"a": Demand(256), "b": Demand(4096)}, 200.0)
    assert s == pytest.approx({"a": 100, "b": 100})
    assert expected_shares({}, 100.0) == {}


demand = st.builds(Demand, st.integers(1, 65535), st.integers(0, 400), st.integers(1, 4))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 50), demand, max_size=8), st.integers(1, 8))
def test_expected_shares_invariants(dem: dict[int, Demand], pcpus: int) -> None:
    cap = 100.0 * pcpus
    s = expected_shares(dem, cap)
    assert set(s) == set(dem)
    limit = {k: min(d.cap or math.inf, 100 * d.vcpus) for k, d in dem.items()}
    assert sum(s.values()) <= cap + 1e-6
    for k, v in s.items():
        assert -1e-9 <= v <= limit[k] + 1e-6
    unsat = [k for k in s if s[k] < limit[k] - 1e-6]
    if dem and sum(s.values()) < cap - 1e-6:
        assert not unsat  # capacity left over only when everyone is at their limit
    # Domains below their limit share in proportion to their weights.
    for a in unsat:
        for b in unsat:
            assert s[a] * dem[b].weight == pytest.approx(s[b] * dem[a].weight, rel=1e-6)
        # ... and nobody at a limit would have had less by plain proportion.


def test_usage_per_pool_with_active_threshold() -> None:
    sec = 2.0
    before = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0}
    after = {0: int(0.01e9), 1: int(0.5e9), 2: int(1.5e9), 3: int(2e9), 4: 7}
    pool_of = {0: 0, 1: 1, 2: 1, 3: 0, 4: 1}
    demands = {0: Demand(256), 1: Demand(256), 2: Demand(768), 3: Demand(256), 4: Demand(1)}
    u = usage(before, after, sec, pool_of, {0: 2, 1: 1}, demands)
    assert u[1].cpu_pct == pytest.approx(25) and u[1].share_pct == pytest.approx(25)
    assert u[1].expected_pct == pytest.approx(25) and u[2].expected_pct == pytest.approx(75)
    # Pool 0 has 2 pCPUs: 100 % of one pCPU is 50 % of the pool; dom0 at 0.5 % is idle.
    assert u[3].share_pct == pytest.approx(50) and u[3].expected_pct == pytest.approx(50)
    assert u[0].expected_pct == 0.0 and u[4].expected_pct == 0.0
    del demands[4]
    assert usage(before, after, sec, pool_of, {0: 2, 1: 1}, demands)[4].expected_pct is None
    assert set(usage({1: 5}, {1: 3, 2: 9}, 1.0, pool_of, {1: 1}, {})) == {1}  # no negatives
    with pytest.raises(ValueError):
        usage(before, after, 0, pool_of, {}, demands)


def test_stats_table_and_json() -> None:
    u = stats.Usage(3, 500_000_000, 50.0, 50.0, 57.142857)
    row = stats.StatRow(3, "guest-c", "pool-x", "credit", 1024, 0, 1, u)
    text = stats.format_stats([row, stats.StatRow(7, None, None, "rtds", None, None, 2,
                                                  stats.Usage(7, 0, 0.0, 0.0, None))])
    lines = text.splitlines()
    assert lines[0].split() == ["Name", "ID", "Pool", "Sched", "Weight", "Cap", "VCPUs",
                                "CPU%", "Share%", "Expect%"]
    assert lines[1].split() == ["guest-c", "3", "pool-x", "credit", "1024", "0", "1", "50.0",
                                "50.0", "57.1"]
    assert lines[2].split() == ["(null)", "7", "-", "rtds", "-", "-", "2", "0.0", "0.0", "-"]
    assert row.as_json()["expected_pct"] == 57.143 and row.as_json()["cpu_ns"] == 500_000_000
