"""Run /usr/bin/gdb -batch -nx against this tree's kvmdbg (`sys.executable -m kvmdbg`
with PYTHONPATH set to the tree, never an installed copy)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (the client under test)")
KUT = Path("/work/shared/kut/bin")
SMEP = "programs/smep_flip.bin"


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb", LC_ALL="C")


def kvmdbg(*args: str) -> str:
    """The shell command gdb's `target remote |` runs."""
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "kvmdbg", *args))


def gdb(*commands: str, target: str, program: str | None = None, timeout: int = 120) -> str:
    """What gdb prints (stdout and stderr) for `target TARGET` then -ex CMD..."""
    args = [GDB, "-batch", "-nx"]
    if program:
        args.append(program)
    args += ["-ex", f"target remote {target}"]
    for c in commands:
        args += ["-ex", c]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, cwd=ROOT, env=env(), stdin=subprocess.DEVNULL)
    return p.stdout


def stdio(*commands: str, options=(), program: str = SMEP, elf: str | None = None) -> str:
    return gdb(*commands, target="| " + kvmdbg(*options, "--gdb", "stdio", program), program=elf)


class TcpStub:
    """kvmdbg --gdb tcp::0 in the background; the port is read from its stderr line."""

    def __init__(self, *options: str, program: str = SMEP, stdin=subprocess.DEVNULL):
        self.p = subprocess.Popen([sys.executable, "-m", "kvmdbg", "-q", *options, "--gdb",
                                   "tcp::0", program], cwd=ROOT, env=env(), text=True,
                                  stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.p.stderr.readline()
        m = re.search(r"tcp:127\.0\.0\.1:(\d+)", line)
        assert m, line
        self.port = int(m.group(1))

    def finish(self, timeout: int = 60) -> tuple:
        out, err = self.p.communicate(timeout=timeout)
        return self.p.returncode, out, err
