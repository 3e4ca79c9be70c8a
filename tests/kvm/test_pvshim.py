"""programs/pvshim: two contexts with their own page tables, CR3 and CR4.SMEP switched on
every transition (the Xen PV shim pattern), under a root-freeing and a root-keeping KVM.

Expected values follow the spec: under EPT KVM does not intercept MOV to CR3, so only the
SMEP flips exit; a KVM that frees the root at its last put (v5.15, one vCPU) rebuilds the
EPT on every flip; one that keeps roots (v6.4+) builds one and stops faulting once both
contexts have run.
"""

from tests.helpers import run_program

WORKING_SET = 16            # WORKING_SET_PAGES in programs/pvshim.S
SHIM_TABLES_GFN = 0x400     # SHIM_TABLES >> 12


def events(vm, name):
    return [e for e in vm.bus.log if e.name == name]


def test_only_smep_flips_exit_cr3_switches_do_not():
    rounds = 10
    vm = run_program("pvshim", "v6.12", arg=rounds, events=True)
    transitions = 2 * rounds
    assert vm.stop[0] == "halted" and bytes(vm.console) == b"pvshim: done\n"
    assert vm.stats["kvmdbg_cr3_writes"] == vm.stats["kvmdbg_cr4_writes"] == transitions
    assert vm.stats["kvmdbg_cr_exits"] == transitions
    assert {e.fields["cr"] for e in events(vm, "kvm_cr")} == {4}
    # The shim's own tables really were walked: their page was faulted into the EPT.
    assert SHIM_TABLES_GFN in {e.fields["gfn"] for e in events(vm, "kvm_mmu_spte_requested")}
    assert [e.fields["value"] for e in events(vm, "kvmdbg:marker")] == list(range(1, rounds + 1))


def test_v5_15_rebuilds_the_ept_on_every_transition():
    rounds = 15
    vm = run_program("pvshim", "v5.15", arg=rounds)
    s = vm.stats
    transitions = 2 * rounds
    assert s["kvmdbg_roots_allocated"] == transitions + 1
    assert s["kvmdbg_roots_freed"] == transitions
    # After each flip the next context's working set refaults (and its page tables).
    assert s["kvmdbg_ept_violations"] >= transitions * WORKING_SET


def test_v6_12_keeps_one_root_and_stops_faulting_after_warm_up():
    rounds = 12
    vm = run_program("pvshim", "v6.12", arg=rounds, events=True)
    assert vm.stats["kvmdbg_roots_allocated"] == 1 and vm.stats["kvmdbg_roots_freed"] == 0
    second_round = next(e.seq for e in events(vm, "kvmdbg:marker") if e.fields["value"] == 2)
    late = [e for e in events(vm, "kvm_exit")
            if e.seq > second_round and e.fields["exit_reason"] == "EPT_VIOLATION"]
    assert late == []
    longer = run_program("pvshim", "v6.12", arg=4 * rounds)
    assert longer.stats["kvmdbg_ept_violations"] == vm.stats["kvmdbg_ept_violations"]
