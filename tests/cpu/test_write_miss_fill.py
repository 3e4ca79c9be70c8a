"""Cpu.write_miss's written-out TLB fill (translate()'s commonest case after a flush) against
write_miss as it was, calling translate() for every miss: whole VM runs of every program
under several profiles give the same stats, cycles, walks, TLB contents, events and memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmdbg.cpu.faults import PFERR_USER, PFERR_WRITE
from kvmdbg.kvm.boot import load_program, boot
from kvmdbg.kvm.profiles import get_profile
from kvmdbg.kvm.scheduler import run_vm
from kvmdbg.kvm.vm import Vm

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"


def reference_write_miss(cpu, va: int, size: int, value: int) -> None:
    """write_miss before its inline fill: every miss through translate()."""
    off = va & 0xFFF
    if off > 4096 - size:
        cpu._split_write(va, size, value)
        return
    e = cpu.translate(va, PFERR_WRITE | PFERR_USER if cpu.cs & 3 == 3 else PFERR_WRITE)
    page = e.page
    hpn = e.hpa >> 12
    dc = cpu.decode_cache
    if page is None or hpn in dc.code_pages or hpn in dc.pt_pages:
        cpu._store(e, off, value.to_bytes(size, "little"))
        return
    page[off:off + size] = value.to_bytes(size, "little")
    cpu.fast_w[e.vpn] = page
    cpu.fast_r[e.vpn] = page
    cpu._note_large(e)


def _run(profile: str, program: str, arg: int, reference: bool):
    vm = Vm(16 << 20, 2 if "2vcpu" in program else 1, profile=get_profile(profile))
    boot(vm, load_program(str(PROGRAMS / f"{program}.bin")), arg)
    if reference:
        for v in vm.vcpus:
            v.cpu.write_miss = reference_write_miss.__get__(v.cpu)
    vm.bus.set_keep(10**6)
    run_vm(vm, 200_000)
    out = [sorted(vm.stats.items()), bytes(vm.console),
           [(e.name, e.step, e.cycles, sorted(e.fields.items())) for e in vm.bus.log],
           sorted((pfn, bytes(p)) for pfn, p in vm.host.pages.items())]
    for v in vm.vcpus:
        c = v.cpu
        out.append((c.steps, c.cycles, c.walks, list(c.r), c.tlb.fills,
                    sorted((t, sorted((k, e.hpa, e.dirty) for k, e in ctx.items()))
                           for t, ctx in c.tlb.contexts.items())))
    return out


@pytest.mark.parametrize("profile", ["v5.15", "v6.12", "shadow", "legacy-mmu"])
@pytest.mark.parametrize("program,arg", [("smep_flip", 0x0800000010), ("smep_flip_2vcpu", 6),
                                         ("pt_edit", 0), ("upper_half", 0), ("smap_mmio", 0),
                                         ("cr0_wp_flip", 5)])
def test_write_miss_fill_matches_translate(profile, program, arg):
    assert _run(profile, program, arg, False) == _run(profile, program, arg, True)


def _run_memo(profile: str, program: str, arg: int, reuse: bool):
    """A run whose guest walk memo hands out its last TLB entry again (reuse) or always
    makes a new one."""
    from kvmdbg.cpu.walker import GuestWalkMemo

    class NoReuse(GuestWalkMemo):
        __slots__ = ()

        def walk(self, cpu, va, acc):
            for m in self.entries.values():
                m[9] = None
            return super().walk(cpu, va, acc)

    vm = Vm(16 << 20, 2 if "2vcpu" in program else 1, profile=get_profile(profile))
    boot(vm, load_program(str(PROGRAMS / f"{program}.bin")), arg)
    if not reuse:
        for v in vm.vcpus:
            v.cpu.walk_fn = NoReuse().walk
    vm.bus.set_keep(10**6)
    run_vm(vm, 200_000)
    out = [sorted(vm.stats.items()), [(e.name, e.step, e.cycles, sorted(e.fields.items()))
                                      for e in vm.bus.log]]
    for v in vm.vcpus:
        c = v.cpu
        out.append((c.steps, c.cycles, c.walks, list(c.r), c.tlb.fills,
                    sorted((t, sorted((k, e.hpa, e.dirty, e.glob, e.ept_w) for k, e in ctx.items()))
                           for t, ctx in c.tlb.contexts.items())))
    return out


@pytest.mark.parametrize("profile", ["v5.15", "v6.1", "v6.12"])
@pytest.mark.parametrize("program,arg", [("smep_flip", 0x0800000010), ("smep_flip_2vcpu", 6),
                                         ("pt_edit", 0), ("cr0_wp_flip", 5), ("upper_half", 0)])
def test_guest_walk_memo_entry_reuse_matches_fresh_entries(profile, program, arg):
    assert _run_memo(profile, program, arg, True) == _run_memo(profile, program, arg, False)
