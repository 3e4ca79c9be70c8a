"""Counters under KVM's own stat names count what the kernel counts.

Each expectation is derived from the guest program's structure and the kernel function
that bumps the stat (named in the test's docstring), never from an earlier kvmdbg run.
"""

from tests.helpers import run_program


def smep_sets(flips: int) -> int:
    """How many of `flips` XORs of CR4.SMEP set it: the boot contract starts every vCPU
    with SMEP clear (CR4 = PAE|OSFXSR|OSXMMEXCPT), so flips 1, 3, 5, ... set it."""
    return (flips + 1) // 2


# --- tlb_flush: ++vcpu->stat.tlb_flush in kvm_vcpu_flush_tlb_all/_current/_guest ---

def test_smep_flip_tlb_flush_is_one_per_smep_set_plus_the_first_load():
    """arch/x86/kvm/x86.c: kvm_post_set_cr4 requests KVM_REQ_TLB_FLUSH_CURRENT when SMEP
    goes 0->1 (and nothing when it goes 1->0, PGE and PCIDE being unchanged); the next
    vcpu_enter_guest serves it in kvm_service_local_tlb_flush_requests ->
    kvm_vcpu_flush_tlb_current, which counts before calling vmx_flush_tlb_current (that
    one returns early: the flip unloaded the root). kvm_mmu_load's flush calls the vendor
    hook directly (mmu.c) and is not counted. The one more: vmx_vcpu_load_vmcs requests
    KVM_REQ_TLB_FLUSH the first time the vCPU is loaded on a pCPU, served by
    kvm_vcpu_flush_tlb_all at the first entry. 20,000 flips -> 10,001, as measured on a
    6.x host."""
    one_page = 1 << 32                     # --arg bits 63:32: a one-page working set
    for flips in (20_000, 9):
        vm = run_program("smep_flip", "v6.12", arg=one_page | flips)
        assert vm.stop[0] == "halted"
        assert vm.stats["tlb_flush"] == smep_sets(flips) + 1


def test_before_the_flush_split_a_smep_flip_requests_no_flush():
    """<= v5.15 kvm_post_set_cr4 only calls kvm_mmu_reset_context for a role bit
    (f4bc051fc91a added the flush requests): only the first load's flush is counted."""
    vm = run_program("smep_flip", "v5.15", arg=1 << 32 | 20)
    assert vm.stats["tlb_flush"] == 1


def test_tlb_flush_is_per_vcpu_and_summed_over_vcpus():
    """tlb_flush is a vCPU stat; kvm_stat (and the debugfs file) show the sum over vCPUs.
    programs/smep_flip_2vcpu.S with --arg 100: vCPU 0 flips 50 times alone, then 50 more
    (re-reading CR4, whose SMEP is clear again after an even count), vCPU 1 flips 50
    times after the kick; each vCPU also has its first-load flush."""
    vm = run_program("smep_flip_2vcpu", "v6.12", vcpus=2, arg=100)
    assert vm.stop[0] == "halted"
    assert vm.stats["tlb_flush"] == (2 * smep_sets(50) + 1) + (smep_sets(50) + 1)


# --- remote_tlb_flush_requests / remote_tlb_flush: kvm_flush_remote_tlbs (kvm_main.c) ---
#
# kvm_flush_remote_tlbs counts every call in remote_tlb_flush_requests, and counts
# remote_tlb_flush only when kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH) returns true, i.e.
# when kvm_kick_many_cpus had a vCPU to IPI: one in guest mode (kvm_request_needs_ipi) other
# than the caller's own. Both are VM stats, counted once per call.
#
# programs/memslot_overlay.S: each round overlays gfn 0x300 (the VMM deletes the RAM slot
# and creates the two halves and the page: one DELETE) and removes it (deletes the three,
# re-creates the original: three DELETEs), touching its working set after each. With one
# vCPU, every memslot ioctl runs while that vCPU is in its KVM_EXIT_IO, outside guest mode.

ROUNDS = 100


