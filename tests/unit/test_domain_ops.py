"""shutdown/reboot/rename/mem-set/mem-max/vcpu-set: pure rules, then the XenStore protocol
against the fake xenstored (real wire protocol) with a fake hypervisor."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_xenstore_fake import Server, fake_xenstored  # noqa: F401 - fixture

from domain_builder.xenctrl import DomainInfo, ShutdownReason
from xenstore.client import Store
from xentool import control as ops
from xentool.cli.commands import domain_ops as cli
from xentool.errors import UsageError, XentoolError
from xentool.state import RUN_DIR_ENV

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


# -- pure -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kb", [
    ("256", 256 * 1024), ("256m", 256 * 1024), ("256M", 256 * 1024), ("1g", 1024 * 1024),
    ("1G", 1024 * 1024), ("512k", 512), ("2048b", 2), ("1t", 1024 ** 3), (" 64 ", 64 * 1024),
    ("0", 0),
    ("", None), ("12q", None), ("-5", None), ("1mb", None), ("m", None), ("1.5g", None),
    ("٣", None),
])
def test_parse_mem_size_kb(text: str, kb: int | None) -> None:
    assert cli.parse_mem_size_kb(text) == kb


def test_plan_mem_set_like_libxl() -> None:
    p = ops.plan_mem_set(96 * 1024, static_max_kb=128 * 1024, videoram_kb=0, domid=3)
    assert p == ops.MemTarget(96 * 1024, 96 * 1024 + 1024, 96)
    p = ops.plan_mem_set(96 * 1024, static_max_kb=128 * 1024, videoram_kb=8192, domid=3)
    assert p.target_kb == 96 * 1024 - 8192 and p.hypervisor_max_kb == 96 * 1024 + 1024
    assert ops.plan_mem_set(128 * 1024, 128 * 1024, 0, 3).target_kb == 128 * 1024
    with pytest.raises(XentoolError, match="memory_dynamic_max must be less than or equal to "
                                           r"memory_static_max \(131073 kB > 131072 kB\)"):
        ops.plan_mem_set(128 * 1024 + 1, 128 * 1024, 0, 3)
    with pytest.raises(XentoolError, match="dom0 is below the minimum"):
        ops.plan_mem_set(64 * 1024, 4 << 30, 0, 0)
    assert ops.plan_mem_set(64 * 1024, 4 << 30, 0, 7).target_kb == 64 * 1024


def test_plan_mem_max() -> None:
    assert ops.plan_mem_max(256 * 1024, 128 * 1024) == 256 * 1024 + 1024
    assert ops.plan_mem_max(128 * 1024, 128 * 1024) == 128 * 1024 + 1024
    with pytest.raises(XentoolError, match="must be greater than or equal"):
        ops.plan_mem_max(64 * 1024, 128 * 1024)


def test_vcpu_availability() -> None:
    assert ops.vcpu_availability(4, 2, 3) == {
        "/local/domain/4/cpu/0/availability": "online",
        "/local/domain/4/cpu/1/availability": "online",
        "/local/domain/4/cpu/2/availability": "offline",
        "/local/domain/4/cpu/3/availability": "offline",
    }
    assert set(ops.vcpu_availability(4, 4, 3).values()) == {"online"}
    with pytest.raises(XentoolError, match="0 vcpus"):
        ops.vcpu_availability(4, 0, 3)
    with pytest.raises(XentoolError, match="requested 5 vcpus, but domain 4 has at most 4"):
        ops.vcpu_availability(4, 5, 3)


def test_overcommit_rule_is_xls() -> None:
    ops.check_overcommit(2, online=1, host_cpus=2)
    ops.check_overcommit(3, online=4, host_cpus=2)  # shrinking is always fine
    with pytest.raises(XentoolError, match="2 physical CPUs and want 3 vCPUs"):
        ops.check_overcommit(3, online=1, host_cpus=2)


@pytest.mark.parametrize("text", ["", "x", "-1", "1.0", "²"])
def test_parse_vcpu_count_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid number of vcpus"):
        cli.parse_vcpu_count(text)


def test_new_name_rules() -> None:
    ops.check_new_name("web-1")
    with pytest.raises(UsageError):
        ops.check_new_name("")
    with pytest.raises(UsageError, match="digits only"):
        ops.check_new_name("123")


def _info(domid: int, *, flags: int = 0, max_vcpu_id: int = 0, online: int = 1,
          tot_pages: int = 32768, max_pages: int = 33024) -> DomainInfo:
    handle = bytes.fromhex(UUID.replace("-", ""))
    return DomainInfo(domid=domid, flags=flags, tot_pages=tot_pages, max_pages=max_pages,
                      outstanding_pages=0, shr_pages=0, paged_pages=0, shared_info_frame=0,
                      cpu_time_ns=0, nr_online_vcpus=online, max_vcpu_id=max_vcpu_id,
                      ssidref=0, handle=handle, cpupool=0)


def shut(domid: int, reason: int) -> DomainInfo:
    return _info(domid, flags=(1 << 2) | (reason << 16))


def test_death_events_messages() -> None:
    infos = {1: _info(1), 2: shut(2, 1), 3: _info(3, flags=1)}  # 4 is gone
    evs = ops.death_events([4, 3, 2, 1], infos)
    assert [e.message() for e in evs] == [
        "Domain 2 has been shut down, reason code 1",
        "Domain 3 has been destroyed",
        "Domain 4 has been destroyed",
    ]


# -- against the fake xenstored ---------------------------------------------------------------


class FakeXc:
    def __init__(self, infos: dict[int, DomainInfo], host_cpus: int = 2) -> None:
        self.infos = infos
        self.host_cpus = host_cpus
        self.maxmem: list[tuple[int, int]] = []
        self.shutdowns: list[tuple[int, int]] = []

    def domains(self) -> list[DomainInfo]:
        return [self.infos[d] for d in sorted(self.infos)]

    def domain_info(self, domid: int) -> DomainInfo | None:
        return self.infos.get(domid)

    def set_max_mem(self, domid: int, kb: int) -> None:
        self.maxmem.append((domid, kb))

    def shutdown(self, domid: int, reason: int) -> None:
        self.shutdowns.append((domid, int(reason)))
        self.infos[domid] = shut(domid, int(reason))

    def max_cpus(self) -> int:
        return self.host_cpus


@pytest.fixture
def env(fake_xenstored: tuple[Server, str], tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    _, path = fake_xenstored
    xc = FakeXc({0: _info(0), 5: _info(5, max_vcpu_id=3, online=2)})
    with Store.connect(path, timeout=5) as xs:
        xs.write("/local/domain/0/name", "Domain-0")
        xs.write("/local/domain/5/name", "guest")
        xs.write("/local/domain/5/vm", f"/vm/{UUID}")
        xs.write(f"/vm/{UUID}/name", "guest")
        xs.write("/local/domain/5/memory/target", str(128 * 1024))
        xs.write("/local/domain/5/memory/static-max", str(256 * 1024))
        xs.write("/local/domain/5/memory/videoram", "0")
        xs.write("/local/domain/5/control/shutdown", "")
        yield SimpleNamespace(xc=xc, xs=xs, path=path,
                              resolve=lambda q: 5 if q in ("guest", "5") else 0)


def test_mem_set_writes_target_vm_memory_and_hypervisor_max(env: SimpleNamespace) -> None:
    plan = ops.set_memory_target(env, 5, 200 * 1024)
    assert plan.target_kb == 200 * 1024
    assert env.xs.read("/local/domain/5/memory/target") == str(200 * 1024)
    assert env.xs.read(f"/vm/{UUID}/memory") == "200"
    assert env.xc.maxmem == [(5, 200 * 1024 + 1024)]
    with pytest.raises(XentoolError, match="memory_dynamic_max"):
        ops.set_memory_target(env, 5, 300 * 1024)
    assert env.xs.read("/local/domain/5/memory/target") == str(200 * 1024)  # untouched
    assert env.xc.maxmem == [(5, 200 * 1024 + 1024)]


def test_mem_set_without_target_node_is_an_error(env: SimpleNamespace) -> None:
    env.xs.rm("/local/domain/5/memory/target")
    with pytest.raises(XentoolError, match="cannot get memory info from "
                                           "/local/domain/5/memory/target"):
        ops.set_memory_target(env, 5, 100 * 1024)


def test_mem_set_dom0_fills_its_memory_nodes_first(env: SimpleNamespace) -> None:
    env.xc.infos[0] = _info(0, tot_pages=262144, max_pages=524288)
    ops.set_memory_target(env, 0, 512 * 1024)
    assert env.xs.read("/local/domain/0/memory/static-max") == str(524288 * 4)
    assert env.xs.read("/local/domain/0/memory/target") == str(512 * 1024)


def test_mem_max_checks_target_and_moves_static_max(env: SimpleNamespace) -> None:
    # xl 4.17 (the testbed oracle) writes the new limit to memory/static-max too.
    ops.set_memory_max(env, 5, 512 * 1024)
    assert env.xc.maxmem == [(5, 512 * 1024 + 1024)]
    assert env.xs.read("/local/domain/5/memory/static-max") == str(512 * 1024)
    with pytest.raises(XentoolError, match="greater than or equal"):
        ops.set_memory_max(env, 5, 64 * 1024)
    assert env.xc.maxmem == [(5, 512 * 1024 + 1024)]
    assert env.xs.read("/local/domain/5/memory/static-max") == str(512 * 1024)


def test_vcpu_set_writes_every_availability_node(env: SimpleNamespace) -> None:
    ops.set_vcpus(env, 5, 1)
    assert [env.xs.read(f"/local/domain/5/cpu/{i}/availability") for i in range(4)] == \
        ["online", "offline", "offline", "offline"]
    with pytest.raises(XentoolError, match="overcommitting"):
        ops.set_vcpus(env, 5, 3)
    ops.set_vcpus(env, 5, 3, check_host=False)
    assert env.xs.read("/local/domain/5/cpu/2/availability") == "online"


def test_rename_updates_both_names_and_refuses_duplicates(env: SimpleNamespace) -> None:
    ops.rename_domain(env, 5, "web")
    assert env.xs.read("/local/domain/5/name") == "web"
    assert env.xs.read(f"/vm/{UUID}/name") == "web"
    with pytest.raises(XentoolError, match='domain with name "Domain-0" already exists'):
        ops.rename_domain(env, 5, "Domain-0")
    ops.rename_domain(env, 5, "web")  # its own name: fine
    with pytest.raises(XentoolError, match="renamed meanwhile"):
        ops.rename_domain(env, 5, "x", old_name="guest")


class AckingGuest:
    """A guest's xenbus driver: clears control/shutdown when a request appears."""

    def __init__(self, path: str, xc: FakeXc, reason_on_ack: bool = True) -> None:
        self.store = Store.connect(path, timeout=5)
        self.xc = xc
        self.stop = threading.Event()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.store.watch("/local/domain/5/control/shutdown") as w:
            while not self.stop.is_set():
                if w.get(timeout=0.1) is None:
                    continue
                v = self.store.get("/local/domain/5/control/shutdown")
                if v:
                    self.seen.append(v)
                    self.store.write("/local/domain/5/control/shutdown", "")
                    time.sleep(0.1)
                    self.xc.infos[5] = shut(5, ops.REASON_CODES[v])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.store.close()


