"""The TDP MMU: roots, SPTE installation and teardown (mirrors arch/x86/kvm/mmu/tdp_mmu.c).

Simplified: no RCU, no lock contention or yielding (the simulation is single-threaded
and deterministic); zaps run in one pass. Kept exact: roots found by role and
refcounted with each version's put behaviour, one function through which every
SPTE changes (tdp_mmu_set_spte -> handle_changed_spte), recursive teardown of
removed tables, and the events KVM's tracepoints would show.

The same table code also installs the legacy direct MMU's SPTEs (tdp_mmu=0), whose
pages are the shadow MMU's (legacy.py, shadow_mmu.py); `sp.tdp_mmu_page` says which.
"""

from __future__ import annotations

from functools import partial

from kvmdbg.bits import PACK_INTO, UNPACK_FROM
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu import DirectMmuOps, RootInfo
from kvmdbg.mmu.mmu_internal import (ROLE_INVALID, ROLE_LEVEL_MASK, MmuPage, RetPF, kvm_bug,
                                     role_level, role_smm)
from kvmdbg.mmu.tdp_iter import count_entries, for_each_tdp_pte, nonzero_entries, scan_page



# --- what each era does with roots, one small class per behaviour (chosen by kvm/policies.py) ---

_U64, _P64 = UNPACK_FROM[8], PACK_INTO[8]
_PRESENT, _LARGE, _REMOVED = S.SPTE_MMU_PRESENT, S.PT_PAGE_SIZE, S.REMOVED_SPTE
_PAGES_STAT = (None, "pages_4k", "pages_2m", "pages_1g")       # by level
_FIXED = RetPF.FIXED
_NONLEAF_BITS = S.make_nonleaf_spte(0)          # a table's SPTE without its pfn


class ZapOnLastPut:
    """v5.10-v5.17: the task dropping a valid root's last reference zaps the whole root."""

    mmu_holds_a_reference = False

    def last_put(self, tdp, root: MmuPage, vcpu, who: int) -> bool:
        if root.role & ROLE_INVALID:
            return False
        tdp.unlink_root(root)
        tdp.zap_root(root, payer=vcpu)
        tdp.free_root(root, who)
        return True


class ZapOnWorker:
    """22b94c4b63eb (v5.18): the last put marks the root invalid, keeps one reference for
    the worker and queues the zap (kvm-tdp-mmu-zap)."""

    mmu_holds_a_reference = False

    def last_put(self, tdp, root: MmuPage, vcpu, who: int) -> bool:
        if root.role & ROLE_INVALID:
            return False
        kvm = tdp.kvm
        root.role |= ROLE_INVALID
        root.root_count = 1
        kvm.stats["kvmdbg_roots_invalidated"] += 1
        kvm.trace("kvmdbg:root_invalidate", who, root=root.number, hpa=root.hpa)
        kvm.queue_work(partial(tdp._zap_root_work, root), f"zap root #{root.number}")
        return True


class KeepUntilInvalidated:
    """edbdb43fc96b (v6.4): the TDP MMU holds a reference of its own until the root is
    invalidated, so the vCPUs' last put never frees a valid root."""

    mmu_holds_a_reference = True

    def last_put(self, tdp, root: MmuPage, vcpu, who: int) -> bool:
        return False


class ZapInvalidatedOnWorker:
    """v5.18-v6.5: kvm_tdp_mmu_invalidate_all_roots queues each root's zap on the worker,
    and kvm_tdp_mmu_zap_invalidated_roots waits for it (flush_workqueue)."""

    def schedule(self, tdp, root: MmuPage) -> None:
        tdp.kvm.queue_work(partial(tdp._zap_root_work, root),   # picklable (snapshots)
                           f"zap root #{root.number}")

    def zap_invalidated(self, tdp, payer) -> None:
        tdp.kvm.flush_workqueue(payer)


