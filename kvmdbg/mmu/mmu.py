"""The MMU context of a vCPU: roles, init/reset, load/unload, roots, permissions, faults.

Mirrors arch/x86/kvm/mmu/mmu.c: kvm_calc_cpu_role, kvm_init_mmu,
kvm_mmu_reset_context (= unload + init, in every version), kvm_mmu_load/reload/
unload, kvm_mmu_free_roots, kvm_mmu_free_obsolete_roots, kvm_mmu_new_pgd with
fast_pgd_switch and the prev_roots LRU, kvm_mmu_invlpg, update_permission_bitmask/
permission_fault, and kvm_mmu_page_fault, which hands each fault to the MMU the vCPU
runs on (MmuOps: the TDP MMU, the legacy direct MMU or shadow paging, picked once).
The vCPU is reached through plain fields (cpu.cr0, cpu.cr4, cpu.efer, smm, kvm) and a
few of its methods (load_mmu_pgd, flush_tlb_current, flush_tlb_gva, make_request);
nothing here imports the CPU model.
"""

from __future__ import annotations

from kvmdbg.arch.kvm_host import (KVM_REQ_LOAD_MMU_PGD, PFERR_FETCH, PFERR_PK,  # noqa: F401
                                  PFERR_PRESENT, PFERR_RSVD, PFERR_USER, PFERR_WRITE)
from kvmdbg.bits import canonical
from kvmdbg.arch.msr_index import EFER_LMA, EFER_NXE as EFER_NX
from kvmdbg.arch.processor_flags import (CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PGE, CR4_PKE,
                                         CR4_PCIDE, CR4_PSE, CR4_SMAP, CR4_SMEP)
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
        self.pdptrs = (0, 0, 0, 0)  # a PAE guest's PDPTEs as load_pdptrs read them
        self.ops = None            # MmuOps: the MMU this context runs on (set by the vCPU)
        # guest_rsvd_check's one CPUID input here: PS in a PDPTE is reserved without 1 GiB
        # pages (reset_guest_rsvds_bits_mask, guest_cpu_cap_has(X86_FEATURE_GBPAGES)).
        self.guest_gbpages = True


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
    mmu.permissions, mmu.pkru_mask = permission_tables(mmu.cpu_role, ept)


def permission_tables(cpu_role: int, ept: bool = False) -> tuple:
    """(permissions, pkru_mask) for a cpu_role: update_permission_bitmask's result."""
    key = (cpu_role & _BITMASK_INPUTS, ept)
    hit = _BITMASK_MEMO.get(key)
    if hit is None:
        hit = _BITMASK_MEMO[key] = _compute_permission_bitmask(cpu_role & 0xFFFF_FFFF,
                                                               cpu_role >> 32, ept)
    return hit


def _compute_permission_bitmask(base: int, ext: int, ept: bool) -> tuple:
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
    pkru_mask = 0
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
        pkru_mask = mask
    return tuple(permissions), pkru_mask


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


# --- the MMU each vCPU runs on, picked once (init_kvm_tdp_mmu / init_kvm_softmmu) ---

class MmuOps:
    """What differs between the three MMUs: the TDP MMU (tdp_mmu.py), the legacy direct MMU
    (legacy.py) and shadow paging (shadow_mmu.py). KVM picks init_kvm_tdp_mmu or
    init_kvm_softmmu in kvm_init_mmu; here the VM picks one object when it is built, and
    every vCPU's struct kvm_mmu points at it (mmu.ops)."""

    direct = True
    # True when page_fault tries TdpMmu.fast_leaf_fault first: Vcpu.exit_in_place then
    # calls it itself, around it only the exit's and the entry's counting.
    tdp_mmu_faults = False

    def __init__(self) -> None:
        # (cr0, cr4, efer, smm) -> (cpu_role, root_role): a pure function of the registers
        # and this MMU, so a guest flipping one CR bit asks for the same two answers.
        self.roles_memo: dict = {}

    def root_role(self, cpu_role: int) -> int:
        raise NotImplementedError

    def alloc_root(self, vcpu) -> RootInfo:
        """mmu_alloc_direct_roots / mmu_alloc_shadow_roots."""
        raise NotImplementedError

    def free_root(self, vcpu, sp, invalid: list) -> None:
        """mmu_free_root_page: put the vCPU's reference; zapped pages go on `invalid`."""
        raise NotImplementedError

    def page_fault(self, vcpu, addr: int, error_code: int) -> RetPF:
        """kvm_tdp_page_fault or FNAME(page_fault)."""
        raise NotImplementedError

    def sync_root(self, vcpu, sp) -> None:
        """kvm_mmu_sync_roots for one root: nothing to sync in a direct MMU."""

    def invalidate_addr(self, vcpu, gva: int, sp) -> None:
        """kvm_mmu_invalidate_addr for one root (shadow paging's unsync pages)."""


