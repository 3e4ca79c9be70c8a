"""The README's gdb session (a ``$ gdb ...`` block) prints what the README says, run with
this tree's kvmdbg (the `kvmdbg` in its target command becomes `python -m kvmdbg`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.gdbstub.gdbrun import ROOT, env, needs_gdb
from tests.test_readme import fenced_blocks, matches


def gdb_sessions():
    out = []
    for lines in fenced_blocks((ROOT / "README.md").read_text()):
        if not lines or not lines[0].startswith("$ gdb "):
            continue
        command, i = lines[0][2:], 1
        while command.endswith("\\"):
            command = command[:-1] + " " + lines[i].strip()
            i += 1
        out.append((command, lines[i:]))
    return out


def test_the_readme_shows_a_gdb_session():
    assert gdb_sessions()


@needs_gdb
@pytest.mark.parametrize("command,expected", gdb_sessions())
def test_readme_gdb_session(command, expected):
    shell = command.replace("| kvmdbg ", f"| {sys.executable} -m kvmdbg ")
    p = subprocess.run(["bash", "-c", shell], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=env(), cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)
    got = [line.rstrip() for line in p.stdout.splitlines()]     # in the order gdb wrote them
    assert matches(got, [line.rstrip() for line in expected]), "\n".join(got)
