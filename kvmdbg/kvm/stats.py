"""Counters: KVM's stats under their kernel names, and the simulator's own as kvmdbg_*.

A counter named like a kernel stat counts what the kernel's counts, where the kernel
bumps it (`help info stats` names each function); anything else is prefixed kvmdbg_ so
it is never read as a kernel number.
"""

from __future__ import annotations

# x86.c's kvm_vcpu_stats_desc (per vCPU; kvm_stat shows their sum over the vCPUs) ...
KVM_VCPU_STATS = (
    "exits", "halt_exits", "io_exits", "mmio_exits", "irq_exits", "insn_emulation",
    "hypercalls", "pf_taken", "pf_fixed", "pf_emulate", "pf_spurious", "pf_mmio_spte_created",
    "pf_guest", "tlb_flush", "invlpg",
)
# ... and kvm_vm_stats_desc with KVM_GENERIC_VM_STATS (one count per VM).
KVM_VM_STATS = (
    "remote_tlb_flush_requests", "remote_tlb_flush", "mmu_shadow_zapped", "mmu_cache_miss",
    "mmu_pte_write", "mmu_pde_zapped", "mmu_flooded", "mmu_recycled", "mmu_unsync",
    "pages_4k", "pages_2m", "pages_1g",
)
KVM_STATS = KVM_VCPU_STATS + KVM_VM_STATS
SIM_PREFIX = "kvmdbg_"


class Stats(dict):
    """name -> count; missing names read as 0 so callers never guard."""

    def __missing__(self, key):
        return 0

    def snapshot(self) -> dict:
        return dict(self)
