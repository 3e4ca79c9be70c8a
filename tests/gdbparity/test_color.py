"""--color[=WHEN] as ls and git take it, and NO_COLOR as a default that an explicit
--color=always or `set style enabled on` overrides; `show style` tells what is in effect
(issue 13)."""

import os
import sys
from pathlib import Path

import pexpect
import pytest

from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
SMEP = "programs/smep_flip.bin"
ESC = "\x1b["


@pytest.mark.parametrize("flags", [["--color"], ["--color=always"], ["--color", "always"]])
def test_always_colours_even_with_no_color_and_into_a_pipe(flags):
    # ls --color (bare) is --color=always; the program after a bare --color is the program.
    rc, out, err = run_cli("-batch", *flags, "-ex", "x/1i $pc", "-ex", "show style", SMEP,
                           env={"NO_COLOR": "1"})
    assert rc == 0, err
    assert ESC in out.splitlines()[0]
    assert out.splitlines()[1] == "CLI output styling is enabled."


def test_never_auto_and_bad_values():
    rc, out, err = run_cli("-batch", "--color=never", "-ex", "x/1i $pc", SMEP, env={"NO_COLOR": ""})
    assert ESC not in out
    rc, out, err = run_cli("-batch", "--color=sometimes", SMEP)
    assert rc == 2 and err.startswith("kvmdbg: argument --color: invalid choice: 'sometimes' "
                                      "(choose from 'auto', 'always', 'never')")
    rc, out, err = run_cli("-batch", "-ex", "show style", SMEP, env={"NO_COLOR": ""})
    assert out == ("CLI output styling is enabled; colour is not used in -batch "
                   "(--color=always forces it).\n")


def _repl(*args, no_color="1"):
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", PAGER="cat",
               XDG_CONFIG_HOME="/nonexistent-kvmdbg-test", XDG_STATE_HOME="/tmp/kvmdbg-test-state",
               NO_COLOR=no_color)
    env.pop("KVMDBG_HISTFILE", None)
    c = pexpect.spawn(sys.executable, ["-m", "kvmdbg", *args, SMEP], env=env, cwd=str(ROOT),
                      encoding="utf-8", timeout=30, dimensions=(50, 160))
    c.expect(r"\(kvmdbg\)")
    return c


def test_no_color_is_a_default_that_set_style_enabled_on_overrides():
    c = _repl()
    try:
        c.sendline("show style")
        c.expect(r"CLI output styling is disabled: NO_COLOR is set "
                 r"\(\"set style enabled on\" turns it on\)\.")
        c.sendline("x/1i $pc")
        c.expect(r"=> 0x100000 <start>:\tmov r9, rdx")            # plain
        c.sendline("set style enabled on")
        c.sendline("show style")
        c.expect(r"CLI output styling is enabled\.")
        c.sendline("x/1i $pc")
        c.expect(r"\x1b\[1m\x1b\[32m=>\x1b\[0m \x1b\[34m0x100000 <start>:")
        c.sendline("quit")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)


def test_color_always_wins_over_no_color_at_the_terminal():
    c = _repl("--color=always")
    try:
        c.sendline("x/1i $pc")
        c.expect(r"\x1b\[1m\x1b\[32m=>\x1b\[0m \x1b\[34m0x100000 <start>:")
        c.sendline("show style")
        c.expect(r"CLI output styling is enabled\.")
    finally:
        c.close(force=True)
