"""The MMU context of a vCPU: roles, init/reset, load/unload, roots, permissions, faults.

Mirrors arch/x86/kvm/mmu/mmu.c: kvm_calc_cpu_role, kvm_init_mmu,
kvm_mmu_reset_context (= unload + init, in every version), kvm_mmu_load/reload/
unload, kvm_mmu_free_roots, fast_pgd_switch and the prev_roots LRU,
update_permission_bitmask/permission_fault, and kvm_mmu_page_fault for direct
(TDP) MMUs. The vCPU is reached through plain fields (cr0, cr4, efer, rflags,
smm, kvm); nothing here imports the CPU model.
"""

from __future__ import annotations

from kvmdbg.arch.kvm_host import (PFERR_FETCH, PFERR_PK, PFERR_PRESENT, PFERR_RSVD,  # noqa: F401
                                  PFERR_USER, PFERR_WRITE)
from kvmdbg.arch.msr_index import EFER_LMA, EFER_NXE as EFER_NX
from kvmdbg.arch.processor_flags import (CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PGE, CR4_PKE,
                                         CR4_PSE, CR4_SMAP, CR4_SMEP)
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.mmu_internal import ACC_ALL, PageFault, RetPF


KVM_MMU_CR0_ROLE_BITS = CR0_PG | CR0_WP
KVM_MMU_CR4_ROLE_BITS = CR4_PSE | CR4_PAE | CR4_LA57 | CR4_SMEP | CR4_SMAP | CR4_PKE
KVM_MMU_CR4_ROLE_BITS_PRE_LAI = KVM_MMU_CR4_ROLE_BITS | CR4_PGE   # <= v5.15

KVM_MMU_NUM_PREV_ROOTS = 3
KVM_MMU_ROOT_CURRENT = 1 << 0
KVM_MMU_ROOTS_ALL = (1 << (1 + KVM_MMU_NUM_PREV_ROOTS)) - 1


def KVM_MMU_ROOT_PREVIOUS(i: int) -> int:
    return 1 << (1 + i)


INVALID_PAGE = None


class RootInfo:
    """struct kvm_mmu_root_info: {pgd, hpa}; hpa is the MmuPage itself (None = INVALID_PAGE)."""

    __slots__ = ("pgd", "sp")

    def __init__(self, pgd: int = 0, sp=None):
        self.pgd = pgd
        self.sp = sp

    @property
    def valid(self) -> bool:
        return self.sp is not None

    def copy(self) -> "RootInfo":
        return RootInfo(self.pgd, self.sp)


# RootInfo is never changed in place, so every invalid slot can share one (and a vCPU
# with no previous roots is recognised by identity: see kvm_mmu_free_roots).
INVALID_ROOT = RootInfo()


class KvmMmu:
    """struct kvm_mmu (root_mmu): the current root, prev_roots and the two roles."""

    def __init__(self) -> None:
        self.root = INVALID_ROOT
        self.prev_roots = [INVALID_ROOT] * KVM_MMU_NUM_PREV_ROOTS
        self.cpu_role = 0          # base | ext << 32; ext.valid clear = never initialised
        self.root_role = 0
        self.permissions = (0,) * 16
        self.pkru_mask = 0

    @property
    def cpu_base(self) -> int:
        return self.cpu_role & 0xFFFF_FFFF

    @property
    def cpu_ext(self) -> int:
        return self.cpu_role >> 32


# --- roles (3.4 - 3.6) ---

def kvm_calc_cpu_role(cr0: int, cr4: int, efer: int, smm: bool = False, guest_mode: bool = False) -> int:
    base = ACC_ALL << R.ROLE_ACCESS_SHIFT
    if smm:
        base |= 1 << R.ROLE_SMM_SHIFT
    if guest_mode:
        base |= R.ROLE_GUEST_MODE
    ext = R.EXT_VALID
    if not cr0 & CR0_PG:
        return (base | R.ROLE_DIRECT) | ext << 32
    wp = bool(cr0 & CR0_WP)
    if efer & EFER_NX:
        base |= R.ROLE_EFER_NX
    if wp:
        base |= R.ROLE_CR0_WP
    if cr4 & CR4_SMEP and not wp:
        base |= R.ROLE_SMEP_ANDNOT_WP
    if cr4 & CR4_SMAP and not wp:
        base |= R.ROLE_SMAP_ANDNOT_WP
    if not cr4 & CR4_PAE:
        base |= R.ROLE_HAS_4_BYTE_GPTE
    lma = bool(efer & EFER_LMA)
    base |= (5 if cr4 & CR4_LA57 else 4) if lma else (3 if cr4 & CR4_PAE else 2)
    if cr4 & CR4_SMEP:
        ext |= R.EXT_CR4_SMEP
    if cr4 & CR4_SMAP:
        ext |= R.EXT_CR4_SMAP
    if cr4 & CR4_PSE:
        ext |= R.EXT_CR4_PSE
    if lma:
        ext |= R.EXT_EFER_LMA
        if cr4 & CR4_PKE:
            ext |= R.EXT_CR4_PKE
        if cr4 & CR4_LA57:
            ext |= R.EXT_CR4_LA57
    return base | ext << 32


