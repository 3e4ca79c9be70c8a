"""Unit tests of the MMU model against kvm-mmu-spec sections 3-5 and the SDM."""

import itertools

import pytest

from kvmdbg.cpu import vmx as V
from kvmdbg.errors import ConfigError
from kvmdbg.kvm.boot import Program, boot
from kvmdbg.kvm.profiles import PROFILES, get_profile, with_knob
from kvmdbg.kvm.vm import Vm
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import spte as S
from tests.helpers import run_program

CR0_BOOT, CR4_BOOT, EFER_BOOT = 0x80010033, 0x620, 0xD00
SMEP, SMAP, PKE, WP = 1 << 20, 1 << 21, 1 << 22, 1 << 16


def entered_vm(profile="v6.12", mem=16 << 20):
    vm = Vm(mem, 1, profile=get_profile(profile))
    boot(vm, Program(b"\xf4"))
    v = vm.vcpus[0]
    vm.current = v
    v.enter_guest()
    return vm, v


# --- roles (3.4, 3.5) ---

def test_cpu_role_of_the_boot_state():
    role = M.kvm_calc_cpu_role(CR0_BOOT, CR4_BOOT, EFER_BOOT)
    base, ext = role & 0xFFFF_FFFF, role >> 32
    f = R.role_fields(base)
    assert (f["level"], f["cr0_wp"], f["efer_nx"], f["direct"], f["access"]) == (4, 1, 1, 0, 7)
    assert (f["smep_andnot_wp"], f["smap_andnot_wp"], f["has_4_byte_gpte"]) == (0, 0, 0)
    e = R.ext_fields(ext)
    assert (e["valid"], e["efer_lma"], e["cr4_smep"]) == (1, 1, 0)
    with_smep = M.kvm_calc_cpu_role(CR0_BOOT, CR4_BOOT | SMEP, EFER_BOOT)
    assert R.ext_fields(with_smep >> 32)["cr4_smep"] == 1
    assert with_smep & 0xFFFF_FFFF == base           # with WP=1, SMEP only touches ext
    no_wp = M.kvm_calc_cpu_role(CR0_BOOT & ~WP, CR4_BOOT | SMEP, EFER_BOOT)
    assert R.role_fields(no_wp & 0xFFFF_FFFF)["smep_andnot_wp"] == 1


@pytest.mark.parametrize("cr4", [CR4_BOOT, CR4_BOOT | SMEP, CR4_BOOT | SMAP | PKE])
@pytest.mark.parametrize("cr0", [CR0_BOOT, CR0_BOOT & ~WP])
def test_tdp_root_role_ignores_guest_bits_after_the_split(cr0, cr4):
    root = M.kvm_calc_tdp_mmu_root_page_role(M.kvm_calc_cpu_role(cr0, cr4, EFER_BOOT), False)
    boot_root = M.kvm_calc_tdp_mmu_root_page_role(M.kvm_calc_cpu_role(CR0_BOOT, CR4_BOOT, EFER_BOOT), False)
    assert root == boot_root
    f = R.role_fields(root)
    assert (f["level"], f["direct"], f["cr0_wp"], f["efer_nx"], f["access"]) == (4, 1, 1, 1, 7)


def test_tdp_root_role_had_wp_before_the_split():
    a = M.kvm_calc_tdp_mmu_root_page_role(M.kvm_calc_cpu_role(CR0_BOOT, CR4_BOOT, EFER_BOOT), True)
    b = M.kvm_calc_tdp_mmu_root_page_role(M.kvm_calc_cpu_role(CR0_BOOT & ~WP, CR4_BOOT, EFER_BOOT), True)
    assert a != b and a ^ b == R.ROLE_CR0_WP
    c = M.kvm_calc_tdp_mmu_root_page_role(M.kvm_calc_cpu_role(CR0_BOOT, CR4_BOOT | SMEP, EFER_BOOT), True)
    assert c == a                                      # SMEP never was in the TDP role


def test_invalid_bit_makes_a_role_never_match():
    role = M.kvm_calc_tdp_mmu_root_page_role(M.kvm_calc_cpu_role(CR0_BOOT, CR4_BOOT, EFER_BOOT), False)
    assert role | R.ROLE_INVALID != role


