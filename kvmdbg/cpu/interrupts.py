"""Exception delivery through a 64-bit IDT, the double-fault rules, and IRETQ.

SDM Vol. 3A 6.14 (64-bit mode interrupt handling) and 6.15 (exception classes):
a fault while delivering a contributory exception or #PF becomes #DF, and a fault
while delivering #DF shuts the processor down (triple fault).
"""

from __future__ import annotations

from kvmdbg.bits import M64, canonical
from kvmdbg.cpu.faults import (BP, CONTRIBUTORY, DF, GP, HAS_ERROR_CODE, NP, PF, VECTOR_NAMES,
                               GuestFault, TripleFault)
from kvmdbg.cpu.regs import AC, ID, IF, IOPL, NT, RF, TF, VIF, VIP, VM


def _benign_pair(first: int, second: int) -> bool:
    """True if a fault `second` while delivering `first` is simply delivered (no #DF)."""
    if first == PF:
        return not (second == PF or second in CONTRIBUTORY)
    if first in CONTRIBUTORY:
        return second not in CONTRIBUTORY
    return True


def deliver(cpu, fault: GuestFault) -> None:
    """Deliver fault to the guest, escalating to #DF and triple fault as the SDM says."""
    vector, code = fault.vector, fault.error_code
    if vector == PF and fault.cr2 is not None:
        # CR2 is written whenever a #PF is detected, also one that becomes #DF or happens
        # while delivering #DF (SDM Vol. 3A 6.15, Interrupt 14; Linux's #DF handler reads it).
        cpu.cr2 = fault.cr2
    first = cpu.delivering
    if first is not None:
        if first == DF:
            raise TripleFault(f"{VECTOR_NAMES.get(vector, vector)} while delivering #DF")
        if not _benign_pair(first, vector):
            vector, code = DF, 0
    cpu.delivering = vector
    try:
        _push_frame(cpu, vector, code)
    except GuestFault as nested:
        if vector == BP and first is None:
            # INT3 is a trap only once it is delivered: a fault while delivering it is a
            # fault of the INT3 instruction, reported with RIP pointing at it. The
            # interpreter raises #BP only from INT3 (0xCC, one byte), after advancing RIP.
            cpu.rip = (cpu.rip - 1) & M64
        deliver(cpu, nested)
    finally:
        cpu.delivering = None


def _push_frame(cpu, vector: int, code: int | None) -> None:
    # Error codes that name an IDT entry: index, IDT bit, and EXT for an event that is
    # not a software interrupt (INT3 is the only one the interpreter raises) (SDM 6.13).
    software = vector == BP
    idt_code = vector * 8 + 2 + (0 if software else 1)
    base, limit = cpu.idtr
    if vector * 16 + 15 > limit:
        raise GuestFault(GP, idt_code)
    lo = cpu.rd_implicit(base + vector * 16, 8)
    hi = cpu.rd_implicit(base + vector * 16 + 8, 8)
    gate_type = (lo >> 40) & 0xF
    present = (lo >> 47) & 1
    if gate_type not in (0xE, 0xF):
        raise GuestFault(GP, idt_code)
    old_cpl = cpu.cs & 3
    if software and (lo >> 45) & 3 < old_cpl:
        raise GuestFault(GP, idt_code)      # INT3 through a gate more privileged than CPL
    if not present:
        raise GuestFault(NP, idt_code)
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
    selector = (lo >> 16) & 0xFFFF
    new_cpl = selector & 3
    rflags = cpu.get_rflags()
    old_ss, old_rsp = cpu.ss, cpu.r[4]
    if new_cpl < old_cpl:
        if cpu.tss_rsp0 is None:
            raise GuestFault(GP, 0)   # no TSS is modelled: a privilege change cannot find a stack
        rsp = cpu.tss_rsp0
        new_ss = 0
    else:
        rsp = old_rsp
        new_ss = cpu.ss
    rsp &= ~0xF
    frame = [old_ss, old_rsp, rflags, cpu.cs, cpu.rip]
    if vector in HAS_ERROR_CODE:
        frame.append(code or 0)
    # Write the whole frame before changing any state, so a fault leaves state intact.
    # The writes are supervisor accesses to the new stack. The CPU's fast paths are
    # per-CPL, so they are dropped around a temporary CPL change.
    saved_cs = cpu.cs
    cpu.set_cs((cpu.cs & ~3) | new_cpl)
    try:
        for value in frame:
            rsp = (rsp - 8) & M64
            cpu.wr(rsp, 8, value)
    except BaseException:         # a fault, or a VM exit (an EPT violation on the new stack)
        cpu.set_cs(saved_cs)
        raise
    cpu.r[4] = rsp
    cpu.ss = new_ss
    cpu.set_cs(selector)
    cpu.rip = offset
    keep = ~(TF | NT | RF)
    if gate_type == 0xE:
        keep &= ~IF
    cpu.set_rflags(rflags & keep)


# RFLAGS bits IRETQ loads in 64-bit mode at any CPL (SDM Vol. 2A, IRET: CF PF AF ZF SF TF
# DF OF NT RF AC ID); IF needs CPL <= IOPL; IOPL, VIF and VIP need CPL 0; VM is never loaded.
_IRET_ALWAYS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | TF | 0x400 | 0x800 | NT | RF | AC | ID


def iretq(cpu) -> None:
    old_flags = cpu.get_rflags()
    if old_flags & NT:
        raise GuestFault(GP, 0)   # no task return in IA-32e mode
    # Pops through SS: #SS(0) if the stack address is non-canonical (SDM Vol. 2A, IRET).
    rsp = cpu.r[4]
    pop = cpu.rd_ss
    rip = pop(rsp, 8)
    cs = pop((rsp + 8) & M64, 8) & 0xFFFF
    rflags = pop((rsp + 16) & M64, 8)
    new_rsp = pop((rsp + 24) & M64, 8)
    ss = pop((rsp + 32) & M64, 8) & 0xFFFF
    old_cpl = cpu.cs & 3
    new_cpl = cs & 3
    if new_cpl < old_cpl:
        raise GuestFault(GP, cs & ~3)
    if not canonical(rip):
        raise GuestFault(GP, 0)
    keep_mask = _IRET_ALWAYS
    if old_cpl <= (old_flags & IOPL) >> 12:
        keep_mask |= IF
    if old_cpl == 0:
        keep_mask |= IOPL | VIF | VIP
    new_flags = (old_flags & ~keep_mask & ~VM) | (rflags & keep_mask)
    cpu.rip = rip
    cpu.set_cs(cs)
    cpu.ss = ss
    cpu.r[4] = new_rsp
    cpu.set_rflags(new_flags)
