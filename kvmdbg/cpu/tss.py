"""The task register, LDTR and the stacks of a 64-bit TSS (SDM Vol. 3A 8.2.3-8.2.4, 8.7,
6.14.4-6.14.5; Vol. 2A LTR, STR, LLDT, SLDT).

In IA-32e mode a TSS holds no task state, only stacks: RSP0-RSP2 for an interrupt that
raises the privilege level, IST1-IST7 for gates that name one. There are no task
switches. TR and LDTR keep their hidden parts in cpu.seg_cache["tr"] / ["ldtr"], as the
other segment registers do. No LDT is modelled: LLDT takes the null selector only.
"""

from __future__ import annotations

from kvmdbg.arch.desc_defs import DESC_TSS_AVAIL, DESC_TSS_BUSY, SEG_P, SEG_S, SEG_TYPE_MASK
from kvmdbg.bits import M64
from kvmdbg.cpu.faults import GP, NP, TS, GuestFault
from kvmdbg.cpu.segments import NULL_SEGMENT, Segment, from_descriptor, read_descriptor
from kvmdbg.errors import UnsupportedMode

_SYSTEM_TYPE = SEG_S | SEG_TYPE_MASK      # the S bit and type of a descriptor's access byte


def tss_segment(selector: int, lo: int, hi: int) -> Segment:
    """The TR a 16-byte TSS descriptor loads (its base has 64 bits, SDM Vol. 3A Figure 8-4)."""
    seg = from_descriptor(selector, lo)
    return seg._replace(base=seg.base | (hi & 0xFFFF_FFFF) << 32)


def ltr(cpu, selector: int) -> None:
    """LTR: the selector must name an available 64-bit TSS in the GDT, which becomes busy.
    The descriptor's upper half must have type 0 (SDM Vol. 2A LTR, 64-bit mode exceptions)."""
    if not cpu.long_mode:
        raise UnsupportedMode(cpu.rip, "LTR outside IA-32e mode (a 32-bit TSS)")
    if not selector & ~3:
        raise GuestFault(GP, 0)
    raw, address = read_descriptor(cpu, selector, size=16)
    lo, hi = raw & M64, raw >> 64
    code = selector & 0xFFFC
    if lo >> 40 & _SYSTEM_TYPE != DESC_TSS_AVAIL or hi >> 40 & _SYSTEM_TYPE:
        raise GuestFault(GP, code)
    if not lo >> 40 & SEG_P:
        raise GuestFault(NP, code)
    access = (lo >> 40 & 0xFF) & ~SEG_TYPE_MASK | DESC_TSS_BUSY
    cpu.wr_implicit(address + 5, 1, access)
    seg = tss_segment(selector, lo, hi)
    cpu.set_segment("tr", seg._replace(attr=seg.attr & ~SEG_TYPE_MASK | DESC_TSS_BUSY))


def lldt(cpu, selector: int) -> None:
    """LLDT with a null selector: LDTR becomes unusable (SDM Vol. 2A LLDT)."""
    if selector & ~3:
        raise UnsupportedMode(cpu.rip, f"a local descriptor table (LLDT {selector:#x})")
    cpu.set_segment("ldtr", NULL_SEGMENT._replace(selector=selector))


def tss_stack(cpu, offset: int, ext: int) -> int:
    """The stack pointer at offset in the current TSS (RSPn or ISTn): an implicit supervisor
    read; #TS(TR selector) if it lies beyond TR's limit (SDM Vol. 2A INT n, "IF
    (TSSstackAddress + 7) > current TSS limit THEN #TS(current TSS selector)")."""
    tr = cpu.seg_cache["tr"]
    if offset + 7 > tr.limit:
        raise GuestFault(TS, tr.selector & 0xFFFC | ext)
    return cpu.rd_implicit((tr.base + offset) & M64, 8)
