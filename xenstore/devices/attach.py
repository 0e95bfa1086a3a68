"""Plugging and unplugging split devices, following libxl 4.17's sequence.

attach:   write the node set in one transaction -> wait for the backend to reach InitWait
          -> run the hotplug script (vbd: block, vif: vif-bridge) -> done (the frontend
          connects whenever the guest runs; a paused guest is fine).
detach:   online=0 and state=Closing on the backend (one transaction) -> wait for Closed
          -> run the script's remove/offline -> remove the frontend, backend and libxl
          directories and every parent they leave empty.
          ``Force.OFF`` fails if the guest does not let go in time (xl block-detach),
          ``Force.AUTO`` then pulls the frontend away and waits again (xl network-detach,
          domain destroy), ``Force.ON`` does that from the start (xl block-detach -f).

Only nodes in the backend and the toolstack's /libxl copy are trusted; anything under the
guest's frontend is parsed strictly and only ever displayed.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from xenstore import paths
from xenstore.client import Store, Transaction
from xenstore.devices import hotplug
from xenstore.devices.common import DeviceNodes, add_nodes, destroy_nodes, path_cleanup
from xenstore.devices.xenbus import XenbusState, read_state, wait_for_state
from xenstore.errors import XenStoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

INIT_TIMEOUT = 10.0     # LIBXL_INIT_TIMEOUT
DESTROY_TIMEOUT = 10.0  # LIBXL_DESTROY_TIMEOUT
TOOLSTACK_DOMID = 0
HOTPLUG_KINDS = (paths.VBD, paths.VIF)


class Force(Enum):
    OFF = "off"
    AUTO = "auto"
    ON = "on"


@dataclass(frozen=True)
class Timeouts:
    init: float = INIT_TIMEOUT
    destroy: float = DESTROY_TIMEOUT
    hotplug: float = hotplug.HOTPLUG_TIMEOUT


@dataclass(frozen=True)
class DeviceRef:
    """Where a live device's nodes are; resolved from trusted nodes only."""

    kind: str
    domid: int
    devid: int
    backend_domid: int
    frontend: str
    backend: str
    libxl: str


def ref_of(dev: DeviceNodes) -> DeviceRef:
    return DeviceRef(dev.kind, dev.domid, dev.devid, dev.backend_domid,
                     dev.frontend, dev.backend, dev.libxl)


def find_device(store: Store, domid: int, kind: str, devid: int) -> DeviceRef | None:
    """The device as the toolstack recorded it (/libxl), else by the standard layout."""
    lx = paths.libxl_path(domid, kind, devid)
    fe = paths.frontend_path(domid, kind, devid)
    recorded = store.get(f"{lx}/backend")
    if recorded is not None:
        try:
            ref = paths.parse_backend_path(recorded)
        except ValueError as e:
            raise XenStoreError(errno.EINVAL, f"{lx}/backend", str(e)) from None
        return DeviceRef(kind, domid, devid, ref.backend_domid, fe, recorded, lx)
    be = paths.backend_path(TOOLSTACK_DOMID, kind, domid, devid)
    if store.exists(be) or store.exists(fe):
        return DeviceRef(kind, domid, devid, TOOLSTACK_DOMID, fe, be, lx)
    return None


def list_devids(store: Store, domid: int, kind: str) -> list[int]:
    """Device ids of ``kind``: the toolstack's record, plus any backend dom0 serves."""
    ids: set[int] = set()
    for parent in (f"{paths.libxl_domain_path(domid)}/device/{kind}",
                   f"{paths.domain_path(TOOLSTACK_DOMID)}/backend/{kind}/{domid}"):
        try:
            names = store.ls(parent)
        except XenStoreError as e:
            if e.errno != errno.ENOENT:
                raise
            continue
        ids.update(int(n) for n in names if n.isascii() and n.isdigit() and len(n) <= 10)
    return sorted(ids)


# -- attach ---------------------------------------------------------------------------------


def _runs_script(kind: str, backend_domid: int, has_script: bool | None) -> bool:
    """Whether dom0 runs the kind's hotplug script (``has_script`` None: the kinds that
    have one, vbd and vif)."""
    runs = kind in HOTPLUG_KINDS if has_script is None else has_script
    return runs and backend_domid == TOOLSTACK_DOMID


class Steps(Protocol):
    """Runs the steps of an attach or detach: a rollback journal (``xentool.journal``)
    that gives each a fault point and undoes the done ones if a later one fails."""

    def do(self, name: str, action: Callable[[], T],
           undo: Callable[[T], object] | None = None) -> T: ...


class LocalSteps:
    """Steps run as they come; the caller rolls back with :meth:`rollback`."""

    def __init__(self) -> None:
        self._undos: list[Callable[[], object]] = []

    def do(self, name: str, action: Callable[[], T],
           undo: Callable[[T], object] | None = None) -> T:
        result = action()
        if undo is not None:
            self._undos.append(lambda: undo(result))
        return result

    def rollback(self) -> None:
        """Run the undos newest first; a failing one is logged and the rest still run."""
        while self._undos:
            try:
                self._undos.pop()()
            except (OSError, XenStoreError) as e:
                log.warning("rolling back a device step: %s", e)


