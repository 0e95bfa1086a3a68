"""Errors raised by the xentool front end (config, CLI, lifecycle)."""

from __future__ import annotations


class XentoolError(Exception):
    """A failure the user can act on; the CLI prints it as one line, without a traceback."""

    exit_code = 1


class UsageError(XentoolError):
    """Bad command-line usage (exit status 2, like argparse)."""

    exit_code = 2


class DomainNotFound(XentoolError):
    """A domain name or id that does not resolve to a live domain."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"domain '{domain}' does not exist")
        self.domain = domain
