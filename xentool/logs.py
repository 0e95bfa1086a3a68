"""The library's loggers: ``xentool.*``, with a ``NullHandler`` on ``xentool``.

A program that configures no logging sees nothing from the library (Python's advice for
libraries); one that does gets every record.  The CLI configures the root logger.  Library
modules get their logger here, so the handler is in place before the first record.
"""

from __future__ import annotations

import logging

logging.getLogger("xentool").addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of library module ``name``."""
    return logging.getLogger(name)
