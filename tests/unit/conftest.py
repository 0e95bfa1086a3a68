"""Unit tests run on the host, often as root: keep the CLI's caches out of /var/cache."""

from __future__ import annotations

import os
import tempfile

_tmp = tempfile.TemporaryDirectory(prefix="xentool-unit-")
for var, sub in (("XENTOOL_CONFIG_CACHE", "configs"), ("XENTOOL_KERNEL_CACHE", "kernels")):
    os.environ.setdefault(var, os.path.join(_tmp.name, sub))
