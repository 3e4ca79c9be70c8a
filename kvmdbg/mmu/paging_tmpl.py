"""KVM's software walker of the guest's page tables (mirrors paging_tmpl.h for PTTYPE 64,
which covers 4-level and PAE guests, and PTTYPE 32, for 32-bit paging; cpu_role's
has_4_byte_gpte picks one, as kvm_init_mmu picks the FNAME(...) set).

Used by KVM's emulator and by shadow paging's page-fault handler: it reads guest memory
the way KVM does (through memslots, not through EPT or the shadow tables) and checks
rights with the permission tables cached in cpu_role, which is exactly what goes stale
if kvm_post_set_cr4 is skipped. FNAME(walk_addr_generic) fills a GuestWalker: the gPTEs
and table gfns of every level, the access accumulated above each level (pt_access) and
at the leaf (pte_access), as FNAME(fetch) needs them to build shadow pages.

Faults carry the error code the hardware would give for the same walk (the error path
of walk_addr_generic): P|RSVD for reserved bits (MAXPHYADDR..51, XD without EFER.NX,
PS in a PML4E, the low address bits of 2 MiB / 1 GiB leaves), P (and PK) for rights,
plus W and U from the access, and I/D for fetches when EFER.NX or CR4.SMEP is on.
"""

from __future__ import annotations

from functools import partial

from kvmdbg.arch.pgtable_types import (PAGE_ACCESSED as A, PAGE_DIRTY as D, PAGE_NX as XD,
                                       PAGE_PRESENT as P, PAGE_PSE as PS, PTE_ADDR_MASK as ADDR)
from kvmdbg.arch.kvm_host import PT32E_ROOT_LEVEL
from kvmdbg.arch.pgtable_types import MAXPHYADDR
from kvmdbg.arch.processor_flags import AC, CR4_PKE
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu.mmu_internal import ACC_EXEC, ACC_USER, ACC_WRITE

RSVD_2M = ((1 << 21) - 1) & ~((1 << 13) - 1)     # bits 13..20 of a 2 MiB leaf
RSVD_1G = ((1 << 30) - 1) & ~((1 << 13) - 1)     # bits 13..29 of a 1 GiB leaf
# PTTYPE 32 with CR4.PSE: KVM's is_cpuid_PSE36() is always true, so a 4 MiB PDE reserves
# bits 21:17 and bits 16:13 are bits 35:32 of the address (pse36_gfn_delta).
PT32_PSE36_RSVD = ((1 << 22) - 1) & ~((1 << 17) - 1)
PT32_DIR_PSE36_SHIFT = 13
PT32_DIR_PSE36_MASK = 0xF << PT32_DIR_PSE36_SHIFT


class WalkFault(Exception):
    """The walk failed: inject #PF(error_code) at address."""

    def __init__(self, error_code: int, address: int):
        super().__init__(error_code)
        self.error_code = error_code
        self.address = address


class GuestWalker:
    """struct guest_walker (index = level - 1 in the per-level lists)."""

    __slots__ = ("level", "max_level", "gfn", "pte_access", "pt_access", "table_gfn", "ptes",
                 "pte_gpa", "pkey")

    def __init__(self, max_level: int):
        self.level = max_level
        self.max_level = max_level
        self.gfn = 0
        self.pte_access = 0
        self.pt_access = [0] * max_level
        self.table_gfn = [0] * max_level
        self.ptes = [0] * max_level
        self.pte_gpa = [0] * max_level
        self.pkey = 0


def gpte_access(gpte: int) -> int:
    """FNAME(gpte_access) for a gPTE whose NX bit has been inverted back: UWX bits."""
    access = gpte & (ACC_WRITE | ACC_USER | ACC_EXEC)       # W=bit 1, U=bit 2, P=bit 0 (as X)
    return access ^ ((gpte >> 63) & 1)


def is_rsvd_gpte(pte: int, level: int, nx: bool, maxphyaddr: int, gbpages: bool = True,
                 root_level: int = 4) -> bool:
    """FNAME(is_rsvd_bits_set) with the 64-bit guest_rsvd_check (gbpages: the guest's CPUID
    has 1 GiB pages; without them PS in a PDPTE is reserved); a PAE guest's PDEs and PTEs
    reserve bits 62:MAXPHYADDR (reset_guest_rsvds_bits_mask)."""
    top = 63 if root_level == PT32E_ROOT_LEVEL else 52
    if pte & (((1 << top) - 1) & ~((1 << maxphyaddr) - 1)):
        return True
    if pte & XD and not nx:
        return True
    if level == 4 and pte & PS:
        return True
    if level == 3 and pte & PS and (pte & RSVD_1G or not gbpages):
        return True
    if level == 2 and pte & PS and pte & RSVD_2M:
        return True
    return False


