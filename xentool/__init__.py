"""xentool: a Xen toolstack in Python, a drop-in replacement for ``xl``."""

__version__ = "0.1.0"
