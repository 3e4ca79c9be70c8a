"""Segment registers: descriptor loads and their checks (SDM Vol. 3A 3.4-3.5, 5.5-5.8;
Vol. 2A MOV, POP, JMP).

Each segment register has a visible selector (cpu.cs, cpu.ss, ...) and a hidden part
loaded from its descriptor (cpu.seg_cache[name], a Segment). In 64-bit mode only CS's
L/D bits and DPL, SS's DPL and the FS/GS bases matter; in 32-bit modes the code size
comes from CS.D. Segment bases and limits are applied for FS and GS only: a 32-bit-mode
load of CS, DS, ES or SS with a base other than 0 or a limit below 4 GiB stops the run
with one line (UnsupportedMode) instead of running with addresses the guest did not mean.
There is no LDT (LDTR is always null): a selector with TI set faults as SDM 5.5 says for
a null LDT.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from kvmdbg.arch.desc_defs import (SEG_DB, SEG_DPL_SHIFT, SEG_G, SEG_L, SEG_P, SEG_S,
                                   SEG_TYPE_ACCESSED, SEG_TYPE_CODE, SEG_TYPE_DC, SEG_TYPE_RW,
                                   SELECTOR_TI)
from kvmdbg.cpu.faults import GP, NP, SS, GuestFault
from kvmdbg.errors import UnsupportedMode

FLAT_LIMIT = 0xFFFF_FFFF


class Segment(NamedTuple):
    """The hidden part of a segment register, as VMX keeps it for a guest."""

    selector: int
    base: int
    limit: int               # in bytes, already scaled by G
    attr: int                # access rights (kvmdbg/arch/desc_defs.py)

    @property
    def dpl(self) -> int:
        return self.attr >> SEG_DPL_SHIFT & 3

    @property
    def flat(self) -> bool:
        return self.base == 0 and self.limit == FLAT_LIMIT


NULL_SEGMENT = Segment(0, 0, 0, 0)        # unusable (attr 0: not present)


@lru_cache(maxsize=1024)
def from_descriptor(selector: int, raw: int) -> Segment:
    """The Segment an 8-byte code or data descriptor loads (a pure function, remembered:
    every delivery and IRET decodes the same few descriptors)."""
    base = (raw >> 16 & 0xFFFFFF) | (raw >> 56 & 0xFF) << 24
    limit = (raw & 0xFFFF) | (raw >> 48 & 0xF) << 16
    attr = raw >> 40 & 0xF0FF
    if attr & SEG_G:
        limit = limit << 12 | 0xFFF
    return Segment(selector, base, limit, attr)


def code_bits(cs: Segment, long_mode: bool) -> int:
    """The default operand and address size CS gives: 64 (IA-32e with L), 32 or 16."""
    if long_mode and cs.attr & SEG_L:
        return 64
    return 32 if cs.attr & SEG_DB else 16


def read_descriptor(cpu, selector: int, ext: int = 0, size: int = 8) -> tuple[int, int]:
    """(descriptor, its linear address) for a selector in the GDT; #GP(selector) if it lies
    beyond the GDT's limit or names the (null) LDT. ext: the error code's EXT bit (set while
    delivering an event, SDM Vol. 3A 6.13); size: 16 for a system descriptor in IA-32e mode."""
    index = selector & ~7
    base, limit = cpu.gdtr
    if selector & SELECTOR_TI or index + size - 1 > limit:
        raise GuestFault(GP, selector & 0xFFFC | ext)
    address = base + index
    return cpu.rd_implicit(address, size), address


def _mark_accessed(cpu, address: int, raw: int) -> None:
    """The processor sets a code or data descriptor's accessed bit when it loads it."""
    if not raw >> 40 & SEG_TYPE_ACCESSED:
        cpu.wr_implicit(address + 5, 1, (raw >> 40 & 0xFF) | SEG_TYPE_ACCESSED)


def _require_flat(cpu, seg: Segment, name: str, bits: int | None = None) -> None:
    """Stop on a non-flat segment used outside 64-bit code (bits: the code size it will be
    used in, by default the current one; a CS load passes its own)."""
    if not seg.flat and (cpu.code_bits if bits is None else bits) != 64:
        raise UnsupportedMode(cpu.rip, f"a {name} segment with base {seg.base:#x} and limit "
                                       f"{seg.limit:#x} (only flat segments)")


