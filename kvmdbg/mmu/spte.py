"""SPTE bits and builders in the EPT flavour (mirrors spte.h / spte.c, kvm-mmu-spec 5.5).

An SPTE is the 64-bit word the hardware's EPT walk reads; everything KVM keeps
beside the hardware bits lives in the software-available bits, as in KVM.
"""

from __future__ import annotations

from kvmdbg.bits import mask

# EPT_R is shadow_user_mask / the present mask, EPT_W PT_WRITABLE_MASK, EPT_X shadow_x_mask.
from kvmdbg.arch.vmx import (EPT_ACCESSED, EPT_DIRTY, EPT_MT_SHIFT, EPT_MT_WB,  # noqa: F401
                             EPT_PAGE_SIZE as PT_PAGE_SIZE, EPT_R, EPT_W, EPT_X)
SPTE_MMU_PRESENT = 1 << 11         # software: "KVM considers this SPTE present"
SPTE_TDP_AD_SHIFT = 52             # 0 = A/D enabled, 1 = disabled, 2 = wrprot-only
EPT_SPTE_HOST_WRITABLE = 1 << 57
EPT_SPTE_MMU_WRITABLE = 1 << 58
PFN_MASK = mask(51, 12)
MMIO_VALUE = EPT_W | EPT_X         # VMX_EPT_MISCONFIG_WX_VALUE: W|X without R
MMIO_MASK = EPT_R | EPT_W | EPT_X
REMOVED_SPTE = 0x5A0               # frozen while a table is being replaced
SHADOW_NONPRESENT = 0

# Invariants (static_assert's analog): W => MMU-writable => host-writable; no overlaps.
assert not (EPT_SPTE_HOST_WRITABLE | EPT_SPTE_MMU_WRITABLE) & PFN_MASK
assert not REMOVED_SPTE & SPTE_MMU_PRESENT and not REMOVED_SPTE & MMIO_MASK

# MMIO generation: 19 bits, bits 0-7 in SPTE bits 3-10, bits 8-18 in SPTE bits 52-62.
MMIO_GEN_LOW_SHIFT, MMIO_GEN_HIGH_SHIFT = 3, 52
MMIO_GEN_MASK = (1 << 19) - 1


def is_shadow_present_pte(spte: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT)


def is_mmio_spte(spte: int) -> bool:
    return (spte & MMIO_MASK) == MMIO_VALUE and not spte & SPTE_MMU_PRESENT


def is_large_pte(spte: int) -> bool:
    return bool(spte & PT_PAGE_SIZE)


def is_last_spte(spte: int, level: int) -> bool:
    return level == 1 or bool(spte & PT_PAGE_SIZE)


def spte_to_pfn(spte: int) -> int:
    return (spte & PFN_MASK) >> 12


def make_spte(pfn: int, level: int, writable: bool = True, host_writable: bool = True,
              accessed: bool = True, mt: int = EPT_MT_WB) -> int:
    """A present leaf for ACC_ALL: R|X always, W when writable, WB memory type, A (and D
    when writable) preset because KVM's TDP MMU sets them at fault time with A/D enabled."""
    if host_writable and accessed and mt == EPT_MT_WB:
        # The TDP fault path's case (every EPT violation): the bits below, precomputed.
        return _LEAF_BITS[level > 1][bool(writable)] | (pfn << 12)
    return _make_spte(pfn, level, writable, host_writable, accessed, mt)


def _make_spte(pfn: int, level: int, writable: bool, host_writable: bool, accessed: bool,
               mt: int) -> int:
    spte = SPTE_MMU_PRESENT | EPT_R | EPT_X | (mt << EPT_MT_SHIFT) | (pfn << 12)
    if level > 1:
        spte |= PT_PAGE_SIZE
    if accessed:
        spte |= EPT_ACCESSED
    if host_writable:
        spte |= EPT_SPTE_HOST_WRITABLE
    if writable:
        spte |= EPT_W | EPT_SPTE_MMU_WRITABLE | EPT_DIRTY
    return spte


# make_spte's bits for (level > 1, writable) with the defaults, from the general builder.
_LEAF_BITS = tuple(tuple(_make_spte(0, 2 if large else 1, w, True, True, EPT_MT_WB) for w in (False, True))
                   for large in (False, True))
LEAF_4K_BITS = _LEAF_BITS[0]       # [writable]: a 4 KiB leaf's bits but the pfn's


def make_nonleaf_spte(child_pfn: int) -> int:
    return SPTE_MMU_PRESENT | EPT_R | EPT_W | EPT_X | EPT_ACCESSED | (child_pfn << 12)


def make_mmio_spte(gfn: int, gen: int) -> int:
    gen &= MMIO_GEN_MASK
    return (MMIO_VALUE | ((gen & 0xFF) << MMIO_GEN_LOW_SHIFT) | ((gen >> 8) << MMIO_GEN_HIGH_SHIFT)
            | (gfn << 12) & mask(51, 12) & ~mask(62, 52))


