"""`kvmdbg --gdb DEV`: bad devices and bind failures are one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.gdbstub.gdbrun import ROOT, SMEP, env


def run(*args: str):
    return subprocess.run([sys.executable, "-m", "kvmdbg", "-q", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_bad_device_is_one_line():
    p = run("--gdb", "udp::1", SMEP)
    assert p.returncode == 2
    assert p.stderr == ("kvmdbg: bad gdb device 'udp::1': use stdio, tcp::PORT or "
                        "tcp:HOST:PORT (PORT 0 picks a free one).\n")


def test_bind_failure_is_one_line_after_the_warning():
    p = run("--gdb", "tcp:192.0.2.1:1", SMEP)            # TEST-NET-1: not this machine's
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert lines[0].startswith("warning: the gdb stub listens on 192.0.2.1, not loopback")
    assert lines[1].startswith("kvmdbg: cannot listen on 192.0.2.1:1: ")
    assert "Traceback" not in p.stderr


def test_help_says_s_is_gdbs_symbols():
    p = subprocess.run([sys.executable, "-m", "kvmdbg", "--help"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=60)
    text = " ".join(p.stdout.split())
    assert "gdb's -s, not QEMU's (QEMU's -s is --gdb tcp::1234 here)" in text
    assert "--gdb DEV" in text