def load_data_segment(cpu, name: str, selector: int) -> None:
    """MOV or POP to DS, ES, FS or GS."""
    if not selector & ~3:
        # A null selector loads an unusable segment; in 64-bit mode an Intel CPU also
        # clears the FS/GS base (AMD keeps it: Linux's X86_BUG_NULL_SEG).
        cpu.set_segment(name, Segment(selector, 0, 0, 0))
        return
    raw, address = read_descriptor(cpu, selector)
    seg = from_descriptor(selector, raw)
    a = seg.attr
    if not a & SEG_S or (a & SEG_TYPE_CODE and not a & SEG_TYPE_RW):
        raise GuestFault(GP, selector & 0xFFFC)          # system, or execute-only code
    conforming_code = a & SEG_TYPE_CODE and a & SEG_TYPE_DC
    if not conforming_code and max(selector & 3, cpu.cs & 3) > seg.dpl:
        raise GuestFault(GP, selector & 0xFFFC)
    if not a & SEG_P:
        raise GuestFault(NP, selector & 0xFFFC)
    if name in ("ds", "es"):
        _require_flat(cpu, seg, name.upper())
    _mark_accessed(cpu, address, raw)
    cpu.set_segment(name, seg)


def load_ss(cpu, selector: int) -> None:
    """MOV or POP to SS."""
    cpl = cpu.cs & 3
    if not selector & ~3:
        # Null SS: only in 64-bit mode, below CPL 3, with RPL = CPL (SDM Vol. 2A MOV).
        if cpu.code_bits != 64 or cpl == 3 or selector & 3 != cpl:
            raise GuestFault(GP, 0)
        cpu.set_segment("ss", Segment(selector, 0, 0, 0))
        return
    cpu.set_segment("ss", stack_segment(cpu, selector, cpl))


def stack_segment(cpu, selector: int, cpl: int) -> Segment:
    """The stack segment a non-null selector loads for CPL cpl: by MOV or POP (cpl = CPL), or
    by a return to an outer level (cpl = the return CS's RPL; SDM Vol. 2A IRET and RET,
    RETURN-TO-OUTER-PRIVILEGE-LEVEL: the same checks)."""
    raw, address = read_descriptor(cpu, selector)
    seg = from_descriptor(selector, raw)
    a = seg.attr
    writable_data = a & SEG_S and not a & SEG_TYPE_CODE and a & SEG_TYPE_RW
    if selector & 3 != cpl or not writable_data or seg.dpl != cpl:
        raise GuestFault(GP, selector & 0xFFFC)
    if not a & SEG_P:
        raise GuestFault(SS, selector & 0xFFFC)
    _require_flat(cpu, seg, "SS")
    _mark_accessed(cpu, address, raw)
    return seg


def far_code_segment(cpu, selector: int) -> Segment:
    """The code segment a far JMP or CALL to selector loads at the same privilege level
    (SDM Vol. 2A JMP, "far jump to a conforming or non-conforming code segment")."""
    if not selector & ~3:
        raise GuestFault(GP, 0)
    raw, address = read_descriptor(cpu, selector)
    seg = from_descriptor(selector, raw)
    a = seg.attr
    if not a & SEG_S:
        raise UnsupportedMode(cpu.rip, "a far transfer through a call gate or task")
    cpl = cpu.cs & 3
    if not a & SEG_TYPE_CODE:
        raise GuestFault(GP, selector & 0xFFFC)
    if a & SEG_TYPE_DC:
        if seg.dpl > cpl:
            raise GuestFault(GP, selector & 0xFFFC)
    elif selector & 3 > cpl or seg.dpl != cpl:
        raise GuestFault(GP, selector & 0xFFFC)
    if cpu.long_mode and a & SEG_L and a & SEG_DB:
        raise GuestFault(GP, selector & 0xFFFC)          # L and D both set: reserved
    if not a & SEG_P:
        raise GuestFault(NP, selector & 0xFFFC)
    seg = seg._replace(selector=(selector & ~3) | cpl)   # RPL := CPL
    _require_flat(cpu, seg, "CS", code_bits(seg, cpu.long_mode))
    _mark_accessed(cpu, address, raw)
    return seg


