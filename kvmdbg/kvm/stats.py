"""Counters: KVM's stat names where KVM has one, and the simulator's own."""

from __future__ import annotations

KVM_STATS = (
    "exits", "halt_exits", "io_exits", "mmio_exits", "irq_exits", "insn_emulation",
    "pf_taken", "pf_fixed", "pf_emulate", "pf_spurious", "pf_mmio_spte_created",
    "tlb_flush", "remote_tlb_flush", "mmu_cache_miss", "mmu_shadow_zapped",
    "mmu_pte_write", "mmu_recycled", "pages_4k", "pages_2m", "pages_1g", "hypercalls",
    "mmu_flooded", "mmu_pde_zapped", "mmu_unsync", "invlpg",
)
SIM_STATS = (
    "cycles", "instructions", "roots_allocated", "roots_freed", "roots_invalidated",
    "sptes_created", "sptes_zapped", "tables_allocated", "tables_freed", "mmu_resets",
    "mmu_unloads", "mmu_loads", "invept", "invvpid", "tlb_hits", "tlb_misses",
    "worker_cycles", "memslot_changes", "cr_exits", "ept_violations", "ept_misconfigs",
    # shadow paging: #PF intercepts, guest faults injected, prev_roots hits/misses, pages synced
    "pf_exits", "pf_guest", "pgd_switch_hits", "pgd_switch_misses", "mmu_sync_pages",
)


class Stats(dict):
    """name -> count; missing names read as 0 so callers never guard."""

    def __missing__(self, key):
        return 0

    def snapshot(self) -> dict:
        return dict(self)
