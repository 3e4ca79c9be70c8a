"""The simulated-time cost table: every default says where its number comes from.

Units are cycles of a ~3 GHz core. `info costs` shows the table; `set cost NAME N`
changes one entry. Figures marked "assumption" have no published measurement
(kvm-mmu-spec section 9 says which) and are there to be tuned.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    name: str
    cycles: int
    source: str


DEFAULTS = (
    Cost("insn", 1, "one guest instruction (the unit of simulated time)"),
    Cost("tlb_miss", 40, "assumption: a 2-D walk mostly hitting caches; up to 24 references worst case (spec 9)"),
    Cost("vmexit", 1100, "trivial VM exit round trip, CPUID: ~1,018-1,110 cycles (Christopherson & Kauer, kvm@ Dec 2024)"),
    Cost("cr_access", 300, "assumption: handle_cr + kvm_set_cr4 checks and vmx_set_cr4 VMWRITEs"),
    Cost("mmu_reset", 1500, "Paolo Bonzini, Feb 2022: CR toggle with root reuse 4,879 cycles incl. the exit; split over reset and load"),
    Cost("mmu_load", 1500, "same source as mmu_reset (the other half of the ~3,700 cycles of MMU bookkeeping)"),
    Cost("root_alloc", 800, "assumption: page allocation + root list insertion"),
    Cost("sp_alloc", 400, "assumption: one page-table page from the per-vCPU cache"),
    Cost("ept_violation", 2000, "assumption per spec 9: 'VM-exit round trip + 1-3 us of KVM work' (here ~0.7 us)"),
    Cost("pf_intercept", 2000, "assumption: a #PF intercepted under shadow paging: KVM's software walk of the guest tables + FNAME(fetch), priced like an EPT violation (spec 9)"),
    Cost("sync_page", 1000, "assumption: kvm_sync_page re-reads and compares the gPTEs behind one unsync shadow page"),
    Cost("spte_zap", 165, "derived: 64 TiB of 4 KiB SPTEs zapped in 900+ s = ~55 ns per leaf (async zap commit message)"),
    Cost("invept", 300, "assumption: 'a few hundred cycles' (no published figure, spec 9)"),
    Cost("invvpid", 200, "assumption, as INVEPT"),
    Cost("io_exit", 2528, "KVM_RUN ioctl round trip incl. VMRUN ~2,528 cycles (LKML Dec 2020)"),
    Cost("mmio_emulate", 3000, "assumption: x86 emulator decode + software walk before the userspace exit"),
    Cost("memslot_ioctl", 10000, "assumption: KVM_SET_USER_MEMORY_REGION bookkeeping (memslot copy, SRCU sync)"),
    Cost("kick", 3300, "IPI vmexit test 4,238 -> 3,293 cycles (Wanpeng Li 2020, Skylake-SP)"),
    Cost("smm_transition", 20000, "assumption: SMM entry or RSM with state save/restore"),
)


class CostTable:
    def __init__(self) -> None:
        self._by_name = {c.name: c for c in DEFAULTS}
        self.values = {c.name: c.cycles for c in DEFAULTS}

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def set(self, name: str, cycles: int) -> None:
        if name not in self.values:
            raise KeyError(name)
        self.values[name] = cycles

    def rows(self):
        for c in DEFAULTS:
            yield c.name, self.values[c.name], c.source
