"""Register names and the architectural bit names of RFLAGS, CR0, CR4 and EFER."""

# The architectural bits are defined once in kvmdbg/arch; cpu/ code imports them from here.
from kvmdbg.arch.msr_index import *  # noqa: F401,F403
from kvmdbg.arch.pgtable_types import MAXPHYADDR  # noqa: F401
from kvmdbg.arch.processor_flags import *  # noqa: F401,F403

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

# Bit names for display (the bits themselves are kvmdbg/arch's).
RFLAGS_BITS = (("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
               ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18),
               ("VIF", 19), ("VIP", 20), ("ID", 21))

CR0_BITS = (("PE", 0), ("MP", 1), ("EM", 2), ("TS", 3), ("ET", 4), ("NE", 5), ("WP", 16),
            ("AM", 18), ("NW", 29), ("CD", 30), ("PG", 31))

CR4_BITS = (("VME", 0), ("PVI", 1), ("TSD", 2), ("DE", 3), ("PSE", 4), ("PAE", 5), ("MCE", 6),
            ("PGE", 7), ("PCE", 8), ("OSFXSR", 9), ("OSXMMEXCPT", 10), ("UMIP", 11),
            ("LA57", 12), ("VMXE", 13), ("SMXE", 14), ("FSGSBASE", 16), ("PCIDE", 17),
            ("OSXSAVE", 18), ("SMEP", 20), ("SMAP", 21), ("PKE", 22))

EFER_BITS = (("SCE", 0), ("LME", 8), ("LMA", 10), ("NXE", 11))


def decode_bits(value: int, names) -> list[str]:
    return [n for n, b in names if value >> b & 1]