def test_memslot_overlay_v5_15_flushes_once_per_delete_that_finds_a_populated_root():
    """v5.13-v5.17: kvm_mmu_zap_all_fast -> kvm_tdp_mmu_zap_invalidated_roots zaps with
    zap_gfn_range(shared=true), whose tdp_mmu_zap_spte_atomic flushes per top-level SPTE it
    zaps; the 16 MiB guest is under one PML4 entry. The first DELETE of an overlay and of a
    removal finds the root the vCPU refaulted since; the 2nd and 3rd DELETEs of a removal
    find it zapped already. 2 per round, and no vCPU to kick: remote_tlb_flush stays 0.
    Each flush leaves KVM_REQ_TLB_FLUSH on the vCPU, served (kvm_vcpu_flush_tlb_all) at the
    next entry, one per round trip, plus the first-load flush."""
    vm = run_program("memslot_overlay", "v5.15", arg=ROUNDS)
    s = vm.stats
    assert vm.stop[0] == "halted"
    assert s["remote_tlb_flush_requests"] == 2 * ROUNDS
    assert s["remote_tlb_flush"] == 0
    assert s["tlb_flush"] == 2 * ROUNDS + 1


def test_memslot_overlay_v6_tdp_mmu_zaps_invalidated_roots_without_flushing():
    """From v5.18 (the zap on a workqueue, then 0df9dab891ff's zap in the ioctl),
    kvm_tdp_mmu_zap_invalidated_roots documents that no TLB flush is needed (KVM flushes
    when it loads a new root) and tdp_mmu_zap_root never calls kvm_flush_remote_tlbs."""
    for kvm in ("v6.1", "v6.12"):
        s = run_program("memslot_overlay", kvm, arg=10).stats
        assert s["remote_tlb_flush_requests"] == 0 == s["remote_tlb_flush"]
        assert s["tlb_flush"] == 1                      # the first load only


KICK = """
    test rdi, rdi
    jnz second
    mov qword ptr [0x200000], 1     # vCPU 0: map a page, then overlay gfn 0x300
    mov eax, 0x300
    mov dx, 0x510
    out dx, eax
    mov qword ptr [0x201000], 1     # release vCPU 1
    hlt
second:
    {second}
"""
SPIN = """
spin:
    cmp qword ptr [0x201000], 0
    je spin
    hlt
"""


def _two_vcpus(second: str, knobs=()):
    from kvmdbg.kvm.boot import Program, boot
    from kvmdbg.kvm.profiles import get_profile, with_knob
    from kvmdbg.kvm.scheduler import run_vm
    from kvmdbg.kvm.vm import Vm
    from tests.helpers import asm
    profile = get_profile("v6.12")
    for k in knobs:
        profile = with_knob(profile, k)
    vm = Vm(16 << 20, 2, profile=profile)
    boot(vm, Program(asm(KICK.format(second=second))))
    assert run_vm(vm, 10**6)[0] == "halted"
    return vm.stats


def test_a_remote_flush_kicks_the_other_vcpu_when_it_is_in_guest_mode():
    """v6.12 without KVM_X86_QUIRK_SLOT_ZAP_ALL: the DELETE runs kvm_mmu_zap_memslot, which
    zaps the slot's leaves and calls kvm_flush_remote_tlbs_memslot (no range flush on VMX
    without Hyper-V, so kvm_flush_remote_tlbs). vCPU 1 is spinning in guest mode while vCPU
    0 is in its KVM_EXIT_IO: kvm_make_all_cpus_request IPIs it, so this one request is a
    remote_tlb_flush, and vCPU 1 takes an external-interrupt exit (irq_exits, in
    handle_external_interrupt). tlb_flush: each vCPU's first load, then KVM_REQ_TLB_FLUSH
    served once by each vCPU."""
    s = _two_vcpus(SPIN, ["slot_zap_all=0"])
    assert s["remote_tlb_flush_requests"] == 1
    assert s["remote_tlb_flush"] == 1
    assert s["irq_exits"] == 1
    assert s["tlb_flush"] == 2 + 2


def test_a_remote_flush_neither_wakes_nor_counts_a_halted_vcpu():
    """KVM_REQ_TLB_FLUSH is KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP: a vCPU blocked in HLT
    is outside guest mode, so it is neither woken (kvm_vcpu_wake_up is skipped) nor sent an
    IPI, and the request is not a remote_tlb_flush. vCPU 1 halts at once and stays halted."""
    s = _two_vcpus("hlt", ["slot_zap_all=0"])
    assert s["remote_tlb_flush_requests"] == 1
    assert s["remote_tlb_flush"] == 0
    assert s["irq_exits"] == 0


def test_with_the_quirk_the_obsolete_roots_request_kicks_and_nothing_flushes():
    """v6.12 with the quirk: kvm_mmu_zap_all_fast's kvm_make_all_cpus_request(
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS) kicks the spinning vCPU 1 (one irq exit), and the TDP
    MMU path never calls kvm_flush_remote_tlbs."""
    s = _two_vcpus(SPIN)
    assert s["remote_tlb_flush_requests"] == 0 == s["remote_tlb_flush"]
    assert s["irq_exits"] == 1