class DirectMmuOps(MmuOps):
    """init_kvm_tdp_mmu: both direct MMUs share the root role and the fault path
    (direct_page_fault); they differ in where roots come from and how tables are built."""

    def __init__(self, kvm, has_guest_bits: bool):
        super().__init__()
        self.kvm = kvm
        # The root role carries guest CR0.WP and EFER.NX, as before the 2022 split.
        self.has_guest_bits = has_guest_bits

    def root_role(self, cpu_role: int) -> int:
        return kvm_calc_tdp_mmu_root_page_role(cpu_role, self.has_guest_bits)

    def page_fault(self, vcpu, addr: int, error_code: int) -> RetPF:
        return direct_page_fault(vcpu, addr, error_code, self.map_fault)

    def map_fault(self, vcpu, root, fault) -> RetPF:
        """kvm_tdp_mmu_map or direct_map."""
        raise NotImplementedError


# --- the MMU context of a vCPU (mmu.c) ---

def kvm_init_mmu(vcpu) -> None:
    """Compute cpu_role and root_role; rebuild permission tables only if they changed."""
    cpu = vcpu.cpu
    mmu = vcpu.mmu
    ops = mmu.ops
    key = (cpu.cr0, cpu.cr4, cpu.efer, vcpu.smm)
    roles = ops.roles_memo.get(key)
    if roles is None:
        cpu_role = kvm_calc_cpu_role(cpu.cr0, cpu.cr4, cpu.efer, smm=vcpu.smm)
        if len(ops.roles_memo) >= 4096:
            ops.roles_memo.clear()
        # The permission tables are a function of cpu_role (see update_permission_bitmask),
        # so they are remembered with it: a SMEP flip then costs no call for them.
        roles = ops.roles_memo[key] = (cpu_role, ops.root_role(cpu_role),
                                       permission_tables(cpu_role))
    cpu_role, root_role, tables = roles
    if cpu_role == mmu.cpu_role and root_role == mmu.root_role:
        return
    mmu.cpu_role = cpu_role
    mmu.root_role = root_role
    mmu.permissions, mmu.pkru_mask = tables
    kvm = vcpu.kvm
    if kvm.bus.active:
        kvm.trace("kvmdbg:init_mmu", vcpu.index, cpu_role=cpu_role, root_role=root_role)


