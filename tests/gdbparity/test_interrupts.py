"""Ctrl-C (SIGINT) stops a compare between instructions, prints what it had and returns
to the prompt, or exits 130 from the command line; every profile is checked before any
runs (issue 13). The process is signalled once it has spent CPU time in the run, not
after a fixed sleep."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")
ENV = dict(os.environ, NO_COLOR="1", XDG_CONFIG_HOME="/nonexistent-kvmdbg-test",
           PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", PAGER="cat")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_cpu(pid: int, seconds: float, timeout: float = 120) -> None:
    """Until the process has run `seconds` of CPU (start-up takes about 0.3 s)."""
    end = time.time() + timeout
    while cpu_seconds(pid) < seconds:
        assert time.time() < end, "the process never got going"
        time.sleep(0.05)


def test_ctrl_c_stops_kvmdbg_compare_prints_the_table_so_far_and_exits_130():
    # The default-argument compare runs for minutes; Ctrl-C must not wait for it.
    p = subprocess.Popen([sys.executable, "-m", "kvmdbg", "--compare", "v5.15,v6.6", SMEP],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         cwd=ROOT)
    try:
        wait_for_cpu(p.pid, 2.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    lines = out.splitlines()
    assert lines[0].split() == ["v5.15"] and lines[-1] == "runs ended by: v5.15: interrupted"
    assert err.startswith("kvmdbg: Interrupted: v5.15 stopped after ")
    assert err.rstrip().endswith("instructions; not run: v6.6.")
    assert "Traceback" not in err


def test_ctrl_c_stops_compare_in_the_repl_and_the_prompt_comes_back():
    c = pexpect.spawn(sys.executable, ["-m", "kvmdbg", SMEP], env=ENV, cwd=str(ROOT),
                      encoding="utf-8", timeout=60, dimensions=(50, 160))
    try:
        c.expect(r"\(kvmdbg\)")
        c.sendline("compare v5.15 v6.6")
        c.expect("compare v5.15 v6.6")
        busy = cpu_seconds(c.pid)
        wait_for_cpu(c.pid, busy + 1.5)
        c.sendintr()
        c.expect(r"runs ended by: v5\.15: interrupted")
        c.expect(r"Interrupted: v5\.15 stopped after [\d,]+ instructions; not run: v6\.6\.")
        c.expect(r"\(kvmdbg\)")
        c.sendline("p 6 * 7")
        c.expect(r"\$1 = 42")
        c.expect(r"\(kvmdbg\)")
        c.sendline("quit")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)


def test_every_profile_and_knob_is_checked_before_any_runs():
    # `--compare v5.15,bogus` used to run v5.15 for 17 s before refusing `bogus`.
    for extra, message in (([], "kvmdbg: unknown KVM profile 'bogus'; valid: "),
                           (["--set", "nosuch=1"], "kvmdbg: unknown knob 'nosuch'; valid: ")):
        start = time.time()
        names = "v5.15,bogus" if not extra else "v5.15,v6.6"
        p = subprocess.run([sys.executable, "-m", "kvmdbg", "--compare", names, *extra, SMEP],
                           capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.startswith(message)
        assert time.time() - start < 10                   # nothing ran (start-up only)
    p = subprocess.run([sys.executable, "-m", "kvmdbg", "-batch", "-ex", "compare v5.15 bogus",
                        "-ex", "p 1", SMEP], capture_output=True, text=True, env=ENV, cwd=ROOT,
                       timeout=60)
    assert p.stderr.startswith("unknown KVM profile 'bogus'") and p.stdout == "$1 = 1\n"
