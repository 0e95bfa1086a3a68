"""The xl.cfg file syntax, as Xen 4.17's libxlu lexer and parser accept it, in pyparsing.

What libxlu accepts (``libxlu_cfg_l.l`` / ``libxlu_cfg_y.y``), and so what we accept:

* a file is a sequence of statements ``KEY = VALUE`` or ``KEY += VALUE``, each ended by
  ``;`` or a newline (the last one may end at end of file); empty statements are fine;
* KEY is ``[a-z][._0-9a-z]*``: lower case only;
* VALUE is an atom or a list ``[ v, v, ... ]``; lists nest, may be empty, may end with a
  trailing comma and may span lines (newlines and comment lines are allowed after ``[``,
  after each item and after each comma, nowhere else);
* an atom is a number ``[0-9][0-9a-fx]*`` or a single or double quoted string on one line
  with backslash escapes.  Numbers are kept as text: xl converts them with ``strtol(, 0)``
  only when a key wants a number (so ``"512"`` is as good a memory size as ``512``);
* whitespace is space and tab only.  xl rejects a carriage return; here a file with CRLF
  line endings is read as if it had LF ones, with one warning naming the file (a lone
  carriage return is still an error);
* ``#`` starts a comment that runs to the end of the line and needs that newline;
* the last assignment of a key wins; ``+=`` appends to the previous string or list.

The parse is pure: text in, :class:`ParsedConfig` out, or :class:`ConfigError`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import pyparsing as pp

from xentool.config.errors import ConfigError
from xentool.config.limits import MAX_CONFIG_BYTES, MAX_ITEMS, MAX_NESTING

COMMAND_LINE_SOURCE = "<command line>"


class Op(Enum):
    ASSIGN = "="
    APPEND = "+="


_OPS = {"=": Op.ASSIGN, "+=": Op.APPEND}


@dataclass(frozen=True)
class Atom:
    """A string or number, as text (numbers are not converted here, as in libxlu)."""

    text: str
    quoted: bool
    file: str
    line: int
    column: int

    def describe(self) -> str:
        return repr(self.text) if self.quoted else self.text


@dataclass(frozen=True)
class ListValue:
    items: tuple[Value, ...]
    file: str
    line: int
    column: int


Value = Atom | ListValue


@dataclass(frozen=True)
class Statement:
    key: str
    op: Op
    value: Value
    file: str
    line: int
    column: int


@dataclass(frozen=True)
class Setting:
    """The effective value of a key after all its statements (last ``=`` wins, ``+=`` appends)."""

    key: str
    value: Value
    op: Op          # op of the last statement: libxlu refuses numbers set with ``+=``
    file: str
    line: int
    column: int


@dataclass(frozen=True)
class ParsedConfig:
    source: str
    statements: tuple[Statement, ...]
    settings: Mapping[str, Setting]
    warnings: tuple[str, ...] = ()
    _lines: _LineIndex | None = field(default=None, repr=False, compare=False)

    def source_line(self, file: str, line: int) -> str | None:
        """The text of a line of the config (or of the overrides), for excerpts."""
        return self._lines.source_line(file, line) if self._lines else None

    def error(self, message: str, at: Statement | Setting | Atom | ListValue,
              column: int | None = None) -> ConfigError:
        """A ConfigError located at a statement, setting or value (or a column of its line)."""
        return ConfigError(message, at.file, at.line, at.column if column is None else column,
                           self.source_line(at.file, at.line))


# --------------------------------------------------------------------------- positions


class _LineIndex:
    """Offset -> (file, line, column) for the config text plus xl's appended overrides."""

    def __init__(self, text: str, source: str, extra_start: int | None) -> None:
        self.text = text
        self.source = source
        self.extra_start = extra_start
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]
        # xl appends "\n" + overrides: their first line is the line after that newline.
        self.extra_first_line = (bisect.bisect_right(self.starts, extra_start) + 1
                                 if extra_start is not None else None)

    def locate(self, offset: int) -> tuple[str, int, int]:
        idx = bisect.bisect_right(self.starts, offset) - 1
        line = idx + 1
        col = offset - self.starts[idx] + 1
        if self.extra_first_line is not None and line >= self.extra_first_line:
            return COMMAND_LINE_SOURCE, line - self.extra_first_line + 1, col
        return self.source, line, col

    def source_line(self, file: str, line: int) -> str | None:
        if file == COMMAND_LINE_SOURCE and self.extra_first_line is not None:
            line += self.extra_first_line - 1
        elif file != self.source:
            return None
        if not 1 <= line <= len(self.starts):
            return None
        start = self.starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:end if end >= 0 else len(self.text)]

    def error(self, message: str, offset: int) -> ConfigError:
        file, line, col = self.locate(offset)
        return ConfigError(message, file, line, col, self.source_line(file, line))