def kvm_mmu_reset_context(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["kvmdbg_mmu_resets"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_reset_context", vcpu.index)
    vcpu.cpu.extra_cycles += kvm.costs.values["mmu_reset"]
    kvm_mmu_unload(vcpu)
    kvm_init_mmu(vcpu)


def kvm_mmu_unload(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["kvmdbg_mmu_unloads"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_unload", vcpu.index)
    kvm_mmu_free_roots(vcpu, KVM_MMU_ROOTS_ALL)


def kvm_mmu_free_roots(vcpu, roots_to_free: int) -> None:
    """Put the selected roots (prev_roots first, then the current one, as KVM does); shadow
    pages zapped on the way are committed with one remote TLB flush."""
    mmu = vcpu.mmu
    ops = mmu.ops
    prev = mmu.prev_roots
    invalid: list = []
    if prev.count(INVALID_ROOT) != len(prev):            # TDP never fills prev_roots
        for i, info in enumerate(prev):
            if info.sp is not None and roots_to_free & (2 << i):
                ops.free_root(vcpu, info.sp, invalid)
                prev[i] = INVALID_ROOT
    sp = mmu.root.sp
    if roots_to_free & KVM_MMU_ROOT_CURRENT and sp is not None:
        ops.free_root(vcpu, sp, invalid)
        mmu.root = INVALID_ROOT
    if invalid:
        vcpu.kvm.shadow_mmu.commit_zap_page(invalid)


def kvm_mmu_load(vcpu) -> None:
    kvm = vcpu.kvm
    kvm.stats["kvmdbg_mmu_loads"] += 1
    vcpu.cpu.extra_cycles += kvm.costs.values["mmu_load"]
    mmu = vcpu.mmu
    mmu.root = mmu.ops.alloc_root(vcpu)
    root = mmu.root.sp
    vcpu.load_mmu_pgd(root)
    if kvm.bus.active:
        kvm.trace("kvmdbg:mmu_load", vcpu.index, root=root.number, hpa=root.hpa)
    # kvm_mmu_load flushes the current context unconditionally: the root's past is unknown.
    vcpu.flush_tlb_current()


def kvm_mmu_reload(vcpu) -> None:
    if vcpu.mmu.root.sp is None:
        kvm_mmu_load(vcpu)


def kvm_mmu_load_pgd(vcpu) -> None:
    """KVM_REQ_LOAD_MMU_PGD: point the hardware at the current root (no flush)."""
    root = vcpu.mmu.root.sp
    if root is not None:
        vcpu.load_mmu_pgd(root)


def kvm_mmu_sync_roots(vcpu) -> None:
    """KVM_REQ_MMU_SYNC: resync the unsync pages under the current root."""
    vcpu.mmu.ops.sync_root(vcpu, vcpu.mmu.root.sp)


def kvm_mmu_sync_prev_roots(vcpu) -> None:
    for info in vcpu.mmu.prev_roots:
        vcpu.mmu.ops.sync_root(vcpu, info.sp)


def is_obsolete_root(kvm, sp) -> bool:
    if sp is None:
        return False
    if sp.role & R.ROLE_INVALID or sp.freed:
        return True
    return (not sp.tdp_mmu_page) and sp.mmu_valid_gen != kvm.mmu_valid_gen


def kvm_mmu_free_obsolete_roots(vcpu) -> None:
    mmu = vcpu.mmu
    mask = 0
    if is_obsolete_root(vcpu.kvm, mmu.root.sp):
        mask |= KVM_MMU_ROOT_CURRENT
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        if is_obsolete_root(vcpu.kvm, mmu.prev_roots[i].sp):
            mask |= KVM_MMU_ROOT_PREVIOUS(i)
    kvm_mmu_free_roots(vcpu, mask)


def refresh_passthrough_bits(vcpu):
    """kvm_mmu_refresh_passthrough_bits (cf9f4c0eb169): with TDP and a guest-owned
    CR0.WP, pick up the live WP before an emulated permission check. None when CR0.WP
    always exits (the role is then never stale)."""
    if not vcpu.cr0_guest_owned & CR0_WP:
        return None

    def refresh(mmu):
        wp = bool(vcpu.cpu.cr0 & CR0_WP)
        if wp == bool(mmu.cpu_role & R.ROLE_CR0_WP):
            return
        mmu.cpu_role ^= R.ROLE_CR0_WP
        update_permission_bitmask(mmu, ept=False)
    return refresh


def kvm_mmu_page_fault(vcpu, addr: int, error_code: int) -> RetPF:
    """Every MMU fault (an EPT violation or misconfig, or the #PF intercept) goes to the MMU
    the vCPU was initialised with."""
    return vcpu.mmu.ops.page_fault(vcpu, addr, error_code)


def kvm_mmu_invlpg(vcpu, gva: int) -> None:
    """An INVLPG exit: INVVPID for the address, then sync its SPTE in every unsync page on
    its path, in the current and the previous roots (kvm_mmu_invalidate_addr)."""
    vcpu.kvm.stats["invlpg"] += 1          # kvm_mmu_invlpg counts a non-canonical one too
    if not canonical(gva):
        return
    vcpu.flush_tlb_gva(gva)
    mmu = vcpu.mmu
    mmu.ops.invalidate_addr(vcpu, gva, mmu.root.sp)
    for info in mmu.prev_roots:
        mmu.ops.invalidate_addr(vcpu, gva, info.sp)


def kvm_mmu_invpcid_gva(vcpu, gva: int, pcid: int) -> None:
    """INVPCID of one address: INVVPID for it, and the address synced in the roots whose
    PCID it names, current or previous (kvm_mmu_invalidate_addr); counted as an INVLPG."""
    mmu = vcpu.mmu
    cpu = vcpu.cpu
    pcide = bool(cpu.cr4 & CR4_PCIDE)
    pcid_of = lambda pgd: pgd & 0xFFF if pcide else 0          # kvm_get_pcid
    if pcid == pcid_of(cpu.cr3):
        vcpu.flush_tlb_gva(gva)
        mmu.ops.invalidate_addr(vcpu, gva, mmu.root.sp)
    for info in mmu.prev_roots:
        if info.sp is not None and pcid == pcid_of(info.pgd):
            mmu.ops.invalidate_addr(vcpu, gva, info.sp)
    vcpu.kvm.stats["invlpg"] += 1


def kvm_mmu_new_pgd(vcpu, new_pgd: int) -> None:
    """A CR3 change: fast_pgd_switch over prev_roots; a miss leaves the root invalid and
    kvm_mmu_reload finds (or builds) the new one by (gfn, role) in the hash."""
    kvm = vcpu.kvm
    mmu = vcpu.mmu
    hit = fast_pgd_switch(mmu, new_pgd, mmu.root_role, lambda mask: kvm_mmu_free_roots(vcpu, mask))
    kvm.stats["kvmdbg_pgd_switch_hits" if hit else "kvmdbg_pgd_switch_misses"] += 1
    if kvm.bus.active:
        kvm.trace("kvmdbg:fast_pgd_switch", vcpu.index, pgd=new_pgd, hit=hit,
                  root=mmu.root.sp.number if mmu.root.sp is not None else 0)
    if not hit:
        return
    vcpu.make_request(KVM_REQ_LOAD_MMU_PGD)
    if not mmu.root_role & R.ROLE_DIRECT:
        mmu.root.sp.write_flooding_count = 0


# --- the direct MMUs' page fault (direct_page_fault; kvm-mmu-spec 5.1, 5.3, 5.4) ---

def kvm_mmu_hugepage_adjust(kvm, fault, slot) -> None:
    """goal_level = the largest level the memslot (whole, aligned range) and the host
    mapping level allow (kvm-mmu-spec 5.4; no NX-huge-page mitigation, no dirty logging)."""
    for level in (3, 2):
        span = 9 * (level - 1)
        base = fault.gfn & ~((1 << span) - 1)
        if base < slot.base_gfn or base + (1 << span) > slot.end_gfn:
            continue
        hva = slot.gfn_to_hva(base)
        if hva & ((1 << (span + 12)) - 1):
            continue                                    # gfn and hva not aligned alike
        if kvm.host.host_mapping_level(hva) >= level:
            fault.req_level = fault.goal_level = level
            return


_OUTCOME_STATS = {RetPF.FIXED: "pf_fixed", RetPF.SPURIOUS: "pf_spurious", RetPF.EMULATE: "pf_emulate"}


def count_outcome(kvm, ret: RetPF) -> None:
    """KVM's pf_fixed / pf_spurious / pf_emulate counters."""
    stat = _OUTCOME_STATS.get(ret)
    if stat is not None:
        kvm.stats[stat] += 1


def direct_page_fault(vcpu, gpa: int, error_code: int, map_fault) -> RetPF:
    """kvm_tdp_page_fault -> direct_page_fault: resolve the pfn (and the level the
    memslot and host allow), then map it with `map_fault(vcpu, root, fault)`
    (kvm_tdp_mmu_map, or direct_map for the legacy MMU)."""
    kvm = vcpu.kvm
    kvm.stats["pf_taken"] += 1
    fault = PageFault(gpa, error_code)
    slot = kvm.memslots.lookup(fault.gfn)
    fault.slot = slot
    if slot is not None:
        fault.map_writable = not slot.flags & 2          # KVM_MEM_READONLY
        if kvm.huge_pages:
            kvm_mmu_hugepage_adjust(kvm, fault, slot)
        base_gfn = fault.gfn & ~((1 << (9 * (fault.goal_level - 1))) - 1)
        fault.pfn = kvm.host.hva_to_pfn(slot.gfn_to_hva(base_gfn))
    root = vcpu.mmu.root.sp
    if root is None or is_obsolete_root(kvm, root):
        return RetPF.RETRY                                  # is_page_fault_stale
    ret = map_fault(vcpu, root, fault)
    stat = _OUTCOME_STATS.get(ret)                          # count_outcome, inlined
    if stat is not None:
        kvm.stats[stat] += 1
    return ret


# --- faults (5.1, 5.3) ---

def ept_violation_error_code(qual: int) -> int:
    """__vmx_handle_ept_violation: exit qualification -> KVM page-fault error code (only
    bits 5:0 of the qualification matter: looked up in the table _ept_error_code made)."""
    return _EPT_ERROR_CODES[qual & 0x3F]


def _ept_error_code(qual: int) -> int:
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


_EPT_ERROR_CODES = tuple(_ept_error_code(q) for q in range(64))


__all__ = ["KvmMmu", "RootInfo", "RetPF", "S", "kvm_calc_cpu_role", "kvm_calc_tdp_mmu_root_page_role",
           "update_permission_bitmask", "permission_fault", "fast_pgd_switch",
           "ept_violation_error_code", "KVM_MMU_ROOTS_ALL", "KVM_MMU_ROOT_CURRENT",
           "KVM_MMU_ROOT_PREVIOUS", "KVM_MMU_CR4_ROLE_BITS", "KVM_MMU_CR4_ROLE_BITS_PRE_LAI",
           "KVM_MMU_CR0_ROLE_BITS"]
