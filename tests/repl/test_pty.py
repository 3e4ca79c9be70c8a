"""The real kvmdbg executable on a pseudo-terminal, driven the way a person types.

Typing commands, Tab completion, an empty line repeating stepi, Ctrl-C clearing the
prompt line and interrupting a long `continue`, a commands...end block with its `>`
prompt, and Ctrl-D quitting. One process per test keeps the suite quick.
"""

import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")
PROMPT = r"\(kvmdbg\)"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def plain(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture
def kvmdbg(tmp_path):
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), NO_COLOR="1", TERM="xterm",
               PAGER="cat")
    env.pop("KVMDBG_HISTFILE", None)
    children = []

    def start(*args):
        child = pexpect.spawn(sys.executable, ["-m", "kvmdbg", *args], env=env, cwd=str(ROOT),
                              encoding="utf-8", timeout=20, dimensions=(50, 160))
        children.append(child)
        child.expect(PROMPT)
        return child

    start.tmp = tmp_path
    yield start
    for c in children:
        c.close(force=True)


def test_banner_commands_repeat_completion_and_ctrl_d(kvmdbg):
    c = kvmdbg(SMEP)
    banner = plain(c.before).strip().splitlines()
    assert 1 <= len(banner) <= 3 and banner[0].startswith("kvmdbg ")
    c.sendline("stepi")
    c.expect(r"vcpu 0, step 1")
    c.expect(PROMPT)
    c.sendline("")                                   # an empty line repeats stepi
    c.expect(r"vcpu 0, step 2")
    c.expect(PROMPT)
    c.send("info regi\t")                            # Tab completes the info subcommand
    c.expect("info registers")
    c.sendline(" rip")
    c.expect(r"rip +\*?0x100007 +0x100007 <start\+7>")
    c.expect(PROMPT)
    c.send("\x12")                                   # Ctrl-R: reverse search of the history
    c.expect("reverse-i-search")
    c.send("regis")
    c.expect("ters rip")                            # the match is drawn highlighted
    c.send("\r")                                     # ends the search, keeps the line
    c.expect(r"\(kvmdbg\) info registers rip")
    c.send("\r")
    c.expect(r"rip +\*?0x100007")
    c.expect(PROMPT)
    c.send("info r")                                 # grey suggestion from history; Right takes it
    c.expect("egisters rip")
    c.send("\x1b[C\r")
    c.expect(r"rip +\*?0x100007")
    c.expect(PROMPT)
    c.send("garbage")
    c.sendintr()                                     # Ctrl-C at the prompt drops the line
    c.expect(PROMPT)
    c.sendline("echo ok\\n")
    c.expect("ok\r\n")
    c.expect(PROMPT)
    assert "garbage" not in plain(c.before)
    c.sendeof()                                      # Ctrl-D quits
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    history = (kvmdbg.tmp / "state" / "kvmdbg" / "history").read_text()
    assert "stepi" in history and "info registers rip" in history


def test_ctrl_c_interrupts_a_long_continue_between_instructions(kvmdbg):
    c = kvmdbg("--arg", "10000000", SMEP)
    c.sendline("continue")
    c.expect("Continuing.")
    c.expect(pexpect.TIMEOUT, timeout=1.0)          # let it run for a moment
    c.sendintr()
    c.expect(r"Interrupted at step (\d+), vcpu 0")
    step = int(c.match.group(1))
    assert 0 < step < 10_000_000 * 20
    c.expect(PROMPT)
    c.sendline("print $_step")
    c.expect(r"\$1 = (\d+)")
    assert int(c.match.group(1)) == step
    c.expect(PROMPT)
    c.sendline("quit 7")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 7


def test_blocks_prompt_and_breakpoint_commands(kvmdbg):
    c = kvmdbg("--arg", "3", SMEP)
    c.sendline("break flip")
    c.expect("Breakpoint 1 at 0x100033 <flip>")
    c.expect(PROMPT)
    c.sendline("commands")
    c.expect('End with a line saying just "end".')
    c.expect(">")
    c.sendline("silent")
    c.expect(">")
    c.sendline('printf "rbx=%d\\n", $rbx')
    c.expect(">")
    c.sendline("end")
    c.expect(PROMPT)
    c.sendline("continue")
    c.expect("rbx=3")
    c.expect(PROMPT)
    c.sendline("")                                   # repeats continue
    c.expect("rbx=2")
    c.expect(PROMPT)
    c.sendline("quit")
    c.expect(pexpect.EOF)