# --------------------------------------------------------------------------- escapes

_SIMPLE_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
                   "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE_RE = re.compile(r"\\(.)", re.S)
_OCTAL_TAIL_RE = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


def _dequote(token: str, offset: int, lines: _LineIndex, warnings: list[str]) -> str:
    """The value of a quoted string token, with libxlu's escape rules.

    libxlu's ``\\x`` handling can never succeed (it always reports an invalid digit), and
    its octal handling consumes ``\\<digit>`` plus 2-3 more decimal digits and emits
    nothing.  We match both so a file means the same to us as to xl, and say so clearly.
    """
    body = token[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    pos = 0
    while True:
        m = _ESCAPE_RE.search(body, pos)
        if m is None:
            out.append(body[pos:])
            return "".join(out)
        out.append(body[pos:m.start()])
        c = m.group(1)
        at = offset + 1 + m.start()
        if c in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[c])
            pos = m.end()
        elif c == "x":
            raise lines.error("'\\x' escapes are not accepted by xl (write the character "
                              "itself)", at)
        elif "0" <= c <= "7":
            # xl reads up to 3 more chars as a decimal number, needs >= 2 of them to parse,
            # then drops the whole escape.
            tail = body[m.end():m.end() + 3]
            t = _OCTAL_TAIL_RE.match(tail)
            if t is None or t.end() < 2:
                raise lines.error("invalid octal escape in quoted string (xl needs "
                                  "'\\' and three digits)", at)
            file, line, col = lines.locate(at)
            warnings.append(f"{file}:{line}:{col}: octal escape "
                            f"'{body[m.start():m.end() + t.end()]}' is dropped from the "
                            f"string, as xl does")
            pos = m.end() + t.end()
        else:
            raise lines.error(f"invalid escape '\\{c}' in quoted string", at)


# --------------------------------------------------------------------------- grammar

_STRING_RE = r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
_NUMBER_RE = r"[0-9][0-9a-fx]*"


_NLOK_RE = r"(?:[ \t]|(?:\#[^\n]*)?\n)*"
_ATOM_RE = f"(?:{_STRING_RE}|{_NUMBER_RE})"
_FLAT_LIST_RE = (rf"\[{_NLOK_RE}(?:{_ATOM_RE}{_NLOK_RE}(?:,{_NLOK_RE}{_ATOM_RE}{_NLOK_RE})*"
                 rf"(?:,{_NLOK_RE})?)?\]")
_STMT_RE = (rf"[ \t]*([a-z][._0-9a-z]*)[ \t]*(\+?=)[ \t]*({_ATOM_RE}|{_FLAT_LIST_RE})"
            rf"[ \t]*(?:;|(?:\#[^\n]*)?\n|\Z)")
_EMPTY_RE = r"[ \t]*(?:;|(?:\#[^\n]*)?\n)"
_RUN_RE = f"(?:{_STMT_RE}|{_EMPTY_RE})+"
# No possessive quantifiers: CPython 3.11's re mis-tracks capture groups with them.  The
# patterns are unambiguous (each alternative starts differently), so plain ones stay linear.
_STMT_OR_EMPTY = re.compile(f"{_STMT_RE}|{_EMPTY_RE}")
_RUN_FULL = re.compile(f"(?:{_RUN_RE})?")
_ITEM_SPLIT = re.compile(rf"{_STRING_RE}|{_NUMBER_RE}|\#[^\n]*")

