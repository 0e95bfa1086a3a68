"""libxl_domain_config JSON: only fields that differ from libxl's IDL defaults are printed."""

from __future__ import annotations

from uuid import UUID

from xentool.config import loads
from xentool.config.libxl_json import dumps, to_libxl

BASE = 'name = "g"\nkernel = "/k"\n'


def j(extra: str = "", **kw):
    return to_libxl(loads(BASE + extra, "t.cfg"), **kw)


def test_minimal_config_prints_only_what_was_set() -> None:
    assert j() == {"c_info": {"type": "pv", "name": "g"},
                   "b_info": {"sched_params": {}, "kernel": "/k", "type.pv": {}},
                   "on_reboot": "restart", "on_soft_reset": "soft_reset"}


def test_random_uuid_is_printed_only_when_the_config_has_none() -> None:
    u = UUID("12345678-1234-1234-1234-123456789abc")
    assert j(uuid=u)["c_info"]["uuid"] == str(u)
    own = "5e1c1a0b-6a3f-4e6b-9b7e-2f1f3c4d5e6f"
    assert j(f'uuid = "{own}"\n', uuid=u)["c_info"]["uuid"] == own


def test_memory_without_maxmem_sets_both_maxmem_alone_only_max() -> None:
    b = j("memory = 100\n")["b_info"]
    assert (b["max_memkb"], b["target_memkb"]) == (102400, 102400)
    b = j("maxmem = 100\n")["b_info"]
    assert b["max_memkb"] == 102400 and "target_memkb" not in b


def test_cpus_all_needs_the_host_cpu_count() -> None:
    assert "vcpu_hard_affinity" not in j('vcpus = 2\ncpus = "all,^1"\n')["b_info"]
    b = j('vcpus = 2\ncpus = "all,^1"\n', host_cpus=4)["b_info"]
    assert b["vcpu_hard_affinity"] == [[0, 2, 3], [0, 2, 3]]
    assert "numa_placement" not in b
    b = j('vcpus = 2\ncpus = ["3", "1"]\n')["b_info"]
    assert b["vcpu_hard_affinity"] == [[3], [1]] and b["numa_placement"] == "False"


def test_generated_macs_are_not_printed_given_ones_are_normalised() -> None:
    nics = j("vif = [ 'bridge=b', 'mac=00:16:3E:0A:0b:0c' ]\n")["nics"]
    assert nics == [{"devid": 0, "bridge": "b"}, {"devid": 1, "mac": "00:16:3e:0a:0b:0c"}]


def test_dumps_is_indented_json_with_a_final_newline() -> None:
    assert dumps({"a": [1]}) == '{\n    "a": [\n        1\n    ]\n}\n'


def test_the_stored_config_names_every_mac_the_guest_got() -> None:
    cfg = loads(BASE + "vif = [ 'bridge=b', 'mac=00:16:3E:0A:0b:0c' ]\n", "t.cfg")
    nics = to_libxl(cfg, stored=True)["nics"]
    assert nics[0]["mac"] == cfg.vifs[0].mac and cfg.vifs[0].mac_generated
    assert nics[1]["mac"] == "00:16:3e:0a:0b:0c"
    assert to_libxl(cfg, stored=True)["b_info"]["video_memkb"] == 0
    assert "video_memkb" not in to_libxl(cfg)["b_info"]  # create -n prints what xl prints
