"""The README's "Install on a Xen dom0" section, followed step by step on this dom0 from a
dom0 without xentool, ends with the units running and a guest running.

The steps run in a checkout of the commit the host built this boot's package from (a clone of
the shared one, which other commits may have moved on since), with that package in its dist/
as contrib/build-deb left it: its first step then keeps it (building it again in dom0 would
take minutes under emulation; the image holds the build dependencies, so it would work
offline)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from integration.helpers import GuestKit, console_session

from .helpers import CHECKOUT, POLICY, UNITS, XENTOOL, domains, run, xentool, xl

pytestmark = [pytest.mark.xen, pytest.mark.production]


def readme_install_steps(checkout: Path) -> list[str]:
    text = (checkout / "README.md").read_text()
    section = text.split("\n## Install on a Xen dom0", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block in the README's install section"
    steps = [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [s for s in steps if s and not s.startswith("#")]


def operator_checkout(dest: Path) -> Path:
    """A checkout at the commit whose tree contrib/build-deb built dist/'s package from, that
    package and build-deb's record of it in its dist/."""
    dist = CHECKOUT / "dist"
    tree, deb = (dist / ".build-deb.tree").read_text().split()
    history = run("git", "-C", str(CHECKOUT), "log", "--format=%H %T", "-n", "1000").stdout
    commit = next((c for c, t in (line.split() for line in history.splitlines()) if t == tree),
                  None)
    assert commit, f"no commit of the checkout has the tree {tree} the package was built from"
    run("git", "clone", "-q", "--shared", "--no-checkout", str(CHECKOUT), str(dest))
    run("git", "-C", str(dest), "checkout", "-q", "--detach", commit)
    (dest / "dist").mkdir()
    for name in (deb, ".build-deb.tree"):
        shutil.copy(dist / name, dest / "dist" / name)
    return dest


def test_the_readme_install_section_ends_with_a_running_guest(kit: GuestKit, guest_name: str,
                                                              tmp_path: Path) -> None:
    checkout = operator_checkout(tmp_path / "xentool")
    steps = readme_install_steps(checkout)
    assert any(s.startswith("apt install ") for s in steps), steps
    assert [s for s in steps if "enable --now" in s], steps
    # A dom0 without xentool: what the boot installed is taken away first.
    run("systemctl", "disable", "--now", *UNITS)
    run("apt-get", "purge", "-y", "xentool", timeout=600)
    POLICY.unlink(missing_ok=True)
    assert shutil.which("xentool") is None
    assert run("systemctl", "cat", UNITS[0], check=False).returncode != 0

    for step in steps:
        r = run("sh", "-c", step, cwd=checkout, timeout=300, check=False)
        print(f"# {step}\n{r.stdout}{r.stderr}")
        assert r.returncode == 0, f"README step failed (exit {r.returncode}): {step}\n" \
                                  f"{r.stdout}{r.stderr}"

    assert run("systemctl", "is-active", *UNITS).stdout.split() == ["active", "active"]
    assert run("systemctl", "is-enabled", *UNITS).stdout.split() == ["enabled", "enabled"]
    assert shutil.which("xentool") == XENTOOL

    # The operator's first guest: created with its console attached, it prints its marker
    # and keeps running after the console is left.
    cfg = tmp_path / f"{guest_name}.cfg"
    cfg.write_text(kit.tiny_cfg(guest_name, wait=True))
    try:
        _, status = console_session("create", "-c", str(cfg), pattern="XENTOOL-TINY-UP",
                                    timeout=120, program=(XENTOOL,))
        assert status == 0
        row = domains()[guest_name]
        assert not row["shutdown"], row
        state = next(line.split()[4] for line in xl("list").stdout.splitlines()[1:]
                     if line.split()[0] == guest_name)
        # Running, blocked, or runnable waiting for a CPU ("------"): not paused, shut down,
        # crashed or dying.
        assert not set(state) & set("pscd"), state
    finally:
        xentool("destroy", guest_name, check=False)
