"""EPT violations handled in place (Vcpu.exit_in_place) against the exit that unwinds to
the run loop: nothing may tell the two apart. The oracle is kvmdbg's own slow path, the
one that takes every exit as the hardware does (SDM Vol. 3C 27.1: nothing of the exiting
instruction retires, it runs again after the entry), chosen with vm.exits_in_place =
False; the slow path itself is pinned by the scenario, kvm-unit-tests and unicorn tests.

Every shipped program and the kvm-unit-tests images run under the EPT profiles (v5.15
frees the root on every CR4 write, so its guests take the most violations), stopped by a
step limit part-way, and random programs mix page-table edits, INVLPG, #PFs through a
guest handler and SMEP flips. What is compared is everything a user or the guest can see:
registers, steps and cycles, walks, the TLB and the EPT cache, KVM's counters, every
MMU page (root numbers and the step each became a root), memory and the console.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmdbg.cpu.faults import PF, GuestFault
from kvmdbg.kvm import x86
from kvmdbg.kvm import vcpu as vcpu_module
from kvmdbg.kvm.boot import load_program, make_vm
from kvmdbg.kvm.scheduler import run_vm
from kvmdbg.mmu.mmu_internal import RetPF
from kvmdbg.mmu.tdp_mmu import TdpMmu
from tests.cpu import test_page_invalidation as inval
from tests.cpu.guest_idt import install
from tests.helpers import kut_image, vm_fingerprint

ROOT = Path(__file__).resolve().parent.parent.parent
PROGRAMS = sorted(p.stem for p in (ROOT / "programs").glob("*.bin"))
EPT_PROFILES = ("v5.15", "v6.1", "v6.12", "legacy-mmu")


@pytest.fixture
def in_place_count(monkeypatch):
    """[EPT violations handled in place, handled there but left to the run loop to finish]
    (a wrapper around the real method)."""
    counts = [0, 0]
    real = vcpu_module.Vcpu.exit_in_place

    def counting(self, gpa, qual):
        done = real(self, gpa, qual)
        counts[0] += done is True
        counts[1] += done is not True and done is not False
        return done
    monkeypatch.setattr(vcpu_module.Vcpu, "exit_in_place", counting)
    return counts


def both_ways(build, steps: int):
    """(fingerprint in place, fingerprint through the run loop) of the VM build() makes."""
    prints = []
    for in_place in (True, False):
        vm = build()
        assert vm.exits_in_place == (len(vm.vcpus) == 1)        # the VM's default
        if not in_place:
            vm.exits_in_place = False
        run_vm(vm, steps)
        prints.append(vm_fingerprint(vm))
    return prints


@pytest.mark.parametrize("kvm", EPT_PROFILES)
@pytest.mark.parametrize("name", PROGRAMS)
def test_programs_see_no_difference(name, kvm, in_place_count):
    vcpus = 2 if "2vcpu" in name else 1
    program = load_program(str(ROOT / "programs" / f"{name}.bin"))
    ours, theirs = both_ways(lambda: make_vm(program, kvm, (), vcpus, 16 << 20, 0), 40_000)
    assert ours == theirs
    if name == "smap_mmio":
        # Its MMIO page's first access: KVM installs an MMIO SPTE and asks for the
        # instruction's emulation, which the run loop does once RIP is exact.
        assert in_place_count[1] > 0


def test_the_v515_flip_loop_takes_its_violations_in_place(in_place_count):
    """smep_flip's 16-page working set under v5.15: each flip frees the root, so each of the
    16 pages, its code page and their 5 tables fault again (22 violations a flip); with one
    vCPU and nothing watching, every one is handled in place."""
    program = load_program(str(ROOT / "programs" / "smep_flip.bin"))
    vm = make_vm(program, "v5.15", (), 1, 16 << 20, 50)
    run_vm(vm, 10**7)
    assert vm.console.endswith(b"done\n")
    assert vm.stats["kvmdbg_ept_violations"] >= 50 * 22
    assert in_place_count[0] == vm.stats["kvmdbg_ept_violations"]


def test_two_vcpus_take_every_exit_through_the_scheduler(in_place_count):
    program = load_program(str(ROOT / "programs" / "smep_flip_2vcpu.bin"))
    vm = make_vm(program, "v5.15", (), 2, 16 << 20, 0)
    run_vm(vm, 20_000)
    assert vm.stats["kvmdbg_ept_violations"] > 0 and in_place_count[0] == 0


def test_a_watched_run_takes_every_exit_through_the_run_loop(in_place_count):
    """With events recorded (a trace, a catchpoint) each exit's event must carry the RIP
    and step the run loop makes exact, so nothing is handled in place."""
    program = load_program(str(ROOT / "programs" / "smep_flip.bin"))
    vm = make_vm(program, "v5.15", (), 1, 16 << 20, 3, keep_events=10**5)
    run_vm(vm, 10**6)
    assert vm.stats["kvmdbg_ept_violations"] > 0 and in_place_count[0] == 0


@pytest.mark.parametrize("image,steps", [("smap.flat", 400_000), ("pku.flat", 400_000),
                                         ("pcid.flat", 400_000), ("access_test.flat", 300_000)])
@pytest.mark.parametrize("kvm", ("v5.15", "v6.12"))
def test_kvm_unit_tests_see_no_difference(image, steps, kvm, in_place_count):
    path = str(kut_image(image))
    ours, theirs = both_ways(lambda: make_vm(load_program(path), kvm), steps)
    assert ours == theirs
    assert in_place_count[0] > 0


# Random programs: test_page_invalidation's accesses, PTE/PDE edits, INVLPGs and #PFs that a
# guest handler logs and skips, with SMEP flips added (under v5.15 each frees the root, so
# the accesses after it take EPT violations: in walks, in deliveries of the #PF, on code).
op = st.one_of(inval.op, st.just(("flip",)))


def flip_lines(o) -> list:
    return ["mov rax, cr4", "xor rax, 0x100000", "mov cr4, rax"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=4, max_size=30), kvm=st.sampled_from(["v5.15", "v6.12"]))
def test_random_programs_see_no_difference(ops, kvm):
    ours, theirs = both_ways(lambda: inval.build(ops, kvm, flip_lines), 200_000)
    assert ours[0][11], "the program did not run to its hlt"
    assert ours == theirs


def test_the_comparison_catches_a_walk_not_counted(monkeypatch):
    """The restarted instruction walks its access once more, and that walk is counted and
    charged; an in-place handling that forgot it must fail the comparison."""
    real = vcpu_module.Vcpu.exit_in_place

    def forgetful(self, gpa, qual):
        done = real(self, gpa, qual)
        if done is True:
            self.cpu.walks -= 1
            self.cpu.extra_cycles -= self.cpu.walk_cost
        return done
    monkeypatch.setattr(vcpu_module.Vcpu, "exit_in_place", forgetful)
    program = load_program(str(ROOT / "programs" / "smep_flip.bin"))
    ours, theirs = both_ways(lambda: make_vm(program, "v5.15", (), 1, 16 << 20, 0), 20_000)
    assert ours != theirs


# The handling left to the run loop, forced: a KVM that flushed, asked for something at the
# entry, changed a present SPTE, injected an exception or asked for emulation in the middle
# of its page fault. Either way the VM must end the same (each perturbation is made on
# every third violation, alike both ways).
def _flush(v):
    v.cpu.tlb.flush_all()


def _request(v):
    v.make_request(x86.KVM_REQ_TLB_FLUSH)


def _generation(v):
    v.gpa_generation.value += 1


PERTURBATIONS = {"flush": _flush, "request": _request, "generation": _generation,
                 "inject": None, "emulate": None}
# Accesses after SMEP flips (each frees the root under v5.15), one of them to a page whose
# PTE was cleared: the #PF's delivery takes violations too (IDT, stack, handler code).
PERTURBED_OPS = [("flip",), ("read", inval.SMALL[0]), ("write", inval.SMALL[1], 5), ("flip",),
                 ("read", inval.LARGE[0]), ("pte", 2, 1, 0), ("read", inval.SMALL[2]),
                 ("flip",), ("write", inval.LARGE[1], 7), ("read", inval.SMALL[3]),
                 ("invlpg", inval.SMALL[0]), ("read", inval.SMALL[0]), ("flip",),
                 ("read", inval.SMALL[1])]


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_handling_left_to_the_run_loop_ends_the_same(perturbation, monkeypatch, in_place_count):
    real = vcpu_module.Vcpu.handle_ept_violation
    calls = [0]

    def perturbed(self, cpu, gpa, qual):
        ret = real(self, cpu, gpa, qual)
        calls[0] += 1
        if calls[0] % 3 == 0:
            if perturbation == "inject":
                raise GuestFault(PF, 0, 0xDEAD000)
            if perturbation == "emulate":
                return RetPF.EMULATE
            PERTURBATIONS[perturbation](self)
        return ret
    monkeypatch.setattr(vcpu_module.Vcpu, "handle_ept_violation", perturbed)
    # Every violation through handle_ept_violation: exit_in_place's written-out leaf fault
    # (fast_leaf_fault's case) would skip it, and with it the perturbation.
    monkeypatch.setattr(TdpMmu, "fast_leaf_fault", lambda self, vcpu, gfn: None)

    def build():
        calls[0] = 0
        return inval.build(PERTURBED_OPS, "v5.15", flip_lines)
    ours, theirs = both_ways(build, 200_000)
    assert ours == theirs
    assert in_place_count[0] > 0 and in_place_count[1] > 0


def test_an_int_n_whose_delivery_exits_is_not_handled_in_place(in_place_count):
    """INT n after a v5.15 flip: its delivery exits (the IDT and the stack are unmapped
    again). The run loop runs the INT again after the entry (deliver() puts RIP back on it),
    so the delivery's violations must go that way too."""
    ops = [("flip",), ("read", inval.SMALL[0]), ("flip",), ("int",), ("read", inval.SMALL[1])]

    def lines(o):
        return ["int 0x21"] if o[0] == "int" else flip_lines(o)

    def build():
        vm = inval.build(ops, "v5.15", lines)
        install(vm, 0x21, "iretq")
        return vm
    ours, theirs = both_ways(build, 100_000)
    assert ours[0][11], "the program did not run to its hlt"
    assert ours == theirs
