"""Segment descriptor fields (arch/x86/include/asm/desc_defs.h; SDM Vol. 3A 3.4.5, 3.5).

A descriptor's attribute bits are kept as the 16-bit "access rights" word VMX uses for the
guest segment registers (SDM Vol. 3C 24.4.1): descriptor bits 40-55 shifted down by 40.
"""

SEG_TYPE_MASK = 0xF              # type field (with S: code/data; without: system)
SEG_TYPE_ACCESSED = 0x1
SEG_TYPE_RW = 0x2                # data: writable; code: readable
SEG_TYPE_DC = 0x4                # data: expand-down; code: conforming
SEG_TYPE_CODE = 0x8
SEG_S = 1 << 4                   # code or data (not a system descriptor)
SEG_DPL_SHIFT = 5
SEG_P = 1 << 7
SEG_L = 1 << 13                  # 64-bit code segment
SEG_DB = 1 << 14                 # default operation size 32 (code) / big (stack)
SEG_G = 1 << 15                  # limit in 4 KiB units

# System descriptor types in IA-32e mode (SDM Vol. 3A Table 3-2).
DESC_LDT = 0x2
DESC_TSS_AVAIL = 0x9
DESC_TSS_BUSY = 0xB
DESC_CALL_GATE = 0xC
DESC_INTERRUPT_GATE = 0xE
DESC_TRAP_GATE = 0xF

SELECTOR_TI = 0x4                # table indicator: the LDT
SELECTOR_RPL_MASK = 0x3

# A 64-bit TSS (SDM Vol. 3A 8.7, Figure 8-11): where the stack pointers are.
TSS_RSP0 = 0x04                  # RSPn at TSS_RSP0 + 8 * n
TSS_IST1 = 0x24                  # ISTn at TSS_IST1 + 8 * (n - 1)
TSS64_LIMIT = 0x67               # the limit of a 104-byte TSS without an I/O bitmap

# A 64-bit interrupt or trap gate's IST field (SDM Vol. 3A 6.14.1, Figure 6-8): bits 34:32.
GATE_IST_SHIFT = 32
GATE_IST_MASK = 0x7
