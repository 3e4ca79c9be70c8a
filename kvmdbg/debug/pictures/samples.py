"""Counter samples for the trace export: TLB entries per vCPU and live SPTEs.

The event log has no TLB-fill events (fills are the interpreter's hot path and stay
silent), so the counts are read off the model whenever a vCPU exits or enters: one
cheap look per exit, only while events are being recorded, bounded like the log.
"""

from __future__ import annotations

from collections import deque

SAMPLED = frozenset(("kvm_exit", "kvm_entry"))


class CounterSampler:
    """An event-bus listener; .samples holds (seq, cycles, vcpu, tlb entries, live SPTEs)."""

    def __init__(self, vm, keep: int):
        self.vm = vm
        self.samples: deque = deque(maxlen=keep or None)

    def __call__(self, ev) -> None:
        if ev.name in SAMPLED and ev.vcpu >= 0:
            vm = self.vm
            self.samples.append((ev.seq, ev.cycles, ev.vcpu, len(vm.vcpus[ev.vcpu].cpu.tlb),
                                 vm.mmu_pages.live_sptes))


def start_sampling(vm):
    """Listen on vm's bus when it records events; None when it does not (nothing to pair
    samples with, and listening would slow a quiet bus)."""
    if not vm.bus.keep:
        return None
    sampler = CounterSampler(vm, vm.bus.keep)
    vm.bus.subscribe(sampler)
    return sampler
