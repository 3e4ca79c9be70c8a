"""Drive the real kvmdbg executable in batch mode, as a script or CI job would."""

from pathlib import Path

import pytest
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
SMEP = str(ROOT / "programs" / "smep_flip.bin")


def kvmdbg(*args, stdin=None, env=None):
    return run_cli(*args, stdin=stdin, env=env)


def test_stepi_and_info_registers():
    rc, out, err = kvmdbg("-batch", "-ex", "stepi 12", "-ex", "info registers", SMEP)
    assert rc == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "0x100029 <start+41>, vcpu 0, step 12"
    assert lines[1].startswith("=> 0x100029 <start+41>:\tadd r8, 0x200000")
    assert lines[2] == "38\t\tadd\tr8, DATA\t\t\t# this vCPU's working set"   # the source line
    regs = {line.split()[0]: line.split()[1] for line in lines[5:]}
    assert lines[3] == "changed: rbx=0x186a0 rdx=0x186a0 r9=0x10 eflags=0x46"   # gdb's order
    assert lines[4].startswith("mmu: root #1")
    # Registers changed since the previous stop (the boot state) are marked with *.
    assert regs["rdx"] == "*0x186a0" and regs["rsp"] == "0x80000"
    regs = {k: v.lstrip("*") for k, v in regs.items()}
    # Boot contract: RSP = 0x80000, RDI = vCPU index, RSI = number of vCPUs, RDX = --arg (0).
    assert regs["rsp"] == "0x80000"
    assert regs["rsi"] == "0x1"
    assert regs["rdx"] == "0x186a0" and regs["rbx"] == "0x186a0"   # 0 -> DEFAULT_FLIPS
    assert regs["cr0"] == "0x80010033" and regs["cr4"] == "0x620" and regs["efer"] == "0xd00"
    assert regs["cr3"] == "0x1000" and regs["rip"] == "0x100029"
    assert "[ PG WP NE ET MP PE ]" in out
    assert "[ NXE LMA LME ]" in out


def test_continue_runs_to_halt_and_prints_guest_console():
    rc, out, err = kvmdbg("-batch", "--arg", "50", "-ex", "continue", "-ex", "info registers rbx",
                          SMEP)
    assert rc == 0, err
    assert "smep_flip: done" in out.splitlines()
    assert "[all vCPUs halted]" in out
    assert out.splitlines()[-1].split()[:2] == ["rbx", "0x0"]


def test_arg_reaches_rdx_and_vcpus_get_their_index():
    rc, out, _ = kvmdbg("-batch", "--vcpus", "3", "--arg", "0x2a", "-ex", "info registers rdx rsi rdi rsp",
                        SMEP)
    assert rc == 0
    vals = dict(line.split()[:2] for line in out.splitlines())
    assert vals == {"rdx": "0x2a", "rsi": "0x3", "rdi": "0x0", "rsp": "0x80000"}


def test_ex_and_x_run_in_order_and_errors_set_exit_status(tmp_path):
    script = tmp_path / "cmds.kvmdbg"
    script.write_text("# comment\necho from-file\\n\n\nstepi 2\n")
    rc, out, err = kvmdbg("-batch", "-ex", "echo first\\n", "-x", str(script), "-ex", "echo last",
                          SMEP)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "first" and lines[1] == "from-file" and lines[-1] == "last"
    rc, out, err = kvmdbg("-batch", "-ex", "frobnicate", "-ex", "echo still-running", SMEP)
    assert rc == 1
    assert err.strip() == 'Undefined command: "frobnicate".  Try "help".'
    assert "still-running" in out


def test_error_in_sourced_file_stops_the_file(tmp_path):
    script = tmp_path / "bad.kvmdbg"
    script.write_text("echo one\nstepi x\necho never\n")
    rc, out, err = kvmdbg("-batch", "-x", str(script), SMEP)
    assert rc == 1
    assert "never" not in out
    assert err.splitlines() == [f"{script}:2: Error in sourced command file:",
                                'Invalid number "x".  Usage: stepi [N]']


def test_stdin_commands_without_a_terminal():
    rc, out, err = kvmdbg(SMEP, stdin="stepi\ninfo registers rip\nquit 3\n")
    assert rc == 3, err
    assert "rip           *0x100003" in out          # * : changed since the previous stop


@pytest.mark.parametrize("args, message", [
    (["--mem", "0", SMEP], "kvmdbg: --mem must be between 2M and 1G (got 0 bytes)."),
    (["--vcpus", "0", SMEP], "kvmdbg: --vcpus must be between 1 and 8 (got 0)."),
    (["--mem", "lots", SMEP], "kvmdbg: invalid size 'lots' (use e.g. 16M, 1G)"),
    (["--frobnicate", SMEP], "kvmdbg: unrecognized option '--frobnicate'"),
    (["missing.bin"], "kvmdbg: missing.bin: No such file or directory."),
])
def test_bad_command_line_is_one_clear_line(args, message):
    rc, out, err = kvmdbg("-batch", *args)
    assert rc != 0
    assert err.splitlines()[0] == message
    assert "Traceback" not in err + out


def test_empty_and_oversized_programs(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    rc, _, err = kvmdbg("-batch", str(empty))
    assert rc == 1 and err.strip() == f"kvmdbg: {empty}: the program is empty."
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x90" * (3 << 20))
    rc, _, err = kvmdbg("-batch", "--mem", "2M", str(big))
    assert rc == 1
    assert err.strip() == f"kvmdbg: {big}: {3 << 20} bytes at 0x100000 do not fit in 2 MiB of RAM."


def test_unsupported_instruction_and_triple_fault_are_one_line(tmp_path):
    fsin = tmp_path / "fsin.bin"
    fsin.write_bytes(b"\x90\xd9\xfe")           # nop; fsin
    rc, out, err = kvmdbg("-batch", "-ex", "continue", "-ex", "info registers rip", str(fsin))
    assert rc == 1
    assert err.strip() == "unsupported instruction at 0x100001: fsin"
    assert "rip           *0x100001" in out        # state kept, at the instruction
    ud = tmp_path / "ud.bin"
    ud.write_bytes(b"\x0f\x0b")                  # ud2 with no IDT
    rc, out, err = kvmdbg("-batch", "-ex", "continue", "-ex", "info registers rip", str(ud))
    assert rc == 0
    assert err.startswith("Guest shut down (KVM_EXIT_SHUTDOWN) on vcpu 0 at step 1: triple fault: #UD")
    assert len(err.strip().splitlines()) == 1
    assert "rip            0x100000" in out


def test_same_run_same_output():
    runs = [kvmdbg("-batch", "--arg", "20", "-ex", "continue", "-ex", "info registers", SMEP)
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_compare_from_the_shell_with_a_64_page_working_set():
    """Issue 5's check: v5.15 pays at least 5x the cycles per flip of v6.6 at 64 pages."""
    rc, out, err = kvmdbg("--compare", "v5.15,v6.6", "--arg", str(64 << 32 | 30), SMEP)
    assert rc == 0, err
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines()[1:]}
    v515, v66 = (float(x.replace(",", "")) for x in rows["cycles per CR4 write"][:2])
    assert v515 >= 5 * v66
    assert rows["roots allocated"][:2] == ["31", "1"]
    assert rows["CR4 writes"][:2] == ["30", "30"]
    assert int(rows["EPT violations"][0].replace(",", "")) >= 30 * 64
