"""Unit tests run on the host, often as root: keep the CLI's caches out of /var/cache, and
the host's own xl.conf (if any) out of the tests (none there: xl's defaults)."""

from __future__ import annotations

import os
import tempfile

_tmp = tempfile.TemporaryDirectory(prefix="xentool-unit-")
for var, sub in (("XENTOOL_CONFIG_CACHE", "configs"), ("XENTOOL_KERNEL_CACHE", "kernels")):
    os.environ.setdefault(var, os.path.join(_tmp.name, sub))
os.environ.setdefault("XENTOOL_XL_CONF", os.path.join(_tmp.name, "xl.conf"))