# What the parse produces, before positions are resolved (offsets into the text):
_AtomNode = tuple[Literal["atom"], int, str]  # ("atom", offset, token as written)
_ListNode = tuple[Literal["list"], int, list["_ValueNode"]]  # ("list", offset, items)
_ValueNode = _AtomNode | _ListNode
_StmtNode = tuple[Literal["stmt"], int, str, str, _ValueNode]  # (.., offset, key, op, value)


def _split_run(chunk: str, loc: int) -> list[_StmtNode]:
    """The statement nodes of a run matched by the fast-path regex."""
    nodes: list[_StmtNode] = []
    pos = 0
    while pos < len(chunk):
        m = _STMT_OR_EMPTY.match(chunk, pos)
        assert m is not None and m.end() > pos, "fast-path regexes disagree"
        pos = m.end()
        v = m.group(3)
        if v is None:
            continue
        vloc = loc + m.start(3)
        value: _ValueNode
        if v[0] == "[":
            items: list[_ValueNode] = [("atom", vloc + i.start(), i.group(0))
                                       for i in _ITEM_SPLIT.finditer(v) if i.group(0)[0] != "#"]
            value = ("list", vloc, items)
        else:
            value = ("atom", vloc, v)
        nodes.append(("stmt", loc + m.start(1), m.group(1), m.group(2), value))
    return nodes


class _Grammar:
    """Built once; pyparsing elements are reusable and thread-compatible for parsing."""

    def __init__(self) -> None:
        old = pp.ParserElement.DEFAULT_WHITE_CHARS
        pp.ParserElement.set_default_whitespace_chars(" \t")
        try:
            self._build()
        finally:
            pp.ParserElement.set_default_whitespace_chars(old)

    def _build(self) -> None:
        # Fast path: a run of statements whose values are atoms or flat lists is a regular
        # language; one Regex element takes the whole run and _split_run() cuts it up.
        # Everything else (nested lists, errors) goes through the structural rules below,
        # which alone define the language (tests check both paths agree).
        run = pp.Regex(_RUN_RE).set_name("statements")
        run.set_parse_action(lambda s, loc, t: _split_run(t[0], loc))
        newline = pp.Regex(r"(?:#[^\n]*)?\n").set_name("end of line")
        nl_ok = pp.Suppress(pp.ZeroOrMore(newline))
        key = pp.Regex(r"[a-z][._0-9a-z]*").set_name("key")
        op = pp.Regex(r"\+?=").set_name("'=' or '+='")
        atom = pp.Regex(f"{_STRING_RE}|{_NUMBER_RE}").set_name("value")
        atom.set_parse_action(lambda s, loc, t: ("atom", loc, t[0]))
        value = pp.Forward()
        value.set_name("value")
        comma = pp.Suppress(",").set_name("','")
        lbr = pp.Suppress("[").set_name("'['")
        rbr = pp.Suppress("]").set_name("']'")
        items = pp.Optional(value + nl_ok + pp.ZeroOrMore(comma + nl_ok + value + nl_ok)
                            + pp.Optional(comma + nl_ok))
        lst = pp.Group(lbr + nl_ok - items - rbr).set_name("list")
        lst.set_parse_action(lambda s, loc, t: ("list", loc, list(t[0])))
        value <<= atom | lst
        end_stmt = (pp.Suppress(";") | pp.Suppress(newline) | pp.StringEnd()).set_name(
            "';' or end of line")
        assignment = (key - op - value - end_stmt)
        assignment.set_parse_action(lambda s, loc, t: [("stmt", loc, t[0], t[1], t[2])])
        empty = pp.Suppress(";") | pp.Suppress(newline)
        self.file = pp.ZeroOrMore(assignment | empty) + pp.StringEnd()
        self.fast_file = pp.ZeroOrMore(run | assignment | empty) + pp.StringEnd()
        # Offsets must index the original text: no tab expansion.
        self.file.parse_with_tabs()
        self.fast_file.parse_with_tabs()


