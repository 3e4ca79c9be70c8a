"""Exception delivery through a 64-bit IDT, the double-fault rules, and IRETQ.

SDM Vol. 3A 6.14 (64-bit mode interrupt handling) and 6.15 (exception classes):
a fault while delivering a contributory exception or #PF becomes #DF, and a fault
while delivering #DF shuts the processor down (triple fault).
"""

from __future__ import annotations

from kvmdbg.bits import M64
from kvmdbg.cpu.faults import (CONTRIBUTORY, DF, GP, HAS_ERROR_CODE, NP, PF, VECTOR_NAMES,
                               GuestFault, TripleFault)
from kvmdbg.cpu.regs import AC, IF, NT, RF, TF


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
    first = cpu.delivering
    if first is not None:
        if first == DF:
            raise TripleFault(f"{VECTOR_NAMES.get(vector, vector)} while delivering #DF")
        if not _benign_pair(first, vector):
            vector, code = DF, 0
    if fault.cr2 is not None and vector == PF:
        cpu.cr2 = fault.cr2
    cpu.delivering = vector
    try:
        _push_frame(cpu, vector, code)
    except GuestFault as nested:
        deliver(cpu, nested)
    finally:
        cpu.delivering = None


def _push_frame(cpu, vector: int, code: int | None) -> None:
    base, limit = cpu.idtr
    if vector * 16 + 15 > limit:
        raise GuestFault(GP, vector * 8 + 2)
    lo = cpu.rd_implicit(base + vector * 16, 8)
    hi = cpu.rd_implicit(base + vector * 16 + 8, 8)
    gate_type = (lo >> 40) & 0xF
    present = (lo >> 47) & 1
    if gate_type not in (0xE, 0xF):
        raise GuestFault(GP, vector * 8 + 2)
    if not present:
        raise GuestFault(NP, vector * 8 + 2)
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
    selector = (lo >> 16) & 0xFFFF
    new_cpl = selector & 3
    old_cpl = cpu.cs & 3
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
    # The writes are supervisor accesses to the new stack.
    saved_cs = cpu.cs
    cpu.cs = (cpu.cs & ~3) | new_cpl
    try:
        for value in frame:
            rsp = (rsp - 8) & M64
            cpu.wr(rsp, 8, value)
    except GuestFault:
        cpu.cs = saved_cs
        raise
    cpu.r[4] = rsp
    cpu.ss = new_ss
    cpu.cs = selector
    cpu.rip = offset
    keep = ~(TF | NT | RF)
    if gate_type == 0xE:
        keep &= ~IF
    cpu.set_rflags(rflags & keep)
    if new_cpl != old_cpl:
        cpu.flush_fast()


def iretq(cpu) -> None:
    rsp = cpu.r[4]
    rip = cpu.rd(rsp, 8)
    cs = cpu.rd(rsp + 8, 8) & 0xFFFF
    rflags = cpu.rd(rsp + 16, 8)
    new_rsp = cpu.rd(rsp + 24, 8)
    ss = cpu.rd(rsp + 32, 8) & 0xFFFF
    old_cpl = cpu.cs & 3
    new_cpl = cs & 3
    if new_cpl < old_cpl:
        raise GuestFault(GP, cs & ~3)
    keep_mask = 0x3F7FD5          # writable RFLAGS bits, without VM (64-bit mode)
    if old_cpl > 0:
        keep_mask &= ~0x3000      # IOPL only at CPL 0
    old_flags = cpu.get_rflags()
    new_flags = (old_flags & ~keep_mask) | (rflags & keep_mask)
    cpu.rip = rip
    cpu.cs = cs
    cpu.ss = ss
    cpu.r[4] = new_rsp
    cpu.set_rflags(new_flags)
    if new_cpl != old_cpl or (old_flags ^ new_flags) & AC:
        cpu.flush_fast()
