"""Long output goes through a pager, only on a terminal: $PAGER, else `less -SRXF`."""

from __future__ import annotations

import os
import shutil
import subprocess


def page(lines: list, height: int = 0) -> bool:
    """Show lines through the pager if they do not fit the terminal; False if not paged."""
    rows = height or shutil.get_terminal_size((80, 24)).lines
    if len(lines) < rows - 1:
        return False
    cmd = os.environ.get("PAGER") or "less -SRXF"
    try:
        p = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE, text=True)
    except OSError:
        return False
    try:
        p.communicate("\n".join(lines) + "\n")
    except (BrokenPipeError, KeyboardInterrupt):     # the reader quit the pager early
        pass
    return True
