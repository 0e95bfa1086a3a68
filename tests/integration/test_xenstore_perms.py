"""The fake xenstored of the unit tests against the testbed's real xenstored.

One scenario (tests/unit/xenstore_perms_scenario.py) runs on both, on a guest-like tree
under a paused tiny guest's /local/domain/<domid> and on a dom0 backend-like tree; every
answer and, after every step, the value and permissions of every node are recorded on
both sides and must be identical. Nothing is expected by hand.

Compared: what a dom0 connection observes (inheritance on create, SET_PERMS results and
errors, a domain that does not exist named as owner or in an ACL, RM and missing nodes,
the same in transactions). Not comparable here: requests made *as* a guest (EACCES, the
creator becoming owner): the real daemon takes a connection's domain from the ring it
talks on, and a paused guest's ring cannot be driven from dom0; the fake's own tests
(tests/unit/test_xenstore_fake_perms.py) hold those rules.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from xenstore.client import Store

from .helpers import GuestKit, xentool, xl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_xenstore_fake as fake_mod
import xenstore_perms_scenario as scenario

pytestmark = pytest.mark.xen


def test_fake_and_real_xenstored_agree_on_permissions(kit: GuestKit, tmp_path: Path,
                                                      guest_name: str) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name))
    xentool("create", "-p", str(cfg))
    tag = uuid.uuid4().hex[:8]
    try:
        domid = int(xl("domid", guest_name).stdout)
        with tempfile.TemporaryDirectory() as d:
            srv = fake_mod.Server(os.path.join(d, "socket"))
            srv.fake.domains = {0, domid}  # what the hypervisor has: dom0 and the guest
            th = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
            th.start()
            try:
                with Store.connect() as real, Store.connect(srv.server_address,
                                                            timeout=10) as fake:
                    scenario.seed_like(fake, real, domid, tag)
                    try:
                        real_log = scenario.run(real, domid, tag)
                    finally:
                        scenario.cleanup(real, domid, tag)
                    fake_log = scenario.run(fake, domid, tag)
            finally:
                srv.shutdown()
                srv.server_close()
    finally:
        xl("destroy", guest_name, check=False)
    assert len(real_log) == len(fake_log)
    for real_step, fake_step in zip(real_log, fake_log, strict=True):
        label, real_got, real_snap = real_step
        assert (label, fake_step[1]) == (label, real_got)
        assert (label, fake_step[2]) == (label, real_snap)