# --- permission tables (3.10) against the SDM access-rights table (8.3) ---

def sdm_fault(u_page, w_page, x_page, write, user, fetch, wp, smep, smap, ac, nx):
    """SDM Vol. 3A 4.6.1, written out independently of kvmdbg."""
    if user:
        return not u_page or (write and not w_page) or (fetch and nx and not x_page)
    if fetch:
        return (u_page and smep) or (nx and not x_page)
    if u_page and smap and not ac:
        return True
    return write and not w_page and wp


@pytest.mark.parametrize("wp,smep,smap,nx", list(itertools.product((0, 1), repeat=4)))
def test_update_permission_bitmask_matches_the_sdm(wp, smep, smap, nx):
    cr0 = CR0_BOOT if wp else CR0_BOOT & ~WP
    cr4 = CR4_BOOT | (SMEP if smep else 0) | (SMAP if smap else 0)
    efer = EFER_BOOT if nx else EFER_BOOT & ~(1 << 11)
    mmu = M.KvmMmu()
    mmu.cpu_role = M.kvm_calc_cpu_role(cr0, cr4, efer)
    M.update_permission_bitmask(mmu)
    for access, write, user, fetch, ac in itertools.product(range(8), (0, 1), (0, 1), (0, 1), (0, 1)):
        if write and fetch:
            continue
        pfec = (2 if write else 0) | (4 if user else 0) | (16 if fetch else 0)
        got = M.permission_fault(mmu, access, 0, pfec, bool(ac))
        want = sdm_fault(access & 4, access & 2, access & 1, write, user, fetch, wp, smep, smap,
                         ac and not user, nx)
        assert bool(got) == bool(want), (access, write, user, fetch, ac)
        if got:
            assert got & 1 and got & pfec == pfec


# --- prev_roots LRU (4.4) ---

def test_fast_pgd_switch_rotates_as_kvm_does():
    mmu = M.KvmMmu()
    pages = {n: R.MmuPage(4, 0, pfn, bytearray(8), False) for pfn, n in enumerate("CPQRX")}
    mmu.root = M.RootInfo(0xC, pages["C"])
    mmu.prev_roots = [M.RootInfo(0xA, pages["P"]), M.RootInfo(0xB, pages["Q"]), M.RootInfo(0xD, pages["R"])]
    freed = []
    hit = M.fast_pgd_switch(mmu, 0xB, 4, lambda mask: freed.append(mmu.root.pgd))
    assert hit and mmu.root.pgd == 0xB
    assert [r.pgd for r in mmu.prev_roots] == [0xC, 0xA, 0xD]      # old current is MRU
    miss = M.fast_pgd_switch(mmu, 0xE, 4, lambda mask: freed.append(mmu.root.pgd))
    assert not miss and freed == [0xD]                              # the LRU was evicted
    assert [r.pgd for r in mmu.prev_roots] == [0xB, 0xC, 0xA]


# --- SPTEs and the TDP MMU (5.3, 5.5) ---

def test_leaf_spte_bits_are_the_ept_layout():
    spte = S.make_spte(0x1234, 1)
    assert spte & 7 == 7 and (spte >> 3) & 7 == 6            # RWX, WB
    assert spte & S.SPTE_MMU_PRESENT and spte & S.EPT_ACCESSED and spte & S.EPT_DIRTY
    assert spte & S.EPT_SPTE_HOST_WRITABLE and spte & S.EPT_SPTE_MMU_WRITABLE
    assert S.spte_to_pfn(spte) == 0x1234 and not spte & S.PT_PAGE_SIZE
    ro = S.make_spte(0x1234, 2, writable=False)
    assert not ro & S.EPT_W and not ro & S.EPT_SPTE_MMU_WRITABLE and ro & S.PT_PAGE_SIZE
    mmio = S.make_mmio_spte(0x20000, 0x4321)
    assert S.is_mmio_spte(mmio) and S.get_mmio_spte_gen(mmio) == 0x4321
    assert not S.is_shadow_present_pte(mmio)


