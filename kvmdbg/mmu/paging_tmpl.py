"""KVM's software walker of the guest's page tables (mirrors paging_tmpl.h, 64-bit flavour).

Used by KVM's emulator: it reads guest memory the way KVM does (through memslots,
not through EPT) and checks rights with the permission tables cached in
cpu_role, which is exactly what goes stale if kvm_post_set_cr4 is skipped.
"""

from __future__ import annotations

from kvmdbg.mmu import mmu as M
from kvmdbg.mmu.mmu_internal import ACC_EXEC, ACC_USER, ACC_WRITE

P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
XD = 1 << 63
ADDR = ((1 << 52) - 1) & ~0xFFF


class WalkFault(Exception):
    """The walk failed: inject #PF(error_code) at address."""

    def __init__(self, error_code: int, address: int):
        super().__init__(error_code)
        self.error_code = error_code
        self.address = address


def gva_to_gpa(mmu: M.KvmMmu, read_gpa, write_gpa, cr3: int, gva: int, pfec: int, rflags_ac: bool,
               pkru: int = 0, refresh=None, trace=None) -> int:
    """FNAME(walk_addr) + permission_fault: the gpa, or raise WalkFault."""
    if trace is not None:
        trace("kvm_mmu_pagetable_walk", addr=gva, pferr=pfec)
    nx = bool(mmu.cpu_role & (1 << 12))           # cpu_role.base.efer_nx
    table = cr3 & ADDR
    access = ACC_EXEC | ACC_WRITE | ACC_USER
    used = []
    level = 4
    while True:
        gpa = table | ((gva >> (12 + 9 * (level - 1))) & 511) << 3
        pte = int.from_bytes(read_gpa(gpa, 8), "little")
        if trace is not None:
            trace("kvm_mmu_paging_element", pte=pte, level=level)
        if not pte & P:
            raise WalkFault(pfec & (M.PFERR_WRITE | M.PFERR_USER | M.PFERR_FETCH), gva)
        if (pte & XD and not nx) or (level == 4 and pte & PS):
            raise WalkFault(M.PFERR_PRESENT | M.PFERR_RSVD | (pfec & 0x16), gva)
        if not pte & RW:
            access &= ~ACC_WRITE
        if not pte & US:
            access &= ~ACC_USER
        if nx and pte & XD:
            access &= ~ACC_EXEC
        used.append((gpa, pte))
        if level == 1 or (pte & PS and level < 4):
            break
        table = pte & ADDR
        level -= 1
    shift = 12 + 9 * (level - 1)
    base = pte & ADDR & ~((1 << shift) - 1)
    result = base | (gva & ((1 << shift) - 1))
    pkey = (pte >> 59) & 0xF
    err = M.permission_fault(mmu, access, pkey, pfec, rflags_ac, pkru, refresh)
    if err:
        raise WalkFault(err, gva)
    # FNAME(update_accessed_dirty_bits)
    for i, (gpa, pte) in enumerate(used):
        new = pte | A
        if i == len(used) - 1 and pfec & M.PFERR_WRITE:
            new |= D
        if new != pte:
            write_gpa(gpa, new.to_bytes(8, "little"))
    return result
