"""Shadow paging (tdp_enabled=0, profile `shadow`): kvm-mmu-spec sections 4.3, 4.4, 4.7, 6
and scenario S6, on the shipped programs.

Expected values come from the spec and from what the programs do, not from earlier runs:
e.g. with CR0.WP set a SMEP flip keeps the shadow root role, so no shadow page is built
after warm-up; with CR0.WP clear smep_andnot_wp is part of the role, so the first flip
into each role builds a tree and later flips reuse it.
"""

import pytest

from kvmdbg.kvm.boot import boot, load_program
from kvmdbg.kvm.profiles import get_profile
from kvmdbg.kvm.scheduler import run_vm
from kvmdbg.kvm.vm import Vm
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import shadow_mmu as SH
from tests.helpers import machine, run_program

WORKING_SET = 16               # WORKING_SET_PAGES in programs/pvshim.S
CR4 = 4


def pvshim_arg(rounds: int, clear_wp: bool = False, cr3_only: int = 0) -> int:
    """programs/pvshim.S: bits 0-31 rounds, bit 32 clear CR0.WP, bits 40-55 CR3-only rounds."""
    return rounds | int(clear_wp) << 32 | cr3_only << 40


def events(vm, name):
    return [e for e in vm.bus.log if e.name == name]


def first_seq(vm, name, pred=lambda e: True):
    return next(e.seq for e in vm.bus.log if e.name == name and pred(e))


def created_pages(vm, after=-1):
    return [e for e in events(vm, "kvm_mmu_get_page") if e.fields["created"] and e.seq > after]


# --- roles (3.6) ---

def test_shadow_root_role_carries_wp_and_the_andnot_wp_bits_with_nx_forced():
    for wp in (0, M.CR0_WP):
        for smep in (0, M.CR4_SMEP):
            cpu_role = M.kvm_calc_cpu_role(M.CR0_PG | wp, M.CR4_PAE | smep, M.EFER_LMA)   # NX off
            role = SH.kvm_calc_shadow_root_role(cpu_role)
            assert role & R.ROLE_EFER_NX                         # forced on
            assert bool(role & R.ROLE_CR0_WP) == bool(wp)
            assert bool(role & R.ROLE_SMEP_ANDNOT_WP) == bool(smep and not wp)
            assert role & R.ROLE_LEVEL_MASK == 4 and not role & R.ROLE_DIRECT
    # With WP set a SMEP flip keeps the role; with WP clear it changes it.
    role = lambda cr0, cr4: SH.kvm_calc_shadow_root_role(  # noqa: E731
        M.kvm_calc_cpu_role(cr0, cr4, M.EFER_LMA | M.EFER_NX))
    pg_wp = M.CR0_PG | M.CR0_WP
    assert role(pg_wp, M.CR4_PAE) == role(pg_wp, M.CR4_PAE | M.CR4_SMEP)
    assert role(M.CR0_PG, M.CR4_PAE) != role(M.CR0_PG, M.CR4_PAE | M.CR4_SMEP)


def test_tdp_enabled_knob_turns_any_profile_into_shadow_paging():
    vm = run_program("smep_flip", "v6.12", arg=5, knobs=["tdp_enabled=0"])
    assert vm.stop[0] == "halted" and bytes(vm.console) == b"smep_flip: done\n"
    assert vm.shadow is not None and not vm.profile.tdp_mmu
    assert vm.stats["kvmdbg_ept_violations"] == 0 and vm.stats["kvmdbg_pf_exits"] > 0


# --- S6: pvshim, prev_roots and SMEP flips ---

