"""A 32-bit guest turning on PAE or 32-bit paging with real MOVs to CR3/CR4/CR0, then
reading and writing through the new mappings: bare, under EPT (v6.12, v5.15), and under
shadow paging (which must stop with one line). Oracle: unicorn running the same code on
the same memory (QEMU's MOV-to-CR and page walk)."""

from __future__ import annotations

import struct

import pytest
import unicorn as uc
from unicorn import x86_const as X

from kvmdbg.cpu.regs import RBX, RCX
from kvmdbg.errors import UnsupportedPaging
from kvmdbg.kvm.scheduler import run_vm
from tests.cpu.test_differential32 import asm32, protected_mode
from tests.helpers import LOAD_ADDRESS, machine

P, RW, PS = 1, 2, 1 << 7
VA_R, VA_W = 0x40A03008, 0x80200010          # a 4 KiB page; a 2 MiB / 4 MiB page
DATA, BIG = 0x500000, 0xC00000
MARK, VALUE = 0x1234_5678, 0x0BAD_CAFE

PAE_CODE = f"""
    mov eax, 0x800000
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov ebx, [{VA_R:#x}]
    mov ecx, {VALUE:#x}
    mov [{VA_W:#x}], ecx
    mov ecx, [{VA_W:#x}]
    hlt
"""
PT32_CODE = PAE_CODE.replace("or eax, 0x20", "or eax, 0x10")      # CR4.PSE instead of PAE


def q(v):
    return struct.pack("<Q", v)


def d(v):
    return struct.pack("<I", v)


def tables(pae: bool) -> dict:
    """Identity-mapped low 8 MiB (code, stack, GDT), VA_R -> DATA through a page table,
    VA_W -> a large page at BIG (2 MiB under PAE, 4 MiB with 32-bit paging)."""
    if pae:
        pdpt, pd = 0x800000, [0x801000, 0x802000, 0x803000]
        mem = {pdpt + 8 * i: q(pd[i] | P) for i in range(3)}
        for i in range(4):
            mem[pd[0] + 8 * i] = q(i << 21 | P | RW | PS)
        mem[pd[1] + 8 * (VA_R >> 21 & 511)] = q(0x804000 | P | RW)
        mem[0x804000 + 8 * (VA_R >> 12 & 511)] = q(DATA | P | RW)
        mem[pd[2] + 8 * (VA_W >> 21 & 511)] = q(BIG | P | RW | PS)
    else:
        pd = 0x800000
        mem = {pd: d(P | RW | PS), pd + 4: d(1 << 22 | P | RW | PS)}
        mem[pd + 4 * (VA_R >> 22)] = d(0x804000 | P | RW)
        mem[0x804000 + 4 * (VA_R >> 12 & 1023)] = d(DATA | P | RW)
        mem[pd + 4 * (VA_W >> 22)] = d(BIG | P | RW | PS)
    mem[DATA + (VA_R & 0xFFF)] = d(MARK)
    return mem


def unicorn_run(code: bytes, mem: dict):
    u = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_32)
    u.mem_map(0, 16 << 20)
    u.mem_write(LOAD_ADDRESS, code)
    for pa, data in mem.items():
        u.mem_write(pa, data)
    u.emu_start(LOAD_ADDRESS, LOAD_ADDRESS + len(code) - 1)          # up to the hlt
    return u.reg_read(X.UC_X86_REG_EBX), u.reg_read(X.UC_X86_REG_ECX), u


def kvmdbg_vm(code: bytes, mem: dict, kvm):
    vm, cpu = machine(code, kvm=kvm)
    protected_mode(vm, cpu)
    vm.vcpus[0].after_set_sregs()
    for pa, data in mem.items():
        vm.write_gpa(pa, data)
    return vm, cpu


@pytest.mark.parametrize("kvm", [None, "v6.12", "v5.15"])
@pytest.mark.parametrize("pae", [True, False], ids=["PAE", "32-bit"])
def test_guest_enables_paging_and_uses_it(kvm, pae):
    code = asm32(PAE_CODE if pae else PT32_CODE, LOAD_ADDRESS)
    mem = tables(pae)
    ebx, ecx, u = unicorn_run(code, mem)
    big_off = VA_W & (0x1FFFFF if pae else 0x3FFFFF)
    assert (ebx, ecx) == (MARK, VALUE)                 # the oracle did what the test means
    vm, cpu = kvmdbg_vm(code, mem, kvm)
    assert run_vm(vm, 1000)[0] == "halted"
    assert (cpu.r[RBX] & 0xFFFFFFFF, cpu.r[RCX] & 0xFFFFFFFF) == (ebx, ecx)
    assert vm.peek_gpa(BIG + big_off, 4) == bytes(u.mem_read(BIG + big_off, 4))
    for pa, size in ((0x800000, 32), (0x804000 + (VA_R >> 12 & 511) * 8, 8)):
        assert vm.peek_gpa(pa, size) == bytes(u.mem_read(pa, size)), f"A/D at {pa:#x}"


@pytest.mark.parametrize("pae, mode", [(True, "PAE"), (False, "32-bit")])
def test_shadow_profile_stops_with_one_line(pae, mode):
    vm, cpu = kvmdbg_vm(asm32(PAE_CODE if pae else PT32_CODE, LOAD_ADDRESS), tables(pae), "shadow")
    with pytest.raises(UnsupportedPaging) as e:
        run_vm(vm, 1000)
    assert str(e.value).startswith(f"shadow paging of a {mode} guest is not modelled yet")