def test_first_faults_build_three_two_one_tables():
    """On a fresh 4-level root the first access to an untouched 512 GiB / 1 GiB / 2 MiB
    region allocates 3 / 2 / 1 tables plus the leaf."""
    vm, v = entered_vm()
    def tables(gpa):
        before = vm.stats["kvmdbg_tables_allocated"]
        assert M.kvm_mmu_page_fault(v, gpa, 2) == R.RetPF.FIXED
        return vm.stats["kvmdbg_tables_allocated"] - before
    assert tables(0x200000) == 3
    assert tables(0x400000) == 1
    assert tables(0x401000) == 0
    vm2, v2 = entered_vm(mem=1 << 30)
    M.kvm_mmu_page_fault(v2, 0x1000, 2)
    before = vm2.stats["kvmdbg_tables_allocated"]
    M.kvm_mmu_page_fault(v2, 0x4000_0000 - 0x1000, 2)        # same 1 GiB, new 2 MiB
    assert vm2.stats["kvmdbg_tables_allocated"] - before == 1


def test_zapping_a_root_tears_down_every_table():
    vm, v = entered_vm()
    for gpa in (0x1000, 0x200000, 0x400000, 0xF00000):
        M.kvm_mmu_page_fault(v, gpa, 2)
    root = v.mmu.root.sp
    leaves, tables = vm.tdp_mmu.count_sptes(root)
    assert leaves == 4
    freed = vm.stats["kvmdbg_tables_freed"]
    vm.tdp_mmu.zap_root(root, v)
    assert vm.stats["kvmdbg_tables_freed"] - freed == tables - 1   # all but the root itself
    assert vm.tdp_mmu.count_sptes(root) == (0, 1)


def test_ept_hardware_misconfig_and_violation():
    vm, v = entered_vm()
    M.kvm_mmu_page_fault(v, 0x5000, 2)
    ept = v.ept
    page, hpa, w, x = ept.translate(0x5000, V.WRITE, False)
    assert w and x and page is vm.host.pages[hpa >> 12]
    with pytest.raises(V.VmExit) as e:
        ept.translate(0x6000, V.READ, False)
    assert e.value.reason == V.EPT_VIOLATION and e.value.qualification & V.EPT_QUAL_READ
    # W without R is a misconfiguration (what KVM's MMIO SPTEs rely on).
    root = v.mmu.root.sp
    vm.tdp_mmu.tdp_mmu_set_spte(root, 1, S.make_mmio_spte(1 << 27, 0), 1 << 27)
    with pytest.raises(V.VmExit) as e:
        ept.translate(512 << 30, V.READ, False)
    assert e.value.reason == V.EPT_MISCONFIG


def test_huge_pages_when_the_memslot_and_host_allow():
    small = run_program("smep_flip", "v6.12", arg=5)
    assert small.stats["pages_2m"] == 0 and small.stats["pages_4k"] > 16
    huge = run_program("smep_flip", "v6.12", arg=5, knobs=["huge_pages=1"])
    assert huge.stats["pages_4k"] == 0 and huge.stats["pages_2m"] == 2
    assert huge.console == small.console
    vm = Vm(1 << 30, 1, profile=with_knob(get_profile("v6.12"), "huge_pages=1"))
    boot(vm, Program(b"\xf4"))
    v = vm.vcpus[0]
    vm.current = v
    v.enter_guest()
    M.kvm_mmu_page_fault(v, 0x1234_5000, 2)
    assert vm.stats["pages_1g"] == 1


# --- profiles ---

# Design section 6: the knobs, each one upstream change (spec section 1), and the values
# the two multi-valued ones take. kvmdbg adds two the design does not list: huge_pages (TDP
# huge leaves, off so SPTE counts stay easy to reason about) and invalid_root_zap_flush
# (v5.13-v5.17 flushed remote TLBs per top-level SPTE when zapping invalidated roots).
# So 11 + 2 knobs in every profile; a new knob belongs in one of these two lists.
DESIGN_KNOBS = {"tdp_enabled", "tdp_mmu", "tdp_root_role_has_guest_bits", "tdp_put_last_ref",
                "invalid_root_zap", "cr4_flush_split", "cr0_wp_no_unload", "cr0_wp_guest_owned",
                "cr4_smep_guest_owned", "slot_zap_all", "rfc_skip_post_set_cr4"}