def test_s6_cr3_switches_hit_prev_roots_until_a_smep_flip_empties_the_cache():
    cr3_only, rounds = 3, 8
    vm = run_program("pvshim", "shadow", arg=pvshim_arg(rounds, cr3_only=cr3_only), events=True)
    assert vm.stop[0] == "halted" and bytes(vm.console) == b"pvshim: done\n"
    switches = events(vm, "kvmdbg:fast_pgd_switch")
    assert len(switches) == vm.stats["kvmdbg_cr3_writes"] == 2 * rounds
    first_flip = first_seq(vm, "kvm_cr", lambda e: e.fields["cr"] == CR4)
    before = [e.fields["hit"] for e in switches if e.seq < first_flip]
    after = [e.fields["hit"] for e in switches if e.seq > first_flip]
    # The first switch finds nothing cached; from then on the other context's root is
    # in prev_roots[0] each time (the first flipping round switches CR3 before it flips).
    assert before == [False] + [True] * (2 * cr3_only)
    # Every flip unloads the MMU (current + prev roots), so each later switch misses...
    assert after and not any(after)
    assert vm.stats["kvmdbg_mmu_unloads"] == 1 + 2 * (rounds - cr3_only)       # + KVM_SET_SREGS
    # ... and falls back to a hash lookup that finds the existing root.
    assert vm.stats["kvmdbg_roots_allocated"] == 2
    roots_found = [e for e in events(vm, "kvm_mmu_get_page")
                   if e.seq > first_flip and e.fields["gfn"] in (0x1, 0x400)]
    assert roots_found and not any(e.fields["created"] for e in roots_found)


def test_s6_with_cr0_wp_set_smep_flips_rebuild_nothing():
    warm = run_program("pvshim", "shadow", arg=pvshim_arg(1), events=True)
    for rounds in (6, 24):
        vm = run_program("pvshim", "shadow", arg=pvshim_arg(rounds), events=True)
        assert vm.stats["kvmdbg_cr_exits"] == 4 * rounds    # MOV to CR3 and to CR4 both exit
        assert vm.stats["kvmdbg_mmu_resets"] == 1 + 2 * rounds
        # mmu_cache_miss stays at the value the first round trip left.
        assert vm.stats["mmu_cache_miss"] == warm.stats["mmu_cache_miss"]
        second = first_seq(vm, "kvmdbg:marker", lambda e: e.fields["value"] == 2)
        assert created_pages(vm, after=second) == []
        assert vm.stats["kvmdbg_pf_exits"] == warm.stats["kvmdbg_pf_exits"]
        assert vm.stats["mmu_shadow_zapped"] == 0
    # Only one role: WP set, smep_andnot_wp clear.
    roles = {e.fields["role"] for e in created_pages(warm)}
    assert all(r & R.ROLE_CR0_WP and not r & R.ROLE_SMEP_ANDNOT_WP for r in roles)


def test_s6_with_cr0_wp_clear_the_first_flip_into_each_role_builds_a_tree():
    cr3_only = 2
    short = run_program("pvshim", "shadow", arg=pvshim_arg(cr3_only + 2, True, cr3_only),
                        events=True)
    long = run_program("pvshim", "shadow", arg=pvshim_arg(cr3_only + 12, True, cr3_only),
                       events=True)
    assert bytes(long.console) == b"pvshim: done\n"
    first_flip = first_seq(short, "kvm_cr", lambda e: e.fields["cr"] == CR4)
    smep_role = lambda e: bool(e.fields["role"] & R.ROLE_SMEP_ANDNOT_WP)  # noqa: E731
    before = created_pages(short, after=-1)
    before = [e for e in before if e.seq < first_flip]
    after = created_pages(short, after=first_flip)
    assert before and not any(smep_role(e) for e in before)
    # The first flip into SMEP=1 (WP clear) builds shadow pages of the new role...
    assert after and all(smep_role(e) for e in after)
    # ... and later flips reuse both trees: nothing built after the first flipping round.
    round2 = first_seq(long, "kvmdbg:marker", lambda e: e.fields["value"] == cr3_only + 2)
    assert created_pages(long, after=round2) == []
    assert long.stats["mmu_cache_miss"] == short.stats["mmu_cache_miss"]
    assert long.stats["kvmdbg_roots_allocated"] == short.stats["kvmdbg_roots_allocated"]
    # With WP set the same program builds no second tree.
    wp = run_program("pvshim", "shadow", arg=pvshim_arg(cr3_only + 2, False, cr3_only))
    assert wp.stats["mmu_cache_miss"] < short.stats["mmu_cache_miss"]


