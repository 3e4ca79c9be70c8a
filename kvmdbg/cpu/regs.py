"""Register names and the architectural bit names of RFLAGS, CR0, CR4 and EFER."""

GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
GPR_INDEX = {n: i for i, n in enumerate(GPR_NAMES)}

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)


def _subregs() -> dict[str, tuple[int, int, int]]:
    """name -> (gpr index, size in bytes, bit shift) for every addressable sub-register."""
    table: dict[str, tuple[int, int, int]] = {}
    legacy = ("a", "c", "d", "b")
    for i, l in enumerate(legacy):
        table[f"r{l}x"] = (i, 8, 0)
        table[f"e{l}x"] = (i, 4, 0)
        table[f"{l}x"] = (i, 2, 0)
        table[f"{l}l"] = (i, 1, 0)
        table[f"{l}h"] = (i, 1, 8)
    for i, n in ((4, "sp"), (5, "bp"), (6, "si"), (7, "di")):
        table[f"r{n}"] = (i, 8, 0)
        table[f"e{n}"] = (i, 4, 0)
        table[n] = (i, 2, 0)
        table[f"{n}l"] = (i, 1, 0)
    for i in range(8, 16):
        table[f"r{i}"] = (i, 8, 0)
        table[f"r{i}d"] = (i, 4, 0)
        table[f"r{i}w"] = (i, 2, 0)
        table[f"r{i}b"] = (i, 1, 0)
    return table


SUBREGS = _subregs()

# RFLAGS
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = 0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000
ARITH_FLAGS = CF | PF | AF | ZF | SF | OF
RFLAGS_FIXED = 0x2
RFLAGS_BITS = (("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
               ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18),
               ("VIF", 19), ("VIP", 20), ("ID", 21))

# CR0
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR0_BITS = (("PE", 0), ("MP", 1), ("EM", 2), ("TS", 3), ("ET", 4), ("NE", 5), ("WP", 16),
            ("AM", 18), ("NW", 29), ("CD", 30), ("PG", 31))

# CR4
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR4_MCE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10
CR4_UMIP, CR4_LA57, CR4_VMXE, CR4_SMXE, CR4_FSGSBASE = 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 16
CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 17, 1 << 18, 1 << 20, 1 << 21, 1 << 22
CR4_BITS = (("VME", 0), ("PVI", 1), ("TSD", 2), ("DE", 3), ("PSE", 4), ("PAE", 5), ("MCE", 6),
            ("PGE", 7), ("PCE", 8), ("OSFXSR", 9), ("OSXMMEXCPT", 10), ("UMIP", 11),
            ("LA57", 12), ("VMXE", 13), ("SMXE", 14), ("FSGSBASE", 16), ("PCIDE", 17),
            ("OSXSAVE", 18), ("SMEP", 20), ("SMAP", 21), ("PKE", 22))

# EFER
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
EFER_BITS = (("SCE", 0), ("LME", 8), ("LMA", 10), ("NXE", 11))

# MSRs the interpreter implements
MSR_TSC = 0x10
MSR_PAT = 0x277
MSR_EFER = 0xC000_0080
MSR_FS_BASE = 0xC000_0100
MSR_GS_BASE = 0xC000_0101
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_TSC_AUX = 0xC000_0103

MAXPHYADDR = 46     # guest physical address width the CPU advertises


def decode_bits(value: int, names) -> list[str]:
    return [n for n, b in names if value >> b & 1]
