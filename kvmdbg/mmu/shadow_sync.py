"""Unsync and sync of last-level shadow pages (mirrors the unsync half of
arch/x86/kvm/mmu/mmu.c: kvm_unsync_page, mmu_try_to_unsync_pages, mmu_unsync_walk,
kvm_sync_page, mmu_sync_children, __kvm_mmu_invalidate_addr, and FNAME(sync_spte) of
paging_tmpl.h; kvm-mmu-spec section 6.2).

It exists apart from shadow_mmu.py because it has one job: letting the guest write a
last-level table without exits once KVM maps its gfn writable (the page goes unsync and
its parents record it in unsync_child_bitmap), and bringing such pages back in line with
the gPTEs when the guest flushes its TLB (CR3 load, INVLPG) or before a link exposes them.

ShadowSync is a mixin of shadow_mmu.ShadowMmu, which owns the pages and the primitives it
calls (read, _write, drop_spte, zap_pte, make_spte, valid_pages, prepare_zap_page,
remote_flush_or_zap, _trace_page, and page_track's write_protect_gfn / is_write_tracked).
It imports nothing from shadow_mmu at run time, so shadow_mmu can import it without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import paging_tmpl as PT
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.tdp_iter import nonzero_entries

if TYPE_CHECKING:
    from kvmdbg.mmu.shadow_mmu import ShadowPage

# kvm_sync_page_check: role bits that may differ between an unsync page and the root_role.
_SYNC_ROLE_IGN = R.ROLE_LEVEL_MASK | (7 << R.ROLE_ACCESS_SHIFT) | (3 << R.ROLE_QUADRANT_SHIFT) \
    | R.ROLE_PASSTHROUGH


class ShadowSync:
    """Unsync bookkeeping and the sync of unsync shadow pages (mixed into ShadowMmu)."""

    # --- unsync bookkeeping ---

    def mark_unsync(self, sp: ShadowPage, i: int) -> None:
        if i in sp.unsync_child_bitmap:
            return
        sp.unsync_child_bitmap.add(i)
        if len(sp.unsync_child_bitmap) > 1:
            return
        self.mark_parents_unsync(sp)

    def mark_parents_unsync(self, sp: ShadowPage) -> None:
        for parent, i in list(sp.parent_ptes):
            self.mark_unsync(parent, i)

    def unsync_page(self, vcpu, sp: ShadowPage) -> None:
        """kvm_unsync_page: the guest may now write this last-level table without exits."""
        kvm = self.kvm
        kvm.stats["mmu_unsync"] += 1
        sp.unsync = True
        self._trace_page("kvm_mmu_unsync_page", vcpu, sp)
        self.mark_parents_unsync(sp)

    def unlink_unsync_page(self, sp: ShadowPage) -> None:
        if sp.unsync:
            sp.unsync = False
            self.kvm.stats["mmu_unsync"] -= 1

    def unsync_walk(self, sp: ShadowPage, out: list, seen: set) -> None:
        """mmu_unsync_walk: the unsync pages below sp; stale unsync_child bits are cleared."""
        pages = self.kvm.mmu_pages.pages
        for i in sorted(sp.unsync_child_bitmap):
            ent = self.read(sp, i)
            child = pages.get(S.spte_to_pfn(ent)) if S.is_shadow_present_pte(ent) \
                and not S.is_last_spte(ent, sp.level) else None
            if child is None:
                sp.unsync_child_bitmap.discard(i)
                continue
            if child.unsync_child_bitmap:
                self.unsync_walk(child, out, seen)
            if child.unsync:
                if child not in seen:
                    seen.add(child)
                    out.append(child)
            elif not child.unsync_child_bitmap:
                sp.unsync_child_bitmap.discard(i)

    def try_to_unsync_pages(self, vcpu, gfn: int, can_unsync: bool, prefetch: bool) -> bool:
        """mmu_try_to_unsync_pages: True (an error: map read-only) if gfn must stay protected."""
        if self.is_write_tracked(gfn):
            return True
        for sp in self.valid_pages(gfn, with_gptes=True):
            if not can_unsync:
                return True
            if sp.unsync:
                continue
            if prefetch:
                return True
            self.unsync_page(vcpu, sp)
        return False

    # --- sync (FNAME(sync_spte), kvm_sync_page, mmu_sync_children) ---

    def sync_spte(self, vcpu, sp: ShadowPage, i: int) -> int:
        """FNAME(sync_spte): 0 nothing to flush, 1 flush needed, -1 cannot sync."""
        spte = self.read(sp, i)
        if not spte:
            return 0
        kvm = self.kvm
        gpte = int.from_bytes(kvm.read_gpa((sp.gfn << 12) + i * 8, 8), "little")
        nx = bool(vcpu.mmu.cpu_role & R.ROLE_EFER_NX)
        if (PT.is_rsvd_gpte(gpte, 1, nx, self.maxphyaddr) or not gpte & PT.P
                or not gpte & PT.A):
            self.drop_spte(sp, i)                   # FNAME(prefetch_invalid_gpte)
            return 1
        gfn = (gpte & PT.ADDR) >> 12
        pte_access = R.role_access(sp.role) & PT.gpte_access(gpte)
        pte_access = PT.protect_clean_gpte(pte_access, gpte)
        if S.is_shadow_mmio_spte(spte):
            if gfn != S.shadow_mmio_gfn(spte):
                self._write(sp, i, 0)
                return 1
            return 0
        old_gfn, old_access = sp.shadowed.get(i, (None, None))
        if gfn != old_gfn:
            self.drop_spte(sp, i)
            return 1
        if old_access == pte_access:
            return 0
        sp.shadowed[i] = (gfn, pte_access)
        slot = kvm.memslots.lookup(gfn)
        _wr, new = self.make_spte(vcpu, sp, slot, pte_access, gfn, S.spte_to_pfn(spte), spte,
                                  True, False, bool(spte & S.SPTE_HOST_WRITABLE), synchronizing=True)
        flush = bool(spte & S.SPTE_MMU_WRITABLE and not new & S.PT_WRITABLE)
        self._write(sp, i, new)
        return 1 if flush else 0

    def sync_page(self, vcpu, sp: ShadowPage, invalid: list) -> int:
        """kvm_sync_page: resync every SPTE from the gPTEs; zap the page if it cannot be."""
        kvm = self.kvm
        kvm.stats["kvmdbg_mmu_sync_pages"] += 1
        kvm.charge(vcpu, "sync_page")
        self._trace_page("kvm_mmu_sync_page", vcpu, sp)
        ret = 0
        if sp.direct or (sp.role ^ vcpu.mmu.root_role) & ~_SYNC_ROLE_IGN:
            ret = -1
        else:
            for i, _v in list(nonzero_entries(sp)):
                ret |= self.sync_spte(vcpu, sp, i)
        if ret < 0:
            self.prepare_zap_page(sp, invalid)
        return ret

    def mmu_sync_children(self, vcpu, parent: ShadowPage) -> None:
        """Write-protect the gfns of parent's unsync descendants (flush), then sync them."""
        invalid: list = []
        flush = False
        while True:
            pages: list = []
            self.unsync_walk(parent, pages, set())
            if not pages:
                break
            protected = False
            for sp in pages:
                protected |= self.write_protect_gfn(sp.gfn)
            if protected:
                self.remote_flush_or_zap(invalid, True)
                flush = False
            for sp in pages:
                self.unlink_unsync_page(sp)
                flush |= self.sync_page(vcpu, sp, invalid) > 0
        self.remote_flush_or_zap(invalid, flush)

    def sync_root(self, vcpu, root: ShadowPage | None) -> None:
        if root is not None and not root.freed and (root.unsync or root.unsync_child_bitmap):
            self.mmu_sync_children(vcpu, root)

    def invalidate_addr(self, vcpu, addr: int, root: ShadowPage | None) -> None:
        """__kvm_mmu_invalidate_addr: sync the one SPTE for addr in each unsync page on its path."""
        if root is None or root.freed:
            return
        pages = self.kvm.mmu_pages.pages
        sp = root
        level = root.level
        while sp is not None:
            i = (addr >> (12 + 9 * (level - 1))) & 511
            if sp.unsync:
                ret = self.sync_spte(vcpu, sp, i)
                if ret < 0:
                    self.zap_pte(sp, i)
                if ret:
                    self.kvm.flush_remote_tlbs()
                if self.kvm.bus.active:
                    self.kvm.trace("kvmdbg:invlpg_sync", vcpu.index, gfn=sp.gfn, index=i, ret=ret)
            if not sp.unsync_child_bitmap:
                return
            spte = self.read(sp, i)
            if not S.is_shadow_present_pte(spte) or S.is_last_spte(spte, level):
                return
            sp = pages.get(S.spte_to_pfn(spte))
            level -= 1
