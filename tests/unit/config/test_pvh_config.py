"""xl.cfg for PVH guests: which keys are applied, ignored or refused, and the libxl JSON."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import xentool.config.validate
from tests.unit.config.test_keys import _create_steps
from xentool.config import ConfigError, DomainConfig, DomainType, keys, loads
from xentool.config.libxl_json import to_libxl

BASE = "name = 'g'\ntype = 'pvh'\nkernel = '/k'\n"


def cfg(text: str) -> DomainConfig:
    return loads(BASE + text, "t.cfg")


def test_every_key_has_one_class_for_a_pvh_guest() -> None:
    applied = set(keys.APPLIED_PVH) | (set(keys.APPLIED) - keys.IGNORED_FOR_PVH)
    refused = set(keys.REFUSED) - set(keys.APPLIED_PVH)
    classes = [applied, set(keys.IGNORED_FOR_PVH), set(keys.XL_WARNS), refused]
    assert sum(map(len, classes)) == len(keys.XL_KEYS)
    assert set().union(*classes) == keys.XL_KEYS


def test_every_pvh_step_is_a_step_of_create() -> None:
    steps = _create_steps()
    source = Path(xentool.config.validate.__file__).read_text()
    for key, how in keys.APPLIED_PVH.items():
        assert f'"{key}"' in source, key
        for part in how.split(";"):
            part = part.strip()
            if part.startswith("step:"):
                for step in part.removeprefix("step:").split(","):
                    assert re.sub(r"\s*\(.*\)$", "", step.strip()) in steps, (key, step)
            else:
                assert part.startswith("config:"), (key, part)


@pytest.mark.parametrize("key", sorted(keys.IGNORED_FOR_PVH))
def test_keys_xl_ignores_for_pvh_are_accepted_with_a_warning(key: str) -> None:
    c = cfg(f"{key} = 1\n")
    assert any(f"'{key}' does not apply to PVH guests" in w for w in c.warnings), c.warnings


@pytest.mark.parametrize("key", sorted(set(keys.REFUSED) - set(keys.APPLIED_PVH)))
def test_keys_refused_for_pv_stay_refused_for_pvh(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"t\.cfg:4:\d+: '?{key}'? .*is not supported"):
        cfg(f"{key} = 1\n")


def test_pvh_keys_are_read() -> None:
    c = cfg('cpuid = "host,rdtscp=0,lm=k"\ntimer_mode = "one_missed_tick_pending"\n'
            "nestedhvm = 1\nshadow_memory = 8\nhap = 1\noos = 0\npvshim = 0\n"
            'altp2m = "disabled"\nnomigrate = 1\n')
    assert c.type is DomainType.PVH
    assert c.cpuid == (("rdtscp", "0"), ("lm", "k"))
    assert (c.timer_mode, c.nestedhvm, c.shadow_memory) == (3, True, 8)
    assert (c.hap, c.oos, c.pvshim, c.altp2m, c.nomigrate) == (True, False, False, 0, True)
    assert c.warnings == ()
    assert cfg("").cpuid is None and cfg("").timer_mode is None


def test_a_pv_guest_still_refuses_cpuid_and_timer_mode() -> None:
    for text in ('cpuid = "host,rdtscp=0"\n', 'timer_mode = "delay_for_missed_ticks"\n'):
        with pytest.raises(ConfigError, match="is not supported by xentool"):
            loads("name = 'g'\nkernel = '/k'\n" + text, "t.cfg")


@pytest.mark.parametrize("text, message", [
    ('cpuid = "rdtscp=0"\n', "t.cfg:4:9: cpuid = 'rdtscp=0': the first word must be "
                             '"host"'),
    ("cpuid = ['0x1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0']\n",
     "t.cfg:4:9: cpuid as a list (the xend 'leaf:reg=bits' form) is not supported"),
    ("hap = 0\n", "t.cfg:4:1: 'hap = 0' is not supported by xentool: shadow-paged"),
    ("pvshim = 1\n", "t.cfg:4:1: 'pvshim = 1' is not supported by xentool: the PV shim"),
    ('altp2m = "mixed"\n', "t.cfg:4:1: 'altp2m' is not supported by xentool"),
    ('timer_mode = "fast"\n', "t.cfg:4:14: invalid value 'fast' for timer_mode"),
    ("type = 'hvm'\n", "t.cfg:4:8: type 'hvm' is not supported"),
])
def test_pvh_values_xentool_cannot_apply(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(text)
    assert str(info.value).startswith(message), str(info.value)


def test_an_unknown_cpuid_flag_is_refused_where_it_is_written() -> None:
    pytest.importorskip("domain_builder._xenctrl")  # the names come from the binding
    with pytest.raises(ConfigError) as info:
        cfg('cpuid = "host,rdtscp=0,nosuchflag=1"\n')
    assert str(info.value).startswith("t.cfg:4:9: cpuid = 'host,rdtscp=0,nosuchflag=1': "
                                      "unknown CPUID flag name 'nosuchflag'")
    with pytest.raises(ConfigError, match="'family' is not applied by xentool yet"):
        cfg('cpuid = "host,family=6"\n')


def test_timer_mode_as_a_number_is_deprecated_like_in_xl() -> None:
    c = cfg("timer_mode = 2\n")
    assert c.timer_mode == 2
    assert c.warnings == ("t.cfg:4:14: warning: timer_mode as an integer is deprecated; use "
                          'timer_mode = "no_missed_ticks_pending"',)


def test_e820_host_is_ignored_not_refused() -> None:
    c = cfg("e820_host = 1\n")
    assert c.e820_host is None and "'e820_host' does not apply to PVH" in c.warnings[0]


def test_libxl_json_of_a_pvh_guest() -> None:
    pytest.importorskip("domain_builder._xenctrl")  # the CPUID names come from the binding
    c = cfg('cpuid = "host,rdtscp=0"\nmemory = 128\nvcpus = 2\nmaxvcpus = 3\n'
            'timer_mode = "no_missed_ticks_pending"\nnestedhvm = 0\nshadow_memory = 4\n'
            "hap = 1\noos = 1\npvshim = 0\n")
    doc = to_libxl(c, stored=True)
    c_info, b_info = doc["c_info"], doc["b_info"]
    assert isinstance(c_info, dict) and isinstance(b_info, dict)
    assert list(c_info) == ["type", "hap", "oos", "name", "domid", "run_hotplug_scripts"]
    assert c_info["type"] == "pvh" and c_info["hap"] == "True"
    assert b_info["cpuid"] == {"cpuid": [{"leaf": 0x80000001, "edx": "xxxx0" + "x" * 27}],
                               "msr": []}
    assert (b_info["timer_mode"], b_info["nested_hvm"], b_info["shadow_memkb"]) == \
        ("no_missed_ticks_pending", "False", 4096)
    assert b_info["type.pvh"] == {"pvshim": "False"} and "type.pv" not in b_info
    assert b_info["video_memkb"] == 0
    keys_order = list(b_info)
    assert keys_order.index("cpuid") < keys_order.index("sched_params") < \
        keys_order.index("timer_mode") < keys_order.index("nested_hvm") < \
        keys_order.index("type.pvh")
