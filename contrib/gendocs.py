#!/usr/bin/env python3
"""Generate xentool(1) and the bash completion from the verb table and the verbs' parsers.

    python3 contrib/gendocs.py --man OUT.1 --bash-completion OUT.bash

Both come from ``xentool.cli.VERBS`` and each verb's ``configure_<verb>``: a verb added to
the table is in the manual and completes without touching this file.  The manual is
rendered by argparse-manpage (Debian: python3-argparse-manpage), needed only here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["COLUMNS"] = "80"  # the same text on every build

from xentool import __version__
from xentool.cli import VERBS, _top_parser

#: Option metavars or destinations whose value is a file name.
_FILE_WORDS = ("FILE", "CONFIG", "PATH", "KERNEL", "IMAGE", "SCRIPT", "DIR", "POLICY")
#: Positional argument names whose value is a domain.
_DOMAIN_WORDS = ("DOMAIN", "DOM", "DOMID")


def verb_parsers() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, summary, configured parser) of every verb, in table order."""
    out = []
    for verb in VERBS:
        p = argparse.ArgumentParser(prog=f"xentool {verb.name}", description=verb.summary,
                                    add_help=True)
        verb.configure()(p)
        out.append((verb.name, verb.summary, p))
    return out


def manual() -> str:
    """xentool(1) in roff: the global options, then every verb with its options."""
    from build_manpages.manpage import Manpage

    top = _top_parser()
    top.epilog = None
    # A copy of the top parser with the verbs as sub-commands, which argparse-manpage
    # renders one section each.
    p = argparse.ArgumentParser(prog="xentool", description=top.description, add_help=True)
    for action in top._actions:
        if action.option_strings and "-h" not in action.option_strings:
            p._add_action(action)
    subs = p.add_subparsers(title="verbs", dest="verb", metavar="VERB")
    for name, summary, vp in verb_parsers():
        sp = subs.add_parser(name, help=summary, description=summary)
        for action in vp._actions:
            if "-h" not in action.option_strings:
                sp._add_action(action)
    p.man_short_description = "Xen toolstack, a drop-in replacement for xl"  # type: ignore[attr-defined]
    p._manpage = [  # type: ignore[attr-defined]
        {"heading": "Exit status",
         "content": "0 on success; 1 when a verb fails, as xl; 2 for a usage error "
                    "(an unknown verb or option)."},
        {"heading": "Files",
         "content": "/etc/xen/sched-policy.toml: policy of sched-controller, see "
                    "xentool-sched-policy(5).\n/var/lib/xentool: the monitor's state.\n"
                    "/var/lib/xen/userdata-*: stored domain configurations, shared with xl."},
        {"heading": "See also",
         "content": "xl(1), xl.cfg(5), xentool-sched-policy(5)"},
    ]
    # Usage and help text is copied as it is: a line of it that starts with "." or "'"
    # would be read as a roff request.
    # argparse-manpage 1.2 puts each verb's usage lines in as they are: keep them as lines.
    macros = {".TH", ".SH", ".SS", ".TP", ".B", ".br", ".PP", ".IP"}
    out: list[str] = []
    in_usage = False
    for line in str(Manpage(p)).split("\n"):
        if line.startswith("usage: "):
            out.append(".nf")
            in_usage = True
        elif in_usage and not line.strip():
            out.append(".fi")
            in_usage = False
            continue
        if line[:1] in ".'" and line.split(" ", 1)[0] not in macros:
            line = rf"\&{line}"
        out.append(line.replace("usage: ", "", 1) if line.startswith("usage: ") else line)
    text = "\n".join(out)
    return text.replace('.TH xentool "1" Manual',
                        f'.TH XENTOOL 1 "" "xentool {__version__}" "User Commands"', 1)


def _options(p: argparse.ArgumentParser) -> list[str]:
    return [o for a in p._actions for o in a.option_strings if a.help != argparse.SUPPRESS]


