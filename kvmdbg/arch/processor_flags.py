"""RFLAGS, CR0 and CR4 bits (arch/x86/include/uapi/asm/processor-flags.h; SDM Vol. 3A 2.3,
2.5)."""

CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = 0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000
ARITH_FLAGS = CF | PF | AF | ZF | SF | OF
RFLAGS_FIXED = 0x2                 # bit 1 always reads as 1

CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31

CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR4_MCE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10
CR4_UMIP, CR4_LA57, CR4_VMXE, CR4_SMXE, CR4_FSGSBASE = 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 16
CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 17, 1 << 18, 1 << 20, 1 << 21, 1 << 22

# A MOV to CR0 / CR4 that changes one of these loads the PDPTE registers when PAE paging is
# in use after it (SDM Vol. 3A 4.4.1; KVM's X86_CR0_PDPTR_BITS / X86_CR4_PDPTR_BITS).
CR0_PDPTR_BITS = CR0_CD | CR0_NW | CR0_PG
CR4_PDPTR_BITS = CR4_PGE | CR4_PSE | CR4_PAE | CR4_SMEP
