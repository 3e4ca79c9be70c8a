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


def from_descriptor(selector: int, raw: int) -> Segment:
    """The Segment an 8-byte code or data descriptor loads."""
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


def read_descriptor(cpu, selector: int) -> tuple[int, int]:
    """(descriptor, its linear address) for a selector in the GDT; #GP(selector) if it lies
    beyond the GDT's limit or names the (null) LDT."""
    index = selector & ~7
    base, limit = cpu.gdtr
    if selector & SELECTOR_TI or index + 7 > limit:
        raise GuestFault(GP, selector & 0xFFFC)
    address = base + index
    return cpu.rd_implicit(address, 8), address


def _mark_accessed(cpu, address: int, raw: int) -> None:
    """The processor sets a code or data descriptor's accessed bit when it loads it."""
    if not raw >> 40 & SEG_TYPE_ACCESSED:
        cpu.wr_implicit(address + 5, 1, (raw >> 40 & 0xFF) | SEG_TYPE_ACCESSED)


def _require_flat(cpu, seg: Segment, name: str) -> None:
    if not seg.flat and cpu.code_bits != 64:
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
    cpu.set_segment("ss", seg)


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
    if code_bits(seg, cpu.long_mode) != 64:
        _require_flat(cpu, seg, "CS")
    _mark_accessed(cpu, address, raw)
    return seg
