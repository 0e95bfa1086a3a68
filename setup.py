"""Only here because cffi_modules has no setup.cfg spelling; metadata lives in setup.cfg."""
from setuptools import setup

setup(cffi_modules=["domain_builder/_build_xenctrl.py:ffibuilder"])
