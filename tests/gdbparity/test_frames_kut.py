"""Frames, finish and variables at run time, on kvm-unit-tests' access_test.flat stopped
in ac_test_do_access (its first call). Expectations come from the source (the lines of
the calls, the values the test program set just before) and from gdb's formats, never
from kvmdbg's own output.

The first call: main calls ac_test_run(PT_LEVEL_PML4, ...); ac_test_run's loop calls
ac_test_exec(&at, &pt_env) (inlined), which calls ac_test_do_access(at) with `at` as
ac_test_init(&at, 0xffff923400000000ul, ...) left it: flags 0, virt that address,
pt_levels pt_env->pt_levels, which ac_env_int set from ac_test_run's pt_levels.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import kut_image, run_cli

SOURCES = Path(__file__).resolve().parents[2] / ".." / "shared" / "kut"


def source_line(file: str, text: str, after: int = 0) -> int:
    """The number of the first line of kvm-unit-tests/FILE after line `after` holding text."""
    lines = (SOURCES / "kvm-unit-tests" / file).read_text().splitlines()
    return next(i + 1 for i, ln in enumerate(lines) if i + 1 > after and text in ln)


def run(*cmds):
    flat = kut_image("access_test.flat")
    args = ["-batch", "-ex", f"directory {SOURCES.resolve()}", "-ex", "break ac_test_do_access",
            "-ex", "continue"]
    for c in cmds:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, str(flat))
    return out.splitlines(), err.splitlines()


FRAME = re.compile(r"^#(\d+) +(?:(0x[0-9a-f]{16}) in )?(\w+) \((.*)\)(?: at (\S+):(\d+))?$")


@pytest.fixture(scope="module")
def bt():
    out, err = run("bt")
    return [FRAME.match(ln).groups() for ln in out if FRAME.match(ln)], out, err


def test_backtrace_reaches_main_with_file_and_line(bt):
    frames, out, err = bt
    names = [f[2] for f in frames]
    assert names[:4] == ["ac_test_do_access", "ac_test_exec", "ac_test_run", "main"]
    do_access = source_line("x86/access.c", "static int ac_test_do_access(ac_test_t *at)")
    call_in_exec = source_line("x86/access.c", "r = ac_test_do_access(at);")
    call_in_run = source_line("x86/access.c", "successes += ac_test_exec(&at, &pt_env);")
    call_in_main = source_line("x86/access_test.c", "ac_test_run(PT_LEVEL_PML4")
    places = [(f[4], int(f[5])) for f in frames[:4]]
    # frame 0 stops on the function's opening line (gdb: the line of its first instruction)
    assert places[0][0] == "x86/access.c" and do_access <= places[0][1] <= do_access + 1
    assert places[1:] == [("x86/access.c", call_in_exec), ("x86/access.c", call_in_run),
                          ("x86/access_test.c", call_in_main)]


def test_frame_lines_in_gdbs_format(bt):
    frames, out, err = bt
    # gdb: no address in frame 0 at the start of a line, nor in the caller of inlined code
    # (ac_test_run, into which ac_test_exec is inlined); 16 hex digits elsewhere.
    assert [bool(f[1]) for f in frames[:4]] == [False, True, False, True]
    assert frames[2][3] == "pt_levels=4, force_emulation=<optimized out>"
    assert frames[1][3].count("=0x") == 2                   # pt_env, at: pointers
    assert frames[0][3] == "at=" + dict(a.split("=") for a in frames[1][3].split(", "))["at"]


def test_print_at_shows_the_fields_ac_test_init_set():
    out, err = run("print at", "print at->flags", "print at->virt", "print at->pt_levels",
                   "print *at", "print (*at).pt_levels", "whatis at", "ptype at->virt")
    assert re.fullmatch(r"\$1 = \(ac_test_t \*\) 0x[0-9a-f]+", out[-8])
    assert out[-7:-4] == ["$2 = 0", "$3 = (void *) 0xffff923400000000", "$4 = 4"]
    assert re.fullmatch(r"\$5 = \{flags = 0, virt = 0xffff923400000000, phys = \d+, .*"
                        r"pt_levels = 4, page_tables = \{.*\}\}", out[-4])
    assert out[-3:] == ["$6 = 4", "type = ac_test_t *", "type = void *"]


def test_info_args_locals_and_frames_up_the_stack():
    out, err = run("info args", "up", "up", "info args", "frame 9", "down", "down", "down")
    at = next(ln for ln in out if ln.startswith("at = "))
    assert out.index(at) < out.index(next(ln for ln in out if ln.startswith("#1  ")))
    assert "pt_levels = 4" in out                           # ac_test_run's argument
    assert err[0] == "No frame at level 9."
    assert err[-1] == "Bottom (innermost) frame selected; you cannot go down."


def test_finish_returns_to_the_line_after_the_call_and_prints_the_value():
    # The call `r = ac_test_do_access(at);` in ac_test_exec (inlined into ac_test_run)
    # returns to `return r;`, the next line; gdb 13 says the same of the return address
    # (`info line *0x401d5a`: line 1208, in ac_test_run: the PC is past the inlined block).
    call = source_line("x86/access.c", "r = ac_test_do_access(at);")
    after = source_line("x86/access.c", "return r;", call)
    assert after == call + 1
    out, err = run("finish", "print $")
    assert any(ln.startswith("Run till exit from #0  ac_test_do_access (at=0x") and
               ln.endswith(" at x86/access.c:767") for ln in out)
    assert f"ac_test_run (pt_levels=4, force_emulation=<optimized out>) at x86/access.c:{after}" \
        in out
    assert f"{after}\t\treturn r;" in out
    # the first access test succeeds (access_test passes): ac_test_do_access returns 1
    assert out[-2:] == ["Value returned is $1 = 1", "$2 = 1"]


def test_info_frame_shows_cfa_and_saved_registers():
    out, err = run("stepi", "stepi", "info frame")
    i = out.index(next(ln for ln in out if ln.startswith("Stack level 0, frame at 0x")))
    cfa = int(out[i].split()[-1].rstrip(":"), 16)
    assert out[i + 1].startswith(" rip = 0x400f4c in ac_test_do_access (x86/access.c:")
    assert "saved rip = 0x" in out[i + 1]
    # after push rbp; mov rbp, rsp (.eh_frame: CFA rbp+16, rbp at c-16, ra at c-8)
    assert out[-1] == f"  rbp at {cfa - 16:#x}, rip at {cfa - 8:#x}"


def test_advance_until_and_tbreak_to_lines_of_the_function():
    # The static `unique` starts at 42 and the function's first statement increments it.
    body = source_line("x86/access.c", "static int ac_test_do_access(ac_test_t *at)")
    r_line = source_line("x86/access.c", "unsigned r = unique;", body)
    smep = source_line("x86/access.c", "set_cr4_smep(at, F(AC_CPU_CR4_SMEP));", body)
    pke = source_line("x86/access.c", "set_cr4_pke(F(AC_CPU_CR4_PKE));", body)
    out, err = run(f"advance {r_line}", "print unique", f"tbreak x86/access.c:{smep}",
                   "continue", "print flags", "info breakpoints", f"until {pke + 1}")
    assert err == []
    assert any(ln.startswith(f"{r_line}\t") and "unsigned r = unique;" in ln for ln in out)
    assert "$1 = 43" in out
    tb = next(ln for ln in out if ln.startswith("Temporary breakpoint 2 at 0x"))
    assert tb.endswith(f": file x86/access.c, line {smep}.")
    assert any(ln.startswith("Temporary breakpoint 2, 0x") for ln in out)
    assert "$2 = 0" in out                  # flags = at->flags, 0 on the first call
    assert not any(ln.startswith("2       breakpoint") for ln in out)   # deleted when hit


def test_bad_input_is_one_line_each(tmp_path):
    import subprocess
    flat = kut_image("access_test.flat")
    stripped = tmp_path / "stripped.elf"
    subprocess.run(["strip", "-o", str(stripped), str(flat.with_suffix(".elf"))], check=True)
    corrupt = tmp_path / "corrupt.elf"
    data = bytearray(flat.with_suffix(".elf").read_bytes())
    from elftools.elf.elffile import ELFFile
    with open(flat.with_suffix(".elf"), "rb") as f:
        info = ELFFile(f).get_section_by_name(".debug_info")
        start = info["sh_offset"]
    data[start:start + 64] = b"\xff" * 64
    corrupt.write_bytes(bytes(data))
    rc, out, err = run_cli("-batch", "-ex", "info scope main", "-ex", "print nosuch",
                           "-ex", "ptype struct nosuch", "-ex", "break nosuch",
                           "-ex", "info scope nosuch", "-ex", "list nosuch.c:3",
                           "-ex", f"symbol-file {stripped}", "-ex", "info scope main",
                           "-ex", "info locals", "-ex", "bt",
                           "-ex", f"symbol-file {corrupt}", "-ex", "info scope main",
                           "-ex", "ptype ac_test_t", "-ex", "bt", "-ex", "print 1", str(flat))
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines[:5] == ['No symbol "nosuch" in current context.', "No struct type named nosuch.",
                         'Function "nosuch" not defined.', 'Function "nosuch" not defined.',
                         "No source file named nosuch.c."]        # gdb 13's words, each
    # stripped: gdb's words for info scope; info locals has no DWARF function to look in
    assert lines[5:7] == ["No symbol table is loaded.  Use the \"file\" command.",
                          "No symbol table info available."]
    # corrupt .debug_info: symbol-file refuses it in one line, the session goes on
    assert lines[7].startswith(f"`{corrupt}': can't read symbols: bad DWARF or ELF (")
    assert lines[8:] == ["No symbol table is loaded.  Use the \"file\" command.",
                         'No symbol "ac_test_t" in current context.']
    assert all(len(ln) < 200 for ln in lines)
    assert out.splitlines()[-1] == "$1 = 1"


def test_the_callers_struct_is_the_callees_pointer():
    # ac_test_run passes &at (through ac_test_exec) to ac_test_do_access(at); its loop ran
    # `++tests` once before the first call.
    out, err = run("print at", "frame 2", "print &at", "print tests", "print at.pt_levels",
                   "bt full 1")
    ptr = out[out.index(next(ln for ln in out if ln.startswith("$1 = ")))].split(" = ")[1]
    assert f"$2 = {ptr}" in out
    assert "$3 = 1" in out and "$4 = 4" in out
    full = out.index(next(ln for ln in out if ln.startswith("#0  ac_test_do_access (")))
    assert out[full + 1:full + 3] == ["        unique = 42", "        fault = <optimized out>"]


def test_advance_to_a_line_never_reached_stops_when_the_frame_returns():
    # ac_test_show runs only with `verbose`, false in access.c: advancing to a line of it
    # from ac_test_do_access stops where ac_test_do_access returns (gdb's advance/until),
    # on `return r;` after the call in ac_test_exec.
    show = source_line("x86/access.c", "static void ac_test_show(ac_test_t *at)")
    body = source_line("x86/access.c", "*line = 0;", show)
    call = source_line("x86/access.c", "r = ac_test_do_access(at);")
    out, err = run(f"advance {body}", "bt 1")
    assert err == []
    assert f"{call + 1}\t\treturn r;" in out
    assert out[-1] == f"#0  ac_test_run (pt_levels=4, force_emulation=<optimized out>) at " \
                      f"x86/access.c:{call + 1}"


def test_finish_out_of_the_inlined_frame_stops_in_its_caller():
    # Frame 1 is ac_test_exec, inlined into ac_test_run: finish runs ac_test_do_access to
    # its return, then on out of the inlined block, to the loop's condition (where
    # ac_test_bump, inlined too, begins: gdb shows the caller there, not the new call).
    cond = source_line("x86/access.c", "} while (ac_test_bump(&at));")
    out, err = run("up", "finish")
    assert err == []
    assert any(ln.startswith("Run till exit from #1  0x") and " in ac_test_exec (" in ln
               for ln in out)
    assert f"ac_test_run (pt_levels=4, force_emulation=<optimized out>) at x86/access.c:{cond}" \
        in out
    assert f"{cond}\t\t}} while (ac_test_bump(&at));" in out


def test_registers_in_an_outer_frame_are_the_unwound_ones(bt):
    # gdb: $pc in frame N is that frame's PC (its line in the backtrace), $sp its CFA-based
    # stack pointer; back in frame 0 they are the vCPU's again.
    frames, _out, _err = bt
    main_pc = int(frames[3][1], 16)
    out, err = run("up 3", "print/x $pc", "frame 0", "print/x $pc", "print/x $rip")
    assert next(ln for ln in out if ln.startswith("#3  ")).split()[1] == frames[3][1]
    assert [ln for ln in out if ln.startswith("$")] == [f"$1 = {main_pc:#x}", "$2 = 0x400f48",
                                                          "$3 = 0x400f48"]
