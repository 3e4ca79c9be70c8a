"""Long output goes through a pager, only on a terminal: $PAGER, else `less -RXF`.

less wraps long lines (no -S: a help line cut at the screen's edge loses its end), keeps
colours (-R), leaves the text on the screen (-X) and quits at once when it fits (-F).
Whether output is long is counted in screen rows, wrapped lines included.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from kvmdbg.debug.engine.state import strip_ansi

PAGER = "less -RXF"


def screen_rows(lines: list, width: int) -> int:
    """How many terminal rows the lines take when long ones wrap at `width` columns."""
    width = max(width, 1)
    return sum(max(1, -(-len(strip_ansi(row).expandtabs(8)) // width))
               for line in lines for row in line.split("\n"))


def page(lines: list, height: int = 0, width: int = 0) -> bool:
    """Show lines through the pager if they do not fit the terminal; False if not paged."""
    size = shutil.get_terminal_size((80, 24))
    rows = height or size.lines
    if screen_rows(lines, width or size.columns) < rows - 1:
        return False
    cmd = os.environ.get("PAGER") or PAGER
    try:
        p = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE, text=True)
    except OSError:
        return False
    try:
        p.communicate("\n".join(lines) + "\n")
    except (BrokenPipeError, KeyboardInterrupt):     # the reader quit the pager early
        pass
    return True
