"""The Python API: load a file or raw bytes, set state, step, run, read state back."""

import pytest

from kvmdbg import Session
from kvmdbg.errors import CommandError, ConfigError
from tests.helpers import asm


def test_load_program_file_with_symbols():
    s = Session.load("programs/smep_flip.bin", arg=3)
    assert s.symbols["flip"] == 0x100033
    assert s.vcpu(0).regs["rip"] == 0x100000
    assert s.vcpu(0).regs["rdx"] == 3
    stop = s.run(max_steps=100_000)
    assert stop.reason == "halted"
    assert s.vcpu(0).regs["rbx"] == 0
    # 3 flips touch 16 pages each: the working set holds the last flip's counter (1).
    assert s.read_memory(0x200000, 8, "gpa") == (1).to_bytes(8, "little")
    assert s.vm.console.decode() == "smep_flip: done\n"


def test_bytes_at_any_address_and_register_and_memory_access():
    code = asm("mov rax, [rbx]; add rax, rcx; mov [rbx + 8], rax; hlt", 0x300000)
    s = Session.from_bytes(code, address=0x300000)
    regs = s.vcpu(0).regs
    assert regs["rip"] == 0x300000
    regs["rbx"] = 0x400000
    regs["rcx"] = 5
    s.write_memory(0x400000, (37).to_bytes(8, "little"))
    st = s.step(1)
    assert st.reason == "step-limit" and st.step == 1 and regs["rax"] == 37
    st = s.run(max_steps=10)
    assert st.reason == "halted"
    assert int.from_bytes(s.read_memory(0x400008, 8), "little") == 42
    assert regs["eax"] == 42 and regs["al"] == 42


def test_sub_register_writes_follow_x86_rules():
    s = Session.from_bytes(b"\xf4")
    regs = s.vcpu(0).regs
    regs["rax"] = 0xFFFF_FFFF_FFFF_FFFF
    regs["ah"] = 0x12
    assert regs["rax"] == 0xFFFF_FFFF_FFFF_12FF
    regs["eax"] = 1                      # a 32-bit write zero-extends
    assert regs["rax"] == 1


def test_step_limit_and_exit_reasons():
    s = Session.from_bytes(asm("l: inc rax; jmp l"))
    st = s.run(max_steps=1001)
    assert st.reason == "step-limit" and st.step == 1001
    assert s.vcpu(0).regs["rax"] == 501


def test_unreadable_memory_is_a_clear_error():
    s = Session.from_bytes(b"\xf4")
    with pytest.raises(CommandError, match=r"Cannot access memory at address 0x8000000000"):
        s.read_memory(0x80_0000_0000, 8)


def test_bad_machine_config():
    with pytest.raises(ConfigError):
        Session.from_bytes(b"")
    with pytest.raises(ConfigError):
        Session.from_bytes(b"\xf4", vcpus=0)
    with pytest.raises(ConfigError):
        Session.load("programs/does-not-exist.bin")


def test_execute_returns_command_output():
    s = Session.from_bytes(asm("mov rax, 7; hlt"))
    out = s.execute("stepi")
    assert out.splitlines()[0] == "0x100007, vcpu 0, step 1"
    assert s.execute("info registers rax") == "rax           *0x7                7"   # * = changed
    assert s.execute("nonsense") == 'Undefined command: "nonsense".  Try "help".'