class ZapInvalidatedInPlace:
    """Before v5.18 and from 0df9dab891ff (v6.6): the memslot update zaps the invalidated
    roots itself. flush_each: a remote TLB flush per top-level SPTE zapped, as
    zap_gfn_range(shared=true) did through tdp_mmu_zap_spte_atomic before v5.18."""

    def __init__(self, flush_each: bool = False):
        self.flush_each = flush_each

    def schedule(self, tdp, root: MmuPage) -> None:
        root.tdp_mmu_scheduled_root_to_zap = True

    def zap_invalidated(self, tdp, payer) -> None:
        for root in list(tdp.roots):
            if root.tdp_mmu_scheduled_root_to_zap:
                root.tdp_mmu_scheduled_root_to_zap = False
                tdp.zap_root(root, payer=payer, flush=self.flush_each)
                tdp.put_root(root, None)


class _EmptyWhenPickled(dict):
    """A memo that snapshots do not carry: it unpickles empty."""

    def __reduce__(self):
        return (type(self), ())


class TdpMmu:
    """kvm->arch.tdp_mmu_roots and the TDP MMU's table code (map, zap, teardown). The
    table code also builds the legacy direct MMU's tables (legacy.py). Pages come from the
    VM's pool (mmu_pages.py), which every MMU shares.

    One memo, owned here: last_tables, root pfn << 31 | gfn >> 9 -> the 4 KiB table a 4 KiB
    fault's walk reached from that root, so map() starts there. Only a path of present,
    non-leaf SPTEs is remembered, and it is emptied whenever the pool's generation moves
    (a present SPTE changed or a table went: kvmdbg/generation.py); a table built where
    one was missing does not move it and cannot change a remembered path. Root pfns are
    never reused. Unpickles empty."""

    def __init__(self, kvm, root_put=None, invalidated_zap=None):
        self.kvm = kvm
        self.root_put = root_put or KeepUntilInvalidated()
        self.invalidated_zap = invalidated_zap or ZapInvalidatedInPlace()
        self.roots: list[MmuPage] = []        # tdp_mmu_roots, newest first (list_add_rcu)
        self.pool = kvm.mmu_pages
        self.pages = self.pool.pages          # pfn -> page, for walking tables
        self.last_tables = _EmptyWhenPickled()
        self.last_tables_gen = None

    # --- roots (tdp_mmu.c) ---

    def get_vcpu_root(self, vcpu, role: int) -> MmuPage:
        """kvm_tdp_mmu_get_vcpu_root_hpa / kvm_tdp_mmu_alloc_root: reuse by role or allocate."""
        kvm = self.kvm
        for root in self.roots:
            # refcount_inc_not_zero on a valid root whose role word matches (an invalid
            # root never matches: the invalid bit is part of the word).
            if root.role == role and root.root_count > 0:
                root.root_count += 1
                if kvm.bus.active:
                    kvm.trace("kvmdbg:root_get", vcpu.index, root=root.number, hpa=root.hpa,
                              root_count=root.root_count)
                return root
        root = self.pool.alloc_page(role, 0, True)
        self.pool.number_root(root)
        # edbdb43fc96b: the TDP MMU itself holds a reference until the root is invalidated.
        root.root_count = 2 if self.root_put.mmu_holds_a_reference else 1
        self.roots.insert(0, root)
        kvm.stats["kvmdbg_roots_allocated"] += 1
        kvm.charge(vcpu, "root_alloc")
        kvm.trace("kvm_mmu_get_page", vcpu.index, mmu_valid_gen=root.mmu_valid_gen, gfn=0,
                  role=root.role, root_count=root.root_count, unsync=False, created=True,
                  root=root.number, hpa=root.hpa)
        return root

    def put_root(self, root: MmuPage, vcpu=None) -> None:
        """kvm_tdp_mmu_put_root with the era's behaviour at the last reference (root_put)."""
        kvm = self.kvm
        root.root_count -= 1
        who = vcpu.index if vcpu is not None else -1
        if kvm.bus.active:
            kvm.trace("kvmdbg:root_put", who, root=root.number, hpa=root.hpa,
                      root_count=root.root_count)
        if root.root_count > 0:
            return
        if self.root_put.last_put(self, root, vcpu, who):
            return
        # An invalid root's SPTEs are already gone (or going): unlink and free it.
        self.unlink_root(root)
        if next(nonzero_entries(root), None) is not None:
            self.zap_root(root, payer=vcpu)
        self.free_root(root, who)

    def unlink_root(self, root: MmuPage) -> None:
        if root in self.roots:
            self.roots.remove(root)

    def free_root(self, root: MmuPage, who: int) -> None:
        kvm = self.kvm
        kvm.stats["kvmdbg_roots_freed"] += 1
        kvm.trace("kvmdbg:root_free", who, root=root.number, hpa=root.hpa)
        self.pool.free_page(root)

    def _zap_root_work(self, root: MmuPage, worker) -> None:
        """tdp_mmu_zap_root_work: zap on the worker, then put the worker's reference."""
        self.zap_root(root, payer=worker)
        self.put_root(root, None)

    def invalidate_all_roots(self) -> None:
        """kvm_tdp_mmu_invalidate_all_roots (called by kvm_mmu_zap_all_fast)."""
        kvm = self.kvm
        keep = self.root_put.mmu_holds_a_reference
        for root in list(self.roots):
            if root.role & ROLE_INVALID:
                continue
            if not keep:
                if root.root_count == 0:
                    continue
                root.root_count += 1          # a reference for whoever zaps it
            root.role |= ROLE_INVALID
            kvm.stats["kvmdbg_roots_invalidated"] += 1
            kvm.trace("kvmdbg:root_invalidate", -1, root=root.number, hpa=root.hpa)
            self.invalidated_zap.schedule(self, root)

    def zap_invalidated_roots(self, payer) -> None:
        """kvm_tdp_mmu_zap_invalidated_roots: wait for the workers, or zap here (0df9dab891ff)."""
        self.invalidated_zap.zap_invalidated(self, payer)

    # --- SPTE access ---

    def tdp_mmu_set_spte(self, sp: MmuPage, index: int, new: int, gfn: int) -> None:
        """The single place an SPTE changes; bookkeeping hangs on handle_changed_spte.
        It runs before the store, so a change the kernel would BUG() on leaves the table
        as it was (nothing reads the entry in between in this single-threaded model)."""
        spt = sp.spt
        o = index << 3
        old = _U64(spt, o)[0]
        self.handle_changed_spte(sp, gfn, old, new, sp.role & ROLE_LEVEL_MASK)
        _P64(spt, o, new)
        if new:
            sp.touched |= 1 << index
        if old & _PRESENT:
            self.pool.generation.value += 1      # see kvmdbg/generation.py: only a present
                                                 # SPTE's change can undo a memoised walk

    def handle_changed_spte(self, sp: MmuPage, gfn: int, old: int, new: int, level: int) -> None:
        """handle_changed_spte: bookkeeping for one SPTE change, with the kernel's checks.
        (Runs for every SPTE installed: the spte.py predicates are written out as bit tests.)"""
        if old == new:
            return
        kvm = self.kvm
        if not old and new & _PRESENT:
            # An empty entry made present (every EPT violation, every table built): the
            # general case below with was_present and was_leaf false, written out.
            if kvm.bus.active and sp.tdp_mmu_page:
                kvm.trace("kvm_tdp_mmu_spte_changed", kvm.current_vcpu_index(), gfn=gfn,
                          old_spte=old, new_spte=new, level=level, as_id=role_smm(sp.role))
            self.pool.live_sptes += 1
            stats = kvm.stats
            if level == 1 or new & _LARGE:
                stats[_PAGES_STAT[level]] += 1
            stats["kvmdbg_sptes_created"] += 1
            return
        was_present = bool(old & _PRESENT)                  # is_shadow_present_pte
        is_present = bool(new & _PRESENT)
        was_leaf = was_present and (level == 1 or bool(old & _LARGE))     # is_last_spte
        is_leaf = is_present and (level == 1 or bool(new & _LARGE))
        if was_leaf and is_leaf and (old ^ new) & S.PFN_MASK:
            # KVM BUG()s: a present leaf is never pointed at another pfn without a zap first.
            kvm_bug(f"present leaf SPTE at gfn {gfn:#x} level {level} replaced: "
                    f"{old:#x} -> {new:#x}")
        if not was_present and not is_present:
            # WARN_ON_ONCE: non-present to non-present happens only to or from MMIO, or
            # while a table is being removed (the SPTE frozen).
            if not (S.is_mmio_spte(old) or S.is_mmio_spte(new) or new == _REMOVED):
                kvm_bug(f"non-present SPTE at gfn {gfn:#x} changed: {old:#x} -> {new:#x}")
        if kvm.bus.active:
            if sp.tdp_mmu_page:
                kvm.trace("kvm_tdp_mmu_spte_changed", kvm.current_vcpu_index(), gfn=gfn,
                          old_spte=old, new_spte=new, level=level, as_id=role_smm(sp.role))
        self.pool.live_sptes += (1 if new and new != _REMOVED else 0) - (1 if old and old != _REMOVED else 0)
        stats = kvm.stats
        if was_leaf != is_leaf:
            stats[_PAGES_STAT[level]] += 1 if is_leaf else -1
        if was_present and not is_present:
            stats["kvmdbg_sptes_zapped"] += 1
        elif is_present and not was_present:
            stats["kvmdbg_sptes_created"] += 1
        if was_present and not was_leaf and (not is_present or is_leaf):
            child = self.pages.get((old & S.PFN_MASK) >> 12)
            if child is not None:
                self.handle_removed_pt(child)

    def handle_removed_pt(self, sp: MmuPage) -> None:
        """A table was unlinked: account for each entry as handle_changed_spte(old,
        REMOVED_SPTE) would, recursing into the tables below, and free it. One path whether
        or not anyone traces: the bookkeeping is written out here (and summed per table)
        because a zap spends most of its time in this loop. KVM freezes each entry first
        for concurrent walkers; nothing walks a table between its unlinking and its freeing
        in this single-threaded model, so the entries are left as they are."""
        kvm = self.kvm
        trace = kvm.bus.active
        if trace:
            kvm.trace("kvm_mmu_prepare_zap_page", kvm.current_vcpu_index(),
                      mmu_valid_gen=sp.mmu_valid_gen, gfn=sp.gfn, role=sp.role,
                      root_count=sp.root_count, unsync=False)
            trace = sp.tdp_mmu_page
        level = sp.role & ROLE_LEVEL_MASK                         # role_level
        span = 9 * (level - 1)
        removed = S.REMOVED_SPTE
        present_bit, large_bit = S.SPTE_MMU_PRESENT, S.PT_PAGE_SIZE
        if level == 1 and not trace:
            # Leaves only, untraced (the bulk of a zap): counted in one pass.
            entries, zapped = count_entries(sp, removed)
            leaves = zapped
        else:
            indices, values = scan_page(sp)
            live = [i for i in indices if values[i] != removed]
            entries = len(live)
            as_id = role_smm(sp.role) if trace else 0
            if level == 1:
                # Leaves, traced in index order.
                for i in live:
                    kvm.trace("kvm_tdp_mmu_spte_changed", kvm.current_vcpu_index(),
                              gfn=sp.gfn + i, old_spte=values[i], new_spte=removed,
                              level=1, as_id=as_id)
                zapped = leaves = len([i for i in live if values[i] & present_bit])
            else:
                # As the kernel: each entry's change, then the table below it.
                zapped = leaves = 0
                for i in live:
                    old = values[i]
                    if trace:
                        kvm.trace("kvm_tdp_mmu_spte_changed", kvm.current_vcpu_index(),
                                  gfn=sp.gfn + (i << span), old_spte=old, new_spte=removed,
                                  level=level, as_id=as_id)
                    if not old & present_bit:
                        continue                                 # an MMIO SPTE
                    zapped += 1
                    if old & large_bit:
                        leaves += 1
                    else:
                        child = self.pages.get(S.spte_to_pfn(old))
                        if child is not None:
                            self.handle_removed_pt(child)
        stats = kvm.stats
        stats["kvmdbg_sptes_zapped"] += zapped
        if leaves:
            stats[("pages_4k", "pages_2m", "pages_1g")[level - 1]] -= leaves
        self.pool.live_sptes -= entries
        self.pool.generation.value += 1
        self.pool.free_page(sp)

    # --- zapping ---

    def zap_root(self, root: MmuPage, payer=None, flush: bool = False) -> int:
        """tdp_mmu_zap_root: zap every SPTE of the root; the cost goes to `payer`. flush:
        a remote TLB flush per top-level SPTE zapped, as zap_gfn_range(shared=true) did
        through tdp_mmu_zap_spte_atomic before v5.18."""
        kvm = self.kvm
        before = kvm.stats["kvmdbg_sptes_zapped"]
        for it in for_each_tdp_pte(self.pages, root, min_level=role_level(root.role)):
            self.tdp_mmu_set_spte(it.sp, it.index, 0, it.gfn)
            if flush:
                kvm.flush_remote_tlbs()
        n = kvm.stats["kvmdbg_sptes_zapped"] - before
        kvm.charge(payer, "spte_zap", n)
        if kvm.bus.active:
            kvm.trace("kvmdbg:root_zap", payer.index if hasattr(payer, "index") else -1,
                      root=root.number, hpa=root.hpa, sptes=n)
        return n

    def zap_leafs(self, start_gfn: int, end_gfn: int, roots=None) -> bool:
        """kvm_tdp_mmu_zap_leafs over [start, end) in valid roots; True if a flush is needed."""
        flush = False
        for root in list(roots if roots is not None else self.roots):
            if root.role & ROLE_INVALID:
                continue
            flush |= self._zap_leafs(root, start_gfn, end_gfn)
        return flush

    def _zap_leafs(self, root: MmuPage, start: int, end: int) -> bool:
        """tdp_mmu_zap_leafs: every present leaf of one root in [start, end)."""
        flush = False
        for it in for_each_tdp_pte(self.pages, root, start, end):
            if S.is_shadow_present_pte(it.old_spte) and S.is_last_spte(it.old_spte, it.level):
                self.tdp_mmu_set_spte(it.sp, it.index, 0, it.gfn)
                flush = True
        return flush

    def count_sptes(self, sp: MmuPage) -> tuple[int, int]:
        """(leaf SPTEs, tables) under sp, sp included as a table."""
        leaves, tables = 0, 1
        for it in for_each_tdp_pte(self.pages, sp):
            if not S.is_shadow_present_pte(it.old_spte):
                continue
            if S.is_last_spte(it.old_spte, it.level):
                leaves += 1
            elif it.old_spte and S.spte_to_pfn(it.old_spte) in self.pages:
                tables += 1
        return leaves, tables

    # --- the page fault path (kvm_tdp_mmu_map) ---

    def map(self, vcpu, root: MmuPage, fault, alloc_child) -> RetPF:
        """Walk from the root to fault.goal_level, building tables, and install the leaf."""
        kvm = self.kvm
        gfn = fault.gfn
        goal_level = fault.goal_level
        if kvm.bus.active:
            kvm.trace("kvm_mmu_spte_requested", vcpu.index, gfn=gfn, pfn=fault.pfn,
                      level=goal_level)
        # tdp_mmu_for_each_pte(iter, mmu, gfn, gfn + 1): a missing table is built where the
        # walk stands, and the walk then steps down into it (re-reading the entry, as
        # tdp_iter_next does). Written out rather than through for_each_tdp_pte: this runs
        # on every EPT violation (tests/kvm/test_tdp_map_walk.py pins the two together).
        key = None
        if goal_level == 1:
            # The path to this gfn's 4 KiB table, as the walk found it (see the class).
            gen = self.pool.generation.value
            if gen != self.last_tables_gen:
                self.last_tables.clear()
                self.last_tables_gen = gen
            key = root.pfn << 31 | gfn >> 9           # (root pfn, gfn >> 9) as one int
            sp = self.last_tables.get(key)
            if sp is not None:
                index = gfn & 511
                spte = _U64(sp.spt, index << 3)[0]
                if spte == _REMOVED:
                    return RetPF.RETRY
                return self._map_target_level(vcpu, sp, index, spte, 1, fault)
        pages = self.pages
        sp = root
        while True:
            level = sp.role & ROLE_LEVEL_MASK
            span = 9 * (level - 1)
            index = (gfn >> span) & 511
            spt = sp.spt
            spte = _U64(spt, index << 3)[0]
            if spte == _REMOVED:
                return RetPF.RETRY
            if level == goal_level:
                if key is not None:
                    self.last_tables[key] = sp
                return self._map_target_level(vcpu, sp, index, spte, level, fault)
            if not spte & _PRESENT or spte & _LARGE:           # no table here: build one
                entry_gfn = sp.gfn + (index << span)
                child = alloc_child(sp, entry_gfn, level - 1)
                child.parent = sp
                child.parent_index = index
                if spte & _PRESENT:
                    self._split_huge(child, spte, level - 1)
                self.tdp_mmu_set_spte(sp, index, S.make_nonleaf_spte(child.pfn), entry_gfn)
                kvm.charge(vcpu, "sp_alloc")
                spte = _U64(spt, index << 3)[0]
            if level == 1 or not spte & _PRESENT or spte & _LARGE:
                break
            sp = pages.get((spte & S.PFN_MASK) >> 12)              # try_step_down
            if sp is None:
                break
        raise AssertionError("the walk ended above the goal level")

    def fast_leaf_fault(self, vcpu, gfn: int):
        """direct_page_fault -> kvm_tdp_mmu_map for the commonest faults, written out: a
        4 KiB page of a RAM memslot (no huge pages), with nobody tracing, whose entry is
        empty, in a 4 KiB table this root's walk already reached (last_tables) or in
        tables built for it where the walk from the root meets an empty entry; every EPT
        violation of a working set after each root is rebuilt. The same effects in the same
        order as the general path (pf_taken, the pfn faulted in, each table allocated,
        linked as tdp_mmu_link_sp links it with handle_changed_spte's bookkeeping and
        charged, the leaf made as make_spte makes it, pf_fixed). None: another case (a
        huge, removed or MMIO entry on the way, another slot), nothing done. Vcpu.
        exit_in_place and TdpMmuOps.page_fault call it; tests/kvm/test_fault_path_fast.py
        runs programs and the access test with and without it."""
        kvm = self.kvm
        if kvm.bus.active or kvm.huge_pages:
            return None
        root = vcpu.mmu.root.sp
        # (is_obsolete_root of a TDP MMU root: invalid or freed.)
        if root is None or root.role & ROLE_INVALID or root.freed:
            return None
        gen = self.pool.generation.value
        if gen != self.last_tables_gen:            # map's memo rule (see the class)
            self.last_tables.clear()
            self.last_tables_gen = gen
        key = root.pfn << 31 | gfn >> 9
        sp = self.last_tables.get(key)
        level = 1
        walked = sp is None
        if walked:
            # tdp_mmu_for_each_pte from the root, down present tables, to the 4 KiB table
            # or to the empty entry below which the tables are to be built.
            sp = root
            pages = self.pages
            while True:
                level = sp.role & ROLE_LEVEL_MASK
                if level == 1:
                    break
                spte = _U64(sp.spt, ((gfn >> (9 * (level - 1))) & 511) << 3)[0]
                if not spte:
                    break
                if not spte & _PRESENT or spte & _LARGE:
                    return None                    # removed, MMIO or huge: the general path
                sp = pages.get((spte & S.PFN_MASK) >> 12)
                if sp is None:
                    return None
        index = gfn & 511
        if level == 1 and _U64(sp.spt, index << 3)[0]:
            return None
        slot = kvm.memslots.lookup(gfn)
        if slot is None:
            return None
        stats = kvm.stats
        stats["pf_taken"] += 1
        pfn = kvm.host.hva_to_pfn(slot.userspace_addr + ((gfn - slot.base_gfn) << 12))  # gfn_to_hva
        pool = self.pool
        while level > 1:
            # A missing table: allocated, linked (tdp_mmu_link_sp: an empty entry made
            # present, handle_changed_spte's case written out) and charged, as map does.
            span = 9 * (level - 1)
            i = (gfn >> span) & 511
            child = pool.alloc_page((sp.role & ~0xF) | (level - 1), sp.gfn + (i << span), True)
            child.parent = sp
            child.parent_index = i
            _P64(sp.spt, i << 3, _NONLEAF_BITS | child.pfn << 12)       # make_nonleaf_spte
            sp.touched |= 1 << i
            pool.live_sptes += 1
            stats["kvmdbg_sptes_created"] += 1
            kvm.charge(vcpu, "sp_alloc")
            sp = child
            level -= 1
        if walked:
            self.last_tables[key] = sp
        _P64(sp.spt, index << 3, S.LEAF_4K_BITS[not slot.flags & 2] | pfn << 12)   # make_spte(pfn, 1, !READONLY)
        sp.touched |= 1 << index
        pool.live_sptes += 1
        stats["pages_4k"] += 1
        stats["kvmdbg_sptes_created"] += 1
        stats["pf_fixed"] += 1
        return _FIXED

    def _split_huge(self, child: MmuPage, huge: int, level: int) -> None:
        """kvm_mmu_split_huge_page: fill the new table with 512 smaller leaves."""
        base_pfn = S.spte_to_pfn(huge)
        span = 9 * (level - 1)
        flags = huge & ~S.PFN_MASK & ~(S.PT_PAGE_SIZE if level == 1 else 0)
        for i in range(512):
            new = flags | ((base_pfn + (i << span)) << 12)
            self.tdp_mmu_set_spte(child, i, new, child.gfn + (i << span))

    def _map_target_level(self, vcpu, sp: MmuPage, index: int, old: int, level: int, fault) -> RetPF:
        kvm = self.kvm
        if fault.slot is None:
            new = S.make_mmio_spte(fault.gfn, kvm.memslots.generation)
            self.tdp_mmu_set_spte(sp, index, new, fault.gfn)
            kvm.stats["pf_mmio_spte_created"] += 1
            kvm.trace("mark_mmio_spte", vcpu.index, gfn=fault.gfn, access=7,
                      gen=kvm.memslots.generation)
            return RetPF.EMULATE
        new = S.make_spte(fault.pfn, level, fault.map_writable)
        if new == old:
            return RetPF.SPURIOUS
        if old & _PRESENT and not (level == 1 or old & _LARGE):
            # Replacing a table with a huge leaf: the removed table goes, then flush.
            kvm.flush_remote_tlbs()
        self.tdp_mmu_set_spte(sp, index, new, fault.gfn)
        if kvm.bus.active:
            kvm.trace("kvm_mmu_set_spte", vcpu.index, gfn=fault.gfn, spte=new, level=level,
                      r=True, x=True, u=True)
        return _FIXED


