"""The debugger's commands through the real executable in batch mode (-ex, -x, stdin)."""

import re

from tests.cli.test_batch import SMEP, kvmdbg


def test_breakpoint_continue_print_in_batch():
    rc, out, err = kvmdbg("-batch", "--arg", "3", "-ex", "break flip", "-ex", "continue",
                          "-ex", "print $rbx", "-ex", "continue", "-ex", "info breakpoints", SMEP)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "Breakpoint 1 at 0x100033: file smep_flip.S, line 42."
    assert "Breakpoint 1, 0x100033 <flip>, vcpu 0, step 13" in lines
    assert "$1 = 3" in lines
    assert "\tbreakpoint already hit 2 times" in lines
    assert err == ""


def test_script_with_define_catch_and_watch(tmp_path):
    script = tmp_path / "session.kvmdbg"
    script.write_text("""# a command file
define flips
  printf "flips left: %d\\n", $rbx
end
catch cr-write cr4
continue
flips
delete
watch $cr4.smep
continue
""")
    rc, out, err = kvmdbg("-batch", "--arg", "2", "-x", str(script), SMEP)
    assert rc == 0, err
    assert "Catchpoint 1 (cr-write cr4 = 0x100620), vcpu 0, step 15" in out
    assert "flips left: 2" in out
    assert "Watchpoint 2: $cr4.smep" in out and "Old value = 1" in out and "New value = 0" in out


def test_errors_are_one_line_each_exit_status_1_and_the_session_goes_on():
    rc, out, err = kvmdbg("-batch", "-ex", "x/4q 0", "-ex", "print 1 +", "-ex", "delete 9",
                          "-ex", "break *", "-ex", "frob", "-ex", "print 6 * 7", SMEP)
    assert rc == 1
    assert err.splitlines() == [
        'Undefined output format "q".  Usage: x[/NFU] [ADDR]',
        "A syntax error in expression, near `'.",
        "No breakpoint number 9.",
        "Argument required (an address).  Usage: break [[*]ADDR|SYMBOL|FILE:LINE|LINE] [if EXPR]",
        'Undefined command: "frob".  Try "help".']
    assert out.splitlines() == ["$1 = 42"]
    assert "Traceback" not in out + err


def test_same_commands_same_output_byte_for_byte():
    args = ("-batch", "--arg", "4", "-ex", "catch cr-write", "-ex", "continue", "-ex", "continue",
            "-ex", "x/4xg $rsp", "-ex", "disassemble", "-ex", "info registers", SMEP)
    assert kvmdbg(*args) == kvmdbg(*args)


def test_colour_only_when_asked_in_batch_and_never_in_logs(tmp_path):
    rc, out, _ = kvmdbg("-batch", "-ex", "x/2i $pc", SMEP)
    assert "\x1b[" not in out
    log = tmp_path / "log.txt"
    rc, out, _ = kvmdbg("-batch", "--color", "always", "-ex", f"set logging file {log}",
                        "-ex", "set logging on", "-ex", "x/2i $pc", SMEP, env={"NO_COLOR": ""})
    assert "\x1b[" in out
    assert "\x1b[" not in log.read_text() and "mov r9, rdx" in log.read_text()


def test_stdin_lines_never_repeat_on_blank_lines():
    rc, out, err = kvmdbg(SMEP, stdin="stepi\n\n\ninfo registers rip\n")
    assert rc == 0, err
    assert re.search(r"rip +\*0x100003 ", out)
    assert out.count("vcpu 0, step") == 1
