"""A fast read of one watched memory location, for the stepping engine.

A watchpoint on memory is read after every instruction. Through the evaluator that is a
full software walk of the guest page tables each time; here the walk is done once and
then only re-checked: the page-table entries it used are compared byte for byte (they
live in host pages we keep references to), with CR0/CR3/CR4/EFER and the memslot
generation, and the value is read straight from the host page. Anything unusual (an
address that depends on registers, a page boundary, MMIO, no mapping) is left to the
evaluator, which gives the same answer the slow way.
"""

from __future__ import annotations

from kvmdbg.arch.pgtable_types import PAGE_PRESENT as P, PAGE_PSE as PS, PTE_ADDR_MASK as ADDR
from kvmdbg.bits import PAGE_SHIFT
from kvmdbg.debug.engine.evaluate import make_int
from kvmdbg.debug.engine.expr import Deref, Dollar, walk



def _constant(node) -> bool:
    """True if the expression tree reads no register, variable or memory."""
    return not any(isinstance(n, (Dollar, Deref)) for n in walk(node))


def reader_for(session, wp):
    """A WatchReader if this watchpoint is a plain constant-address memory location."""
    ast = wp._ast
    if wp.location is None or not isinstance(ast, Deref) or not _constant(ast.operand):
        return None
    space, address, size = wp.location
    if (address & 0xFFF) + size > 4096 or wp.old is None or wp.old.type.kind not in ("int", "char"):
        return None
    return WatchReader(session, wp.vcpu, space, address, size, wp.old.type)


class WatchReader:
    def __init__(self, session, vcpu: int, space: str, address: int, size: int, vtype):
        self.s = session
        self.vcpu = vcpu
        self.space = space
        self.address = address
        self.size = size
        self.type = vtype
        self._key = None
        self._checks: list = []
        self._page = None

    def value(self):
        """The value now, or None when the evaluator must answer."""
        vm = self.s.vm
        if self.space == "hpa":
            page = vm.host.pages.get(self.address >> PAGE_SHIFT)
        else:
            cpu = vm.vcpus[self.vcpu].cpu
            key = (vm, cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer, vm.memslots.generation)
            if key != self._key or self._page is None or \
                    not all(pg[o:o + 8] == b for pg, o, b in self._checks):
                self._resolve(vm, cpu, key)
            page = self._page
        if page is None:
            return None
        off = self.address & 0xFFF
        return make_int(int.from_bytes(page[off:off + self.size], "little"), self.type)

    def _host_page(self, vm, gpa: int):
        got = vm.gfn_to_page(gpa >> PAGE_SHIFT)
        return None if got is None else got[0]

    def _resolve(self, vm, cpu, key) -> None:
        self._key = key
        self._checks = []
        self._page = None
        if self.space == "gpa":
            self._page = self._host_page(vm, self.address)
            return
        va = self.address
        if not cpu.cr0 >> 31 & 1:
            self._page = self._host_page(vm, va)
            return
        if not cpu.efer >> 10 & 1 or va >> 47 not in (0, 0x1FFFF):
            return                              # 32-bit paging or non-canonical: evaluator
        table = cpu.cr3 & ADDR
        for level in (4, 3, 2, 1):
            gpa = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8
            page = self._host_page(vm, gpa)
            if page is None:
                return
            off = gpa & 0xFFF
            raw = bytes(page[off:off + 8])
            self._checks.append((page, off, raw))
            entry = int.from_bytes(raw, "little")
            if not entry & P:
                return
            if level == 1 or (entry & PS and level in (2, 3)):
                shift = 12 + 9 * (level - 1)
                gpa_data = (entry & ADDR & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
                self._page = self._host_page(vm, gpa_data)
                return
            table = entry & ADDR