def kvm_calc_tdp_mmu_root_page_role(cpu_role: int, has_guest_bits: bool, tdp_level: int = 4,
                                    ad_disabled: bool = False) -> int:
    """Current KVM: cr0_wp=1 and efer_nx=1 forced, so guest SMEP/SMAP/WP/NX never matter.
    Before the 2022 role split (has_guest_bits) the TDP role carried guest WP and NX."""
    base = cpu_role & 0xFFFF_FFFF
    role = (ACC_ALL << R.ROLE_ACCESS_SHIFT) | R.ROLE_DIRECT | tdp_level
    role |= base & ((0xFF << R.ROLE_SMM_SHIFT) | R.ROLE_GUEST_MODE)
    if has_guest_bits:
        role |= base & (R.ROLE_CR0_WP | R.ROLE_EFER_NX)
        if base & R.ROLE_DIRECT:          # guest paging off: KVM used wp=1, nx=0 then
            role |= R.ROLE_CR0_WP
    else:
        role |= R.ROLE_CR0_WP | R.ROLE_EFER_NX
    if ad_disabled:
        role |= R.ROLE_AD_DISABLED
    return role


# --- permission tables (3.9, 3.10) ---

_BITMASK_INPUTS = (R.ROLE_CR0_WP | R.ROLE_EFER_NX | (R.EXT_CR4_SMEP | R.EXT_CR4_SMAP
                                                     | R.EXT_CR4_PKE) << 32)


_BITMASK_MEMO: dict = {}


def update_permission_bitmask(mmu: KvmMmu, ept: bool = False) -> None:
    """For each pfec >> 1 (W, U, SMAP-not-applicable, F), the set of UWX pte_access that fault.

    The tables are a pure function of a few role bits, so they are computed once per
    combination (KVM recomputes them; the result is the same)."""
    key = (mmu.cpu_role & _BITMASK_INPUTS, ept)
    hit = _BITMASK_MEMO.get(key)
    if hit is None:
        _compute_permission_bitmask(mmu, ept)
        hit = _BITMASK_MEMO[key] = (mmu.permissions, mmu.pkru_mask)
    mmu.permissions, mmu.pkru_mask = hit


def _compute_permission_bitmask(mmu: KvmMmu, ept: bool) -> None:
    base, ext = mmu.cpu_base, mmu.cpu_ext
    cr4_smep = bool(ext & R.EXT_CR4_SMEP)
    cr4_smap = bool(ext & R.EXT_CR4_SMAP)
    cr0_wp = bool(base & R.ROLE_CR0_WP)
    efer_nx = bool(base & R.ROLE_EFER_NX)
    permissions = [0] * 16
    for byte in range(16):
        pfec = byte << 1
        ff = pfec & PFERR_FETCH
        uf = pfec & PFERR_USER
        wf = pfec & PFERR_WRITE
        smapf = 0
        bits = 0
        for access in range(8):
            x, w, u = access & 1, access & 2, access & 4
            wfault = bool(wf and not w)
            ufault = bool(uf and not u)
            ffault = bool(ff and not x)
            if not ept:
                kf = bool(u and not uf)            # supervisor access to a user page
                if not efer_nx:
                    ffault = False
                if not cr0_wp and not uf:
                    wfault = False
                if cr4_smep and ff and kf:
                    ffault = True
                # SMAP: not a fetch, supervisor access to a user page, and the
                # "SMAP not applicable" slot (pfec bit 3: AC set, explicit) is clear.
                smapf = bool(cr4_smap and not ff and kf and not pfec & PFERR_RSVD)
            if wfault or ufault or ffault or smapf:
                bits |= 1 << access
        permissions[byte] = bits
    mmu.permissions = tuple(permissions)
    mmu.pkru_mask = 0
    if ext & R.EXT_CR4_PKE:
        # Which pfec values PKRU applies to: data accesses; for supervisor writes only with WP.
        mask = 0
        for byte in range(16):
            pfec = byte << 1
            if pfec & PFERR_FETCH:
                continue
            applies_ad = 1
            applies_wd = 1 if pfec & PFERR_WRITE and (pfec & PFERR_USER or cr0_wp) else 0
            mask |= (applies_ad | applies_wd << 1) << (byte * 2)
        mmu.pkru_mask = mask