def attach(store: Store, dev: DeviceNodes, timeouts: Timeouts = Timeouts(), *,
           has_script: bool | None = None, steps: Steps | None = None) -> None:
    """Plug ``dev`` in; on any failure it is unplugged again before the error propagates.

    ``has_script``: whether its kind has a hotplug script (default: vbd and vif do).
    ``steps``: a journal to run the steps in (it then owns the rollback): ``write device
    nodes``, and with a script ``backend ready`` and ``hotplug script add``."""
    local = LocalSteps()
    run: Steps = local if steps is None else steps
    ref = ref_of(dev)
    quick = Timeouts(init=timeouts.init, destroy=min(timeouts.destroy, 5.0),
                     hotplug=timeouts.hotplug)

    def unplug(scripts: bool, add_failed: bool = False) -> None:
        # The guest is not asked: it never saw the device complete.  Idempotent, so the
        # undo of the nodes may follow the script's without harm.
        detach(store, ref, Force.ON, quick, scripts=scripts, has_script=has_script,
               add_failed=add_failed)

    def script_add() -> None:
        try:
            _run_script(store, ref, hotplug.Action.ADD, timeouts.hotplug)
        except BaseException:
            # Half-run: the script may have made a loop device or a vif; its remove, after
            # the backend closed, is what frees them.
            try:
                unplug(True, add_failed=True)
            except (OSError, XenStoreError) as e:
                log.warning("cleaning up %s after a failed hotplug script: %s",
                            dev.backend, e)
            raise

    try:
        run.do("write device nodes", lambda: add_nodes(store, dev),
               undo=lambda _: unplug(False))
        if _runs_script(dev.kind, dev.backend_domid, has_script):
            run.do("backend ready",
                   lambda: wait_for_state(store, f"{dev.backend}/state",
                                          [XenbusState.INIT_WAIT], timeouts.init))
            run.do("hotplug script add", script_add, undo=lambda _: unplug(True))
    except BaseException as exc:
        if steps is None:
            log.debug("attach of %s failed (%s), rolling back", dev.backend, exc)
            local.rollback()
        raise


def _run_script(store: Store, ref: DeviceRef, action: hotplug.Action, timeout: float) -> None:
    script = store.get(f"{ref.backend}/script")
    if not script:
        if action is hotplug.Action.ADD:
            raise XenStoreError(errno.ENOENT, f"{ref.backend}/script", "no hotplug script")
        return
    inv = hotplug.invocation(ref.kind, ref.domid, ref.devid, script, action,
                             gatewaydev=store.get(f"{ref.backend}/gatewaydev", "") or "")
    if inv is None:
        return
    hotplug.run(inv, ref.backend, timeout,
                read_error=lambda: store.get(f"{ref.backend}/hotplug-error"))


# -- detach ---------------------------------------------------------------------------------


def detach(store: Store, ref: DeviceRef, force: Force = Force.AUTO,
           timeouts: Timeouts = Timeouts(), *, scripts: bool = True,
           has_script: bool | None = None, steps: Steps | None = None,
           add_failed: bool = False) -> None:
    """Unplug a device (libxl__initiate_device_generic_remove and what follows it).

    ``scripts=False`` skips the hotplug script's remove (its add never ran);
    ``has_script`` as for :func:`attach`; ``add_failed``: the script's add failed part-way
    and its error is the one reported, so a remove that fails too (the block script's does
    when the add stopped before making a loop device: it finds no ``node`` to free) is
    logged at info level rather than warned about as a second error.  ``steps``: a journal
    to run the steps in (``close backend``, ``hotplug script remove``, ``remove device
    nodes``).  Once the backend was asked to close the device is lost to the guest, so the
    "undo" of that step finishes the removal instead: a failed detach leaves the device
    fully gone, never half-closed."""
    run: Steps = steps if steps is not None else LocalSteps()
    runs_script = scripts and _runs_script(ref.kind, ref.backend_domid, has_script)
    done = {"script": not runs_script, "nodes": False}

    def script_remove() -> None:
        done["script"] = True
        if store.exists(ref.backend):
            try:
                _run_script(store, ref, hotplug.Action.REMOVE, timeouts.hotplug)
            except (OSError, XenStoreError) as e:
                # libxl too goes on removing: the device is gone from the guest either way.
                log.log(logging.INFO if add_failed else logging.WARNING, "%s", e)

    def remove_nodes() -> None:
        destroy_nodes(store, ref.frontend, ref.backend, ref.libxl)
        done["nodes"] = True

    def finish(_: object) -> None:
        if not done["script"]:
            script_remove()
        if not done["nodes"]:
            remove_nodes()

    run.do("close backend", lambda: _close(store, ref, force, timeouts), undo=finish)
    if runs_script:
        run.do("hotplug script remove", script_remove)
    run.do("remove device nodes", remove_nodes)