_GRAMMAR: _Grammar | None = None


def _grammar() -> _Grammar:
    global _GRAMMAR
    if _GRAMMAR is None:
        _GRAMMAR = _Grammar()
    return _GRAMMAR


def preload() -> None:
    """Build the grammar now: a resident process (xentoold) forks its commands with it
    built, instead of building it in each one."""
    _grammar()


# --------------------------------------------------------------------------- diagnosis

_PYTHONISH = set("+-.():")


def _diagnose(text: str, loc: int, expected: str) -> str:
    """Turn pyparsing's "expected X" at a position into a message about what is there."""
    if loc >= len(text):
        if expected == "']'":
            return "unexpected end of file inside a list (missing ']')"
        return f"unexpected end of file (expected {expected})"
    c = text[loc]
    if c == "\r":
        return "carriage return without a line feed (lines end with LF or CRLF)"
    if c == "\n":
        return f"unexpected end of line (expected {expected})"
    if c in "\"'":
        end = text.find("\n", loc)
        if c not in text[loc + 1:end if end >= 0 else len(text)].replace("\\" + c, ""):
            return "unterminated string (strings must end on the line they start)"
    if c == "#":
        return "comment at end of file needs a final newline (xl rejects it otherwise)"
    word = re.match(r"[A-Za-z_][A-Za-z0-9_.\-]*", text[loc:])
    if word and loc and text[loc - 1].isdigit():
        digits = re.search(r"[0-9][0-9a-fx]*$", text[:loc])
        assert digits is not None  # text[loc - 1] is a digit
        num = digits.group(0) + word.group(0)
        return (f"bad number '{num}': xl numbers are [0-9][0-9a-fx]* (hex digits in lower "
                "case), anything else must be quoted")
    if word:
        w = word.group(0)
        before = text[:loc].rstrip(" \t\n")
        if expected == "value" or before.endswith(("=", ",", "[")):
            return f"unquoted string '{w}': strings must be quoted"
        if any(ch.isupper() for ch in w):
            return f"key '{w}' is not valid: keys are lower case ([a-z][._0-9a-z]*)"
        return f"unexpected '{w}' (expected {expected})"
    if c in _PYTHONISH:
        return (f"unexpected '{c}' (expected {expected}; Python expressions are not "
                "supported in xl.cfg)")
    if not c.isprintable():
        return f"unexpected character U+{ord(c):04X} (expected {expected})"
    return f"unexpected '{c}' (expected {expected})"


_EXPECTED_RE = re.compile(r"Expected (.*?)(?:, found|, \(at|$)")


def _expected(exc: pp.ParseBaseException) -> str:
    m = _EXPECTED_RE.match(str(exc.msg))
    what = m.group(1) if m else str(exc.msg)
    if "value" in what or "list" in what:
        return "value"
    if what in ("end of text", "StringEnd", "end of string"):
        return "key"
    return what


# --------------------------------------------------------------------------- scanning


_PRESCAN_RE = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|#[^\n]*|[\[\]\x00,;\n]")


def _prescan(text: str, lines: _LineIndex) -> None:
    """Checks before the recursive parse: NUL bytes, list nesting, number of items."""
    depth = 0
    items = 0
    for m in _PRESCAN_RE.finditer(text):
        t = m.group(0)
        if t in ",;\n":
            items += 1
            if items > MAX_ITEMS:
                raise lines.error(f"more than {MAX_ITEMS} statements and list items",
                                  m.start())
        elif t == "[":
            depth += 1
            if depth > MAX_NESTING:
                raise lines.error(f"lists nested deeper than {MAX_NESTING} levels", m.start())
        elif t == "]":
            depth = max(0, depth - 1)
        elif t == "\x00":
            raise lines.error("NUL byte in config file", m.start())