# --- mmu_shadow_zapped: ++kvm->stat.mmu_shadow_zapped in __kvm_mmu_prepare_zap_page ---

def test_legacy_mmu_zaps_obsolete_pages_one_by_one_and_the_root_again_at_its_last_put():
    """arch/x86/kvm/mmu/mmu.c, tdp_mmu=0 with EPT: the EPT tables are shadow pages. Each
    DELETE runs kvm_mmu_zap_all_fast -> kvm_zap_obsolete_pages, which calls
    __kvm_mmu_prepare_zap_page on every obsolete page on active_mmu_pages: the root (in use
    by the vCPU: kept, marked invalid, off the list) and its tables, then
    kvm_mmu_commit_zap_page flushes once. At the next entry
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS -> kvm_mmu_free_roots -> mmu_free_root_page drops the
    root's last reference: kvm_mmu_prepare_zap_page counts it again, and the commit flushes
    again. memslot_overlay's tree is 5 pages: root, PDPT, PD, and the page tables for gfns
    0-0x1ff (code, stack, the guest's page tables) and 0x200-0x3ff (working set, overlay
    page). Two DELETEs per round find a tree (as in the v5.15 test above), so 2 x (5 + 1)
    zaps and 2 x 2 flush requests per round; both flushes of a DELETE are served by one
    kvm_vcpu_flush_tlb_all at the entry after it. Shadow paging runs the same kernel code,
    and the guest's own tables happen to make a 5-page tree too."""
    for kvm in ("legacy-mmu", "shadow"):
        vm = run_program("memslot_overlay", kvm, arg=ROUNDS)
        s = vm.stats
        assert vm.stop[0] == "halted"
        assert s["mmu_shadow_zapped"] == ROUNDS * 2 * (5 + 1), kvm
        assert s["remote_tlb_flush_requests"] == ROUNDS * 2 * 2, kvm
        assert s["remote_tlb_flush"] == 0, kvm
        assert s["tlb_flush"] == ROUNDS * 2 + 1, kvm


def test_the_tdp_mmu_counts_no_shadow_zaps():
    """mmu_shadow_zapped is bumped only by __kvm_mmu_prepare_zap_page; the TDP MMU frees
    its tables in handle_removed_pt (tdp_mmu.c), which counts nothing."""
    s = run_program("memslot_overlay", "v6.12", arg=10).stats
    assert s["mmu_shadow_zapped"] == 0


# --- pf_guest, pf_taken, invlpg ---

STALE_SMAP = """
    lea rax, [rip + handler]        # #PF gate (interrupt gate, selector 0x08) at 0x6f000
    mov rcx, rax
    and ecx, 0xffff
    mov rdx, rax
    shr rdx, 16
    shl rdx, 48
    or rcx, rdx
    mov rdx, 0x00008e0000080000
    or rcx, rdx
    mov [0x6f000 + 14 * 16], rcx
    shr rax, 32
    mov [0x6f000 + 14 * 16 + 8], rax
    sub rsp, 16
    mov word ptr [rsp], 0xfff
    mov qword ptr [rsp + 2], 0x6f000
    lidt [rsp]
    or qword ptr [0x1000], 4        # gva 0x20000000: a 2 MiB user page onto MMIO
    or qword ptr [0x2000], 4
    mov rax, 0x20000087
    mov [0x3000 + 0x100 * 8], rax
    mov rax, cr4                    # SMAP on, a CR0.WP round trip (re-inits cpu_role)
    or rax, 0x200000
    mov cr4, rax
    mov rax, cr0
    xor rax, 0x10000
    mov cr0, rax
    xor rax, 0x10000
    mov cr0, rax
    mov rax, cr4                    # SMAP off: the supervisor write below is allowed
    and rax, ~0x200000
    mov cr4, rax
    mov rax, [0x6f000]              # map what delivering a #PF reads and writes (IDT,
    mov rax, [0x500]                # GDT, stack) in the current EPT root
    mov rax, [rsp]
    mov dword ptr [0x20000000], 0x1234
    hlt
handler:
    hlt
"""