def _close(store: Store, ref: DeviceRef, force: Force, timeouts: Timeouts) -> None:
    """Ask the backend to close and wait until it did (forcing as ``force`` says)."""
    state_path = f"{ref.backend}/state"
    forced = force is Force.ON
    while True:
        present = _request_close(store, ref, forced)
        if not present:
            return
        try:
            wait_for_state(store, state_path, [XenbusState.CLOSED], timeouts.destroy,
                           missing_ok=True)
            return
        except XenStoreError as e:
            if e.errno != errno.ETIMEDOUT or forced:
                if forced:
                    log.warning("%s did not close, removing it anyway: %s", ref.backend, e)
                    return
                raise
            if force is Force.OFF:
                raise XenStoreError(errno.EBUSY, ref.backend,
                                    "the guest did not release the device in "
                                    f"{timeouts.destroy:g}s (use --force)") from None
            log.info("%s: guest did not release the device, forcing", ref.backend)
            forced = True


def _request_close(store: Store, ref: DeviceRef, forced: bool) -> bool:
    """Ask the backend to close; False if there is no backend left to wait for."""
    if forced:
        # Not in the transaction below: a guest that keeps writing its frontend would make
        # every commit of a transaction that read it conflict (EAGAIN, 16 times over),
        # where a plain removal cannot conflict with anything.
        path_cleanup(store, ref.frontend)

    def close(t: Transaction) -> bool:
        raw = t.get(f"{ref.backend}/state")
        if raw is None:
            return False
        t.write(f"{ref.backend}/online", "0")
        if XenbusState.parse(raw) is not XenbusState.CLOSED:
            t.write(f"{ref.backend}/state", str(int(XenbusState.CLOSING)))
        return True

    # Re-run from the read on a conflict: the backend changes its own state meanwhile
    # (netback does on a detach), and what to write depends on what was read.
    return store.transact(close)


def destroy_all(store: Store, domid: int, timeouts: Timeouts = Timeouts(),
                kinds: Sequence[tuple[str, bool]] | None = None) -> list[str]:
    """Unplug every device of a domain that is going away (console too); return errors.

    For domain destruction: the guest is not asked (Force.ON), scripts still run so loop
    devices and vif interfaces are freed, and every node goes.  ``kinds``: (kind, has a
    hotplug script) of every device kind, in order (default: vbd, vif, console).
    """
    problems: list[str] = []
    if kinds is None:
        kinds = [(k, k in HOTPLUG_KINDS) for k in (paths.VBD, paths.VIF, paths.CONSOLE)]
    for kind, has_script in kinds:
        for devid in list_devids(store, domid, kind):
            try:
                ref = find_device(store, domid, kind, devid)
                if ref is None:
                    continue
                if not has_script:  # nothing to run: the nodes go (xenconsoled lets go)
                    destroy_nodes(store, ref.frontend, ref.backend, ref.libxl)
                else:
                    detach(store, ref, Force.ON, timeouts, has_script=True)
            except (OSError, XenStoreError) as e:
                problems.append(str(e))
    return problems


# -- listing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    kind: str
    domid: int
    devid: int
    backend_domid: int
    backend: str
    frontend: str
    state: int           # frontend's state, -1 when missing or garbage
    evtch: int
    ring_refs: tuple[int, ...]
    mac: str | None = None


def _guest_int(store: Store, path: str) -> int:
    try:
        return store.read_int(path, 0, 2**32 - 1)
    except XenStoreError:
        return -1


def device_info(store: Store, ref: DeviceRef) -> DeviceInfo:
    fe = ref.frontend
    state = XenbusState.parse(store.get(f"{fe}/state"))
    rings: tuple[int, ...]
    if ref.kind == paths.VIF:
        rings = (_guest_int(store, f"{fe}/tx-ring-ref"), _guest_int(store, f"{fe}/rx-ring-ref"))
        mac = store.get(f"{ref.libxl}/mac") or store.get(f"{ref.backend}/mac")
    else:
        rings = (_guest_int(store, f"{fe}/ring-ref"),)
        mac = None
    return DeviceInfo(ref.kind, ref.domid, ref.devid, ref.backend_domid, ref.backend, fe,
                      -1 if state is None else int(state),
                      _guest_int(store, f"{fe}/event-channel"), rings, mac)


def list_devices(store: Store, domid: int, kind: str) -> list[DeviceInfo]:
    out = []
    for devid in list_devids(store, domid, kind):
        ref = find_device(store, domid, kind, devid)
        if ref is not None:
            out.append(device_info(store, ref))
    return out


def backend_state(store: Store, ref: DeviceRef) -> XenbusState | None:
    return read_state(store, f"{ref.backend}/state")
