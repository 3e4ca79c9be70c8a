"""The real CLI in batch mode: catch root-zap + reverse-continue, the end of history."""

from __future__ import annotations

from tests.helpers import run_cli


def _batch(*commands, kvm="v5.15", prog="programs/smep_flip.bin"):
    args = ["-batch", "--kvm", kvm]
    for c in commands:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, prog)
    assert rc == 0, err
    return out


def _section(out: str, start: str, end: str) -> list[str]:
    lines = out.splitlines()
    i = lines.index(start)
    return lines[i:lines.index(end, i + 1)]


def test_reverse_continue_lands_on_the_previous_root_zap():
    out = _batch("catch root-zap", "continue", "echo A\\n", "info roots", "echo B\\n",
                 "continue", "reverse-continue", "echo C\\n", "info roots", "echo D\\n")
    stops = [l for l in out.splitlines() if l.startswith("Catchpoint 1 (root-zap")]
    assert len(stops) == 3
    assert stops[2] == stops[0]                 # the first zap's stop line, its step too
    assert stops[0].endswith("step 16") and stops[1].endswith("step 86")
    assert _section(out, "A", "B")[1:] == _section(out, "C", "D")[1:]


def test_no_more_history_stops_at_the_boot_state():
    out = _batch("catch root-zap", "continue", "reverse-continue", "info registers rip",
                 "reverse-stepi")
    lines = out.splitlines()
    assert lines.count("No more reverse-execution history.") == 2
    assert any(l.startswith("0x100000 <start>, vcpu 0, step 0") for l in lines)
    assert any(l.startswith("rip") and "0x100000" in l for l in lines)


def test_bad_input_gets_one_line_each():
    bad = ["goto banana", "reverse-stepi 0", "goto 99999999", "set record snapshot-memory lots",
           "set exec-direction sideways", "record stop"]
    args = ["-batch", "--kvm", "v5.15", "-ex", "stepi 5"]
    for c in bad:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, "programs/smep_flip.bin")
    assert "Traceback" not in out + err and "internal error" not in out + err
    assert len(err.strip().splitlines()) == len(bad), err


def test_exec_direction_reverse_runs_stepi_backward():
    out = _batch("stepi 10", "set exec-direction reverse", "stepi 4", "show exec-direction",
                 "set exec-direction forward", "stepi")
    steps = [l for l in out.splitlines() if ", step " in l and l.startswith("0x")]
    assert steps[-2].endswith("step 6") and steps[-1].endswith("step 7")
    assert "Reverse." in out
