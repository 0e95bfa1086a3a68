"""``list -l`` and ``config-update`` without Xen: libxl's merge of the stored configuration
with the runtime state, its JSON and sxp printing (against what xl 4.17 printed in the
testbed, kept in tests/data/listl), and config-update's arguments and stored text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_monitor import U1, U2, FakeOps, rec, state  # noqa: F401 (autouse)
from xentool import monitor as m
from xentool import records
from xentool.cli.commands.stored import split_update_args, updated_text
from xentool.cli.sxp import format_sxp
from xentool.config.libxl_json import RuntimeView, merge_runtime, yajl_dumps
from xentool.errors import UsageError
from xentool.retrieve import store_userdata, updated_config_text

DATA = Path(__file__).resolve().parents[1] / "data" / "listl"


def _xl(name: str) -> list[dict[str, object]]:
    doc = json.loads((DATA / name).read_text())
    assert isinstance(doc, list)
    return doc


def test_yajl_output_is_xls_byte_for_byte() -> None:
    for name in ("dom0.json", "xl.json"):
        text = (DATA / name).read_text()
        # xl puts() the generator's output: one more newline.
        assert yajl_dumps(json.loads(text)) + "\n" == text


def test_yajl_empty_containers_and_escapes() -> None:
    assert yajl_dumps({"a": {}, "b": []}) == '{\n    "a": {\n\n    },\n    "b": [\n\n    ]\n}\n'
    assert yajl_dumps("/x\"\\\n\x01é") == '"/x\\"\\\\\\n\\u0001é"\n'
    assert yajl_dumps(None) == "null\n"


DOM0_STORED = {"c_info": {"type": "pv", "name": "Domain-0"},
               "b_info": {"max_memkb": 1048576, "target_memkb": 1048576,
                          "type.pv": {}, "arch_arm": {}, "arch_x86": {}}}


def test_dom0_as_xl_prints_it() -> None:
    rt = RuntimeView(name="Domain-0", uuid="00000000-0000-0000-0000-000000000000",
                     vcpus_online=frozenset({0, 1}), target_memkb=1048576,
                     max_memkb=1048576,
                     sched_params={"sched": "credit2", "weight": 256, "cap": 0})
    doc, warnings = merge_runtime(DOM0_STORED, rt)
    assert warnings == []
    # The nil uuid and an empty vCPU map (max_vcpus unset) are not printed; the target
    # has libxl's unset video RAM (-1 kB) added, as xl shows it.
    assert [{"domid": 0, "config": doc}] == _xl("dom0.json")


def test_guest_merge_takes_runtime_state_in_idl_order() -> None:
    (entry,) = _xl("xl.json")
    stored = json.loads(json.dumps(entry["config"]))
    b = stored["b_info"]
    b["sched_params"] = {"weight": 384}
    stored["c_info"]["name"] = "old-name"
    stored["nics"] = [{"devid": 0, "mac": "00:16:3e:00:00:01"}, {"devid": 1}]
    stored["disks"] = [{"pdev_path": "/dev/sr0", "vdev": "xvdc", "format": "raw",
                        "removable": 1, "is_cdrom": 1}, {"vdev": "xvdd"}]
    rt = RuntimeView(name="probe-xl", uuid=entry["config"]["c_info"]["uuid"],
                     vcpus_online=frozenset({0}), target_memkb=24576, max_memkb=32768,
                     sched_params={"cap": 0, "weight": 384, "sched": "credit2"},
                     disks={"xvdc": (0, "")}, nic_devids=frozenset({0}))
    doc, warnings = merge_runtime(stored, rt)
    assert warnings == ["Device present in JSON but not in xenstore, ignored"] * 2
    assert doc["c_info"]["name"] == "probe-xl"
    assert doc["b_info"]["avail_vcpus"] == [0]
    assert doc["b_info"]["target_memkb"] == 24576  # video_memkb 0: no fudge
    assert list(doc["b_info"]["sched_params"]) == ["sched", "weight", "cap"]
    assert list(doc) == ["c_info", "b_info", "disks", "nics", "on_soft_reset"]
    assert doc["nics"] == [{"devid": 0, "mac": "00:16:3e:00:00:01"}]
    # An empty drive reads as no medium, as libxl_device_disk_merge makes it.
    assert doc["disks"] == [{"pdev_path": "", "vdev": "xvdc", "format": "empty",
                             "removable": 1, "is_cdrom": 1}]


def test_a_field_libxl_prints_later_goes_in_its_place() -> None:
    stored = {"c_info": {"name": "g", "type": "pv"},
              "b_info": {"kernel": "/k", "max_vcpus": 2, "video_memkb": 0}}
    rt = RuntimeView(name="g", uuid=U1, vcpus_online=frozenset({0, 1, 5}),
                     target_memkb=1000, max_memkb=2000, sched_params={"sched": "null"})
    doc, _ = merge_runtime(stored, rt)
    assert list(doc["c_info"]) == ["type", "name", "uuid"]
    assert list(doc["b_info"]) == ["max_vcpus", "avail_vcpus", "max_memkb", "target_memkb",
                                   "video_memkb", "sched_params", "kernel", "type.pv",
                                   "arch_arm", "arch_x86"]
    assert doc["b_info"]["avail_vcpus"] == [0, 1]  # only those below max_vcpus


def test_sxp_of_dom0_is_xls() -> None:
    (entry,) = _xl("dom0.json")
    got = format_sxp(0, entry["config"], "00000000-0000-0000-0000-000000000000")
    assert got == (DATA / "dom0.sxp").read_text()


def test_sxp_devices() -> None:
    cfg = {"c_info": {"type": "pv", "name": "g"}, "b_info": {"max_vcpus": 1},
           "disks": [{"pdev_path": "/d", "vdev": "xvda", "backend": "phy", "readwrite": 1}],
           "nics": [{"devid": 0, "mac": "00:16:3e:0a:0b:0c", "ifname": "v0"}]}
    text = format_sxp(3, cfg, U1)
    assert "\t\t\t(phystype 1)\n\t\t\t(virtpath xvda)\n" in text
    assert "\t\t(vif\n\t\t\t(vifname v0)\n\t\t\t(backend_domid 0)\n\t\t\t(frontend_domid 3)\n" \
           in text
    assert "(mac 00163e0a0b0c)" in text


# -- config-update ----------------------------------------------------------------------------


@pytest.mark.parametrize("defconfig, args, want", [
    (None, ["a.cfg", "memory=48"], ("a.cfg", ["memory=48"])),
    ("b.cfg", ["a.cfg"], ("b.cfg", [])),  # -f wins over the file after the domain
    (None, ["x=1", "a.cfg"], ("a.cfg", ["x=1"])),
    (None, [], (None, [])),
])
def test_update_arguments_as_xl_reads_them(defconfig: str | None, args: list[str],
                                           want: tuple[str | None, list[str]]) -> None:
    assert split_update_args(defconfig, args) == want


def test_a_second_file_is_refused() -> None:
    with pytest.raises(UsageError):
        split_update_args(None, ["a.cfg", "b.cfg"])


def test_updated_text_is_what_xl_stores() -> None:
    assert updated_text('name = "g"\n', []) == 'name = "g"\n'
    assert updated_text('name = "g"\n', ["memory=48", 'extra="a b"']) == \
        'name = "g"\n\nmemory=48\nextra="a b"\n\n'


def test_userdata_store_and_read(tmp_path: Path) -> None:
    path = store_userdata(7, U1, "xl", b"memory = 64\n", root=str(tmp_path))
    assert Path(path).name == f"userdata-d.7.{U1}.xl"
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    assert updated_config_text(7, U1, root=str(tmp_path)) == "memory = 64\n"
    store_userdata(7, U1, "xl", b"", root=str(tmp_path))  # no data: removed, as libxl does
    assert updated_config_text(7, U1, root=str(tmp_path)) is None


def test_a_restart_uses_the_updated_config() -> None:
    ops = FakeOps()
    created: list[records.DomainRecord] = []
    real_create = ops.create

    def create(r: records.DomainRecord) -> None:
        created.append(r)
        real_create(r)

    ops.create = create  # type: ignore[method-assign]
    new = 'name = "g"\nmemory = 64\n'
    mon = m.Monitor(ops, clock=lambda: 1_000_000.0,
                    updated_config=lambda domid, uuid: new if uuid == U1 else None)
    records.write_record(rec(on_reboot="restart", overrides=("memory=32",),
                             started_at=0.0))
    ops.add(U1, reason=1)
    mon.scan()
    assert [r.config_text for r in created] == [new]
    assert created[0].overrides == ()
    # Kept for later restarts too, as the domain's configuration now.
    stored = records.load_domain_config(U1)
    assert stored is not None and stored.config_text == new


def test_a_destroy_ignores_the_updated_config() -> None:
    ops = FakeOps()
    asked: list[int] = []
    mon = m.Monitor(ops, updated_config=lambda domid, uuid: asked.append(domid) or "x")
    records.write_record(rec(on_poweroff="destroy"))
    ops.add(U1, reason=0)
    mon.scan()
    assert asked == []


def test_a_domain_destroyed_by_someone_else_is_forgotten_at_once() -> None:
    ops, now = FakeOps(), 1_000_000.0
    mon = m.Monitor(ops, clock=lambda: now)
    records.write_record(rec(saved_at=now, started_at=now))
    records.write_record(rec(uuid=U2, saved_at=now, started_at=now))  # still being created
    d = ops.add(U1)
    mon.scan()
    del ops.doms[d.domid]  # `xl destroy`
    mon.scan()
    assert records.load_domain_config(U1) is None
    assert records.load_domain_config(U2) is not None  # never seen alive: RECORD_GRACE
