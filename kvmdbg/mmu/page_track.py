"""Write tracking of the guest's page tables under shadow paging (mirrors
arch/x86/kvm/mmu/page_track.c's gfn write-track counts and the parts of mmu.c that use
them: account_shadowed / unaccount_shadowed, rmap_write_protect, kvm_mmu_track_write with
detect_write_misaligned / detect_write_flooding; kvm-mmu-spec section 6.2).

It exists apart from shadow_mmu.py because it has one job: keeping the tables KVM
shadows read-only for the guest and, when the guest writes one anyway, zapping the
SPTEs built from the written gPTE (or the whole page if the writes look like reuse).

PageTrack is a mixin of shadow_mmu.ShadowMmu, which owns the state it uses (write_track,
indirect_shadow_pages, rmap) and the primitives it calls (read, _write, valid_pages,
zap_pte, prepare_zap_page, remote_flush_or_zap). It imports nothing from shadow_mmu at
run time, so shadow_mmu can import it without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmdbg.mmu import spte as S

if TYPE_CHECKING:
    from kvmdbg.mmu.shadow_mmu import ShadowPage


class PageTrack:
    """kvm->arch's write tracking for the shadow MMU (mixed into ShadowMmu)."""

    # --- write tracking (account_shadowed, kvm_mmu_slot_gfn_write_protect) ---

    def account_shadowed(self, sp: ShadowPage) -> None:
        self.indirect_shadow_pages += 1
        gfn = sp.gfn
        if sp.level > 1:
            # Non-leaf tables stay read-only: __kvm_write_track_add_gfn.
            self.write_track[gfn] = self.write_track.get(gfn, 0) + 1
        if self.write_protect_gfn(gfn):
            self.kvm.flush_remote_tlbs()

    def unaccount_shadowed(self, sp: ShadowPage) -> None:
        self.indirect_shadow_pages -= 1
        if sp.level > 1:
            n = self.write_track.get(sp.gfn, 0) - 1
            if n > 0:
                self.write_track[sp.gfn] = n
            else:
                self.write_track.pop(sp.gfn, None)

    def is_write_tracked(self, gfn: int) -> bool:
        return gfn in self.write_track

    def write_protect_gfn(self, gfn: int) -> bool:
        """rmap_write_protect(pt_protect): clear W and MMU-writable in every leaf mapping gfn."""
        changed = False
        for sp, i in list(self.rmap.get(gfn, ())):
            spte = self.read(sp, i)
            if spte & (S.PT_WRITABLE | S.SPTE_MMU_WRITABLE):
                self._write(sp, i, spte & ~(S.PT_WRITABLE | S.SPTE_MMU_WRITABLE))
                changed = True
        return changed

    # --- guest writes to tracked tables (kvm_mmu_track_write) ---

    def track_write(self, vcpu, gpa: int, nbytes: int) -> None:
        kvm = self.kvm
        if not self.indirect_shadow_pages:
            return
        gfn = gpa >> 12
        off = gpa & 0xFFF
        gentry = int.from_bytes(kvm.read_gpa(gpa & ~7, 8), "little")
        kvm.stats["mmu_pte_write"] += 1
        invalid: list = []
        flush = False
        for sp in self.valid_pages(gfn, with_gptes=True):
            if self._misaligned(off, nbytes) or self._flooded(sp):
                self.prepare_zap_page(sp, invalid)
                kvm.stats["mmu_flooded"] += 1
                continue
            i = off >> 3
            entry = self.read(sp, i)
            self.zap_pte(sp, i)
            if gentry and sp.level != 1:
                kvm.stats["mmu_pde_zapped"] += 1
            if S.is_shadow_present_pte(entry):
                flush = True
        self.remote_flush_or_zap(invalid, flush)

    @staticmethod
    def _misaligned(off: int, nbytes: int) -> bool:
        """detect_write_misaligned (8-byte gPTEs)."""
        if not off & 7 and nbytes == 1:
            return False                         # e.g. clear_bit() on a status byte
        return bool((off ^ (off + nbytes - 1)) & ~7) or nbytes < 4

    @staticmethod
    def _flooded(sp: ShadowPage) -> bool:
        """detect_write_flooding: 3 writes to an upper-level table without it being used."""
        if sp.level == 1:
            return False                          # it can go unsync instead
        sp.write_flooding_count += 1
        return sp.write_flooding_count >= 3