def _build_value(node: _ValueNode, lines: _LineIndex, warnings: list[str]) -> Value:
    loc = node[1]
    file, line, col = lines.locate(loc)
    if node[0] == "atom":
        tok = node[2]
        if tok[0] in "\"'":
            return Atom(_dequote(tok, loc, lines, warnings), True, file, line, col)
        return Atom(tok, False, file, line, col)
    items = tuple(_build_value(n, lines, warnings) for n in node[2])
    return ListValue(items, file, line, col)


def _concat(prev: Setting, stmt: Statement,
            parsed_error: Callable[[str, Statement], ConfigError]) -> Value:
    a, b = prev.value, stmt.value
    if isinstance(a, Atom) and isinstance(b, Atom):
        return Atom(a.text + b.text, a.quoted or b.quoted, b.file, b.line, b.column)
    if isinstance(a, ListValue) and isinstance(b, ListValue):
        return ListValue(a.items + b.items, b.file, b.line, b.column)
    kinds = ("list", "string") if isinstance(b, ListValue) else ("string", "list")
    raise parsed_error(f"'{stmt.key} +=' adds a {kinds[0]} to a {kinds[1]} "
                       f"(set at {prev.file}:{prev.line})", stmt)


def parse(text: str, source: str = "<config>", extra: str | None = None, *,
          fast: bool = True) -> ParsedConfig:
    """Parse xl.cfg ``text`` (named ``source`` in messages).

    ``extra`` are ``KEY=VALUE`` overrides from the command line: like xl, they are appended
    to the file (after a newline) and parsed with it, but reported as ``<command line>``.
    """
    crlf_warning = []
    if "\r\n" in text:
        # Configs edited on Windows: xl refuses them for no good reason.
        text = text.replace("\r\n", "\n")
        crlf_warning.append(f"{source}: warning: CRLF line endings read as LF (xl refuses "
                            "this file)")
    extra_start = None
    if extra:
        extra_start = len(text)
        text = f"{text}\n{extra}\n"
    lines = _LineIndex(text, source, extra_start)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is {len(text)} bytes, more than the limit of "
                          f"{MAX_CONFIG_BYTES}", source)
    if (text.count("[") > MAX_NESTING or "\x00" in text
            or text.count(",") + text.count(";") + text.count("\n") > MAX_ITEMS):
        _prescan(text, lines)
    try:
        # match(), not fullmatch(): a failing fullmatch backtracks through every statement.
        head = _RUN_FULL.match(text) if fast else None
        nodes: list[_StmtNode] | pp.ParseResults
        if head is not None and head.end() == len(text):
            # The whole file is in the regular subset: skip pyparsing's per-call set-up.
            nodes = _split_run(text, 0)
        else:
            g = _grammar()
            nodes = (g.fast_file if fast else g.file).parse_string(text, parse_all=True)
    except pp.ParseBaseException as exc:
        raise lines.error(_diagnose(text, exc.loc, _expected(exc)), exc.loc) from None
    except RecursionError:
        raise ConfigError("config nests too deeply to parse", source) from None

    warnings: list[str] = crlf_warning
    statements: list[Statement] = []
    settings: dict[str, Setting] = {}

    def err(message: str, at: Statement) -> ConfigError:
        return ConfigError(message, at.file, at.line, at.column,
                           lines.source_line(at.file, at.line))

    for node in nodes:
        _, loc, key, op_text, vnode = node
        file, line, col = lines.locate(loc)
        stmt = Statement(key, _OPS[op_text], _build_value(vnode, lines, warnings),
                         file, line, col)
        statements.append(stmt)
        value = stmt.value
        prev = settings.get(key)
        if stmt.op is Op.APPEND and prev is not None:
            value = _concat(prev, stmt, err)
        settings[key] = Setting(key, value, stmt.op, file, line, col)
    return ParsedConfig(source, tuple(statements), settings, tuple(warnings), lines)


def iter_atoms(value: Value) -> Iterator[Atom]:
    if isinstance(value, Atom):
        yield value
    else:
        for item in value.items:
            yield from iter_atoms(item)
