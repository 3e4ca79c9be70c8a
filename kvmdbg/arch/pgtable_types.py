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
