"""The debugger's own walk of the guest page tables: no side effects at all.

A debugger must not set accessed/dirty bits, fill the TLB or cause EPT
violations just by looking, so memory is read by gpa through the memslots (as
gdb reads through QEMU's gva2gpa), and the walk reports every level for `translate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmdbg.arch.msr_index import EFER_LMA
from kvmdbg.arch.pgtable_types import (PAGE_PRESENT as P, PAGE_PSE as PS, PT32_4M_ADDR_MASK,
                                       PT32_ADDR_MASK, PTE_ADDR_MASK as ADDR)
from kvmdbg.arch.processor_flags import CR4_PAE, CR4_PSE
from kvmdbg.errors import CommandError

LEVEL_NAMES = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


@dataclass
class WalkStep:
    level: int
    index: int
    entry_gpa: int | None         # None: a PDPTE register (PAE paging), not memory
    entry: int


@dataclass
class GuestWalk:
    va: int
    steps: list = field(default_factory=list)
    gpa: int | None = None
    page_size: int = 4096
    error: str = ""


def walk(vm, cpu, va: int) -> GuestWalk:
    w = GuestWalk(va)
    if not cpu.cr0 >> 31 & 1:
        w.gpa = va
        return w
    if not cpu.efer & EFER_LMA:
        return _walk_legacy(vm, cpu, va, w)
    top = va >> 47
    if top not in (0, 0x1FFFF):
        w.error = "non-canonical address"
        return w
    return _walk_tables(vm, va, w, cpu.cr3 & ADDR, 4, 8, 9, True)


def _walk_legacy(vm, cpu, va: int, w: GuestWalk) -> GuestWalk:
    """PAE paging (the PDPTE registers the CPU loaded, then 8-byte PDEs and PTEs) or 32-bit
    paging (4-byte entries, 4 MiB pages with CR4.PSE); addresses are 32-bit."""
    if va >> 32:
        w.error = "address beyond 32 bits (the guest is not in long mode)"
        return w
    if not cpu.cr4 & CR4_PAE:
        return _walk_tables(vm, va, w, cpu.cr3 & PT32_ADDR_MASK, 2, 4, 10, bool(cpu.cr4 & CR4_PSE))
    index = va >> 30
    entry = cpu.pdptes[index]
    w.steps.append(WalkStep(3, index, None, entry))      # a register, not memory
    if not entry & P:
        w.error = f"PDPTE[{index}] not present"
        return w
    return _walk_tables(vm, va, w, entry & ADDR, 2, 8, 9, True)


def _walk_tables(vm, va: int, w: GuestWalk, table: int, level: int, size: int, bits: int,
                 large: bool) -> GuestWalk:
    """Walk from `table` at `level`: `size`-byte entries, `bits` index bits a level; PS makes
    a leaf above level 1 when `large` (always for 8-byte entries, CR4.PSE for 4-byte)."""
    while True:
        index = (va >> (12 + bits * (level - 1))) & ((1 << bits) - 1)
        gpa = table + index * size
        entry = int.from_bytes(vm.peek_gpa(gpa, size), "little")
        w.steps.append(WalkStep(level, index, gpa, entry))
        if not entry & P:
            w.error = f"{LEVEL_NAMES[level]}[{index}] not present"
            return w
        if level == 1 or (entry & PS and level in (2, 3) and large):
            shift = 12 + bits * (level - 1)
            w.page_size = 1 << shift
            mask = PT32_4M_ADDR_MASK if size == 4 and level == 2 else ADDR
            w.gpa = (entry & mask & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
            return w
        table = entry & ADDR
        level -= 1


def gva_to_gpa(vm, cpu, va: int) -> int:
    w = walk(vm, cpu, va)
    if w.gpa is None:
        raise CommandError(f"Cannot access memory at address {va:#x} (guest walk: {w.error})")
    return w.gpa


def read_gpa(vm, gpa: int, n: int, va: int | None = None) -> bytes:
    """Guest-physical memory as the debugger reads it: RAM (untouched pages as zeros), and
    an error for a gpa that is in no memslot. There is no device behind such a gpa (the
    VMM answers the guest's own MMIO reads with all ones; the debugger does not pretend)."""
    out = b""
    while n:
        chunk = min(n, 4096 - (gpa & 0xFFF))
        if vm.memslots.lookup(gpa >> 12) is None:
            where = f"gpa:{gpa:#x} (gpa is in no memslot)" if va is None else \
                f"{va:#x} (gpa {gpa:#x} is in no memslot)"
            raise CommandError(f"Cannot access memory at address {where}")
        out += vm.peek_gpa(gpa, chunk)
        gpa += chunk
        if va is not None:
            va += chunk
        n -= chunk
    return out


def read_gva(vm, cpu, va: int, n: int) -> bytes:
    out = b""
    while n:
        chunk = min(n, 4096 - (va & 0xFFF))
        out += read_gpa(vm, gva_to_gpa(vm, cpu, va), chunk, va)
        va += chunk
        n -= chunk
    return out


def write_gva(vm, cpu, va: int, data: bytes) -> None:
    while data:
        chunk = min(len(data), 4096 - (va & 0xFFF))
        gpa = gva_to_gpa(vm, cpu, va)
        try:
            vm.write_gpa(gpa, data[:chunk])
        except ValueError as e:
            raise CommandError(str(e)) from None
        va += chunk
        data = data[chunk:]
