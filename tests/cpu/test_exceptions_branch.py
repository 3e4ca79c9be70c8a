"""Control transfers to non-canonical addresses fault on the transfer itself (SDM: JMP, RET)."""

import pytest

from kvmdbg.cpu.executor import run
from tests.helpers import machine


@pytest.mark.parametrize("src", [
    "mov rax, 0x800000000000; jmp rax; hlt",
    "mov rax, 0x800000000000; call rax; hlt",
    "mov rax, 0x800000000000; push rax; ret; hlt",
])
def test_non_canonical_target_faults_at_the_branch(src):
    vm, cpu = machine(src)
    assert run(cpu, 10) == "shutdown"
    assert cpu.shutdown.startswith("triple fault: #GP(0x0)")
    d = cpu.decoded_at(cpu.rip)
    assert d.mnemonic in ("jmp", "call", "ret")
    assert cpu.r[4] == (0x80000 - 8 if "push" in src else 0x80000)   # call pushed nothing