def _is_64bit_code(seg: Segment) -> bool:
    return bool(seg.attr & SEG_L and not seg.attr & SEG_DB)


def interrupt_code_segment(cpu, selector: int, ext: int) -> Segment:
    """The code segment an interrupt or trap gate names, as delivery in IA-32e mode checks
    it (SDM Vol. 2A INT n, PROTECTED-MODE and INTER-PRIVILEGE-LEVEL-INTERRUPT; Vol. 3A
    6.12.1.1, 6.14.1): a present 64-bit code segment with DPL <= CPL. Its RPL becomes the
    new CPL: the DPL, or CPL itself for a conforming segment."""
    if not selector & ~3:
        raise GuestFault(GP, ext)
    raw, address = read_descriptor(cpu, selector, ext)
    seg = from_descriptor(selector, raw)
    a = seg.attr
    code = selector & 0xFFFC | ext
    cpl = cpu.cs & 3
    if not a & SEG_S or not a & SEG_TYPE_CODE or seg.dpl > cpl:
        raise GuestFault(GP, code)
    if not a & SEG_P:
        raise GuestFault(NP, code)
    if not _is_64bit_code(seg):
        raise GuestFault(GP, code)
    _mark_accessed(cpu, address, raw)
    return Segment(selector & 0xFFFC | (cpl if a & SEG_TYPE_DC else seg.dpl), seg.base, seg.limit, a)


def return_code_segment(cpu, selector: int) -> Segment:
    """The code segment IRET or a far RET returns to (SDM Vol. 2A IRET, PROTECTED-MODE-RETURN;
    RET, "protected mode ... far return"): its RPL is the new CPL, never below CPL."""
    if not selector & ~3:
        raise GuestFault(GP, 0)
    raw, address = read_descriptor(cpu, selector)
    seg = from_descriptor(selector, raw)
    a = seg.attr
    code = selector & 0xFFFC
    rpl = selector & 3
    if not a & SEG_S or not a & SEG_TYPE_CODE or rpl < cpu.cs & 3:
        raise GuestFault(GP, code)
    if (seg.dpl > rpl) if a & SEG_TYPE_DC else (seg.dpl != rpl):
        raise GuestFault(GP, code)
    if cpu.long_mode and a & SEG_L and a & SEG_DB:
        raise GuestFault(GP, code)                       # L and D both set: reserved
    if not a & SEG_P:
        raise GuestFault(NP, code)
    _require_flat(cpu, seg, "CS", code_bits(seg, cpu.long_mode))
    _mark_accessed(cpu, address, raw)
    return seg


def return_stack_segment(cpu, selector: int, cs: Segment) -> Segment:
    """The SS a return to cs loads. A null SS is allowed only for 64-bit code below CPL 3
    (SDM Vol. 2A IRET and RET, RETURN-TO-OUTER-PRIVILEGE-LEVEL); it keeps its RPL."""
    rpl = cs.selector & 3
    if not selector & ~3:
        if not (cpu.long_mode and _is_64bit_code(cs)) or rpl == 3:
            raise GuestFault(GP, 0)
        return NULL_SEGMENT._replace(selector=selector)
    return stack_segment(cpu, selector, rpl)


def null_outer_segments(cpu) -> None:
    """After a return to an outer level, DS, ES, FS and GS that the new CPL may not use
    (data or non-conforming code with DPL < CPL) get a null selector (SDM Vol. 2A IRET and
    RET); the FS and GS bases stay, as the SDM changes only the selector."""
    cpl = cpu.cs & 3
    for name in ("ds", "es", "fs", "gs"):
        seg = cpu.seg_cache[name]
        a = seg.attr
        conforming_code = a & SEG_TYPE_CODE and a & SEG_TYPE_DC
        if a & SEG_P and a & SEG_S and not conforming_code and seg.dpl < cpl:
            base = getattr(cpu, f"{name}_base", seg.base)
            cpu.set_segment(name, Segment(0, base, 0, 0))