# --- the guest sees what the hardware would show ---

def _boot(name: str, profile: str):
    vm = Vm(16 << 20, 1, profile=get_profile(profile))
    boot(vm, load_program(f"programs/{name}.bin"), 0)
    return vm


def _guest_state(vm):
    c = vm.vcpus[0].cpu
    return (tuple(c.r), c.rip, c.get_rflags(), c.cr0, c.cr2, c.cr3, c.cr4, c.cs, c.ss, c.steps)


def test_pt_edit_guest_visible_results_match_ept_instruction_by_instruction():
    ept, shadow = _boot("pt_edit", "v6.12"), _boot("pt_edit", "shadow")
    steps = 0
    while True:
        ra, rb = run_vm(ept, 1), run_vm(shadow, 1)
        steps += 1
        assert _guest_state(ept) == _guest_state(shadow), f"diverged after {steps} steps"
        if ra[0] != "step-limit" or rb[0] != "step-limit":
            break
    assert ra[0] == rb[0] == "halted" and steps > 250
    assert bytes(shadow.console) == b"pt_edit: done\n"
    # The fault log and the probe results, as the guest recorded them.
    for gpa, n in ((0x21000, 8 * 11), (0x22100, 8 * 15), (0x300000, 8), (0x301000, 8)):
        assert ept.read_gpa(gpa, n) == shadow.read_gpa(gpa, n)
    log = [int.from_bytes(ept.read_gpa(0x21000 + 8 * i, 8), "little") for i in range(11)]
    faults = list(zip(log[1::2], log[2::2]))
    assert log[0] == 5
    assert faults == [(0x0, 0x1200000), (0x3, 0x1200000), (0x1, 0x1200000),
                      (0x11, 0x1201000), (0x0, 0x1200000)]


def test_pt_edit_under_shadow_emulates_upper_level_writes_and_unsyncs_last_level_tables():
    vm = run_program("pt_edit", "shadow", events=True)
    s = vm.stats
    # Writes to upper-level tables (PD, PML4, PDPT twice, PD again, PDPT[1], and the second
    # directory until it floods) are emulated, each one a tracked write.
    assert s["insn_emulation"] == s["mmu_pte_write"] == 8
    assert s["mmu_flooded"] == 1
    flooded = [e for e in events(vm, "kvm_mmu_prepare_zap_page") if e.fields["gfn"] == 0x501]
    assert len(flooded) == 1 and flooded[0].fields["role"] & R.ROLE_LEVEL_MASK == 2
    # The last-level tables the guest edits go unsync instead (the new one, the boot one).
    unsynced = {e.fields["gfn"] for e in events(vm, "kvm_mmu_unsync_page")}
    assert {0x500, 0x5} <= unsynced
    assert all(e.fields["role"] & R.ROLE_LEVEL_MASK == 1 for e in events(vm, "kvm_mmu_unsync_page"))
    # INVLPG syncs the one entry on its path; the guest's own faults are injected.
    assert {e.fields["gfn"] for e in events(vm, "kvmdbg:invlpg_sync")} >= {0x500, 0x5}
    assert s["invlpg"] == 7 and s["pf_guest"] == 5
    assert [e.fields["error_code"] for e in events(vm, "kvm_inj_exception")] == [0x0, 0x3, 0x1, 0x11, 0x0]


# --- S5 under shadow: the generation toggle ---

