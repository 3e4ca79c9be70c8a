"""The VM's page-table pages, whichever MMU built them (struct kvm_mmu_page bookkeeping).

KVM finds the kvm_mmu_page behind a table through its struct page (to_shadow_page); here
that is one pfn -> MmuPage map for the TDP MMU's pages, the legacy MMU's and shadow
paging's alike. The pool also counts the live SPTEs in all of them and owns the shared
change counter that every SPTE write bumps (the CPU's walk memo watches it). Root numbers
(#1, #2 in `info roots`) are handed out here too, so they are unique across MMUs.
"""

from __future__ import annotations

from kvmdbg.mmu.mmu_internal import MmuPage


class MmuPages:
    def __init__(self, kvm):
        self.kvm = kvm
        self.pages: dict[int, MmuPage] = {}   # pfn -> page
        self.live_sptes = 0                   # non-zero, non-removed SPTEs in all pages
        self.generation = kvm.gpa_generation  # bumped on every SPTE change (kvmdbg/generation.py)
        self.next_root_number = 1

    def number_root(self, sp: MmuPage) -> None:
        """A page becomes a root: the number users see (#1, #2, ...) and the step it
        became one at. (Only roots: a table made in the middle of an instruction, by an
        EPT violation handled in place, would be stamped before the step count is exact.)"""
        sp.number = self.next_root_number
        self.next_root_number += 1
        sp.created_step = self.kvm.now_step()

    def alloc_page(self, role: int, gfn: int, tdp: bool = True, cls=None) -> MmuPage:
        """A fresh host page made a page-table page: an MmuPage (tdp says whose), or a cls
        (shadow paging's ShadowPage)."""
        kvm = self.kvm
        pfn = kvm.host.alloc_page()
        spt = kvm.host.pages[pfn]
        sp = MmuPage(role, gfn, pfn, spt, tdp) if cls is None else cls(role, gfn, pfn, spt)
        sp.mmu_valid_gen = kvm.mmu_valid_gen
        sp.touched = 0                        # a zeroed page: no entry in use
        self.pages[pfn] = sp
        kvm.stats["kvmdbg_tables_allocated"] += 1
        return sp

    def note_write(self, pfn: int) -> None:
        """A write to host memory from outside KVM (the debugger's write_hpa): if it hit a
        table, which of its entries are non-zero is no longer known (MmuPage.touched)."""
        sp = self.pages.get(pfn)
        if sp is not None:
            sp.touched = -1

    def free_page(self, sp: MmuPage) -> None:
        sp.freed = True
        self.pages.pop(sp.pfn, None)
        self.kvm.host.free_page(sp.pfn)
        self.kvm.stats["kvmdbg_tables_freed"] += 1
