"""Bits of an x86 paging-structure entry (arch/x86/include/asm/pgtable_types.h; SDM Vol.
3A 4.5), and the physical-address width the CPU model reports."""

from kvmdbg.bits import mask

PAGE_PRESENT = 1 << 0
PAGE_RW = 1 << 1
PAGE_USER = 1 << 2
PAGE_PWT = 1 << 3
PAGE_PCD = 1 << 4
PAGE_ACCESSED = 1 << 5
PAGE_DIRTY = 1 << 6
PAGE_PSE = 1 << 7                  # a leaf above level 1 (PS)
PAGE_GLOBAL = 1 << 8
PAGE_NX = 1 << 63                  # XD
PTE_ADDR_MASK = mask(51, 12)       # the frame address bits of any entry

MAXPHYADDR = 46                    # CPUID.80000008H:EAX[7:0] of the CPU model

# PAE paging (SDM Vol. 3A 4.4): CR3[31:5] locate the 32-byte page-directory-pointer table;
# a present PDPTE reserves bits 2:1, 8:5 and 63:MAXPHYADDR (Table 4-8: no R/W, U/S, A, XD),
# a present PDE or PTE bits 62:MAXPHYADDR (4.4.2, besides XD without EFER.NXE).
PAE_PDPT_ADDR_MASK = mask(31, 5)
PAE_PDPTE_RSVD = mask(63, MAXPHYADDR) | mask(8, 5) | mask(2, 1)
PAE_PTE_RSVD = mask(62, MAXPHYADDR)
PAE_PDPTE_COUNT = 4

# 32-bit paging (SDM Vol. 3A 4.3): 4-byte entries; a 4 MiB page (CR4.PSE, PDE.PS) takes
# bits 31:22 of its address from the PDE. The model's CPUID has no PSE-36, so M = 32 in
# Table 4-4: bits 21:13 of such a PDE are reserved.
PT32_ADDR_MASK = mask(31, 12)
PT32_4M_ADDR_MASK = mask(31, 22)
PT32_4M_RSVD = mask(21, 13)
