"""EFER bits and the MSRs the CPU model implements (arch/x86/include/asm/msr-index.h)."""

EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11

MSR_TSC = 0x10
MSR_PAT = 0x277
MSR_EFER = 0xC000_0080
MSR_FS_BASE = 0xC000_0100
MSR_GS_BASE = 0xC000_0101
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_TSC_AUX = 0xC000_0103
