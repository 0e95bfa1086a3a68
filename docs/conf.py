"""Sphinx configuration: the API reference of xentool, built from its docstrings.

Build it (warnings are errors) with::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

No Xen is needed: the library imports libxenctrl's bindings lazily, and the one compiled
module that may be missing on a host without libxen-dev is mocked below.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Document the checkout these docs belong to, whatever is installed in the environment.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xentool

project = "xentool"
author = "the xentool authors"
copyright = "the xentool authors"
release = xentool.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

exclude_patterns = ["_build"]
# Double backticks mean code in these docstrings, as in the rest of the project; a single
# backtick (the default role) is code too, not a cross-reference that might not resolve.
default_role = "code"

# The cffi extension is built only where libxen-dev was available (pip install -e .).
autodoc_mock_imports = ["domain_builder._xenctrl"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"xentool {release}"
