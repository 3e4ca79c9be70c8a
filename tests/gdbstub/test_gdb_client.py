"""Stock gdb against the stub: what a gdb user types, and what gdb prints back."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time

import pytest

from tests.gdbstub.gdbrun import GDB, KUT, ROOT, TcpStub, env, gdb, kvmdbg, needs_gdb, stdio

pytestmark = needs_gdb


def test_examine_step_registers_and_detach():
    out = stdio("x/3i $pc", "stepi", "info registers rip cr4", "detach")
    assert "=> 0x100000:\tmov    %rdx,%r9" in out
    assert "0x0000000000100003 in ?? ()" in out                  # stepi moved one instruction
    assert "rip            0x100003" in out
    assert "cr4            0x620               [ PAE OSFXSR OSXMMEXCPT ]" in out
    assert "[Inferior 1 (Remote target) detached]" in out
    assert "Traceback" not in out


def test_breakpoint_and_continue():
    out = stdio("break *0x10000f", "continue", "p/x $pc", "detach")
    assert "Breakpoint 1 at 0x10000f" in out
    assert "Breakpoint 1, 0x000000000010000f in ?? ()" in out
    assert "$1 = 0x10000f" in out


def test_symbols_from_the_elf():
    out = stdio("break flip", "continue", "bt", elf="programs/smep_flip.elf")
    assert "Breakpoint 1 at 0x100033: file smep_flip.S, line 42." in out
    assert "Breakpoint 1, flip () at smep_flip.S:42" in out
    assert "#0  flip () at smep_flip.S:42" in out


def test_write_watchpoint():
    out = stdio("watch *(long*)0x200000", "continue", "continue", "detach")
    assert "Hardware watchpoint 1: *(long*)0x200000" in out
    assert "Old value = 0\nNew value = 100000" in out
    assert "Old value = 100000\nNew value = 99999" in out
    assert "0x0000000000100045 in ?? ()" in out


def test_set_registers_and_read_them_back():
    out = stdio("set $rax = 5", "p $rax", "set $r15 = 0x1234", "info registers r15",
                "set $cr4 = $cr4 | 0x100000", "p/x $cr4", "monitor p/x $cr4", "detach")
    assert "$1 = 5" in out
    assert "r15            0x1234" in out
    assert "$2 = 0x100620" in out                # SMEP set through gdb, seen by gdb
    assert "= 0x100620" in out.split("$2 = 0x100620", 1)[1]    # ... and by kvmdbg


def test_threads_are_vcpus():
    out = stdio("info threads", "thread 2", "p $rdi", "stepi", "info threads",
                options=("--vcpus", "2"), program="programs/smep_flip_2vcpu.bin")
    assert '* 1    Thread 1 "vcpu0"' in out
    assert '  2    Thread 2 "vcpu1"' in out
    assert "[Switching to thread 2 (Thread 2)]" in out
    assert "$1 = 1" in out                          # RDI is the vCPU index
    tail = out.split("$1 = 1", 1)[1]
    assert '1    Thread 1 "vcpu0" (vCPU 0, runnable, 64-bit mode, step 0)' in tail   # all-stop
    assert '* 2    Thread 2 "vcpu1" (vCPU 1, runnable, 64-bit mode, step 1)' in tail


def test_monitor_reaches_kvmdbg_commands():
    out = stdio("stepi", "monitor info roots", "monitor help running", "monitor frobnicate",
                "detach")     # roots exist once a vCPU has entered the guest
    assert "l4 8-byte q0 direct wux" in out
    assert "gdbserver" in out
    assert 'Undefined command: "frobnicate".' in out
    assert "Traceback" not in out


def test_catchpoint_stop_is_explained_to_gdb():
    out = stdio("monitor catch root-zap", "continue", "monitor info roots", "detach",
                options=("--kvm", "v5.15"))
    assert "Catchpoint 1 (mmu event 'root-zap')" in out
    stop = out.index("Catchpoint 1 (root-zap root #1")
    assert stop < out.index("Program received signal SIGTRAP")    # kvmdbg's line first
    assert "0x000000000010003c in ?? ()" in out


def test_guest_end_is_an_exit():
    out = stdio("continue")
    assert "[all vCPUs halted]" in out
    assert "[Inferior 1 (Remote target) exited normally]" in out


def test_physical_memory_mode():
    out = stdio("maint packet qqemu.PhyMemMode", "maint packet Qqemu.PhyMemMode:1",
                "maint packet qqemu.PhyMemMode", "x/2bx 0x100000", "monitor xp/2bx 0x100000")
    assert 'received: "0"' in out and 'received: "OK"' in out and 'received: "1"' in out
    assert "0x100000:\t0x49\t0x89" in out


def test_tcp_port_and_detach_returns_to_kvmdbg():
    stub = TcpStub()
    out = gdb("x/1i $pc", "monitor info gdbserver", "detach", target=f"127.0.0.1:{stub.port}")
    code, _, err = stub.finish()
    assert "=> 0x100000:\tmov    %rdx,%r9" in out
    assert f"gdb stub on tcp:127.0.0.1:{stub.port}, attached" in out
    assert "gdb drives the VM" in out
    assert "gdb detached; kvmdbg has the VM again." in err
    assert code == 0 and "Traceback" not in err


@pytest.mark.skipif(not (KUT / "smap.elf").is_file(), reason="kvm-unit-tests images not built")
def test_kvm_unit_tests_image_source_level():
    out = stdio("info registers rip cr0 efer", "break main", "continue", "bt", "detach",
                program=str(KUT / "smap.flat"), elf=str(KUT / "smap.elf"))
    # The image starts in 32-bit protected mode; the registers are 64-bit wide anyway.
    assert "rip            0x4000bc            0x4000bc <start>" in out
    assert "cr0            0x11                [ PE ET ]" in out
    assert "Breakpoint 1 at 0x400348: file x86/smap.c, line 93." in out
    assert "enabling apic" in out                    # the guest's console, as O packets
    assert "Breakpoint 1, main (ac=1, av=" in out
    assert "#0  main (ac=1, av=" in out and "at x86/smap.c:93" in out


def test_repl_gdbserver_then_the_repl_goes_on():
    p = subprocess.Popen([sys.executable, "-m", "kvmdbg", "-q", "programs/smep_flip.bin"],
                         cwd=ROOT, env=env(), text=True, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write("gdbserver tcp::0\ninfo gdbserver\ninfo registers rip\n")
    p.stdin.flush()
    m = re.search(r"tcp:127\.0\.0\.1:(\d+)", p.stderr.readline())
    assert m
    out = gdb("stepi", "monitor info gdbserver", "detach", target=f"127.0.0.1:{m.group(1)}")
    assert "attached (tcp from 127.0.0.1:" in out and "gdb drives the VM." in out
    repl, err = p.communicate("", timeout=60)
    assert "ended (detach): kvmdbg drives the VM." in repl
    assert "0x100003 <start+3>" in repl                   # the step gdb made, seen by the REPL
    assert "gdb detached; kvmdbg has the VM again." in err and "Traceback" not in err


def test_ctrl_c_in_gdb_interrupts_a_continue(tmp_path):
    """gdb on a terminal (a pty): Ctrl-C during `continue` reaches the stub as 0x03."""
    loop = tmp_path / "loop.bin"
    loop.write_bytes(bytes.fromhex("ebfe"))           # jmp $
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ.update(env())
        os.execv(GDB, [GDB, "-nx", "-q", "-ex", "set style enabled off", "-ex",
                       "target remote | " + kvmdbg("--gdb", "stdio", shlex.quote(str(loop)))])
    seen = b""

    def until(text: bytes, timeout: float = 30):
        nonlocal seen
        end = time.time() + timeout
        while text not in seen and time.time() < end:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        return text in seen

    try:
        assert until(b"(gdb) ")
        os.write(fd, b"continue\n")
        assert until(b"Continuing.")
        time.sleep(0.5)
        os.write(fd, b"\x03")
        assert until(b"Program received signal SIGINT, Interrupt.")
        os.write(fd, b"monitor info registers rip\n")
        assert until(b"0x100000")
        os.write(fd, b"detach\n")
        assert until(b"detached]")
        os.write(fd, b"quit\n")
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"Traceback" not in seen


def test_gdbs_own_reverse_commands_through_the_stub():
    """ReverseStep+/ReverseContinue+: gdb's reverse-stepi and reverse-continue send bs and
    bc, which go back through kvmdbg's history; at its start the stub answers
    replaylog:begin and gdb says "No more reverse-execution history." (gdb's manual,
    Remote Protocol: Stop Reply Packets). The addresses are smep_flip's first three
    instructions (see test_examine_step_registers_and_detach)."""
    out = stdio("stepi 3", "reverse-stepi", "p/x $pc", "reverse-stepi", "reverse-stepi",
                "p/x $pc", "reverse-stepi", "break *0x100007", "continue", "stepi",
                "reverse-continue", "p/x $pc", "detach")
    assert "$1 = 0x100007" in out             # three forward, one back
    assert "$2 = 0x100000" in out             # back to the entry: the start of history
    assert "No more reverse-execution history." in out
    assert "Breakpoint 1, 0x0000000000100007 in ?? ()" in out
    assert "$3 = 0x100007" in out
    assert "Traceback" not in out
