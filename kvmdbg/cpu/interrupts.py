"""Exception and software-interrupt delivery through a 64-bit IDT, the double-fault rules,
and the returns across privilege levels: IRETQ and far RET.

SDM Vol. 3A 6.14 (64-bit mode interrupt handling) and 6.15 (exception classes):
a fault while delivering a contributory exception or #PF becomes #DF, and a fault
while delivering #DF shuts the processor down (triple fault).
"""

from __future__ import annotations

from kvmdbg.arch.desc_defs import (DESC_INTERRUPT_GATE, DESC_TRAP_GATE, GATE_IST_MASK,
                                   GATE_IST_SHIFT, SEG_P, TSS_IST1, TSS_RSP0)
from kvmdbg.bits import M32, M64, canonical
from kvmdbg.cpu import segments, tss
from kvmdbg.cpu.faults import (CONTRIBUTORY, DF, GP, HAS_ERROR_CODE, NP, PF, VECTOR_NAMES,
                               GuestFault, SoftwareInterrupt, TripleFault)
from kvmdbg.cpu.regs import AC, ID, IF, IOPL, NT, RF, TF, VIF, VIP, VM
from kvmdbg.cpu.segments import Segment, code_bits
from kvmdbg.cpu.vmx import VmExit
from kvmdbg.errors import UnsupportedMode


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
    # A software interrupt is an instruction, not an exception: it has no class in the
    # double-fault rules (SDM Vol. 3A Table 6-5), so a fault while delivering it is simply
    # the instruction's fault, reported with RIP pointing at it (it was raised with RIP
    # after it). A VM exit while delivering it re-executes it, as KVM re-injects it.
    software = isinstance(fault, SoftwareInterrupt) and first is None
    if first is not None:
        if first == DF:
            raise TripleFault(f"{VECTOR_NAMES.get(vector, vector)} while delivering #DF")
        if not _benign_pair(first, vector):
            vector, code = DF, 0
    cpu.delivering = None if software else vector
    cpu.in_delivery = True
    try:
        _push_frame(cpu, vector, code, software)
    except GuestFault as nested:
        if software:
            cpu.rip = (cpu.rip - fault.length) & M64
        deliver(cpu, nested)
    except VmExit:
        if software:
            cpu.rip = (cpu.rip - fault.length) & M64
        raise
    finally:
        cpu.delivering = None
        cpu.in_delivery = False


def _push_frame(cpu, vector: int, code: int | None, software: bool) -> None:
    """Delivery through a 64-bit IDT gate (SDM Vol. 3A 6.14; Vol. 2A INT n, IA-32e mode).
    Everything that can fault is read and checked before any register changes."""
    if not cpu.long_mode:
        raise UnsupportedMode(cpu.rip, "exception delivery outside IA-32e mode (a 32-bit IDT)")
    # Error codes that name an IDT entry: index, IDT bit, and EXT for an event that is
    # not a software interrupt (SDM 6.13).
    ext = 0 if software else 1
    idt_code = vector * 8 + 2 + ext
    base, limit = cpu.idtr
    if vector * 16 + 15 > limit:
        raise GuestFault(GP, idt_code)
    lo = cpu.rd_implicit(base + vector * 16, 8)
    hi = cpu.rd_implicit(base + vector * 16 + 8, 8)
    gate_type = (lo >> 40) & 0x1F                     # with the S bit, which must be 0
    if gate_type not in (DESC_INTERRUPT_GATE, DESC_TRAP_GATE):
        raise GuestFault(GP, idt_code)
    old_cpl = cpu.cs & 3
    if software and (lo >> 45) & 3 < old_cpl:
        raise GuestFault(GP, idt_code)      # INT n through a gate more privileged than CPL
    if not lo & SEG_P << 40:
        raise GuestFault(NP, idt_code)
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
    cs = segments.interrupt_code_segment(cpu, (lo >> 16) & 0xFFFF, ext)
    if not canonical(offset):
        raise GuestFault(GP, ext)
    new_cpl = cs.selector & 3
    ist = lo >> GATE_IST_SHIFT & GATE_IST_MASK
    # IST n takes its stack from the TSS whatever the CPL; otherwise a privilege change
    # takes RSP<new CPL> (SDM 6.14.4-6.14.5). SS becomes null with RPL = new CPL only on a
    # privilege change.
    if ist:
        rsp = tss.tss_stack(cpu, TSS_IST1 + 8 * (ist - 1), ext)
    elif new_cpl < old_cpl:
        rsp = tss.tss_stack(cpu, TSS_RSP0 + 8 * new_cpl, ext)
    else:
        rsp = cpu.r[4]
    rsp &= ~0xF                                      # the frame is 16-byte aligned (6.14.2)
    rflags = cpu.get_rflags()
    frame = [cpu.ss, cpu.r[4], rflags, cpu.cs, cpu.rip]
    if vector in HAS_ERROR_CODE and not software:
        frame.append(code or 0)
    # Write the whole frame before changing any state, so a fault leaves state intact.
    # The writes are accesses at the new CPL to the new stack. The CPU's fast paths are
    # per-CPL, so they are dropped around a temporary CPL change.
    saved_cs = cpu.cs
    if new_cpl != old_cpl:
        cpu.set_cs((saved_cs & ~3) | new_cpl)
    try:
        cpu.push_qwords(rsp, frame)
    except BaseException:         # a fault, or a VM exit (an EPT violation on the new stack)
        if new_cpl != old_cpl:
            cpu.set_cs(saved_cs)
        raise
    cpu.r[4] = (rsp - 8 * len(frame)) & M64
    if new_cpl < old_cpl:
        cpu.set_segment("ss", Segment(new_cpl, 0, 0, 0))     # null, RPL = new CPL
    cpu.load_cs(cs)
    cpu.rip = offset
    keep = ~(TF | NT | RF)
    if gate_type == DESC_INTERRUPT_GATE:
        keep &= ~IF
    cpu.set_rflags(rflags & keep)