def is_last_gpte(level: int, pte: int) -> bool:
    return level == 1 or (level in (2, 3) and bool(pte & PS))


def is_rsvd_gpte32(pte: int, level: int, pse: bool) -> bool:
    """FNAME(is_rsvd_bits_set) for PTTYPE 32: only a 4 MiB PDE has reserved bits."""
    return level == 2 and pse and bool(pte & PS) and bool(pte & PT32_PSE36_RSVD)


def pse36_gfn_delta(pte: int) -> int:
    """The gfn bits 23:20 (address bits 35:32) a PSE-36 PDE holds in its bits 16:13."""
    return (pte & PT32_DIR_PSE36_MASK) << (32 - PT32_DIR_PSE36_SHIFT - 12)


def protect_clean_gpte(access: int, gpte: int) -> int:
    """FNAME(protect_clean_gpte): no write access through a clean gPTE, so the first write
    faults and KVM can set the guest's D bit."""
    if not gpte & D:
        access &= ~ACC_WRITE
    return access


def walk_addr(mmu: M.KvmMmu, read_gpa, write_gpa, cr3: int, gva: int, pfec: int, rflags_ac: bool,
              pkru: int = 0, refresh=None, trace=None, maxphyaddr: int = 52,
              pdptrs: tuple = (0, 0, 0, 0)) -> GuestWalker:
    """FNAME(walk_addr_generic): the GuestWalker, or raise WalkFault. Sets the guest's
    accessed (and, for a write, dirty) bits like the hardware would, only on success.

    The guest's mode is the role's: level 4 (4-level), 3 (PAE: the first entry is
    pdptrs[gva[31:30]], as mmu->get_pdptr gives it, with no access bits) or 2 with
    has_4_byte_gpte (PTTYPE 32: 4-byte entries, 10 index bits a level)."""
    if trace is not None:
        trace("kvm_mmu_pagetable_walk", addr=gva, pferr=pfec)
    base = mmu.cpu_role & 0xFFFF_FFFF
    nx = bool(base & R.ROLE_EFER_NX)
    smep = bool((mmu.cpu_role >> 32) & R.EXT_CR4_SMEP)
    pse = bool((mmu.cpu_role >> 32) & R.EXT_CR4_PSE)
    write_fault = pfec & M.PFERR_WRITE
    level = root_level = base & R.ROLE_LEVEL_MASK
    pt32 = bool(base & R.ROLE_HAS_4_BYTE_GPTE)
    size, bits = (4, 10) if pt32 else (8, 9)
    pte = cr3
    if level == PT32E_ROOT_LEVEL:
        pte = pdptrs[(gva >> 30) & 3]
        if trace is not None:
            trace("kvm_mmu_paging_element", pte=pte, level=level)
        if not pte & P:
            _error(0, pfec, nx, smep, gva, trace)
        level -= 1
    w = GuestWalker(level)
    pte_access = ~0
    while True:
        pt_access = pte_access
        table_gfn = (pte & ADDR) >> 12
        gpa = (table_gfn << 12) | ((gva >> (12 + bits * (level - 1))) & ((1 << bits) - 1)) * size
        w.table_gfn[level - 1] = table_gfn
        w.pte_gpa[level - 1] = gpa
        pte = int.from_bytes(read_gpa(gpa, size), "little")
        if trace is not None:
            trace("kvm_mmu_paging_element", pte=pte, level=level)
        pte_access = pt_access & (pte ^ XD)        # inverting NX lets it AND like the rest
        if not pte & P:
            _error(0, pfec, nx, smep, gva, trace)
        if (is_rsvd_gpte32(pte, level, pse) if pt32
                else is_rsvd_gpte(pte, level, nx, maxphyaddr, mmu.guest_gbpages, root_level)):
            _error(M.PFERR_RSVD | M.PFERR_PRESENT, pfec, nx, smep, gva, trace)
        w.ptes[level - 1] = pte
        w.pt_access[level - 1] = gpte_access(pt_access ^ XD)
        if is_last_gpte(level, pte) if not pt32 else level == 1 or (pse and pte & PS):
            break
        level -= 1
    w.level = level
    w.pkey = (pte >> 59) & 0xF
    accessed_dirty = pte_access & A
    w.pte_access = gpte_access(pte_access ^ XD)
    err = M.permission_fault(mmu, w.pte_access, w.pkey, pfec & ~M.PFERR_PRESENT, rflags_ac, pkru,
                             refresh)
    if err:
        _error(err & (M.PFERR_PRESENT | M.PFERR_PK), pfec, nx, smep, gva, trace)
    shift = 12 + bits * (level - 1)
    w.gfn = ((pte & ADDR & ~((1 << shift) - 1)) | (gva & ((1 << shift) - 1))) >> 12
    if pt32 and level == 2:
        w.gfn += pse36_gfn_delta(pte)
    if not write_fault:
        w.pte_access = protect_clean_gpte(w.pte_access, pte)
    else:
        accessed_dirty &= pte >> 1                 # fold D into A's position
    if not accessed_dirty:
        _update_accessed_dirty_bits(w, write_gpa, bool(write_fault), trace, size)
    return w


