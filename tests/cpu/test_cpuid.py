"""What the guest's CPUID advertises matches what the interpreter runs (SDM Vol. 2A CPUID).

A guest that checks a feature bit before using an instruction must find it for every
instruction kvmdbg implements from these families: POPCNT (leaf 1, ECX bit 23), LZCNT
(leaf 0x80000001, ECX bit 5), SMEP/SMAP/INVPCID (leaf 7, EBX bits 7, 20, 10).
"""

from kvmdbg.cpu.executor import HALTED, run
from tests.helpers import machine


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    vm, cpu = machine(f"mov eax, {leaf:#x}; mov ecx, {subleaf}; cpuid; hlt")
    assert run(cpu, 10) == HALTED, cpu.shutdown
    return cpu.r[0], cpu.r[3], cpu.r[1], cpu.r[2]          # eax, ebx, ecx, edx


def test_popcnt_and_lzcnt_are_advertised_and_run():
    assert cpuid(1)[2] >> 23 & 1
    assert cpuid(0x8000_0001)[2] >> 5 & 1
    vm, cpu = machine("mov eax, 0xf0f0; popcnt ebx, eax; lzcnt ecx, eax; hlt")
    assert run(cpu, 10) == HALTED, cpu.shutdown
    assert cpu.r[3] == 8 and cpu.r[1] == 16


def test_smep_smap_invpcid_are_advertised():
    ebx = cpuid(7)[1]
    assert ebx >> 7 & 1 and ebx >> 20 & 1 and ebx >> 10 & 1