def test_memslot_overlay_zaps_shadow_pages_through_the_generation_toggle():
    rounds = 3
    vm = run_program("memslot_overlay", "shadow", arg=rounds, events=True)
    s = vm.stats
    assert vm.stop[0] == "halted"
    zaps = events(vm, "kvm_mmu_zap_all_fast")
    assert len(zaps) == 4 * rounds                       # 1 + 3 slot deletes per round
    assert [e.fields["mmu_valid_gen"] for e in zaps] == [i % 2 for i in range(4 * rounds)]
    # Each round trip of the overlay: two deletes find a live tree (root, PDPT, PD and the
    # two page tables the program uses); the sweep zaps all five (the root, still loaded,
    # becomes invalid) with one remote flush, and the vCPU frees the root at its next entry
    # (zapped once more, one more flush). The other two deletes find nothing valid.
    tree = 5
    assert s["mmu_shadow_zapped"] == rounds * 2 * (tree + 1)
    assert s["remote_tlb_flush_requests"] == rounds * 2 * 2
    assert s["remote_tlb_flush"] == 0                     # the one vCPU is in userspace
    # Every shadow page is rebuilt (a hash miss each) after each zap; after the very last
    # one the program only runs code (no data page table).
    assert s["mmu_cache_miss"] == tree + (2 * rounds - 1) * tree + (tree - 1)
    # The pages zapped by each sweep are those of the generation it made obsolete.
    for z, nxt in zip(zaps, zaps[1:] + [None]):
        zapped = [e for e in events(vm, "kvm_mmu_prepare_zap_page")
                  if e.seq > z.seq and (nxt is None or e.seq < nxt.seq)]
        assert all(e.fields["mmu_valid_gen"] == z.fields["mmu_valid_gen"] for e in zapped)


def test_memslot_overlay_without_the_quirk_zaps_only_the_slot():
    """kvm_mmu_zap_memslot: the slot's leaves and every shadow page of a gfn in the slot;
    no generation toggle. The deleted slot is all of RAM, so here that is every page."""
    vm = run_program("memslot_overlay", "shadow", arg=2, knobs=["slot_zap_all=0"], events=True)
    assert vm.stop[0] == "halted"
    assert not events(vm, "kvm_mmu_zap_all_fast") and vm.mmu_valid_gen == 0
    zapped = events(vm, "kvm_mmu_prepare_zap_page")
    assert zapped and all(e.fields["mmu_valid_gen"] == 0 for e in zapped)
    assert vm.stats["mmu_shadow_zapped"] == len(zapped)


# --- reclaim, CR4.PGE and PCIDE ---

def test_reclaim_zaps_the_oldest_pages_past_the_limit_and_the_guest_is_unaffected():
    vm = Vm(16 << 20, 1, profile=get_profile("shadow"))
    vm.shadow.n_max = 12
    boot(vm, load_program("programs/pvshim.bin"), pvshim_arg(6))
    vm.stop = run_vm(vm, 10**8)
    assert vm.stop[0] == "halted" and bytes(vm.console) == b"pvshim: done\n"
    assert vm.stats["mmu_recycled"] > 0
    assert vm.stats["mmu_shadow_zapped"] >= vm.stats["mmu_recycled"]
    assert vm.shadow.n_used <= vm.shadow.n_max
    # Reclaim never zaps a root in use: the root allocated first is never freed while held.
    unlimited = run_program("pvshim", "shadow", arg=pvshim_arg(6))
    assert vm.stats["mmu_cache_miss"] > unlimited.stats["mmu_cache_miss"]


PGE_PCIDE = """
    mov rax, cr4
    xor rax, 0x80
    mov cr4, rax
    xor rax, 0x80
    mov cr4, rax
    or rax, 0x20000
    mov cr4, rax
    hlt
"""


def test_pge_is_intercepted_and_flushes_with_a_sync_and_pcide_unloads():
    vm, cpu = machine(PGE_PCIDE, kvm="shadow")
    vm.bus.set_keep(10**5)
    run_vm(vm, 1000)
    s = vm.stats
    assert s["kvmdbg_cr_exits"] == 3
    reqs = [e.fields["request"] for e in events(vm, "kvmdbg:request")]
    assert reqs.count("KVM_REQ_TLB_FLUSH_GUEST") == 2       # both PGE toggles
    assert s["tlb_flush"] >= 2
    # PCIDE 0 -> 1 under shadow paging: kvm_mmu_unload, no reset.
    assert s["kvmdbg_mmu_unloads"] == s["kvmdbg_mmu_resets"] + 1
    ept, _ = machine(PGE_PCIDE, kvm="v6.12")
    run_vm(ept, 1000)
    assert ept.stats["kvmdbg_cr_exits"] == 1                        # PGE and PCIDE are guest-owned