class TdpMmuOps(DirectMmuOps):
    """init_kvm_tdp_mmu with the TDP MMU on: roots from tdp_mmu_roots by role, faults
    through kvm_tdp_mmu_map."""

    tdp_mmu_faults = True       # page_fault tries TdpMmu.fast_leaf_fault first (see MmuOps)

    def alloc_root(self, vcpu) -> RootInfo:
        sp = self.kvm.tdp_mmu.get_vcpu_root(vcpu, vcpu.mmu.root_role)
        info = sp.root_info
        if info is None:
            info = sp.root_info = RootInfo(0, sp)
        return info

    def free_root(self, vcpu, sp, invalid: list) -> None:
        self.kvm.tdp_mmu.put_root(sp, vcpu)

    def page_fault(self, vcpu, addr: int, error_code: int) -> RetPF:
        ret = self.kvm.tdp_mmu.fast_leaf_fault(vcpu, addr >> 12)
        if ret is None:
            ret = super().page_fault(vcpu, addr, error_code)      # direct_page_fault
        return ret

    def map_fault(self, vcpu, root, fault):
        return self.kvm.tdp_mmu.map(vcpu, root, fault, self._alloc_child)

    def _alloc_child(self, parent, gfn: int, level: int):
        return self.kvm.tdp_mmu.pool.alloc_page((parent.role & ~0xF) | level, gfn, True)
