"""Unicorn (QEMU's TCG) as an independent oracle for 32-bit and PAE paging.

One access (read, write or fetch) at one linear address, performed by unicorn in 32-bit
protected mode on the given physical memory and control registers. CR0/CR3/CR4/EFER are
set through reg_write; CPL 3 is reached with a real IRET (QEMU takes the CPL from SS,
which reg_write cannot load at CPL 0). Unicorn does not deliver exceptions, so a #PF is
seen as interrupt 14 with CR2; its error code is not visible (the SDM oracle checks those).

QEMU reads the PDPTEs from memory on every walk instead of caching them in registers; the
tests keep the table unchanged after loading, where both behave alike.
"""

from __future__ import annotations

import struct

import unicorn as uc
from unicorn import x86_const as X

MEM = 16 << 20
GDT, BOOT, BOOT_STACK, RING3 = 0x1000, 0x2000, 0x3000, 0x2100
CODE_VA = CODE_PA = 0x10000          # the accessing instruction, identity-mapped
USER_CS, USER_SS, KERNEL_CS, KERNEL_SS = 0x1B, 0x23, 0x08, 0x10
EFER_MSR = 0xC0000080


def _desc(access: int) -> bytes:
    """A flat 4 GiB segment descriptor with this access byte."""
    return struct.pack("<HHBBBB", 0xFFFF, 0, 0, access, 0xCF, 0)


GDT_BYTES = b"\0" * 8 + _desc(0x9A) + _desc(0x92) + _desc(0xFA) + _desc(0xF2)
# The access: mov eax, [ebx] / mov [ebx], eax / jmp ebx (to an int3 the caller places);
# then int3, which stops at any CPL (hlt would #GP at CPL 3).
INSNS = {"read": bytes.fromhex("8b03cc"), "write": bytes.fromhex("8903cc"),
         "fetch": bytes.fromhex("ffe3")}
INT3 = b"\xcc"


class Outcome:
    def __init__(self, fault_cr2, eax, eip):
        self.fault_cr2 = fault_cr2    # None, or CR2 of the #PF
        self.eax = eax
        self.eip = eip                # after the int3 that ended the run


def access(memory: dict, cr0: int, cr3: int, cr4: int, efer: int, cpl: int, ac: bool,
           kind: str, va: int, value: int, probe: list, read_back: list):
    """Run one access. memory: {paddr: bytes} written first; probe: (paddr, bytes) written
    too (the marker at the address kvmdbg predicts). Returns (Outcome, {paddr: bytes}) for
    the ranges in read_back after the access."""
    u = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_32)
    u.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)     # has SMEP and SMAP
    u.mem_map(0, MEM)
    u.mem_write(GDT, GDT_BYTES)
    for pa, data in list(memory.items()) + list(probe):
        u.mem_write(pa, data)
    u.mem_write(CODE_PA, INSNS[kind])
    u.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(GDT_BYTES) - 1, 0))
    u.reg_write(X.UC_X86_REG_CS, KERNEL_CS)
    u.reg_write(X.UC_X86_REG_SS, KERNEL_SS)
    u.reg_write(X.UC_X86_REG_DS, KERNEL_SS)
    if cpl == 3:
        # iret to RING3 with the user selectors, paging still off.
        u.mem_write(BOOT, b"\xcf")
        u.mem_write(RING3, b"\x90")
        u.mem_write(BOOT_STACK, struct.pack("<5I", RING3, USER_CS, 0x2, BOOT_STACK + 0x100, USER_SS))
        u.reg_write(X.UC_X86_REG_ESP, BOOT_STACK)
        u.emu_start(BOOT, RING3, count=1)
        u.reg_write(X.UC_X86_REG_DS, USER_SS)
    if efer:
        u.reg_write(X.UC_X86_REG_MSR, (EFER_MSR, efer))
    u.reg_write(X.UC_X86_REG_CR4, cr4)
    u.reg_write(X.UC_X86_REG_CR3, cr3)
    u.reg_write(X.UC_X86_REG_CR0, cr0)
    flags = u.reg_read(X.UC_X86_REG_EFLAGS)
    u.reg_write(X.UC_X86_REG_EFLAGS, flags | (1 << 18) if ac else flags & ~(1 << 18))
    u.reg_write(X.UC_X86_REG_EBX, va)
    u.reg_write(X.UC_X86_REG_EAX, value)
    fault = []

    def on_interrupt(mu, intno, _data):
        fault.append((intno, mu.reg_read(X.UC_X86_REG_CR2)))
        mu.emu_stop()

    u.hook_add(uc.UC_HOOK_INTR, on_interrupt)
    try:
        u.emu_start(CODE_VA, 0xFFFFFFFF, count=2)
    except uc.UcError:
        pass
    if not fault or fault[0][0] not in (3, 14):
        raise AssertionError(f"unicorn ended with {fault}, not #PF or int3")
    out = Outcome(fault[0][1] if fault[0][0] == 14 else None, u.reg_read(X.UC_X86_REG_EAX),
                  u.reg_read(X.UC_X86_REG_EIP))
    return out, {pa: bytes(u.mem_read(pa, n)) for pa, n in read_back}
