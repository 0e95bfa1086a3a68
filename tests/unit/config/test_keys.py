"""The table of xl.cfg keys (xentool/config/keys.py) against the parser and create's steps:
no key is accepted without something that applies it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import xentool.config.validate
import xentool.create
from xentool.config import ConfigError, keys, loads

BASE = "name = 'g'\nkernel = '/k'\n"


def _create_steps() -> set[str]:
    """The names of create's journal steps, read from its source."""
    tree = ast.parse(Path(xentool.create.__file__).read_text())
    steps = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("do", "push") and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                steps.add(arg.value)
            elif isinstance(arg, ast.JoinedStr):  # f"attach {dev.kind} {dev.devid}"
                steps.update(f"attach {kind}" for kind in ("vbd", "vif"))
    return steps


def test_the_four_classes_partition_every_key_xl_reads() -> None:
    classes = [set(keys.APPLIED), set(keys.IGNORED_FOR_PV), set(keys.XL_WARNS),
               set(keys.REFUSED)]
    assert sum(map(len, classes)) == len(keys.XL_KEYS)  # no key in two classes


def test_every_applied_step_is_a_step_of_create() -> None:
    steps = _create_steps()
    assert {"create domain", "build", "scheduler parameters", "vcpu affinity"} <= steps
    for key, how in keys.APPLIED.items():
        for part in how.split(";"):
            part = part.strip()
            if part.startswith("step:"):
                for step in part.removeprefix("step:").split(","):
                    name = re.sub(r"\s*\(.*\)$", "", step.strip())
                    assert name in steps, (key, name)
            else:
                assert part.split(":")[0] in ("config", "monitor"), (key, part)


def test_every_applied_key_is_read_by_the_parser() -> None:
    source = Path(xentool.config.validate.__file__).read_text()
    for key in keys.APPLIED:
        assert f'"{key}"' in source, key


@pytest.mark.parametrize("key", sorted(keys.REFUSED))
def test_refused_keys_are_refused_by_name(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"t\.cfg:3:\d+: '?{key}'? .*is not supported"):
        loads(BASE + f"{key} = 1\n", "t.cfg")


@pytest.mark.parametrize("key", sorted(keys.IGNORED_FOR_PV | set(keys.XL_WARNS)))
def test_keys_xl_ignores_for_pv_are_accepted_with_a_warning(key: str) -> None:
    cfg = loads(BASE + f"{key} = 1\n", "t.cfg")
    assert any(f"'{key}'" in w for w in cfg.warnings), cfg.warnings


def test_an_unknown_key_is_accepted_with_a_warning() -> None:
    cfg = loads(BASE + "my_key = 1\n", "t.cfg")
    assert cfg.warnings == ("t.cfg:3:1: warning: unknown key 'my_key' is ignored (xl ignores "
                            "it too)",)