def test_shutdown_request_acknowledged_by_the_guest(env: SimpleNamespace) -> None:
    guest = AckingGuest(env.path, env.xc)
    progress: list[str] = []
    try:
        ops.request(env, 5, "reboot", fallback=False, timeout=10, progress=progress.append)
        ops.wait_for_deaths(env, [5], progress.append)
    finally:
        guest.close()
    assert guest.seen == ["reboot"]
    assert env.xc.shutdowns == []  # the guest did it, not the hypercall
    assert progress == [
        "Rebooting domain 5", "Waiting for 1 domains",
        "Domain 5 has been shut down, reason code 1"]


def test_unacknowledged_request_fails_without_F(env: SimpleNamespace) -> None:
    t0 = time.monotonic()
    with pytest.raises(XentoolError, match=r"did not acknowledge the shutdown request within "
                                           r"0\.5s"):
        ops.request(env, 5, "poweroff", fallback=False, timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert env.xs.read("/local/domain/5/control/shutdown") == "poweroff"
    assert env.xc.shutdowns == []


def test_F_without_pv_feature_uses_the_hypercall_at_once(env: SimpleNamespace) -> None:
    progress: list[str] = []
    ops.request(env, 5, "poweroff", fallback=True, timeout=30, progress=progress.append)
    assert env.xc.shutdowns == [(5, ShutdownReason.POWEROFF)]
    assert env.xs.get("/local/domain/5/control/shutdown") is None
    assert any("PV control interface not available" in m for m in progress)


def test_F_with_feature_but_no_ack_falls_back_after_the_timeout(env: SimpleNamespace) -> None:
    env.xs.write("/local/domain/5/control/feature-reboot", "1")
    ops.request(env, 5, "reboot", fallback=True, timeout=0.3)
    assert env.xc.shutdowns == [(5, ShutdownReason.REBOOT)]


def test_monitor_preserve_gives_a_new_uuid_vm_path_and_name(env: SimpleNamespace) -> None:
    """libxl_domain_preserve as the monitor's rename-restart does it."""
    from xentool.monitor import XenOps

    handles: list[tuple[int, bytes]] = []
    env.xc.set_handle = lambda domid, h: handles.append((domid, h))
    new = "abcdefab-0000-4000-8000-000000000001"
    XenOps(env).preserve(5, "guest-20250101T0000Z", new)
    assert handles == [(5, bytes.fromhex(new.replace("-", "")))]
    assert env.xs.read("/local/domain/5/vm") == f"/vm/{new}"
    assert env.xs.read(f"/vm/{new}/uuid") == new
    assert env.xs.read(f"/vm/{new}/name") == "guest-20250101T0000Z"
    assert env.xs.read("/local/domain/5/name") == "guest-20250101T0000Z"
    assert not env.xs.exists(f"/vm/{UUID}")  # the restarted domain will own the old uuid
