"""``save``: xl's ``save [-c] [-p] DOMAIN FILE`` (:mod:`xentool.migration.save`).

Options and messages as xl 4.17's ``main_save``: ``-c`` leaves the domain running after the
save, ``-p`` leaves it paused; without either the domain is destroyed once its state is in
FILE.  When the save fails once the guest was suspended, xl says "Failed to save domain,
resuming domain"; xentool says so and why on one line, and the guest runs again.
"""

from __future__ import annotations

import argparse
import sys

from xentool.errors import XentoolError


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def configure_save(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", dest="checkpoint", action="store_true",
                   help="leave the domain running after creating the snapshot")
    p.add_argument("-p", dest="paused", action="store_true",
                   help="leave the domain paused after creating the snapshot")
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("file", metavar="FILE", help="the save file to write")


def cmd_save(args: argparse.Namespace) -> int:
    from xentool.migration.save import SaveError, recover_killed_saves, save_domain
    from xentool.session import Session

    with Session() as s:
        recover_killed_saves(s)
        domid = s.resolve(args.domain)
        try:
            save_domain(s, domid, args.file, checkpoint=args.checkpoint,
                        leave_paused=args.paused, progress=err)
        except SaveError as e:
            if e.resumed:
                raise XentoolError(f"Failed to save domain, resuming domain: {e}") from None
            raise
    return 0