def permission_fault(mmu: KvmMmu, pte_access: int, pte_pkey: int, pfec: int, rflags_ac: bool,
                     pkru: int = 0, refresh=None) -> int:
    """0, or the #PF error code KVM's emulator would inject (mmu.h permission_fault).

    `refresh` is kvm_mmu_refresh_passthrough_bits (the lazy CR0.WP refresh, cf9f4c0eb169)."""
    if refresh is not None:
        refresh(mmu)
    not_smap = 1 if rflags_ac and not pfec & PFERR_RSVD else 0
    index = (pfec + (not_smap << 3)) >> 1
    fault = (mmu.permissions[index] >> pte_access) & 1
    errcode = PFERR_PRESENT
    if mmu.pkru_mask and pte_access & 4:
        rights = (pkru >> (pte_pkey * 2)) & 3
        applies = (mmu.pkru_mask >> ((pfec & ~1) & 0x1F)) & 3
        if rights & applies:
            errcode |= PFERR_PK
            fault = 1
    return (errcode | (pfec & (PFERR_WRITE | PFERR_USER | PFERR_FETCH))) if fault else 0


# --- prev_roots LRU (4.4) ---

def is_root_usable(root: RootInfo, pgd: int, role: int) -> bool:
    if not root.valid:
        return False
    if not role & R.ROLE_DIRECT and pgd != root.pgd:
        return False
    return root.sp.role == role


def cached_root_find_and_keep_current(mmu: KvmMmu, new_pgd: int, role: int, free_root) -> bool:
    """Rotate root through prev_roots[0..2]; on a miss the LRU ends up current and is freed."""
    if is_root_usable(mmu.root, new_pgd, role):
        return True
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        mmu.root, mmu.prev_roots[i] = mmu.prev_roots[i], mmu.root
        if is_root_usable(mmu.root, new_pgd, role):
            return True
    free_root(KVM_MMU_ROOT_CURRENT)
    return False


def cached_root_find_without_current(mmu: KvmMmu, new_pgd: int, role: int) -> bool:
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        if is_root_usable(mmu.prev_roots[i], new_pgd, role):
            hit = mmu.prev_roots[i]
            del mmu.prev_roots[i]
            mmu.prev_roots.append(INVALID_ROOT)
            mmu.root = hit
            return True
    return False


def fast_pgd_switch(mmu: KvmMmu, new_pgd: int, role: int, free_root) -> bool:
    if mmu.root.valid:
        return cached_root_find_and_keep_current(mmu, new_pgd, role, free_root)
    return cached_root_find_without_current(mmu, new_pgd, role)


# --- faults (5.1, 5.3) ---

def ept_violation_error_code(qual: int) -> int:
    """__vmx_handle_ept_violation: exit qualification -> KVM page-fault error code."""
    code = 0
    if qual & 1:
        code |= PFERR_USER          # KVM piggybacks U to mean "read"
    if qual & 2:
        code |= PFERR_WRITE
    if qual & 4:
        code |= PFERR_FETCH
    if qual & (0x8 | 0x10 | 0x20):
        code |= PFERR_PRESENT
    return code


def new_page_fault(gpa: int, error_code: int) -> PageFault:
    return PageFault(gpa, error_code, is_tdp=True)


__all__ = ["KvmMmu", "RootInfo", "RetPF", "S", "kvm_calc_cpu_role", "kvm_calc_tdp_mmu_root_page_role",
           "update_permission_bitmask", "permission_fault", "fast_pgd_switch",
           "ept_violation_error_code", "KVM_MMU_ROOTS_ALL", "KVM_MMU_ROOT_CURRENT",
           "KVM_MMU_ROOT_PREVIOUS", "KVM_MMU_CR4_ROLE_BITS", "KVM_MMU_CR4_ROLE_BITS_PRE_LAI",
           "KVM_MMU_CR0_ROLE_BITS"]
