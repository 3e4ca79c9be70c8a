"""Print (or, with --write, put into README.md) the command table, generated from the
registry: each command's usage line (its docstring's first line), aliases and summary.

    python3 tools/command_table.py --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = "## Commands"


def rows() -> list[str]:
    from kvmdbg.debug.commands import build_registry
    from kvmdbg.debug.commands.registry import CLASSES
    from kvmdbg.gdbstub.commands import register as register_gdbserver
    reg = build_registry()
    register_gdbserver(reg)             # the CLI adds the stub's commands to every session
    out = ["| command | class | what it does |", "|---|---|---|"]
    for name, cmd in reg.walk():
        usage = cmd.usage.replace("|", "\\|")
        aliases = ", ".join(f"`{a}`" for a in cmd.aliases)
        shown = f"`{usage}`" + (f" ({aliases})" if aliases else "")
        cls = cmd.category if cmd.category in CLASSES else "support"
        out.append(f"| {shown} | {cls} | {cmd.summary.replace('|', '/')} |")
    return out


def table() -> str:
    return "\n".join(rows())


def write_readme() -> None:
    path = ROOT / "README.md"
    text = path.read_text()
    m = re.search(rf"^{HEADER}[^\n]*\n(.*?)(?=^## )", text, re.S | re.M)
    if m is None:
        raise SystemExit("README.md has no '## Commands' section")
    body = ("\nGenerated from the command registry by `python3 tools/command_table.py --write`; "
            "`help CMD` shows the full text.\nUnique prefixes work, with gdb's `Ambiguous "
            "command` / `Undefined command` messages.\n\n" + table() + "\n\n")
    path.write_text(text[:m.start()] + HEADER + "\n" + body + text[m.end():])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print(table())
