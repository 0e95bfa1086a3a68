"""Property tests: generated configs parse back to what was generated; random damage gives
ConfigError (never another exception) within bounded time."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xentool.config import ConfigError, loads
from xentool.config.grammar import Atom, parse

DATA = Path(__file__).resolve().parents[2] / "data" / "xlcfg"
SEEDS = [p.read_bytes() for p in sorted(DATA.glob("*.cfg"))]

keys = st.from_regex(r"[a-z][._0-9a-z]{0,12}", fullmatch=True)
# String contents: any printable text without newlines; the renderer escapes quotes.
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
numbers = st.from_regex(r"[0-9][0-9a-fx]{0,8}", fullmatch=True)


@st.composite
def values(draw, depth: int = 0):
    if depth < 3 and draw(st.integers(0, 3)) == 0:
        return ("list", draw(st.lists(values(depth + 1), max_size=4)))
    if draw(st.booleans()):
        return ("num", draw(numbers))
    return ("str", draw(texts), draw(st.sampled_from(['"', "'"])))


def render_value(v, draw_ws) -> str:
    kind = v[0]
    if kind == "num":
        return v[1]
    if kind == "str":
        q = v[2]
        body = v[1].replace("\\", "\\\\").replace(q, "\\" + q)
        return f"{q}{body}{q}"
    sep = draw_ws()
    inner = ("," + sep).join(render_value(i, draw_ws) for i in v[1])
    trailing = "," if v[1] and len(sep) % 2 else ""
    return f"[{sep}{inner}{trailing}{sep}]"


def expected(v):
    if v[0] == "list":
        return [expected(i) for i in v[1]]
    return v[1]


def plain(v):
    return v.text if isinstance(v, Atom) else [plain(i) for i in v.items]


@st.composite
def configs(draw):
    stmts = draw(st.lists(st.tuples(keys, values()), max_size=12))
    ws = st.sampled_from(["", " ", "\t", " \n", "\n  # note\n ", "  "])
    out = []
    for key, val in stmts:
        end = draw(st.sampled_from(["\n", ";", "; # c\n", "\n\n", " ;\n"]))
        out.append(f"{draw(st.sampled_from(['', ' ', chr(9)]))}{key} = "
                   f"{render_value(val, lambda: draw(ws))}{end}")
    return "".join(out), stmts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_generated_configs_parse_to_what_was_generated(cfg) -> None:
    text, stmts = cfg
    parsed = parse(text, "gen.cfg")
    last = {}
    for key, val in stmts:
        last[key] = expected(val)
    assert {k: plain(s.value) for k, s in parsed.settings.items()} == last
    # The pyparsing-only path (no regular fast path) must agree.
    assert parse(text, "gen.cfg", fast=False).statements == parsed.statements


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                                  st.sampled_from(["set", "ins", "del"])),
                                        min_size=1, max_size=8))
def test_random_mutations_give_config_error_or_a_config(seed: bytes, edits) -> None:
    data = bytearray(seed)
    for pos, byte, op in edits:
        pos = pos % (len(data) + 1)
        if op == "set" and pos < len(data):
            data[pos] = byte
        elif op == "ins":
            data[pos:pos] = bytes([byte])
        elif op == "del" and pos < len(data):
            del data[pos]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assume(False)
        return
    t0 = time.process_time()
    try:
        loads(text, "mut.cfg")
    except ConfigError as exc:
        assert exc.file == "mut.cfg"
        assert "\n" not in str(exc)
    assert time.process_time() - t0 < 0.5


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_text_never_crashes(data: bytes) -> None:
    text = data.decode("latin-1")
    try:
        loads(text, "bin.cfg")
    except ConfigError:
        pass


def test_memory_stays_bounded_on_worst_case_inputs() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for text in ("a = " + "[" * 10_000, "a = [" + "1," * 20_000 + "]\n",
                 "#" * 200_000 + "\n", "a = '" + "x" * 200_000 + "'\n"):
        try:
            loads(text, "big.cfg")
        except ConfigError:
            pass
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024
