"""The REPL on a pseudo-terminal: sourced files stream their output and do not ask
questions, echo leaves the prompt after its text, and long output is paged with long
lines wrapped (issue 13)."""

import os
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.gdbparity.oracle import GDB, needs_gdb_program, oracle_program

__all__ = ["oracle_program"]

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")
PROMPT = r"\(kvmdbg\)"


@pytest.fixture
def repl(tmp_path):
    children = []

    def start(*args, rows=50, cols=160, pager="cat"):
        env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", XDG_STATE_HOME=str(tmp_path / "state"),
                   XDG_CONFIG_HOME=str(tmp_path / "config"), NO_COLOR="1", TERM="xterm")
        env.pop("KVMDBG_HISTFILE", None)
        env.pop("LESS", None)
        if pager is None:
            env.pop("PAGER", None)
        else:
            env["PAGER"] = pager
        c = pexpect.spawn(sys.executable, ["-m", "kvmdbg", *args], env=env, cwd=str(ROOT),
                          encoding="utf-8", timeout=30, dimensions=(rows, cols))
        children.append(c)
        c.expect(PROMPT)
        return c

    yield start
    for c in children:
        c.close(force=True)


def test_a_sourced_file_shows_each_commands_output_as_it_runs(repl, tmp_path):
    script = tmp_path / "slow.kvmdbg"
    script.write_text("echo before\\n\nshell sleep 4\necho after\\n\n")
    c = repl(SMEP)
    c.sendline(f"source {script}")
    start = time.time()
    c.expect("before\r\n")
    assert time.time() - start < 3.5           # not held back until the file ends
    c.expect("after\r\n", timeout=30)
    assert time.time() - start >= 3.5
    c.expect(PROMPT)


QUERY_FILE = "break {sym}\nbreak {start}\necho before\\n\ndelete\necho after\\n\ninfo breakpoints\n"


@needs_gdb_program
def test_gdb_does_not_ask_its_questions_in_a_sourced_file(tmp_path, oracle_program):
    script = tmp_path / "q.gdb"
    script.write_text(QUERY_FILE.format(sym="flip", start="_start"))
    c = pexpect.spawn(GDB, ["-nx", "-q", oracle_program], encoding="utf-8", timeout=30,
                      env=dict(os.environ, TERM="dumb"))
    try:
        c.expect(r"\(gdb\) ")
        c.sendline(f"source {script}")
        c.expect("No breakpoints or watchpoints.")
        assert "(y or n)" not in c.before and "before\r\nafter\r\n" in c.before
    finally:
        c.close(force=True)


def test_kvmdbg_does_not_ask_in_a_sourced_file_either(repl, tmp_path):
    script = tmp_path / "q.kvmdbg"
    script.write_text(QUERY_FILE.format(sym="flip", start="start"))
    c = repl(SMEP)
    c.sendline(f"source {script}")
    c.expect("No breakpoints or watchpoints.")
    assert "(y or n)" not in c.before and "before\r\nafter\r\n" in c.before
    c.expect(PROMPT)
    c.sendline("break flip")                   # typed at the prompt, it asks
    c.expect(PROMPT)
    c.sendline("delete")
    c.expect(r"Delete all breakpoints\? \(y or n\)")
    c.sendline("n")
    c.expect(PROMPT)
    c.sendline("info breakpoints")
    c.expect("breakpoint     keep y")


def test_echo_without_a_newline_leaves_the_prompt_after_its_text(repl):
    # gdb: `echo b` at the prompt prints b, and the next prompt follows it: b(gdb)
    c = repl(SMEP)
    c.sendline("echo b")
    c.expect(r"[\r\nl]b(?:\x1b\[[0-9;?]*[A-Za-z])*" + PROMPT)
    c.sendline("echo c\\n")
    c.expect(r"lc\r\n")                      # the line after the typed one: c, then a newline
    c.expect(PROMPT)


def test_long_help_is_paged_with_long_lines_wrapped_not_cut(repl):
    # `help mmu` is 36 lines, some of them 400 characters long: 49 rows on a 45-row,
    # 160-column terminal. less (-RXF, no -S) pages it and wraps the long line, so its
    # end is on the screen.
    c = repl(SMEP, rows=45, cols=160, pager=None)
    c.sendline("help mmu")
    c.expect("List of commands:")
    c.expect(r":\x1b\[K")                      # less waits for a key: it did not fit
    c.send(" ")
    c.expect("one line per\\s+event\\.")       # the end of the 476-character line, wrapped
    c.expect(r"\(END\)")
    c.send("q")
    c.expect(PROMPT)
    c.sendline("p 2")
    c.expect(r"\$1 = 2")


def test_the_pager_wraps_and_counts_wrapped_rows():
    from kvmdbg.repl import pager
    assert pager.PAGER == "less -RXF"               # no -S: long lines wrap
    assert pager.screen_rows(["x" * 160, "y" * 161, "", "a\nb", "\x1b[1m" + "z" * 80 + "\x1b[0m"],
                             80) == 2 + 3 + 1 + 2 + 1
