"""Errors of the xl.cfg front end: every one names the file, line and column it concerns."""

from __future__ import annotations

from xentool.errors import XentoolError


class ConfigError(XentoolError):
    """A config file xentool will not accept.

    ``str()`` is one line, ``file:line:col: message``; ``excerpt`` holds the offending
    source line and a caret under the column, for front ends that can show more.
    """

    def __init__(self, message: str, file: str = "<config>", line: int | None = None,
                 column: int | None = None, source_line: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"

    @property
    def excerpt(self) -> str:
        """The source line (tabs expanded, clipped) and a caret under the column, or ''."""
        if self.source_line is None or self.column is None:
            return ""
        line = self.source_line.rstrip("\n")
        col = self.column - 1
        # Keep a window around the column so a 50 MB one-line file stays a short message.
        start = max(0, col - 60)
        shown = line[start:start + 120]
        prefix = line[start:col]
        pad = "".join("\t" if c == "\t" else " " for c in prefix)
        shown = "".join(c if c.isprintable() or c == "\t" else "?" for c in shown)
        return f"    {shown}\n    {pad}^"

    def with_excerpt(self) -> str:
        ex = self.excerpt
        return f"{self}\n{ex}" if ex else str(self)

