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
