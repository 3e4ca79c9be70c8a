"""Bits of an EPT paging-structure entry (arch/x86/include/asm/vmx.h VMX_EPT_*; SDM Vol.
3C 29.3.2)."""

EPT_R = 1 << 0                     # VMX_EPT_READABLE_MASK
EPT_W = 1 << 1                     # VMX_EPT_WRITABLE_MASK
EPT_X = 1 << 2                     # VMX_EPT_EXECUTABLE_MASK
EPT_MT_SHIFT = 3                   # bits 5:3 memory type (VMX_EPT_MT_EPTE_SHIFT)
EPT_MT_UC, EPT_MT_WB = 0, 6
EPT_IPAT = 1 << 6                  # VMX_EPT_IPAT_BIT
EPT_PAGE_SIZE = 1 << 7             # a leaf above level 1
EPT_ACCESSED = 1 << 8              # VMX_EPT_ACCESS_BIT
EPT_DIRTY = 1 << 9                 # VMX_EPT_DIRTY_BIT
