"""The real kvmdbg executable on a pseudo-terminal, driven the way a person types.

Typing commands, Tab completion, an empty line repeating stepi, Ctrl-R, the grey history
suggestion, Ctrl-C clearing the prompt line and interrupting a long `continue`, a
commands...end block with its `>` prompt, and Ctrl-D quitting. One process per test keeps
the suite quick.

Nothing here depends on timing, so the tests pass the same on a loaded machine (other
work on the two cores): every wait is for something the terminal shows, with a timeout
(TIMEOUT) that only a hang reaches. Command output is printed in one piece and is matched
in the byte stream; the input line is redrawn by prompt_toolkit a few cells at a time, in
as many renders as the load makes it do, so it is checked on the screen those bytes draw
(screen.py), never as bytes.
"""

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.repl.screen import Screen

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")
PROMPT = r"\(kvmdbg\)"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
ROWS, COLUMNS = 50, 160
TIMEOUT = 120                  # seconds for any one wait: reached only if kvmdbg hangs


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
                              encoding="utf-8", timeout=TIMEOUT, dimensions=(ROWS, COLUMNS))
        child.screen = child.logfile_read = Screen(ROWS, COLUMNS)
        children.append(child)
        child.expect(PROMPT)
        return child

    start.tmp = tmp_path
    yield start
    for c in children:
        c.close(force=True)


def wait_screen(c, *rows: str, x: int | None = None) -> None:
    """Read what the child writes until the screen rows ending at the cursor's row match
    `rows` (regular expressions, each matching a whole row without its trailing blanks),
    and the cursor is in column x if given. What was read is consumed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        tail = c.screen.tail(len(rows))
        if (len(tail) == len(rows) and all(re.fullmatch(r, t) for r, t in zip(rows, tail))
                and (x is None or c.screen.x == x)):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the screen never showed {rows} (cursor column {x}); it shows, cursor "
                        f"at column {c.screen.x} of the last row:\n" + "\n".join(c.screen.tail(6)))
        c.expect([r"(?s).+", pexpect.TIMEOUT], timeout=0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    # Tab completes the info subcommand. The text is on the screen before the Tab is typed,
    # as when a person types, so the completion is drawn as a change to a line already
    # drawn (the case that made a byte match fail when the machine was busy).
    c.send("info regi")
    wait_screen(c, r"\(kvmdbg\) info regi", x=len("(kvmdbg) info regi"))
    c.send("\t")
    wait_screen(c, r"\(kvmdbg\) info registers", x=len("(kvmdbg) info registers"))
    c.sendline(" rip")
    c.expect(r"rip +\*?0x100007 +0x100007 <start\+7>")
    c.expect(PROMPT)
    c.send("\x12")                                   # Ctrl-R: reverse search of the history
    wait_screen(c, r"\(reverse-i-search\)`':")
    c.send("regis")
    wait_screen(c, r"\(reverse-i-search\)`regis': info registers rip")
    c.send("\r")                                     # ends the search, keeps the line
    wait_screen(c, r"\(kvmdbg\) info registers rip")
    c.send("\r")
    c.expect(r"rip +\*?0x100007")
    c.expect(PROMPT)
    # The suggestion from history is drawn after the cursor; Right takes it. Without it the
    # line would be "info r", which lists every register.
    c.send("info r")
    wait_screen(c, r"\(kvmdbg\) info registers rip", x=len("(kvmdbg) info r"))
    c.send("\x1b[C\r")
    wait_screen(c, r"\(kvmdbg\) info registers rip", r"rip +\*?0x100007 .*", r"\(kvmdbg\)")
    c.send("garbage")
    wait_screen(c, r"\(kvmdbg\) garbage")
    c.sendintr()                                     # Ctrl-C at the prompt drops the line
    wait_screen(c, r"\(kvmdbg\) garbage", r"\(kvmdbg\)", x=len("(kvmdbg) "))
    c.sendline("echo ok\\n")                         # runs as typed: no "garbage" before it
    wait_screen(c, r"\(kvmdbg\) echo ok\\n", r"ok", r"\(kvmdbg\)")
    c.sendeof()                                      # Ctrl-D quits
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    history = (kvmdbg.tmp / "state" / "kvmdbg" / "history").read_text()
    assert "stepi" in history and "info registers rip" in history
    assert "garbage" not in history and "+echo ok\\n" in history.splitlines()


def test_ctrl_c_interrupts_a_long_continue_between_instructions(kvmdbg):
    c = kvmdbg("--arg", "10000000", SMEP)
    c.sendline("continue")
    c.expect("Continuing.")
    # Let the guest run for a while: until kvmdbg has spent CPU time in the run, however
    # long the machine takes to give it that (10,000,000 flips take minutes).
    start = cpu_seconds(c.pid)
    deadline = time.monotonic() + TIMEOUT
    while cpu_seconds(c.pid) - start < 0.3:
        assert time.monotonic() < deadline, "kvmdbg used no CPU time after Continuing."
        time.sleep(0.05)
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
    c.expect("Breakpoint 1 at 0x100033: file smep_flip.S, line 42.")
    c.expect(PROMPT)
    c.sendline("commands")
    wait_screen(c, r'End with a line saying just "end"\.', r">", x=1)
    c.sendline("silent")
    wait_screen(c, r">silent", r">", x=1)
    c.sendline('printf "rbx=%d\\n", $rbx')
    wait_screen(c, r'>printf "rbx=%d\\n", \$rbx', r">", x=1)
    c.sendline("end")
    wait_screen(c, r">end", r"\(kvmdbg\)")
    c.sendline("continue")
    c.expect("rbx=3")
    c.expect(PROMPT)
    c.sendline("")                                   # repeats continue
    c.expect("rbx=2")
    c.expect(PROMPT)
    c.sendline("quit")
    c.expect(pexpect.EOF)


def test_the_test_screen_draws_a_line_redrawn_in_pieces():
    # The bytes prompt_toolkit wrote when "info regi" had been drawn before the Tab's
    # completion arrived: only the five new cells, between mode changes.
    s = Screen(4, 40)
    s.write("\x1b[?2004h\x1b[?25l\x1b[0m\x1b[?7l\x1b[0m\x1b[J\x1b[0m(kvmdbg)\x1b[8D\x1b[9C")
    s.write("\x1b[?7h\x1b[0m\x1b[?12l\x1b[?25h\x1b[?25l\x1b[?7l\x1b[0minfo regi\x1b[?7h")
    assert "info registers" not in s.text()
    s.write("\x1b[0m\x1b[?12l\x1b[?25h\x1b[?25l\x1b[?7l\x1b[0msters\x1b[?7h\x1b[0m\x1b[?12l\x1b[?25h")
    assert s.tail(1) == ["(kvmdbg) info registers"] and s.x == len("(kvmdbg) info registers")
    s.write("\x1b[23D\x1b[0m\x1b[J\x1b[0m(kvmd")             # a sequence cut between two reads
    s.write("bg) x\x1b[5")
    s.write("D\r\r\nout\r\n")
    assert s.tail(3) == ["(kvmdbg) x", "out", ""]
    with pytest.raises(ValueError, match="does not know"):
        s.write("\x1b[6S")                                    # scroll up: not understood