def _valued(p: argparse.ArgumentParser, kind: tuple[str, ...]) -> list[str]:
    """Options taking a value whose metavar or destination names one of ``kind``."""
    out = []
    for a in p._actions:
        if a.option_strings and a.nargs != 0:
            word = f"{a.metavar or ''} {a.dest}".upper()
            if any(k in word for k in kind):
                out.extend(a.option_strings)
    return out


def _positionals(p: argparse.ArgumentParser) -> str:
    """'domain', 'file' or '' (nothing known) for the verb's positional arguments."""
    for a in p._actions:
        if not a.option_strings and a.help != argparse.SUPPRESS:
            word = f"{a.metavar or ''} {a.dest}".upper()
            if any(k in word.split() or word.split()[0].startswith(k) for k in _DOMAIN_WORDS):
                return "domain"
            if any(k in word for k in _FILE_WORDS):
                return "file"
    return "file"


def bash_completion() -> str:
    """A static bash completion script: nothing runs at start-up but bash itself."""
    verbs = verb_parsers()
    lines = [
        "# bash completion for xentool, generated from its verb table by contrib/gendocs.py",
        "_xentool_domains()",
        "{",
        "    xentool list 2>/dev/null | awk 'NR > 1 { print $1 }'",
        "}",
        "_xentool()",
        "{",
        "    local cur prev verb i",
        "    COMPREPLY=()",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    verb=",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        "            -*) ;;",
        '            *) verb="${COMP_WORDS[i]}"; break ;;',
        "        esac",
        "    done",
        '    if [[ -z "$verb" ]]; then',
        '        if [[ "$cur" == -* ]]; then',
        f'            COMPREPLY=($(compgen -W "{" ".join(_options(_top_parser()))}" -- "$cur"))',
        "        else",
        f'            COMPREPLY=($(compgen -W "help {" ".join(v[0] for v in verbs)}" -- "$cur"))',
        "        fi",
        "        return 0",
        "    fi",
        '    case "$verb" in',
        "        help)",
        f'            COMPREPLY=($(compgen -W "{" ".join(v[0] for v in verbs)}" -- "$cur"))',
        "            return 0 ;;",
    ]
    for name, _summary, p in verbs:
        files = _valued(p, _FILE_WORDS)
        takes_value = [o for a in p._actions if a.option_strings and a.nargs != 0
                       for o in a.option_strings]
        pos = _positionals(p)
        lines.append(f"        {name})")
        lines.append('            case "$prev" in')
        if files:
            lines.append(f'                {"|".join(files)})')
            lines.append('                    COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;')
        others = [o for o in takes_value if o not in files]
        if others:
            lines.append(f'                {"|".join(others)}) return 0 ;;')
        lines.append("            esac")
        lines.append('            if [[ "$cur" == -* ]]; then')
        lines.append(f'                COMPREPLY=($(compgen -W "{" ".join(_options(p))}" '
                     '-- "$cur"))')
        if pos == "domain":
            lines.append("            else")
            lines.append('                COMPREPLY=($(compgen -W "$(_xentool_domains)" '
                         '-- "$cur"))')
        else:
            lines.append("            else")
            lines.append('                COMPREPLY=($(compgen -f -- "$cur"))')
        lines.append("            fi ;;")
    lines += [
        "    esac",
        "    return 0",
        "}",
        "complete -o filenames -F _xentool xentool",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--man", metavar="FILE", help="write xentool(1) here")
    ap.add_argument("--bash-completion", metavar="FILE", help="write the completion here")
    args = ap.parse_args(argv)
    if args.man:
        Path(args.man).parent.mkdir(parents=True, exist_ok=True)
        Path(args.man).write_text(manual(), encoding="utf-8")
    if args.bash_completion:
        Path(args.bash_completion).parent.mkdir(parents=True, exist_ok=True)
        Path(args.bash_completion).write_text(bash_completion(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