def get_mmio_spte_gen(spte: int) -> int:
    return ((spte >> MMIO_GEN_LOW_SHIFT) & 0xFF) | (((spte >> MMIO_GEN_HIGH_SHIFT) & 0x7FF) << 8)


def spte_str(spte: int, level: int) -> str:
    """'0x... (r w x) l1' for listings."""
    if spte == 0:
        return "0x0 (not present)"
    if is_mmio_spte(spte):
        return f"{spte:#x} (mmio gen {get_mmio_spte_gen(spte)})"
    if spte == REMOVED_SPTE:
        return f"{spte:#x} (removed)"
    bits = " ".join(n for n, b in (("r", EPT_R), ("w", EPT_W), ("x", EPT_X)) if spte & b)
    kind = "leaf" if is_last_spte(spte, level) else "table"
    return f"{spte:#x} ({bits}) {kind} pfn {spte_to_pfn(spte):#x}"


# --- the legacy/shadow flavour (kvm_mmu_reset_all_pte_masks; shadow paging, tdp_enabled=0) ---
# Hardware bits are those of an x86 PTE; KVM's own live in the ignored bits 9-11.

from kvmdbg.arch.pgtable_types import (PAGE_ACCESSED as PT_ACCESSED,  # noqa: E402,F401
                                       PAGE_DIRTY as PT_DIRTY, PAGE_NX as PT64_NX,
                                       PAGE_PRESENT as PT_PRESENT, PAGE_RW as PT_WRITABLE,
                                       PAGE_USER as PT_USER)
SPTE_HOST_WRITABLE = 1 << 9        # DEFAULT_SPTE_HOST_WRITABLE
SPTE_MMU_WRITABLE = 1 << 10        # DEFAULT_SPTE_MMU_WRITABLE
SHADOW_MMIO_VALUE = PT_PRESENT | (1 << 51)      # present + a reserved PA bit: #PF with RSVD
SHADOW_MMIO_MASK = SHADOW_MMIO_VALUE

from kvmdbg.arch.kvm_host import ACC_EXEC, ACC_USER, ACC_WRITE  # noqa: E402,F401


def is_shadow_mmio_spte(spte: int) -> bool:
    return (spte & SHADOW_MMIO_MASK) == SHADOW_MMIO_VALUE and not spte & SPTE_MMU_PRESENT


def make_shadow_spte(pfn: int, level: int, access: int, accessed: bool = True,
                     host_writable: bool = True) -> int:
    """make_spte for shadow paging: P, U/NX from the access bits, W + MMU-writable + D when
    writable (the caller already decided write protection), A unless prefetched."""
    spte = SPTE_MMU_PRESENT | PT_PRESENT | (pfn << 12)
    if not access & ACC_EXEC:
        spte |= PT64_NX
    if access & ACC_USER:
        spte |= PT_USER
    if level > 1:
        spte |= PT_PAGE_SIZE
    if host_writable:
        spte |= SPTE_HOST_WRITABLE
    if access & ACC_WRITE:
        spte |= PT_WRITABLE | SPTE_MMU_WRITABLE | PT_DIRTY
    if accessed:
        spte |= PT_ACCESSED
    return spte


def make_shadow_nonleaf_spte(child_pfn: int) -> int:
    """make_nonleaf_spte: every right granted; the leaf carries the combined access."""
    return SPTE_MMU_PRESENT | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | (child_pfn << 12)


def make_shadow_mmio_spte(gfn: int, gen: int) -> int:
    gen &= MMIO_GEN_MASK
    return (SHADOW_MMIO_VALUE | ((gen & 0xFF) << MMIO_GEN_LOW_SHIFT)
            | ((gen >> 8) << MMIO_GEN_HIGH_SHIFT) | (gfn << 12) & mask(50, 12))


def shadow_mmio_gfn(spte: int) -> int:
    return (spte & mask(50, 12)) >> 12


def shadow_spte_str(spte: int, level: int) -> str:
    """'0x... (p w u nx) leaf pfn 0x...' for listings of shadow pages."""
    if spte == 0:
        return "0x0 (not present)"
    if is_shadow_mmio_spte(spte):
        return f"{spte:#x} (mmio gfn {shadow_mmio_gfn(spte):#x} gen {get_mmio_spte_gen(spte)})"
    bits = " ".join(n for n, b in (("p", PT_PRESENT), ("w", PT_WRITABLE), ("u", PT_USER),
                                   ("a", PT_ACCESSED), ("d", PT_DIRTY), ("nx", PT64_NX)) if spte & b)
    kind = "leaf" if is_last_spte(spte, level) else "table"
    return f"{spte:#x} ({bits}) {kind} pfn {spte_to_pfn(spte):#x}"
