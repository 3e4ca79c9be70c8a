"""The shadow MMU: shadow pages keyed by (gfn, role), their SPTEs and rmaps,
alloc/free, roots, zap + commit, reclaim, and the obsolete-generation sweep (mirrors the
shadow half of arch/x86/kvm/mmu/mmu.c and FNAME(fetch) of paging_tmpl.h; kvm-mmu-spec
sections 4.3, 4.4, 4.7, 6). Two jobs live in their own modules and are mixed into ShadowMmu:
write tracking of the guest's page tables (page_track.py) and unsync/sync of last-level
tables (shadow_sync.py). With EPT but tdp_mmu=0 the legacy MMU's direct pages are kept
here too (legacy.py): the kernel zaps and frees both kinds with the same code.

A shadow page shadows one guest page table (gfn) for one role; the hardware walks these
tables instead of the guest's (GVA -> HPA, legacy PTE format, spte.py's shadow flavour).
Kept exact: the hash lookup (obsolete pages skipped, a miss counts mmu_cache_miss,
kvm_mmu_get_page "new"/"existing"), several parents per page (parent_ptes), child pages
surviving the unlink of their parent SPTE, upper-level tables write-tracked and their
writes emulated (kvm_mmu_track_write zaps the written SPTE in every role, with
write-flooding and misalignment detection), last-level tables unsynced when KVM maps
their gfn writable and synced on guest TLB flushes, one remote TLB flush per commit of
zapped pages, roots kept hashed when their root_count drops to 0 unless invalid.
Simplified: one address space, 64-bit guests only (4-level tables, no quadrants or PAE
roots), 4 KiB shadow leaves only (guest 2 MiB/1 GiB pages are split with direct shadow
pages, as KVM does when the host page is small), no pte prefetch, no retry-instead-of-
emulate (retry_instruction) heuristics.
"""

from __future__ import annotations

from kvmdbg.arch.kvm_host import KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, PT32E_ROOT_LEVEL, PT64_ROOT_4LEVEL
from kvmdbg.arch.pgtable_types import PTE_ADDR_MASK as CR3_ADDR_MASK
from kvmdbg.errors import UnsupportedPaging
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import paging_tmpl as PT
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu import MmuOps, RootInfo
from kvmdbg.mmu.mmu_internal import ACC_WRITE, MmuPage, RetPF
from kvmdbg.mmu.page_track import PageTrack
from kvmdbg.mmu.shadow_sync import ShadowSync
from kvmdbg.mmu.tdp_iter import nonzero_entries

KVM_MIN_FREE_MMU_PAGES = 5
KVM_REFILL_PAGES = 25
KVM_PERMILLE_MMU_PAGES = 20
KVM_MIN_ALLOC_MMU_PAGES = 64

_CHILD_ROLE_CLEAR = R.ROLE_LEVEL_MASK | (7 << R.ROLE_ACCESS_SHIFT) | R.ROLE_DIRECT \
    | R.ROLE_PASSTHROUGH | (3 << R.ROLE_QUADRANT_SHIFT)


class ShadowPage(MmuPage):
    """struct kvm_mmu_page with the shadow MMU's fields."""

    __slots__ = ("parent_ptes", "unsync", "unsync_child_bitmap", "write_flooding_count",
                 "shadowed")

    def __init__(self, role: int, gfn: int, pfn: int, spt: bytearray):
        super().__init__(role, gfn, pfn, spt, False)
        self.parent_ptes: dict = {}          # (parent page, index) -> None, in link order
        self.unsync = False
        self.unsync_child_bitmap: set = set()
        self.write_flooding_count = 0
        self.shadowed: dict = {}             # index -> (gfn, access): shadowed_translation

    @property
    def unsync_children(self) -> int:
        return len(self.unsync_child_bitmap)

    @property
    def direct(self) -> bool:
        return bool(self.role & R.ROLE_DIRECT)


def child_role(parent_role: int, direct: bool, access: int) -> int:
    """kvm_mmu_child_role (64-bit guests: no quadrant)."""
    role = parent_role & ~_CHILD_ROLE_CLEAR
    role |= ((parent_role & R.ROLE_LEVEL_MASK) - 1) | (access << R.ROLE_ACCESS_SHIFT)
    if direct:
        role |= R.ROLE_DIRECT
    return role


