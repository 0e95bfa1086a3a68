"""The public API's surface: what ``import xentool`` gives, its error tree, its device table.

Behaviour against Xen is in tests/integration (test_provision.py drives the API end to end);
here is what holds without a hypervisor.
"""

from __future__ import annotations

import errno
import inspect
import subprocess
import sys
import textwrap

import pytest

import xentool
from domain_builder.errors import ImageError, XenError
from xenstore.errors import XenStoreError
from xentool import devices, errors
from xentool.devices import DEVICE_TYPES, device_type


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in xentool.__all__:
        value = getattr(xentool, name)
        assert name in dir(xentool)
        if name != "__version__":
            assert inspect.getdoc(value), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        xentool.Nope  # noqa: B018


def test_importing_xentool_costs_nothing_until_a_name_is_used() -> None:
    code = textwrap.dedent("""
        import sys
        before = set(sys.modules)
        import xentool
        print(sorted(m for m in set(sys.modules) - before if m.startswith(("xentool.",
              "domain_builder", "xenstore", "logging", "typing", "dataclasses"))))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout == "[]\n"


def test_the_package_logger_has_a_null_handler() -> None:
    import logging

    import xentool.logs  # noqa: F401 - installs the handler

    assert any(isinstance(h, logging.NullHandler)
               for h in logging.getLogger("xentool").handlers)


def test_every_error_is_a_xentool_error() -> None:
    for name in ("UsageError", "NotFoundError", "DomainNotFound", "BuildError",
                 "DeviceError", "BusyError", "HostError", "ConfigError"):
        assert issubclass(getattr(xentool, name), xentool.XentoolError), name
    assert issubclass(xentool.DomainNotFound, LookupError)
    assert issubclass(xentool.UsageError, ValueError)
    from xentool.locks import LockTimeout

    assert issubclass(LockTimeout, xentool.BusyError)


@pytest.mark.parametrize("exc, cls, code", [
    (XenError("xc_domain_pause", errno.ESRCH), errors.HostError, errno.ESRCH),
    (XenStoreError(errno.EACCES, "/local/domain/0"), errors.HostError, errno.EACCES),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/boot/k"),
     errors.HostError, errno.ENOENT),
    (ImageError("not a kernel"), errors.BuildError, None),
])
def test_lower_layer_errors_are_translated(exc: BaseException, cls: type, code: int) -> None:
    with pytest.raises(cls) as info:
        with errors.translating():
            raise exc
    assert info.value.__cause__ is exc
    if code is not None:
        assert info.value.errno == code
    assert str(info.value)
    if isinstance(exc, FileNotFoundError):
        assert "/boot/k" in str(info.value)


def test_bugs_are_not_translated() -> None:
    with pytest.raises(KeyError), errors.translating():
        raise KeyError("a bug stays a bug")
    assert errors.translated(KeyError("x")) is None


def test_a_library_error_passes_through_unchanged() -> None:
    e = errors.DeviceError("disk xvdb: nope")
    with pytest.raises(errors.DeviceError) as info, errors.translating():
        raise e
    assert info.value is e


# -- the device table ---------------------------------------------------------------------


def test_one_row_per_kind_with_its_module() -> None:
    kinds = [t.kind for t in DEVICE_TYPES]
    assert kinds == ["console", "vbd", "vif"]
    for row in DEVICE_TYPES:
        module = getattr(devices, row.kind)
        assert row.kind == module.KIND
        assert row.config_nodes is module.config_nodes
        assert row.preflight is module.preflight
        assert device_type(row.kind) is row is device_type(row.xl_name)


def test_an_unknown_device_type_is_refused_by_name() -> None:
    with pytest.raises(errors.UsageError, match=r"unknown device type 'tpm'.*disk"):
        device_type("tpm")


def test_config_devices_come_in_table_order() -> None:
    cfg = xentool.Host.load_config(
        "name='g'\nkernel='/k'\nvif=['bridge=xenbr0']\ndisk=['file:/d.img,xvda,w']\n",
        text=True, source="t.cfg")
    nodes = devices.config_devices(5, cfg)
    assert [n.kind for n in nodes] == ["vbd", "vif"]
    assert all(n.frontend.startswith("/local/domain/5/device/") for n in nodes)


def test_preflight_refuses_what_create_cannot_build() -> None:
    cfg = xentool.Host.load_config("name='g'\nkernel='/k'\ndisk=['qcow2:/d.img,xvda,w']\n",
                                   text=True, source="t.cfg")
    with pytest.raises(errors.DeviceError, match="format qcow2 needs qemu"):
        devices.preflight(cfg)


def test_a_config_from_text_keeps_its_text_for_restarts() -> None:
    cfg = xentool.Host.load_config("name='g'\nkernel='/k'\n", ["memory=64"], text=True)
    assert cfg.text == "name='g'\nkernel='/k'\nmemory=64\n"
    assert xentool.Host.load_config(cfg.text, text=True) == cfg


def test_a_changed_config_cannot_be_recorded_for_restarts() -> None:
    import dataclasses

    from xentool.host import _restartable_text

    cfg = xentool.Host.load_config("name='g'\nkernel='/k'\n", text=True)
    assert _restartable_text(cfg) == cfg.text
    with pytest.raises(errors.UsageError, match="record=False"):
        _restartable_text(dataclasses.replace(cfg, name="h"))
    with pytest.raises(errors.UsageError):
        _restartable_text(dataclasses.replace(cfg, text=None))


def test_destroy_unplugs_the_kinds_of_the_table(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(devices, "destroy_all",
                        lambda xs, domid, wait, kinds: seen.append((domid, kinds)) or [])
    assert devices.remove_all_devices(object(), 4) == []  # type: ignore[arg-type]
    assert seen == [(4, [("vbd", True), ("vif", True), ("console", False)])]