@pytest.mark.parametrize("name, arg", [("pvshim", pvshim_arg(4, True, 1)), ("pt_edit", 0),
                                       ("memslot_overlay", 2)])
def test_recording_events_changes_nothing_under_shadow(name, arg):
    quiet = run_program(name, "shadow", arg=arg)
    loud = run_program(name, "shadow", arg=arg, events=True)
    nonzero = lambda st: {k: v for k, v in st.items() if v}  # noqa: E731
    assert nonzero(quiet.stats) == nonzero(loud.stats)
    assert [v.cpu.cycles for v in quiet.vcpus] == [v.cpu.cycles for v in loud.vcpus]


# --- the debugger's views ---

def test_views_show_shadow_pages_roles_and_gva_paths():
    from kvmdbg import Session
    s = Session.load("programs/pt_edit.bin", kvm="shadow")
    s.run(max_steps=200)
    roots = s.execute("info roots")
    assert "gfn" in roots and " 0x1 " in roots and "wp" in roots
    path = s.execute("info spte 0x300000")
    assert "shadows gfn 0x1)" in path and "shadows gfn 0x5, unsync)" in path and "-> hpa" in path
    assert "takes a #PF exit" in s.execute("info spte 0x7000000")
    pages = s.execute("info shadow")
    assert "unsync" in pages and "wrprot" in pages and "of 81 shadow pages" in pages
    assert "gva 0x300000 gfn 0x300" in s.execute("info sptes")
    assert "Shadow SPTE path" in s.execute("translate 0x301000")
    assert "shadow " in s.execute("info mmu") and "pgd 0x1000" in s.execute("info mmu")
    s2 = Session.load("programs/pvshim.bin", kvm="shadow", arg=3)
    s2.execute("catch root-alloc")
    assert "root-alloc" in s2.execute("continue")
    assert "takes a gva under shadow paging" in s.execute("info spte gfn:0x300")
    ept = Session.load("programs/pt_edit.bin", kvm="v6.12")
    ept.run(max_steps=200)
    assert "No shadow MMU" in ept.execute("info shadow")
    assert "(r w x) leaf" in ept.execute("info spte gpa:0x300000")


@pytest.mark.parametrize("flush", ["invlpg [rbx]", "invpcid rax, [rsi]"])
def test_invpcid_of_an_address_syncs_its_shadow_entry_like_invlpg(flush):
    """A guest that edits a PTE and flushes it with INVPCID type 0 must see the new mapping
    (SDM INVPCID: individual-address invalidation). Under shadow paging the edit lands in
    an unsync shadow table; INVPCID exits like INVLPG (SDM Vol. 3C 26.1.3, "INVLPG
    exiting" with "enable INVPCID") and kvm_handle_invpcid -> kvm_mmu_invpcid_gva syncs
    the entry, as kvm_mmu_invlpg does."""
    x, other, pte = 0x400000, 0x500000, 0x6000       # boot contract: PT of the third 2 MiB
    vm, cpu = machine(f"""
        mov rbx, {x:#x}
        mov r8, qword ptr [rbx]
        mov rax, {other | 3:#x}
        mov qword ptr [{pte:#x}], rax
        xor eax, eax
        lea rsi, [rip + desc]
        {flush}
        mov r9, qword ptr [rbx]
        hlt
    desc:
        .quad 0
        .quad {x:#x}
    """, kvm="shadow")
    vm.write_gpa(x, (0x1111).to_bytes(8, "little"))
    vm.write_gpa(other, (0x2222).to_bytes(8, "little"))
    run_vm(vm, 10_000)
    assert cpu.r[8] == 0x1111
    assert cpu.r[9] == 0x2222
