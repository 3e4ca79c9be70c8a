"""Every session the README shows (a ``$ kvmdbg ...`` block) prints what the README says.

The README's outputs are pasted from real runs; this runs each command again through the
real CLI (bash expands ``$((...))`` as a reader's shell would) and compares the output line
for line. A ``...`` line stands for lines the README leaves out; the rest must appear in
order, each run of lines contiguous, anchored at the ends the README does not elide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "demos" / "README.md"]


def sessions():
    out = []
    for doc in DOCS:
        if not doc.exists():
            continue
        for lines in fenced_blocks(doc.read_text()):
            if not lines or not lines[0].startswith("$ kvmdbg "):
                continue
            command = lines[0][2:]
            i = 1
            while command.endswith("\\"):
                command = command[:-1] + " " + lines[i].strip()
                i += 1
            out.append((doc.name, command, lines[i:]))
    return out


def fenced_blocks(text: str):
    """The line lists of the plain ``` blocks (a fence with a language, ```python, opens a
    block too, whose lines are not sessions)."""
    block, plain = None, False
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block, plain = [], line.strip() == "```"
            else:
                if plain:
                    yield block
                block = None
        elif block is not None:
            block.append(line)


SESSIONS = sessions()


def test_the_readme_shows_sessions():
    assert len(SESSIONS) >= 4


@pytest.mark.parametrize("doc,command,expected", SESSIONS,
                         ids=[f"{d}:{c[:60]}" for d, c, _ in SESSIONS])
def test_readme_session_output(doc, command, expected):
    env = dict(os.environ, XDG_CONFIG_HOME="/nonexistent-kvmdbg-test", NO_COLOR="1",
               COLUMNS="80", LINES="24")
    shell = command.replace("kvmdbg ", f"{sys.executable} -m kvmdbg ", 1)
    p = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    got = [line.rstrip() for line in (p.stdout + p.stderr).splitlines()]
    want = [line.rstrip() for line in expected]
    assert matches(got, want), "\n".join(got)


def matches(got: list, want: list) -> bool:
    runs, run = [], []
    for line in want:
        if line == "...":
            runs.append(run)
            run = []
        else:
            run.append(line)
    runs.append(run)
    if len(runs) == 1:
        return got == want
    head, *middle, tail = runs
    if got[:len(head)] != head or (tail and got[len(got) - len(tail):] != tail):
        return False
    i, end = len(head), len(got) - len(tail)
    for run in middle:
        while i + len(run) <= end and got[i:i + len(run)] != run:
            i += 1
        if i + len(run) > end:
            return False
        i += len(run)
    return True


def test_matcher():
    assert matches(["a", "b", "c"], ["a", "...", "c"])
    assert matches(["a", "b", "c"], ["...", "b", "..."])
    assert not matches(["a", "b", "c"], ["...", "c", "b", "..."])
    assert not matches(["a", "b"], ["a"])
    assert matches(["a", "b"], ["a", "..."])