def test_a_pf_the_emulator_injects_is_a_pf_guest():
    """kvm_inject_page_fault (x86.c) does ++vcpu->stat.pf_guest; KVM's emulator reaches it
    through kvm_inject_emulated_page_fault. This guest is smap_mmio.S's pattern with the
    IDT, GDT and stack mapped in the EPT just before, so delivering the #PF takes no exit: under the RFC patch kvm_post_set_cr4 is skipped, the
    cpu_role the emulator checks still has SMAP, and emulating the MMIO write injects one
    #PF (one emulation, one pf_guest); a correct KVM emulates the write and injects none."""
    from kvmdbg.kvm.scheduler import run_vm
    from tests.helpers import machine
    for kvm, injected in (("rfc-skip-post-set-cr4", 1), ("v6.12", 0)):
        vm, _cpu = machine(STALE_SMAP, kvm=kvm)
        assert run_vm(vm, 10_000)[0] == "halted"
        assert vm.stats["insn_emulation"] == 1
        assert vm.stats["pf_guest"] == injected
        assert len(vm.mmio_writes) == 1 - injected


SHADOW_MMIO = """
    mov rax, 0x20000083             # map gpa 0x20000000 (no memslot) at the same gva
    mov [0x3000 + 0x100 * 8], rax
    mov rbx, 0x20000000
    mov dword ptr [rbx], 1
    mov dword ptr [rbx], 2
    mov rax, 0x8000000000000000
    invlpg [rax]                    # non-canonical: a NOP, but still an INVLPG exit
    invlpg [rbx]
    hlt
"""


def test_shadow_mmio_and_invlpg_counters():
    """mmu.c, shadow paging: kvm_mmu_page_fault sends a reserved-bit #PF on a current MMIO
    SPTE (handle_mmio_page_fault) straight to the emulator, before kvm_mmu_do_page_fault,
    which is where pf_taken and the outcome counters (pf_fixed, pf_emulate, pf_spurious)
    live; so every pf_taken ends in one outcome or an injected #PF (pf_guest), and the
    second MMIO write is an emulation without a pf_emulate. The first MMIO write builds the
    MMIO SPTE (pf_mmio_spte_created, in mmu_set_spte). Each MMIO write is one userspace
    exit (mmio_exits, x86_emulate_instruction). kvm_mmu_invlpg counts invlpg after
    kvm_mmu_invalidate_addr, which returns early for a non-canonical address."""
    from kvmdbg.kvm.scheduler import run_vm
    from tests.helpers import machine
    vm, _cpu = machine(SHADOW_MMIO, kvm="shadow")
    assert run_vm(vm, 10_000)[0] == "halted"
    s = vm.stats
    assert [w[3] for w in vm.mmio_writes] == [1, 2]
    assert s["pf_taken"] == s["pf_fixed"] + s["pf_emulate"] + s["pf_spurious"] + s["pf_guest"]
    assert s["insn_emulation"] == s["pf_emulate"] + 1
    assert s["pf_mmio_spte_created"] == 1
    assert s["mmio_exits"] == 2
    assert s["invlpg"] == 2


# --- names: a counter is a kernel stat or is called kvmdbg_* ---

def test_every_counter_is_a_kernel_stat_or_a_kvmdbg_one_and_the_help_says_who_bumps_it():
    """kvm_stat and KVM_GET_STATS_FD readers know the names in x86.c's kvm_vcpu_stats_desc
    / kvm_vm_stats_desc and KVM_GENERIC_VM_STATS; kvmdbg's own counters must not look like
    one of them. `help info stats` names the kernel function behind each kernel stat."""
    import re

    from kvmdbg.debug.commands.kvm import all_stats, info_stats
    from kvmdbg.kvm.stats import KVM_STATS, SIM_PREFIX
    seen = set()
    for name, kvm, vcpus in (("memslot_overlay", "legacy-mmu", 1), ("pvshim", "shadow", 1),
                             ("smep_flip_2vcpu", "v5.15", 2), ("smm_like", "v6.1", 1)):
        seen |= set(all_stats(run_program(name, kvm, vcpus=vcpus, arg=4)))
    assert {"tlb_flush", "remote_tlb_flush_requests", "mmu_shadow_zapped"} <= seen
    assert sorted(k for k in seen if k not in KVM_STATS and not k.startswith(SIM_PREFIX)) == []
    lines = info_stats.__doc__.splitlines()
    for stat in KVM_STATS:
        i = next(i for i, line in enumerate(lines) if re.match(rf"\s+(\w+, )*{stat}\b", line))
        where = re.sub(r"\b(" + "|".join(KVM_STATS) + r")\b|,", "", lines[i]).strip()
        where = where or lines[i + 1]           # a group of names: the functions follow
        assert re.search(r"\b_*(kvm|vcpu|x86|tdp|handle)_\w+", where), stat
