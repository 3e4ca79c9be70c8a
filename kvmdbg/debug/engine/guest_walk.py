"""The debugger's own walk of the guest page tables: no side effects at all.

A debugger must not set accessed/dirty bits, fill the TLB or cause EPT
violations just by looking, so memory is read by gpa through the memslots (as
gdb reads through QEMU's gva2gpa), and the walk reports every level for `translate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmdbg.arch.pgtable_types import PAGE_PRESENT as P, PAGE_PSE as PS, PTE_ADDR_MASK as ADDR
from kvmdbg.errors import CommandError

LEVEL_NAMES = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


@dataclass
class WalkStep:
    level: int
    index: int
    entry_gpa: int
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
    top = va >> 47
    if top not in (0, 0x1FFFF):
        w.error = "non-canonical address"
        return w
    table = cpu.cr3 & ADDR
    level = 4
    while True:
        index = (va >> (12 + 9 * (level - 1))) & 511
        gpa = table + index * 8
        entry = int.from_bytes(vm.peek_gpa(gpa, 8), "little")
        w.steps.append(WalkStep(level, index, gpa, entry))
        if not entry & P:
            w.error = f"{LEVEL_NAMES[level]}[{index}] not present"
            return w
        if level == 1 or (entry & PS and level in (2, 3)):
            shift = 12 + 9 * (level - 1)
            w.page_size = 1 << shift
            w.gpa = (entry & ADDR & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
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