def _update_accessed_dirty_bits(w: GuestWalker, write_gpa, write_fault: bool, trace,
                                size: int = 8) -> None:
    """FNAME(update_accessed_dirty_bits): a cmpxchg straight into guest memory (not a
    tracked write: shadow pages of these tables are not touched); `size`-byte gPTEs."""
    for level in range(w.max_level, w.level - 1, -1):
        pte = orig = w.ptes[level - 1]
        if not pte & A:
            if trace is not None:
                trace("kvm_mmu_set_accessed_bit", gpa=w.pte_gpa[level - 1])
            pte |= A
        if level == w.level and write_fault and not pte & D:
            if trace is not None:
                trace("kvm_mmu_set_dirty_bit", gpa=w.pte_gpa[level - 1])
            pte |= D
        if pte == orig:
            continue
        write_gpa(w.pte_gpa[level - 1], pte.to_bytes(size, "little"))
        w.ptes[level - 1] = pte


def _error(errcode: int, pfec: int, nx: bool, smep: bool, gva: int, trace):
    errcode |= pfec & (M.PFERR_WRITE | M.PFERR_USER)
    if pfec & M.PFERR_FETCH and (nx or smep):
        errcode |= M.PFERR_FETCH
    if trace is not None:
        trace("kvm_mmu_walker_error", pferr=errcode)
    raise WalkFault(errcode, gva)


def gva_to_gpa(mmu: M.KvmMmu, read_gpa, write_gpa, cr3: int, gva: int, pfec: int, rflags_ac: bool,
               pkru: int = 0, refresh=None, trace=None, maxphyaddr: int = 52,
               pdptrs: tuple = (0, 0, 0, 0)) -> int:
    """FNAME(gva_to_gpa): walk_addr + the page offset; the gpa, or raise WalkFault."""
    w = walk_addr(mmu, read_gpa, write_gpa, cr3, gva, pfec, rflags_ac, pkru, refresh, trace,
                  maxphyaddr, pdptrs)
    return (w.gfn << 12) | (gva & 0xFFF)


def kvm_pdptr_read(vcpu) -> tuple:
    """mmu->get_pdptr: with EPT a guest MOV to CR3 does not exit and the processor loads the
    PDPTE registers itself, so KVM reads them back from the VMCS (ept_save_pdptrs); with
    shadow paging they are KVM's own copy (load_pdptrs)."""
    return vcpu.cpu.pdptes if vcpu.mmu.ops.direct else vcpu.mmu.pdptrs


def walk_vcpu(vcpu, gva: int, pfec: int) -> GuestWalker:
    """FNAME(walk_addr) on the vCPU's current guest state (CR3, RFLAGS.AC, PKRU), with the
    lazy CR0.WP refresh and tracing when anyone listens."""
    kvm = vcpu.kvm
    cpu = vcpu.cpu
    trace = partial(kvm.trace, vcpu=vcpu.index) if kvm.bus.active else None   # no frame per event
    return walk_addr(vcpu.mmu, kvm.read_gpa, kvm.write_gpa, cpu.cr3, gva, pfec,
                     bool(cpu.get_rflags() & AC), cpu.pkru if cpu.cr4 & CR4_PKE else 0,
                     M.refresh_passthrough_bits(vcpu), trace, MAXPHYADDR, kvm_pdptr_read(vcpu))

