"""The xl.cfg syntax: what libxlu accepts, what it means, and exact errors for what it refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from xentool.config import ConfigError, load, read_config_text
from xentool.config.grammar import (
    MAX_CONFIG_BYTES,
    MAX_ITEMS,
    MAX_NESTING,
    Atom,
    ListValue,
    Op,
    parse,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "xlcfg"
CORPUS = sorted(DATA.glob("*.cfg"))


def value(text: str, key: str):
    return parse(text).settings[key].value


def plain(v):
    """A Value as plain Python: str for atoms, lists for lists."""
    return v.text if isinstance(v, Atom) else [plain(i) for i in v.items]


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_file_loads(path: Path) -> None:
    cfg = load(str(path))
    assert cfg.name and cfg.kernel


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_fast_path_agrees_with_structural_grammar(path: Path) -> None:
    text = read_config_text(str(path))
    assert parse(text, fast=True).statements == parse(text, fast=False).statements


def test_statements_separators_and_last_assignment_wins() -> None:
    p = parse('a = 1; b = "x";c=2\n\n;;\na = 3\n')
    assert [s.key for s in p.statements] == ["a", "b", "c", "a"]
    assert plain(p.settings["a"].value) == "3"
    assert p.settings["a"].line == 4


def test_atoms_keep_text_numbers_are_not_converted() -> None:
    p = parse("n = 0x1f\nm = 010\ns = '0x1F'\n")
    assert value("n = 0x1f\n", "n") == Atom("0x1f", False, "<config>", 1, 5)
    assert plain(p.settings["m"].value) == "010"
    assert p.settings["s"].value.quoted


def test_lists_nest_span_lines_and_allow_trailing_commas() -> None:
    text = "l = [\n  # c\n  'a',\n  [ 1, [ ], ],\n\n  \"b\" ,\n]\n"
    assert plain(value(text, "l")) == ["a", ["1", []], "b"]


def test_empty_list() -> None:
    v = value("l = [ ]\n", "l")
    assert isinstance(v, ListValue) and v.items == ()


def test_plus_equals_appends_strings_and_lists() -> None:
    p = parse('s = "a"\ns += "b"\nl = [1]\nl += [2, 3]\nn += "x"\n')
    assert plain(p.settings["s"].value) == "ab"
    assert plain(p.settings["l"].value) == ["1", "2", "3"]
    assert plain(p.settings["n"].value) == "x"  # nothing before: plain assignment
    assert p.settings["s"].op is Op.APPEND


def test_escapes() -> None:
    v = value(r'''s = "q\" s\' b\\ n\n t\t r\r a\a v\v f\f bs\b"''' + "\n", "s")
    assert v.text == "q\" s' b\\ n\n t\t r\r a\a v\v f\f bs\b"
    assert value(r"s = 'it\'s'" + "\n", "s").text == "it's"


def test_octal_escape_is_dropped_like_xl_and_warned() -> None:
    p = parse('s = "a\\0123b"\n', "f.cfg")
    assert p.settings["s"].value.text == "ab"
    assert p.warnings == ("f.cfg:1:7: octal escape '\\0123' is dropped from the string, "
                          "as xl does",)


def test_last_statement_may_end_at_eof() -> None:
    assert plain(parse('a = "x"').settings["a"].value) == "x"
    assert plain(parse("a = [1,\n2]").settings["a"].value) == ["1", "2"]


def test_keys_may_contain_dots_digits_underscores() -> None:
    assert "a.b_c9" in parse("a.b_c9 = 1\n").settings


def test_hex_digits_must_be_lower_case_as_in_xl() -> None:
    # libxlu's NUMBER token is [0-9][0-9a-fx]*: "0x1F" is "0x1" followed by a bad "F".
    with pytest.raises(ConfigError) as ei:
        parse("n = 0x1F\n", "f.cfg")
    assert str(ei.value) == ("f.cfg:1:8: bad number '0x1F': xl numbers are [0-9][0-9a-fx]* "
                             "(hex digits in lower case), anything else must be quoted")


def test_positions_count_tabs_as_one_column() -> None:
    p = parse("\tkey\t=\t'v'\n")
    s = p.settings["key"]
    assert (s.line, s.column, s.value.column) == (1, 2, 8)


def test_overrides_are_appended_and_located_on_the_command_line() -> None:
    p = parse('a = 1\n# end', "f.cfg", extra="a=2\nb=[3]\n")
    assert plain(p.settings["a"].value) == "2"
    assert (p.settings["b"].file, p.settings["b"].line) == ("<command line>", 2)
    with pytest.raises(ConfigError) as ei:
        parse("a = 1\n", "f.cfg", extra="b=oops\n")
    assert str(ei.value) == ("<command line>:1:3: unquoted string 'oops': strings must "
                             "be quoted")


BAD = {
    "xl-rejects-lone-cr.cfg": "1:12: carriage return without a line feed (lines end with "
                              "LF or CRLF)",
    "xl-rejects-final-comment.cfg": "3:1: comment at end of file needs a final newline (xl "
                                    "rejects it otherwise)",
    "xl-rejects-uppercase-key.cfg": "2:1: key 'Kernel' is not valid: keys are lower case "
                                    "([a-z][._0-9a-z]*)",
    "xl-rejects-hex-escape.cfg": "3:11: '\\x' escapes are not accepted by xl (write the "
                                 "character itself)",
    "xl-rejects-unquoted.cfg": "1:8: unquoted string 'guest': strings must be quoted",
    "xl-rejects-python.cfg": "3:14: unexpected '*' (expected ';' or end of line)",
    "xl-rejects-unterminated.cfg": "2:10: unterminated string (strings must end on the line "
                                   "they start)",
    "xl-rejects-unclosed-list.cfg": "4:1: unexpected end of file inside a list (missing ']')",
    "xl-rejects-append-mismatch.cfg": "4:1: 'extra +=' adds a list to a string (set at "
                                      "{path}:3)",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_syntax_errors_are_exact(name: str) -> None:
    path = str(DATA / "bad" / name)
    with pytest.raises(ConfigError) as ei:
        load(path)
    assert str(ei.value) == f"{path}:{BAD[name].format(path=path)}"
    assert ei.value.file == path and ei.value.line and ei.value.column


def test_error_excerpt_has_caret_under_column() -> None:
    with pytest.raises(ConfigError) as ei:
        parse('name = "x"\nmemory =\t[1 2]\n', "f.cfg")
    e = ei.value
    assert (e.line, e.column) == (2, 13)
    assert e.excerpt == "    memory =\t[1 2]\n            \t   ^"


@pytest.mark.parametrize("text,message", [
    ("a = 1.5\n", "1:6: unexpected '.' (expected ';' or end of line; Python expressions "
                  "are not supported in xl.cfg)"),
    ("a = [1,,2]\n", "1:8: unexpected ',' (expected ']')"),
    ("a = \n", "1:5: unexpected end of line (expected value)"),
    ("= 1\n", "1:1: unexpected '=' (expected key)"),
    ("a 1\n", "1:3: unexpected '1' (expected '=' or '+=')"),
    ("a = 'x' 'y'\n", "1:9: unexpected ''' (expected ';' or end of line)"),
    ("a = \"\\q\"\n", "1:6: invalid escape '\\q' in quoted string"),
    ("a = \"\\0\"\n", "1:6: invalid octal escape in quoted string (xl needs '\\' and three "
                      "digits)"),
    ("a = 1\x00\n", "1:6: NUL byte in config file"),
    ("a = \x01\n", "1:5: unexpected character U+0001 (expected value)"),
])
def test_more_exact_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse(text, "f.cfg")
    assert str(ei.value) == f"f.cfg:{message}"


def test_deep_nesting_is_refused_quickly() -> None:
    text = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        parse(text, "deep.cfg")
    assert time.monotonic() - t0 < 1.0
    assert str(ei.value) == (f"deep.cfg:1:{5 + MAX_NESTING}: lists nested deeper than "
                             f"{MAX_NESTING} levels")


def test_too_many_items_is_refused_quickly() -> None:
    text = "a = [" + "1," * (MAX_ITEMS + 10) + "]\n"
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        parse(text, "many.cfg")
    assert time.monotonic() - t0 < 1.0
    assert str(ei.value) == (f"many.cfg:1:{7 + 2 * MAX_ITEMS}: more than {MAX_ITEMS} "
                             "statements and list items")


def test_nesting_at_the_limit_is_fine() -> None:
    text = "a = " + "[" * MAX_NESTING + "]" * MAX_NESTING + "\n"
    assert isinstance(parse(text).settings["a"].value, ListValue)


def test_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.cfg"
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB without writing them
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        load(str(big))
    assert time.monotonic() - t0 < 1.0
    assert str(ei.value) == (f"{big}: config is {50 * 1024 * 1024} bytes, more than the "
                             f"limit of {MAX_CONFIG_BYTES}")


def test_huge_text_is_refused() -> None:
    with pytest.raises(ConfigError, match="more than the limit"):
        parse("#" * (MAX_CONFIG_BYTES + 1) + "\n")


def test_invalid_utf8_is_located(tmp_path: Path) -> None:
    f = tmp_path / "latin1.cfg"
    f.write_bytes(b'name = "x"\nextra = "caf\xe9"\n')
    with pytest.raises(ConfigError) as ei:
        load(str(f))
    assert str(ei.value) == f"{f}:2:13: invalid UTF-8 byte 0xe9"


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as ei:
        load("/nonexistent/guest.cfg")
    assert str(ei.value) == "/nonexistent/guest.cfg: cannot read config: No such file or " \
                            "directory"