def kvm_calc_shadow_root_role(cpu_role: int) -> int:
    """kvm_init_shadow_mmu: root_role = cpu_role.base, level at least 3 (PAE), efer_nx forced
    on; so cr0_wp, smep_andnot_wp and smap_andnot_wp are part of it (kvm-mmu-spec 3.6)."""
    base = cpu_role & 0xFFFF_FFFF
    level = max(base & R.ROLE_LEVEL_MASK, 3)
    if base & R.ROLE_DIRECT:
        # Guest paging off (nonpaging_init_context): KVM maps guest-physical memory 1:1
        # with direct pages under a PAE root (four level-2 roots in pae_root); kvmdbg has
        # no PAE roots and builds one 4-level direct root instead (same SPTEs below it).
        level = 4
    return (base & ~R.ROLE_LEVEL_MASK) | level | R.ROLE_EFER_NX


def _index(addr: int, level: int) -> int:
    return (addr >> (12 + 9 * (level - 1))) & 511


class ShadowMmu(PageTrack, ShadowSync):
    """kvm->arch's shadow MMU state: mmu_page_hash, active_mmu_pages, the page budget,
    the write-tracking counts and the rmaps (gfn -> leaf SPTEs mapping it). Write tracking
    comes from PageTrack (page_track.py), unsync/sync from ShadowSync (shadow_sync.py)."""

    def __init__(self, kvm, mem_pages: int, maxphyaddr: int = 46):
        self.kvm = kvm
        self.hash: dict[int, list[ShadowPage]] = {}   # gfn -> pages, newest first
        self.active: dict[ShadowPage, None] = {}      # active_mmu_pages, oldest first
        self.n_used = 0
        # kvm_mmu_calculate_default_mmu_pages: 2% of guest pages, at least 64.
        self.n_max = max(mem_pages * KVM_PERMILLE_MMU_PAGES // 1000, KVM_MIN_ALLOC_MMU_PAGES)
        self.indirect_shadow_pages = 0
        self.write_track: dict[int, int] = {}         # gfn -> count (upper-level tables)
        self.rmap: dict[int, dict] = {}               # gfn -> {(page, index): None}
        self.gfn_of_pfn: dict[int, int] = {}          # host pfn -> gfn (for TLB entries/views)
        self.maxphyaddr = maxphyaddr

    # --- SPTE writes (mmu_spte_set / mmu_spte_update / mmu_spte_clear) ---

    @staticmethod
    def read(sp: MmuPage, i: int) -> int:
        o = i << 3
        return int.from_bytes(sp.spt[o:o + 8], "little")

    def _write(self, sp: ShadowPage, i: int, new: int) -> int:
        o = i << 3
        old = int.from_bytes(sp.spt[o:o + 8], "little")
        if old == new:
            return old
        sp.spt[o:o + 8] = new.to_bytes(8, "little")
        if new:
            sp.touched |= 1 << i
        kvm = self.kvm
        pool = kvm.mmu_pages
        was = S.is_shadow_present_pte(old)
        now = S.is_shadow_present_pte(new)
        if was:
            pool.generation.value += 1    # the CPU's walk memo watches this (generation.py)
        pool.live_sptes += (1 if new else 0) - (1 if old else 0)
        level = sp.role & R.ROLE_LEVEL_MASK
        stats = kvm.stats
        if was != now:
            if now:
                stats["kvmdbg_sptes_created"] += 1
            else:
                stats["kvmdbg_sptes_zapped"] += 1
            if (now and S.is_last_spte(new, level)) or (was and S.is_last_spte(old, level)):
                stats[("pages_4k", "pages_2m", "pages_1g")[level - 1]] += 1 if now else -1
        return old

    def _rmap_add(self, sp: ShadowPage, i: int, gfn: int, pfn: int) -> None:
        self.rmap.setdefault(gfn, {})[(sp, i)] = None
        self.gfn_of_pfn[pfn] = gfn

    def _rmap_remove(self, sp: ShadowPage, i: int) -> None:
        got = sp.shadowed.get(i)
        if got is None:
            return
        head = self.rmap.get(got[0])
        if head is not None:
            head.pop((sp, i), None)
            if not head:
                del self.rmap[got[0]]

    def drop_spte(self, sp: ShadowPage, i: int) -> None:
        """drop_spte: clear a leaf and remove it from its gfn's rmap."""
        old = self._write(sp, i, 0)
        if S.is_shadow_present_pte(old):
            self._rmap_remove(sp, i)

    def drop_parent_pte(self, child: ShadowPage, parent: ShadowPage, i: int) -> None:
        child.parent_ptes.pop((parent, i), None)
        self._write(parent, i, 0)

    def link_shadow_page(self, parent: ShadowPage, i: int, child: ShadowPage) -> None:
        """__link_shadow_page: a non-leaf SPTE with every right, the parent recorded, and any
        unsync state of the child propagated upwards."""
        old = self.read(parent, i)
        if S.is_shadow_present_pte(old):
            self.drop_spte(parent, i)                  # a large leaf in the way
            self.kvm.flush_remote_tlbs()
        self._write(parent, i, S.make_shadow_nonleaf_spte(child.pfn))
        child.parent_ptes[(parent, i)] = None
        if child.unsync_child_bitmap or child.unsync:
            self.mark_unsync(parent, i)

    # --- the hash (kvm_mmu_find_shadow_page / kvm_mmu_alloc_shadow_page) ---

    def is_obsolete(self, sp: MmuPage) -> bool:
        return bool(sp.role & R.ROLE_INVALID) or sp.mmu_valid_gen != self.kvm.mmu_valid_gen

    def valid_pages(self, gfn: int, with_gptes: bool = False):
        """for_each_gfn_valid_sp[_with_gptes]."""
        for sp in list(self.hash.get(gfn, ())):
            if self.is_obsolete(sp):
                continue
            if with_gptes and sp.role & (R.ROLE_DIRECT | R.ROLE_PASSTHROUGH):
                continue
            yield sp

    def _trace_page(self, name: str, vcpu, sp: ShadowPage, **extra) -> None:
        kvm = self.kvm
        if kvm.bus.active:
            kvm.trace(name, vcpu.index if vcpu is not None else kvm.current_vcpu_index(),
                      mmu_valid_gen=sp.mmu_valid_gen, gfn=sp.gfn, role=sp.role,
                      root_count=sp.root_count, unsync=sp.unsync, **extra)

    def find(self, vcpu, gfn: int, role: int, invalid: list):
        kvm = self.kvm
        for sp in self.valid_pages(gfn):
            if sp.role != role:
                # A new upper-level table for this gfn: an unsync last-level page of the
                # same gfn must go (the new page will be write-protected).
                if role & R.ROLE_LEVEL_MASK > 1 and sp.unsync:
                    self.prepare_zap_page(sp, invalid)
                continue
            if sp.direct:
                return sp
            if sp.unsync:
                ret = self.sync_page(vcpu, sp, invalid)
                if ret < 0:
                    break
                if ret > 0:
                    kvm.flush_remote_tlbs()
            sp.write_flooding_count = 0
            return sp
        kvm.stats["mmu_cache_miss"] += 1
        return None

    def alloc(self, gfn: int, role: int) -> ShadowPage:
        kvm = self.kvm
        sp = kvm.mmu_pages.alloc_page(role, gfn, cls=ShadowPage)
        self.active[sp] = None
        self.n_used += 1
        self.hash.setdefault(gfn, []).insert(0, sp)
        if not role & (R.ROLE_DIRECT | R.ROLE_PASSTHROUGH):
            self.account_shadowed(sp)
        return sp

    def get_shadow_page(self, vcpu, gfn: int, role: int) -> tuple[ShadowPage, bool]:
        """kvm_mmu_get_shadow_page: (page, created); emits kvm_mmu_get_page."""
        invalid: list = []
        sp = self.find(vcpu, gfn, role, invalid)
        self.commit_zap_page(invalid)
        created = sp is None
        if created:
            sp = self.alloc(gfn, role)
            self.kvm.charge(vcpu, "sp_alloc")
        self._trace_page("kvm_mmu_get_page", vcpu, sp, created=created)
        return sp, created

    def get_child_sp(self, vcpu, parent: ShadowPage, i: int, gfn: int, direct: bool, access: int):
        """kvm_mmu_get_child_sp: None (-EEXIST) if a table is linked there already."""
        spte = self.read(parent, i)
        if S.is_shadow_present_pte(spte) and not S.is_large_pte(spte):
            return None
        sp, _created = self.get_shadow_page(vcpu, gfn, child_role(parent.role, direct, access))
        return sp

    # --- leaves (make_spte / mmu_set_spte) ---

    def make_spte(self, vcpu, sp: ShadowPage, slot, pte_access: int, gfn: int, pfn: int, old: int,
                  prefetch: bool, can_unsync: bool, host_writable: bool, synchronizing: bool = False):
        """(wrprot, spte): write access is dropped if the gfn must stay write-protected."""
        wrprot = False
        access = pte_access if host_writable else pte_access & ~ACC_WRITE
        if access & ACC_WRITE and not (S.is_shadow_present_pte(old) and old & S.PT_WRITABLE):
            if self.try_to_unsync_pages(vcpu, gfn, can_unsync, prefetch):
                wrprot = True
                access &= ~ACC_WRITE
        spte = S.make_shadow_spte(pfn, sp.level, access, accessed=not prefetch or synchronizing,
                                  host_writable=host_writable)
        return wrprot, spte

    def mmu_set_spte(self, vcpu, slot, sp: ShadowPage, i: int, pte_access: int, gfn: int,
                     pfn: int, write_fault: bool | None, host_writable: bool = True) -> RetPF:
        """mmu_set_spte; write_fault None means a prefetch."""
        kvm = self.kvm
        level = sp.level
        if slot is None:
            if S.is_shadow_present_pte(self.read(sp, i)):
                self.zap_pte(sp, i)
            self._write(sp, i, S.make_shadow_mmio_spte(gfn, kvm.memslots.generation))
            kvm.stats["pf_mmio_spte_created"] += 1
            if kvm.bus.active:
                kvm.trace("mark_mmio_spte", vcpu.index, gfn=gfn, access=pte_access,
                          gen=kvm.memslots.generation)
            return RetPF.EMULATE
        old = self.read(sp, i)
        flush = False
        if S.is_shadow_present_pte(old):
            if not S.is_last_spte(old, level):
                child = kvm.mmu_pages.pages.get(S.spte_to_pfn(old))
                if child is not None:
                    self.drop_parent_pte(child, sp, i)
                flush = True
            elif S.spte_to_pfn(old) != pfn:
                self.drop_spte(sp, i)
                flush = True
        old = self.read(sp, i)
        wrprot, new = self.make_spte(vcpu, sp, slot, pte_access, gfn, pfn, old,
                                     write_fault is None, True, host_writable)
        ret = RetPF.FIXED
        if new == old:
            ret = RetPF.SPURIOUS
        else:
            if S.is_shadow_present_pte(old) and old & S.SPTE_MMU_WRITABLE and not new & S.PT_WRITABLE:
                flush = True
            self._write(sp, i, new)
            if not S.is_shadow_present_pte(old):
                self._rmap_add(sp, i, gfn, pfn)
        sp.shadowed[i] = (gfn, pte_access)
        if wrprot and write_fault:
            ret = RetPF.EMULATE
        if flush:
            kvm.flush_remote_tlbs()
        if kvm.bus.active:
            kvm.trace("kvm_mmu_set_spte", vcpu.index, gfn=gfn, spte=new, level=level,
                      r=True, x=not new & S.PT64_NX, u=bool(new & S.PT_USER))
        return ret

    # --- the fault path (FNAME(fetch)) ---

    def fetch(self, vcpu, root: ShadowPage, addr: int, w: PT.GuestWalker, slot, pfn: int,
              write: bool, host_writable: bool) -> RetPF:
        kvm = self.kvm
        pages = kvm.mmu_pages.pages
        sp = root
        level = root.level
        while True:
            i = _index(addr, level)
            sp.write_flooding_count = 0            # clear_sp_write_flooding_count
            if level == w.level:
                break
            table_gfn = w.table_gfn[level - 2]
            child = self.get_child_sp(vcpu, sp, i, table_gfn, False, w.pt_access[level - 2])
            if child is not None:
                # Sync before linking: the guest need not flush a not-present -> present
                # change, so what the new link exposes must be current.
                if child.unsync_child_bitmap:
                    self.mmu_sync_children(vcpu, child)
                self.link_shadow_page(sp, i, child)
            else:
                child = pages[S.spte_to_pfn(self.read(sp, i))]
            sp = child
            level -= 1
        # A guest huge page: direct shadow pages down to a 4 KiB leaf (host pages are 4 KiB).
        gfn = w.gfn
        if kvm.bus.active:
            kvm.trace("kvm_mmu_spte_requested", vcpu.index, gfn=gfn, pfn=pfn, level=1)
        while level > 1:
            i = _index(addr, level)
            spte = self.read(sp, i)
            if S.is_shadow_present_pte(spte) and not S.is_large_pte(spte):
                sp = pages[S.spte_to_pfn(spte)]
            else:
                base = gfn & ~((1 << (9 * (level - 1))) - 1)
                child, _c = self.get_shadow_page(vcpu, base, child_role(sp.role, True, w.pte_access))
                self.link_shadow_page(sp, i, child)
                sp = child
            level -= 1
        return self.mmu_set_spte(vcpu, slot, sp, _index(addr, 1), w.pte_access, gfn, pfn, write,
                                 host_writable)

    def clear_flood(self, root: ShadowPage, addr: int) -> None:
        """shadow_page_table_clear_flood: the tables translating addr are in use."""
        pages = self.kvm.mmu_pages.pages
        sp = root
        level = root.level
        while sp is not None:
            sp.write_flooding_count = 0
            spte = self.read(sp, _index(addr, level))
            if not S.is_shadow_present_pte(spte) or S.is_last_spte(spte, level):
                return
            sp = pages.get(S.spte_to_pfn(spte))
            level -= 1

    def leaf_spte(self, root: ShadowPage, addr: int) -> tuple[ShadowPage, int, int]:
        """(page, index, spte) of the last SPTE on addr's path (for MMIO faults and views)."""
        pages = self.kvm.mmu_pages.pages
        sp = root
        level = root.level
        while True:
            i = _index(addr, level)
            spte = self.read(sp, i)
            if not S.is_shadow_present_pte(spte) or S.is_last_spte(spte, level):
                return sp, i, spte
            nxt = pages.get(S.spte_to_pfn(spte))
            if nxt is None:
                return sp, i, spte
            sp = nxt
            level -= 1

    # --- zapping (kvm_mmu_prepare_zap_page / kvm_mmu_commit_zap_page) ---

    def zap_pte(self, sp: ShadowPage, i: int) -> None:
        """mmu_page_zap_pte: drop a leaf, or unlink a child table (which stays hashed)."""
        pte = self.read(sp, i)
        if S.is_shadow_present_pte(pte):
            if S.is_last_spte(pte, sp.level):
                self.drop_spte(sp, i)
            else:
                child = self.kvm.mmu_pages.pages.get(S.spte_to_pfn(pte))
                if child is not None:
                    self.drop_parent_pte(child, sp, i)
                else:
                    self._write(sp, i, 0)
        elif S.is_shadow_mmio_spte(pte) or S.is_mmio_spte(pte):     # legacy MMU: EPT format
            self._write(sp, i, 0)

    def prepare_zap_page(self, sp: ShadowPage, invalid: list) -> tuple[bool, int]:
        """__kvm_mmu_prepare_zap_page: (list unstable, pages zapped). mmu_shadow_zapped
        counts every call, so a root zapped while in use counts again at its last put."""
        kvm = self.kvm
        self._trace_page("kvm_mmu_prepare_zap_page", None, sp)
        kvm.stats["mmu_shadow_zapped"] += 1
        nr = self.zap_unsync_children(sp, invalid)
        before = kvm.stats["kvmdbg_sptes_zapped"]
        for i, _v in list(nonzero_entries(sp)):
            self.zap_pte(sp, i)
        for parent, i in list(sp.parent_ptes):
            self.drop_parent_pte(sp, parent, i)
        zapped = kvm.stats["kvmdbg_sptes_zapped"] - before
        kvm.charge(None, "spte_zap", zapped)
        was_invalid = sp.invalid
        unstable = nr > 0
        if not sp.invalid and not sp.role & (R.ROLE_DIRECT | R.ROLE_PASSTHROUGH):
            self.unaccount_shadowed(sp)
        self.unlink_unsync_page(sp)
        sp.unsync_child_bitmap.clear()
        zapped_root = False
        self.active.pop(sp, None)
        if not sp.root_count:
            nr += 1
            if sp not in invalid:
                invalid.append(sp)
            self.n_used -= 1                       # kvm_unaccount_mmu_page
        else:
            zapped_root = not self.is_obsolete(sp)
        sp.role |= R.ROLE_INVALID
        if sp.number:
            self._trace_root_zap(sp, was_invalid, zapped)
        if zapped_root:
            kvm.make_all_cpus_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
        return unstable, nr

    def _trace_root_zap(self, sp: ShadowPage, was_invalid: bool, zapped: int) -> None:
        """The kvmdbg: root events (catch root-zap, timeline): a root in use becomes
        invalid; a root's SPTEs are zapped."""
        kvm = self.kvm
        if sp.root_count and not was_invalid:
            kvm.stats["kvmdbg_roots_invalidated"] += 1
            kvm.trace("kvmdbg:root_invalidate", -1, root=sp.number, hpa=sp.hpa)
        if zapped:
            kvm.trace("kvmdbg:root_zap", kvm.current_vcpu_index(), root=sp.number, hpa=sp.hpa,
                      sptes=zapped)

    def zap_unsync_children(self, parent: ShadowPage, invalid: list) -> int:
        if parent.level == 1:
            return 0
        zapped = 0
        while True:
            pages: list = []
            self.unsync_walk(parent, pages, set())
            if not pages:
                return zapped
            for sp in pages:
                self.prepare_zap_page(sp, invalid)
                zapped += 1

    def commit_zap_page(self, invalid: list) -> None:
        """kvm_mmu_commit_zap_page: one remote TLB flush, then free the batch."""
        if not invalid:
            return
        kvm = self.kvm
        kvm.flush_remote_tlbs()
        for sp in invalid:
            self.free(sp)
        invalid.clear()

    def remote_flush_or_zap(self, invalid: list, flush: bool) -> None:
        if invalid:
            self.commit_zap_page(invalid)
        elif flush:
            self.kvm.flush_remote_tlbs()

    def free(self, sp: ShadowPage) -> None:
        kvm = self.kvm
        bucket = self.hash.get(sp.gfn)
        if bucket is not None:
            if sp in bucket:
                bucket.remove(sp)
            if not bucket:
                del self.hash[sp.gfn]
        if sp.number:
            kvm.stats["kvmdbg_roots_freed"] += 1
            kvm.trace("kvmdbg:root_free", kvm.current_vcpu_index(), root=sp.number, hpa=sp.hpa)
        kvm.mmu_pages.free_page(sp)

    # --- reclaim (make_mmu_pages_available) ---

    def zap_oldest(self, nr_to_zap: int) -> int:
        """kvm_mmu_zap_oldest_mmu_pages: oldest first, never a root in use."""
        invalid: list = []
        total = 0
        for sp in list(self.active):
            if sp not in self.active or sp.root_count:
                continue
            _unstable, nr = self.prepare_zap_page(sp, invalid)
            total += nr
            if total >= nr_to_zap:
                break
        self.commit_zap_page(invalid)
        self.kvm.stats["mmu_recycled"] += total
        return total

    def make_mmu_pages_available(self) -> None:
        avail = self.n_max - self.n_used
        if avail >= KVM_MIN_FREE_MMU_PAGES:
            return
        self.zap_oldest(KVM_REFILL_PAGES - avail)

    # --- roots ---

    def alloc_root(self, vcpu, gfn: int, role: int) -> ShadowPage:
        """mmu_alloc_root: the page for (gfn, role), found or made, with ++root_count."""
        kvm = self.kvm
        sp, created = self.get_shadow_page(vcpu, gfn, role)
        if not sp.number:
            kvm.mmu_pages.number_root(sp)
        sp.root_count += 1
        if created:
            kvm.stats["kvmdbg_roots_allocated"] += 1
            kvm.charge(vcpu, "root_alloc")
            # kvm_mmu_get_page traced root_count 0 (before the increment, as KVM does).
            kvm.trace("kvmdbg:root_alloc", vcpu.index, root=sp.number, hpa=sp.hpa, role=sp.role,
                      gfn=gfn, root_count=sp.root_count)
        if kvm.bus.active:
            kvm.trace("kvmdbg:root_get", vcpu.index, root=sp.number, hpa=sp.hpa,
                      root_count=sp.root_count)
        return sp

    def free_root(self, vcpu, sp: ShadowPage, invalid: list) -> None:
        """mmu_free_root_page: a valid root whose count drops to 0 stays hashed for reuse."""
        kvm = self.kvm
        sp.root_count -= 1
        if kvm.bus.active:
            kvm.trace("kvmdbg:root_put", vcpu.index if vcpu is not None else -1, root=sp.number,
                      hpa=sp.hpa, root_count=sp.root_count)
        if not sp.root_count and sp.invalid:
            self.prepare_zap_page(sp, invalid)

    # --- memslots (kvm_zap_obsolete_pages, kvm_mmu_zap_memslot) ---

    def zap_obsolete_pages(self) -> None:
        """Every page of the old generation, oldest first; roots in use become invalid and
        die at their last put. One commit (one remote flush) at the end."""
        invalid: list = []
        for sp in list(self.active):
            if sp not in self.active:
                continue
            if not self.is_obsolete(sp):
                break
            if sp.invalid:
                continue
            self.prepare_zap_page(sp, invalid)
        self.commit_zap_page(invalid)

    def zap_gfn_range(self, start: int, end: int) -> None:
        """kvm_mmu_zap_memslot without the quirk: the slot's leaves and the pages that
        shadow tables inside it; roots elsewhere survive."""
        invalid: list = []
        flush = False
        for gfn in sorted(g for g in self.rmap if start <= g < end):
            for sp, i in list(self.rmap.get(gfn, ())):
                self.drop_spte(sp, i)
                flush = True
        for gfn in sorted(g for g in self.hash if start <= g < end):
            for sp in self.valid_pages(gfn):
                self.prepare_zap_page(sp, invalid)
        self.remote_flush_or_zap(invalid, flush)

    def unused_pages(self) -> int:
        return self.n_max - self.n_used


# --- FNAME(page_fault): the #PF intercept ---

def nonpaging_walker(level: int, addr: int) -> PT.GuestWalker:
    """What nonpaging_page_fault hands direct_map: the guest-physical address is the
    linear one, with every right (ACC_ALL); fetch() then builds direct pages from the
    (direct) root down to a 4 KiB leaf."""
    w = PT.GuestWalker(level)
    w.gfn = (addr & 0xFFFF_FFFF) >> 12
    w.pte_access = R.ACC_ALL
    return w


def shadow_page_fault(vcpu, addr: int, error_code: int) -> RetPF:
    """A #PF the hardware raised on KVM's shadow tables: either the guest's own fault
    (injected, as its tables say) or a missing/insufficient SPTE (built from the guest's
    tables). Returns FIXED/SPURIOUS (re-execute), EMULATE or RETRY."""
    kvm = vcpu.kvm
    shadow = kvm.shadow
    root = vcpu.mmu.root.sp
    stale = root is None or M.is_obsolete_root(kvm, root)
    if error_code & M.PFERR_RSVD and not stale:
        # handle_mmio_page_fault: an MMIO SPTE of the current memslot generation is
        # emulated by kvm_mmu_page_fault before kvm_mmu_do_page_fault counts pf_taken.
        _sp, _i, spte = shadow.leaf_spte(root, addr)
        if S.is_shadow_mmio_spte(spte):
            gen = S.get_mmio_spte_gen(spte)
            if kvm.bus.active:
                kvm.trace("check_mmio_spte", vcpu.index, kvm_gen=kvm.memslots.generation & S.MMIO_GEN_MASK,
                          spte_gen=gen, spte=spte)
            if gen == kvm.memslots.generation & S.MMIO_GEN_MASK:
                if kvm.bus.active:
                    kvm.trace("handle_mmio_page_fault", vcpu.index, addr=addr,
                              gfn=S.shadow_mmio_gfn(spte), access=7)
                return RetPF.EMULATE
    kvm.stats["pf_taken"] += 1
    if stale:
        return RetPF.RETRY                                   # is_page_fault_stale
    pfec = error_code & (M.PFERR_WRITE | M.PFERR_USER | M.PFERR_FETCH)
    if root.direct:
        w = nonpaging_walker(root.level, addr)
    else:
        try:
            w = PT.walk_vcpu(vcpu, addr, pfec)
        except PT.WalkFault as f:
            vcpu.inject_page_fault(f.error_code, f.address)
    write = bool(error_code & M.PFERR_WRITE)
    gfn = w.gfn
    slot = kvm.memslots.lookup(gfn)
    if error_code & M.PFERR_PRESENT and write and shadow.is_write_tracked(gfn):
        # page_fault_handle_page_track: a write to a write-protected guest page table.
        shadow.clear_flood(root, addr)
        kvm.stats["pf_emulate"] += 1
        return RetPF.EMULATE
    pfn = kvm.host.hva_to_pfn(slot.gfn_to_hva(gfn)) if slot is not None else 0
    host_writable = slot is not None and not slot.flags & 2            # KVM_MEM_READONLY
    base = vcpu.mmu.cpu_role & 0xFFFF_FFFF
    if (write and not w.pte_access & R.ACC_WRITE and not base & R.ROLE_CR0_WP
            and not error_code & M.PFERR_USER and slot is not None):
        # Guest CR0.WP=0: a supervisor write to a read-only page is allowed; the SPTE
        # becomes a writable kernel page (and NX with SMEP) (kvm-mmu-spec 6.4).
        w.pte_access = (w.pte_access | R.ACC_WRITE) & ~R.ACC_USER
        if vcpu.mmu.cpu_role >> 32 & R.EXT_CR4_SMEP:
            w.pte_access &= ~R.ACC_EXEC
    shadow.make_mmu_pages_available()
    ret = shadow.fetch(vcpu, root, addr, w, slot, pfn, write, host_writable)
    M.count_outcome(kvm, ret)
    return ret


class ShadowMmuOps(MmuOps):
    """init_kvm_softmmu (ept=0): the root shadows the guest's CR3, found by (gfn, role) in
    the hash and synced on load; faults are the #PF intercept; unsync pages are synced on
    KVM_REQ_MMU_SYNC and INVLPG."""

    direct = False

    def __init__(self, kvm):
        super().__init__()
        self.kvm = kvm

    def root_role(self, cpu_role: int) -> int:
        return kvm_calc_shadow_root_role(cpu_role)

    def alloc_root(self, vcpu) -> RootInfo:
        """mmu_alloc_shadow_roots, then kvm_mmu_sync_roots. A PAE or 32-bit guest would need
        the four pae_root entries (and quadrants for 4-byte gPTEs), which are not modelled."""
        base = vcpu.mmu.cpu_role & 0xFFFF_FFFF
        level = base & R.ROLE_LEVEL_MASK
        if not base & R.ROLE_DIRECT and level < PT64_ROOT_4LEVEL:
            raise UnsupportedPaging(vcpu.cpu.rip, "PAE" if level == PT32E_ROOT_LEVEL else "32-bit")
        shadow = self.kvm.shadow
        shadow.make_mmu_pages_available()
        role = vcpu.mmu.root_role
        if role & R.ROLE_DIRECT:
            # Guest paging off: mmu_alloc_direct_roots (see kvm_calc_shadow_root_role).
            vcpu.mmu.root = RootInfo(0, shadow.alloc_root(vcpu, 0, role))
            return vcpu.mmu.root
        pgd = vcpu.cpu.cr3
        root = shadow.alloc_root(vcpu, (pgd & CR3_ADDR_MASK) >> 12, role)
        vcpu.mmu.root = RootInfo(pgd, root)
        shadow.sync_root(vcpu, root)
        return vcpu.mmu.root

    def free_root(self, vcpu, sp, invalid: list) -> None:
        self.kvm.shadow.free_root(vcpu, sp, invalid)

    def page_fault(self, vcpu, addr: int, error_code: int) -> RetPF:
        return shadow_page_fault(vcpu, addr, error_code)

    def sync_root(self, vcpu, sp) -> None:
        self.kvm.shadow.sync_root(vcpu, sp)

    def invalidate_addr(self, vcpu, gva: int, sp) -> None:
        self.kvm.shadow.invalidate_addr(vcpu, gva, sp)