KVMDBG_KNOBS = {"huge_pages", "invalid_root_zap_flush"}
CHOICE_KNOBS = {"tdp_put_last_ref": {"sync_zap", "async_zap", "keep"},
                "invalid_root_zap": {"workqueue", "sync"}}

# Spec section 1, "Suggested presets" (each preset as the spec describes it; knobs the spec
# leaves to inference are not listed).
_V5_10 = dict(tdp_root_role_has_guest_bits=True, tdp_put_last_ref="sync_zap",
              cr4_flush_split=False, cr0_wp_no_unload=False, cr0_wp_guest_owned=False)
_V6_1 = dict(_V5_10, tdp_root_role_has_guest_bits=False, tdp_put_last_ref="async_zap",
             invalid_root_zap="workqueue", cr4_flush_split=True)
_V6_4 = dict(_V6_1, tdp_put_last_ref="keep", cr0_wp_no_unload=True, cr0_wp_guest_owned=True)
_V6_6 = dict(_V6_4, invalid_root_zap="sync")
SPEC_PRESETS = {
    "v5.10": _V5_10, "v5.15": dict(_V5_10, tdp_mmu=True), "v6.1": _V6_1, "v6.4": _V6_4,
    "v6.6": _V6_6, "v6.12": dict(_V6_6, slot_zap_all=True),
    "smep-guest-owned": dict(_V6_6, cr4_smep_guest_owned=True),
    "rfc-skip-post-set-cr4": dict(_V5_10, rfc_skip_post_set_cr4=True),     # design section 6
    "legacy-mmu": dict(tdp_mmu=False), "shadow": dict(tdp_enabled=False),
}


@pytest.mark.parametrize("name", sorted(SPEC_PRESETS))
def test_each_preset_sets_the_knobs_the_spec_gives_it(name):
    knobs = get_profile(name).knobs()
    assert {k: knobs[k] for k in SPEC_PRESETS[name]} == SPEC_PRESETS[name]


def test_profiles_are_complete_and_knobs_are_checked():
    from kvmdbg.kvm.profiles import KNOB_HELP
    assert set(SPEC_PRESETS) <= set(PROFILES)
    for p in PROFILES.values():
        knobs = p.knobs()
        assert p.summary and set(knobs) == DESIGN_KNOBS | KVMDBG_KNOBS
        for k, value in knobs.items():
            assert value in CHOICE_KNOBS[k] if k in CHOICE_KNOBS else isinstance(value, bool), k
    assert set(KNOB_HELP) == DESIGN_KNOBS | KVMDBG_KNOBS                  # info kvm explains each
    for knob, values in CHOICE_KNOBS.items():
        for value in values:
            assert getattr(with_knob(get_profile("v6.1"), f"{knob}={value}"), knob) == value
        with pytest.raises(ConfigError, match="takes one of"):
            with_knob(get_profile("v6.1"), f"{knob}=never")
    assert get_profile("v6.4").tdp_put_last_ref == "keep"
    assert get_profile("v6.1").invalid_root_zap == "workqueue"
    with pytest.raises(ConfigError, match="valid: v5.10"):
        get_profile("v7")
    with pytest.raises(ConfigError, match="unknown knob 'nope'"):
        with_knob(get_profile("v6.1"), "nope=1")
    with pytest.raises(ConfigError, match="takes 0 or 1"):
        with_knob(get_profile("v6.1"), "tdp_mmu=maybe")
    assert with_knob(get_profile("v6.1"), "tdp_put_last_ref=keep").tdp_put_last_ref == "keep"


