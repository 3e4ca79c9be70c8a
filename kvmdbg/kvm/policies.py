"""A profile becomes behaviour once, when the VM is built.

Each knob of kvm/profiles.py that changes what KVM does picks one small object here (the
gem5 replacement-policy idea: a tiny interface, one class per behaviour), so the code that
runs never asks which kernel era it is in: the MMU a vCPU runs on (KVM's
init_kvm_tdp_mmu / init_kvm_softmmu choice), what a root's last put does, how invalidated
roots are zapped, what kvm_post_set_cr0/cr4 do, and what a memslot DELETE zaps.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmdbg.kvm import x86
from kvmdbg.kvm.profiles import PUT_ASYNC_ZAP, PUT_KEEP, PUT_SYNC_ZAP, ZAP_WORKQUEUE, Profile
from kvmdbg.mmu import tdp_mmu
from kvmdbg.mmu.legacy import LegacyMmuOps
from kvmdbg.mmu.shadow_mmu import ShadowMmuOps

ROOT_PUT = {PUT_SYNC_ZAP: tdp_mmu.ZapOnLastPut, PUT_ASYNC_ZAP: tdp_mmu.ZapOnWorker,
            PUT_KEEP: tdp_mmu.KeepUntilInvalidated}


class SlotZapAll:
    """KVM_X86_QUIRK_SLOT_ZAP_ALL (and every kernel before it): a memslot DELETE or MOVE
    zaps everything (kvm_mmu_zap_all_fast)."""

    def __call__(self, kvm, slot) -> None:
        kvm.kvm_mmu_zap_all_fast()


class SlotZapLeafs:
    """The quirk off (v6.12): only the slot's leaf SPTEs go (kvm_mmu_zap_memslot); roots
    survive."""

    def __call__(self, kvm, slot) -> None:
        if kvm.shadow is not None:
            kvm.shadow.zap_gfn_range(slot.base_gfn, slot.end_gfn)
        elif kvm.tdp_mmu.zap_leafs(slot.base_gfn, slot.end_gfn, kvm.all_valid_roots()):
            kvm.flush_remote_tlbs()


@dataclass(frozen=True)
class Policies:
    post_set_cr0_wp: object           # x86.Cr0WpResets | x86.Cr0WpReinitsOnly
    post_set_cr4: object              # x86.PostSetCr4PreLai | PostSetCr4Split | PostSetCr4Skipped
    flush_shadow_memslot: object      # SlotZapAll | SlotZapLeafs


def choose(profile: Profile) -> Policies:
    if profile.rfc_skip_post_set_cr4 and profile.tdp_mmu:
        post_set_cr4 = x86.PostSetCr4Skipped()
    elif profile.cr4_flush_split:
        post_set_cr4 = x86.PostSetCr4Split()
    else:
        post_set_cr4 = x86.PostSetCr4PreLai()
    return Policies(
        post_set_cr0_wp=x86.Cr0WpReinitsOnly() if profile.cr0_wp_no_unload else x86.Cr0WpResets(),
        post_set_cr4=post_set_cr4,
        flush_shadow_memslot=SlotZapAll() if profile.slot_zap_all else SlotZapLeafs())


def apply(vm, profile: Profile) -> None:
    """Give a VM the behaviour of a profile's run-time knobs: when it is built, and again
    after `set kvm` changes one. What shapes the VM as it is built (tdp_enabled, tdp_mmu,
    the guest-owned CR bits) is mmu_ops's and the vCPUs' business, fixed from then on."""
    vm.profile = profile
    vm.huge_pages = profile.huge_pages
    vm.policies = choose(profile)
    tdp = vm.tdp_mmu
    tdp.root_put = ROOT_PUT[profile.tdp_put_last_ref]()
    tdp.invalidated_zap = (tdp_mmu.ZapInvalidatedOnWorker() if profile.invalid_root_zap == ZAP_WORKQUEUE
                           else tdp_mmu.ZapInvalidatedInPlace(flush_each=profile.invalid_root_zap_flush))
    ops = vm.mmu_ops
    if ops.direct and ops.has_guest_bits != profile.tdp_root_role_has_guest_bits:
        ops.has_guest_bits = profile.tdp_root_role_has_guest_bits
        ops.roles_memo.clear()


def mmu_ops(profile: Profile, kvm):
    """init_kvm_tdp_mmu (with the TDP MMU, or the legacy direct MMU) or init_kvm_softmmu."""
    if not profile.tdp_enabled:
        return ShadowMmuOps(kvm)
    if profile.tdp_mmu:
        return tdp_mmu.TdpMmuOps(kvm, profile.tdp_root_role_has_guest_bits)
    return LegacyMmuOps(kvm, profile.tdp_root_role_has_guest_bits)