# RFLAGS bits IRETQ loads in 64-bit mode at any CPL (SDM Vol. 2A, IRET: CF PF AF ZF SF TF
# DF OF NT RF AC ID); IF needs CPL <= IOPL; IOPL, VIF and VIP need CPL 0; VM is never loaded.
_IRET_ALWAYS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | TF | 0x400 | 0x800 | NT | RF | AC | ID


def iretq(cpu) -> None:
    """IRETQ in IA-32e mode: pops RIP, CS, RFLAGS, RSP and SS (always, at any privilege
    level) and loads CS and SS with their checks (SDM Vol. 2A IRET, IA-32e-MODE and
    PROTECTED-MODE-RETURN; Bochs's long_iret does the same)."""
    old_flags = cpu.get_rflags()
    if old_flags & NT:
        raise GuestFault(GP, 0)   # no task return in IA-32e mode
    # Pops through SS: #SS(0) if the stack address is non-canonical (SDM Vol. 2A, IRET).
    rip, cs_selector, rflags, new_rsp, ss_selector = cpu.pop_qwords(cpu.r[4], 5)
    cs_selector &= 0xFFFF
    ss_selector &= 0xFFFF
    cs = segments.return_code_segment(cpu, cs_selector)
    ss = segments.return_stack_segment(cpu, ss_selector, cs)
    _check_return_rip(cpu, cs, rip)
    old_cpl = cpu.cs & 3
    keep_mask = _IRET_ALWAYS
    if old_cpl <= (old_flags & IOPL) >> 12:
        keep_mask |= IF
    if old_cpl == 0:
        keep_mask |= IOPL | VIF | VIP
    new_flags = (old_flags & ~keep_mask & ~VM) | (rflags & keep_mask)
    _return_to(cpu, rip, cs, ss, new_rsp)
    cpu.set_rflags(new_flags)


def far_ret(cpu, word: int, imm: int) -> None:
    """RET far with word-byte slots, releasing imm bytes: to the same privilege level, or to
    an outer one, which also pops RSP and SS (SDM Vol. 2A RET, far return in protected and
    IA-32e mode: imm is added before popping SS:RSP and again to the new RSP)."""
    mask = M64 if cpu.code_bits == 64 else M32
    rsp = cpu.r[4]
    pop = cpu.rd_ss
    rip = pop(rsp, word)
    cs_selector = pop((rsp + word) & mask, word) & 0xFFFF
    cs = segments.return_code_segment(cpu, cs_selector)
    rsp = (rsp + 2 * word + imm) & mask
    ss = None
    if cs_selector & 3 > cpu.cs & 3:
        new_rsp = pop(rsp, word)
        ss = segments.return_stack_segment(cpu, pop((rsp + word) & mask, word) & 0xFFFF, cs)
        rsp = (new_rsp + imm) & M64
    _check_return_rip(cpu, cs, rip)
    _return_to(cpu, rip, cs, ss, rsp)


def far_transfer(cpu, selector: int, offset: int, word: int, return_rip: int | None) -> None:
    """A far JMP (return_rip None) or far CALL to a code segment at the same privilege
    level; CALL pushes CS and the return RIP in word-byte slots first (SDM Vol. 2A CALL,
    JMP: far to a conforming or non-conforming code segment; call gates are not modelled)."""
    cs = segments.far_code_segment(cpu, selector)
    _check_return_rip(cpu, cs, offset)
    if return_rip is not None:
        mask = M64 if cpu.code_bits == 64 else M32
        sp = (cpu.r[4] - 2 * word) & mask
        cpu.write_check_ss(sp, 2 * word)                 # both slots, before writing either
        cpu.wr((sp + word) & mask, word, cpu.cs)
        cpu.wr(sp, word, return_rip)
        cpu.r[4] = sp
    cpu.rip = offset
    cpu.load_cs(cs)


def _check_return_rip(cpu, cs, rip: int) -> None:
    """#GP(0) for a non-canonical RIP in 64-bit code, or one beyond CS's limit otherwise."""
    if (not canonical(rip)) if code_bits(cs, cpu.long_mode) == 64 else (rip > cs.limit):
        raise GuestFault(GP, 0)


def _return_to(cpu, rip: int, cs, ss, rsp: int) -> None:
    """Load the checked CS:RIP (and SS:RSP unless ss is None). A return to an outer level
    nulls the data segments the new CPL may not use."""
    outer = cs.selector & 3 > cpu.cs & 3
    bits = code_bits(cs, cpu.long_mode)
    cpu.rip = rip
    cpu.load_cs(cs)
    cpu.r[4] = rsp if bits == 64 else rsp & M32
    if ss is not None:
        cpu.set_segment("ss", ss)
    if outer:
        segments.null_outer_segments(cpu)
