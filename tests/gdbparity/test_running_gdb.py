"""finish and jump for raw programs, and u as gdb reads it (issue 13)."""

import re

from tests.gdbparity.oracle import (RECURSIVE_KVMDBG, gdb_session, kvmdbg, needs_gdb_program,
                                    oracle_nested, oracle_recursive, raw_program)

__all__ = ["oracle_nested", "oracle_recursive"]


def _where(line: str) -> str:
    """gdb's `0x0000000000401017 in b ()` and kvmdbg's `0x10001b <b+6>` as the function."""
    m = re.search(r" in (\w+) \(\)", line) or re.search(r"<(\w+)(\+\d+)?>", line)
    return m.group(1)


@needs_gdb_program
def test_finish_runs_to_the_caller_frame_by_frame_as_gdb_does(oracle_nested, tmp_path):
    # gdb: "Run till exit from #0  0x0000000000401018 in c ()", then where it stopped, in
    # b, a, _start; in the outermost frame: "finish" not meaningful in the outermost frame.
    g = [t for _c, t in gdb_session(oracle_nested, ["break c", "run", "finish", "finish",
                                                     "finish", "finish"])[2:]]
    assert [t.splitlines()[0].split(" in ")[1] for t in g[:3]] == ["c ()", "b ()", "a ()"]
    assert all(t.startswith("Run till exit from #0  0x") for t in g[:3])
    assert [_where(t.splitlines()[1]) for t in g[:3]] == ["b", "a", "_start"]
    assert g[3].strip() == '"finish" not meaningful in the outermost frame.'
    rc, out, err = kvmdbg("break c", "run", "finish", "finish", "finish", "finish",
                          program=raw_program(tmp_path))
    runs = [i for i, ln in enumerate(out) if ln.startswith("Run till exit from #0  ")]
    assert [out[i] for i in runs] == ["Run till exit from #0  0x10001c <c>",
                                      "Run till exit from #0  0x10001b <b+6>",
                                      "Run till exit from #0  0x100013 <a+6>"]
    assert [_where(out[i + 1]) for i in runs] == ["b", "a", "start"]
    assert out[runs[0] + 1] == "0x10001b <b+6>, vcpu 0, step 8"
    assert err == ['"finish" not meaningful in the outermost frame.']


@needs_gdb_program
def test_finish_in_a_recursion_returns_to_the_callers_frame(oracle_recursive, tmp_path):
    # In the second of three nested calls of f, finish passes the innermost call's return
    # to the same address (`back`, with the stack deeper) and stops when the second call
    # returns: the backtrace is then one frame shorter. gdb 13, with no frame information
    # for this program, shows the same three frames but its finish misses the return and
    # runs to the end: kvmdbg's stack check does what finish means.
    steps = ["break again if $rcx == 1", "run", "bt", "finish", "bt"]
    g = [t for _c, t in gdb_session(oracle_recursive, steps)]
    # (gdb names a caller frame by the call's function: #1 is `in again ()` at 0x...1f.)
    assert [_where(ln) for ln in g[2].splitlines()] == ["again", "again", "_start"]
    assert "exited normally" in g[3]
    rc, out, err = kvmdbg(*steps, program=raw_program(tmp_path, RECURSIVE_KVMDBG, "rec"))
    assert out[-2:] == ["#0  0x100017 <back>", "#1  0x10000c <start+12>"]
    assert "0x100017 <back>, vcpu 0, step 12" in out


@needs_gdb_program
def test_a_breakpoint_reached_again_by_its_own_instruction_stops_again(oracle_recursive,
                                                                      tmp_path):
    # `back: ret` returns to `back` in the caller: gdb reports the breakpoint each time.
    steps = ["break back", "run", "continue", "continue"]
    g = [t for _c, t in gdb_session(oracle_recursive, steps)]
    assert "Breakpoint 1, " in g[1] and "Breakpoint 1, " in g[2] and "exited" in g[3]
    rc, out, err = kvmdbg(*steps, program=raw_program(tmp_path, RECURSIVE_KVMDBG, "rec"))
    assert [ln for ln in out if ln.startswith("Breakpoint 1, ")] == [
        "Breakpoint 1, 0x100017 <back>, vcpu 0, step 11",
        "Breakpoint 1, 0x100017 <back>, vcpu 0, step 12"]
    assert any(ln.startswith("[all vCPUs halted]") for ln in out)


@needs_gdb_program
def test_jump_continues_at_the_address_as_gdb_does(oracle_nested, tmp_path):
    # gdb: "Continuing at 0x401005." and the program runs on from there.
    g = gdb_session(oracle_nested, ["break c", "run", "jump *0x401005"])
    assert g[2][1].splitlines()[0] == "Continuing at 0x401005."
    rc, out, err = kvmdbg("break c", "run", "jump *0x100005", "info registers rbx",
                          "starti", "break *0x100005", "jump 0x100005", program=raw_program(tmp_path))
    i = out.index("Continuing at 0x100005.")
    assert out[i + 1] == "[all vCPUs halted] 0x10000d <a>, vcpu 0, step 7"
    assert out[i + 2] == "rbx           *0x1                1"
    assert out[-4] == "Continuing at 0x100005."                     # a breakpoint there stops it
    assert out[-3] == "Breakpoint 2, 0x100005 <start+5>, vcpu 0, step 0"
    rc, out, err = kvmdbg("jump", "jump gpa:0x100000", "p 1")
    assert err == ["Argument required (a location).  Usage: jump ADDR",
                   "Locations are guest-virtual addresses (got gpa:0x100000)."] and out == ["$1 = 1"]


@needs_gdb_program
def test_u_is_until_as_in_gdb_and_bochs_u_slash_n_disassembles(oracle_nested, tmp_path):
    # gdb: `u` is its abbreviation of until (help u: "until, u").
    g = gdb_session(oracle_nested, ["help u"])
    assert g[0][1].splitlines()[0] == "until, u"
    rc, out, err = kvmdbg("u", "u/2", "u/1 start", "u/q", "help u", program=raw_program(tmp_path))
    assert out[0] == "0x100005 <start+5>, vcpu 0, step 11"             # nexti over the call
    assert out[3:6] == ["=> 0x100005 <start+5>:\tmov rbx, 1", "   0x10000c <start+12>:\thlt",
                        "   0x100000 <start>:\tcall 0x10000d <a>"]
    assert err == ["Bochs's u takes a count: u/N [ADDR] (got \"/q\"); disassemble has the "
                   "other forms."]
    assert out[6] == "until [ADDR|FUNC|FILE:LINE|LINE]"