@pytest.mark.parametrize("quirk", ["1", "0"])
def test_memslot_move_flushes_the_old_range(quirk):
    from kvmdbg.mem import Memslot
    vm, v = entered_vm(profile="v6.12")
    vm.set_profile(with_knob(vm.profile, f"slot_zap_all={quirk}"))
    vm.set_memory_region("create", Memslot(5, 0x8000, 16, vm.host.mmap(16 << 12)))
    M.kvm_mmu_page_fault(v, 0x8000 << 12, 2)
    M.kvm_mmu_page_fault(v, 0x100 << 12, 2)
    gen = vm.memslots.generation
    vm.set_memory_region("move", vm.memslots.by_id(5), new_base_gfn=0x9000)
    assert vm.memslots.lookup(0x9000).id == 5 and vm.memslots.lookup(0x8000) is None
    assert vm.memslots.generation == gen + 2
    root = v.mmu.root.sp
    if quirk == "1":
        assert root.invalid                                      # every root invalidated
    else:
        assert not root.invalid
        path = lambda gfn: S.is_shadow_present_pte(M_path(vm, root, gfn))  # noqa: E731
        assert not path(0x8000) and path(0x100)                  # only the old range went


def M_path(vm, root, gfn):
    from kvmdbg.debug.commands.mmu import spte_path
    return spte_path(vm, root, gfn)[-1][3]


# --- the invariants handle_changed_spte checks (tdp_mmu.c) ---

def _leaf_of(vm, v, gfn):
    from kvmdbg.mmu.tdp_iter import for_each_tdp_pte
    *_, it = for_each_tdp_pte(vm.mmu_pages.pages, v.mmu.root.sp, gfn, gfn + 1)
    return it


def test_a_present_leaf_is_never_repointed_without_a_zap():
    """handle_changed_spte: 'a present leaf SPTE should never be directly replaced with
    another present leaf SPTE pointing to a different PFN' (the kernel BUG()s); the same
    pfn with other bits, and the zap-then-map sequence, are fine."""
    vm, v = entered_vm()
    M.kvm_mmu_page_fault(v, 0x200000, 2)
    it = _leaf_of(vm, v, 0x200)
    pfn = S.spte_to_pfn(it.old_spte)
    with pytest.raises(R.KvmBug, match="present leaf"):
        vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, S.make_spte(pfn + 1, 1), it.gfn)
    vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, S.make_spte(pfn, 1, writable=False), it.gfn)
    vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, 0, it.gfn)
    vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, S.make_spte(pfn + 1, 1), it.gfn)


def test_non_present_changes_only_to_or_from_mmio():
    """handle_changed_spte WARNs when a non-present SPTE changes to another non-present
    value unless one side is an MMIO SPTE or the new one is the frozen REMOVED_SPTE."""
    vm, v = entered_vm()
    M.kvm_mmu_page_fault(v, 0x200000, 2)
    it = _leaf_of(vm, v, 0x201)                      # a hole next to the leaf
    assert it.old_spte == 0 and it.level == 1
    mmio = S.make_mmio_spte(0x201, vm.memslots.generation)
    vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, mmio, it.gfn)
    vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, 0, it.gfn)
    with pytest.raises(R.KvmBug, match="non-present"):
        vm.tdp_mmu.tdp_mmu_set_spte(it.sp, it.index, 0x5000, it.gfn)   # no present bit, not MMIO


def test_removal_accounts_the_same_with_and_without_tracing():
    """One removal path: zapping the same tree with the event bus on or off leaves the same
    counters (each zapped SPTE counted once, each leaf leaves pages_4k)."""
    def zap(trace):
        vm, v = entered_vm()
        if trace:
            vm.bus.set_keep(10**6)
        for gpa in (0x1000, 0x200000, 0x400000, 0xF00000, 0xF01000):
            M.kvm_mmu_page_fault(v, gpa, 2)
        mmio = vm.mem_size + 0x1000                          # no memslot: an MMIO SPTE
        M.kvm_mmu_page_fault(v, mmio, 2)
        created = vm.stats["kvmdbg_sptes_created"]
        vm.tdp_mmu.zap_root(v.mmu.root.sp, v)
        assert vm.stats["kvmdbg_sptes_zapped"] == created           # everything present went
        assert vm.stats["pages_4k"] == 0 and vm.mmu_pages.live_sptes == 0
        return {k: vm.stats[k] for k in ("kvmdbg_sptes_zapped", "kvmdbg_sptes_created", "pages_4k",
                                         "kvmdbg_tables_freed", "kvmdbg_tables_allocated")}
    assert zap(True) == zap(False)
