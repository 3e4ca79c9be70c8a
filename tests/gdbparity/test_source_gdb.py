"""Source-level debugging of the shipped programs: symbols and the DWARF line table of
programs/NAME.elf, compared with gdb 13 on the same ELF (`gdb -batch -nx -ex CMD ELF`).

Each test states gdb's answer too, so it says what gdb does where gdb is absent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.gdbparity.oracle import GDB, needs_gdb
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent.parent
ELF = "programs/smep_flip.elf"
BIN = "programs/smep_flip.bin"


def gdb(*cmds, elf=ELF, cwd=ROOT) -> list:
    args = [GDB, "-batch", "-nx"]
    for c in cmds:
        args += ["-ex", c]
    p = subprocess.run(args + [elf], capture_output=True, text=True, cwd=cwd, timeout=60)
    return (p.stdout + p.stderr).splitlines()


def kvmdbg(*cmds, program=BIN, extra=()) -> tuple:
    args = ["-batch", *extra]
    for c in cmds:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, program)
    return out.splitlines(), err.splitlines()


# What gdb 13 answers on programs/smep_flip.elf (run from the repository).
INFO_LINE = {
    "flip": 'Line 42 of "smep_flip.S" starts at address 0x100033 <flip> and ends at 0x100039 <flip+6>.',
    "*0x100036": 'Line 42 of "smep_flip.S" starts at address 0x100033 <flip> and ends at 0x100039 <flip+6>.',
    "smep_flip.S:41": 'Line 41 of "smep_flip.S" is at address 0x100033 <flip> but contains no code.',
    "44": 'Line 44 of "smep_flip.S" is at address 0x10003c <flip+9> but contains no code.',
    "start": 'Line 26 of "smep_flip.S" starts at address 0x100000 <start> and ends at 0x100003 <start+3>.',
    "message": "No line number information available for address 0x10006f <message>",
    "*0x100070": 'Line 66 of "smep_flip.S" starts at address 0x10006d <print+12> and ends at 0x10007f.',
    "*0x200000": "No line number information available for address 0x200000",
    "69": 'Line number 69 is out of range for "smep_flip.S".',
    "71": 'Line number 71 is out of range for "smep_flip.S".',
}


@pytest.mark.parametrize("spec", sorted(INFO_LINE))
def test_info_line_states_gdbs_answer(spec):
    out, err = kvmdbg(f"info line {spec}")
    assert out == [INFO_LINE[spec]]


@needs_gdb
def test_info_line_matches_gdb():
    specs = sorted(INFO_LINE)
    want = gdb(*(f"info line {s}" for s in specs))
    out, err = kvmdbg(*(f"info line {s}" for s in specs))
    assert out == want


def test_errors_are_one_line_each():
    out, err = kvmdbg("info line nosuch", "list nosuch", "list foo.S:3", "list 200",
                      "break smep_flip.S:70", "break 71", "break foo.S:3")
    assert err == ['Function "nosuch" not defined.', 'Function "nosuch" not defined.',
                   "No source file named foo.S.",
                   "Line number 195 out of range; smep_flip.S has 70 lines.",
                   'No line 70 in file "smep_flip.S".', "No line 71 in the current file.",
                   "No source file named foo.S."]


LIST_CMDS = ["list flip", "list", "list -", "list smep_flip.S:3", "list 66", "list",
             "list 75", "list *0x100036", "list 40,43", "list 60,"]


@needs_gdb
def test_list_matches_gdb():
    """gdb centres on the line (5 before, 10 in all), goes on with `list`, back with
    `list -`, and stops at the end of the file with its one-line error."""
    want = gdb("directory programs", *LIST_CMDS)
    out, err = kvmdbg("directory programs", *LIST_CMDS)
    # gdb's stderr comes after its stdout here: compare as sets of lines and in order apart
    assert [l for l in out] == [l for l in want if "out of range" not in l]
    assert err == [l for l in want if "out of range" in l]


def test_list_centres_on_the_function():
    out, _ = kvmdbg("list flip")
    assert out[0].startswith("37\t") and out[-1].startswith("46\t")
    assert out[5] == "42\txor\trax, CR4_SMEP".replace("42\t", "42\t\t")


@needs_gdb
def test_missing_source_is_gdbs_line(tmp_path):
    """From another directory DWARF's comp_dir (programs, relative) does not lead to the
    source: gdb says `37\tsmep_flip.S: No such file or directory.` once, then `37\tin
    smep_flip.S`."""
    elf = str(ROOT / ELF)
    want = ["37\tsmep_flip.S: No such file or directory.", "37\tin smep_flip.S"]
    assert sorted(gdb("list flip", "list", elf=elf, cwd=tmp_path)) == sorted(want)
    import sys
    env = dict(os.environ, XDG_CONFIG_HOME="/nonexistent", NO_COLOR="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "kvmdbg", "-batch", "-ex", "list flip", "-ex",
                        "list", str(ROOT / BIN)], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert p.stderr.splitlines() == [want[0]]
    assert p.stdout.splitlines() == [want[1]]


def test_substitute_path_and_directory_find_the_source(tmp_path):
    import sys
    env = dict(os.environ, XDG_CONFIG_HOME="/nonexistent", NO_COLOR="1", PYTHONPATH=str(ROOT))
    for how in (["set substitute-path programs " + str(ROOT / "programs")],
                ["directory " + str(ROOT / "programs")]):
        args = [sys.executable, "-m", "kvmdbg", "-batch"]
        for c in how + ["list 42,42", "show directories"]:
            args += ["-ex", c]
        p = subprocess.run(args + [str(ROOT / BIN)], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=120)
        lines = p.stdout.splitlines()
        assert lines[0] == "42\t\txor\trax, CR4_SMEP", p.stderr
        assert lines[1].startswith("Source directories searched: ")
        assert lines[1].endswith("$cdir:$cwd")


@needs_gdb
def test_show_directories_matches_gdb():
    cmds = ["directory programs", "show directories", "directory", "show directories",
            "set substitute-path /a /b", "show substitute-path"]
    assert kvmdbg(*cmds)[0] == gdb(*cmds)


BREAKS = ["break smep_flip.S:42", "break 44", "break smep_flip.S:66", "break 1",
          "tbreak smep_flip.S:48", "break *0x100036", "break flip", "info breakpoints"]


@needs_gdb
def test_breakpoint_messages_match_gdb():
    want = gdb(*BREAKS)
    out, err = kvmdbg(*BREAKS)
    want = [l for l in want if not l.startswith("Note: breakpoint")]
    assert [l for l in out if not l.startswith("Note: breakpoint")] == want


def test_breakpoint_by_line_states_gdbs_answer():
    out, _ = kvmdbg("break smep_flip.S:42", "break 44")
    assert out == ["Breakpoint 1 at 0x100033: file smep_flip.S, line 42.",
                   "Breakpoint 2 at 0x10003c: file smep_flip.S, line 45."]


@needs_gdb
def test_info_source_matches_gdb():
    want = gdb("list 1,1", "info source")
    out, _ = kvmdbg("list 1,1", "info source")
    assert out == want


def test_info_source_before_any_listing():
    assert kvmdbg("info source")[0] == ["No current source file."]


def test_stop_shows_the_source_line():
    out, _ = kvmdbg("break 45", "run")
    i = out.index("=> 0x10003c <flip+9>:\tmov rsi, r8")
    assert out[i + 1] == "45\t\tmov\trsi, r8"


def test_next_and_step_go_by_line():
    out, _ = kvmdbg("break flip", "run", "next", "next", "step", "list")
    text = [l for l in out if l[:1].isdigit() or l.startswith("0x")]
    assert "0x100039 <flip+6>, vcpu 0, step 15" in text
    assert "43\t\tmov\tcr4, rax" in text
    assert "0x10003c <flip+9>, vcpu 0, step 16" in text
    assert "0x10003f <flip+12>, vcpu 0, step 17" in text
    # `list` after a stop centres on its line (46: 41-50)
    assert text[-10].startswith("41\t") and text[-1].startswith("50\t")


def test_next_steps_over_a_call_and_step_enters_it():
    out, _ = kvmdbg("break pvshim.S:70", "run", "next", program="programs/pvshim.bin")
    assert "71\t\tmov\tr13d, SHIM_PML4" in out
    out, _ = kvmdbg("break pvshim.S:70", "run", "step", program="programs/pvshim.bin")
    assert any(l.startswith("0x1000c4 <build_shim_tables>, vcpu 0, step 14") for l in out)


def test_without_line_info_step_is_stepi_with_its_note(tmp_path):
    import shutil
    shutil.copy(ROOT / BIN, tmp_path / "p.bin")
    out, _ = kvmdbg("step", "step", program=str(tmp_path / "p.bin"))
    assert out.count("(no source lines; stepping by instruction)") == 1


def test_symbol_file_errors(tmp_path):
    nodwarf = tmp_path / "nodwarf.elf"
    subprocess.run(["objcopy", "--strip-debug", str(ROOT / ELF), str(nodwarf)], check=True)
    out, err = kvmdbg("symbol-file /nonexistent.elf", f"symbol-file {ROOT / BIN}",
                      f"symbol-file {nodwarf}", "info line start", "list 3")
    assert err[0] == "/nonexistent.elf: No such file or directory."
    assert err[1] == f"`{ROOT / BIN}': can't read symbols: file format not recognized."
    assert out == ["No line number information available for address 0x100000 <start>"]
    assert err[2] == 'No symbol table is loaded.  Use the "file" command.'


def test_symbols_option_reads_the_elf(tmp_path):
    import shutil
    shutil.copy(ROOT / BIN, tmp_path / "p.bin")
    out, err = kvmdbg("info line flip", program=str(tmp_path / "p.bin"),
                      extra=("--symbols", str(ROOT / ELF)))
    assert out == [INFO_LINE["flip"]]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "programs").glob("*.S")))
def test_elf_symbols_are_the_sym_files(name):
    """The ELF's symbols replace the .sym's: they are the same names and addresses."""
    from kvmdbg.debug.engine.source import read_elf
    from kvmdbg.kvm.boot import read_symbols
    di = read_elf(str(ROOT / "programs" / f"{name}.elf"))
    assert di.symbols == read_symbols(ROOT / "programs" / f"{name}.sym")


def test_an_empty_line_goes_on_listing():
    """gdb: after `list flip`, Return lists the next 10 lines; after `list -`, the 10 before."""
    from kvmdbg import Session
    from kvmdbg.debug.engine.repeat import run_typed_line
    s = Session.load(str(ROOT / BIN))
    s.sources.add(str(ROOT / "programs"))
    run_typed_line(s, "list flip")
    start = len(s.lines)
    run_typed_line(s, "")
    assert s.lines[start].startswith("47\t") and s.lines[-1].startswith("56\t")
    run_typed_line(s, "list -")
    run_typed_line(s, "")
    assert s.lines[-10].startswith("27\t") and s.lines[-1].startswith("36\t")


def test_advance_and_until_take_a_line():
    out, _ = kvmdbg("advance 53", "until smep_flip.S:57")
    assert "0x100050 <touch+14>, vcpu 0, step 82" in out and "53\t\tdec\trbx" in out
    assert out[out.index("57\t\tlea\trsi, [rip + message]") - 2].startswith("0x100055 <done>")


@needs_gdb
def test_first_list_and_info_line_without_argument_match_gdb():
    """With no listing and no stop yet, `list` starts at line 1 (there is no main); `info
    line` alone then names the first line of the last listing."""
    cmds = ["info line", "list", "list", "info line", "list *0x100036", "info line"]
    want = gdb("directory programs", *cmds)
    out, err = kvmdbg("directory programs", *cmds)
    assert out == want
