"""Architectural exceptions raised inside the interpreter and delivered through the IDT."""

# Page-fault error code bits (SDM 4.7; KVM's PFERR_* names), defined in kvmdbg/arch.
from kvmdbg.arch.kvm_host import (PFERR_FETCH, PFERR_PK, PFERR_PRESENT,  # noqa: F401
                                  PFERR_RSVD, PFERR_USER, PFERR_WRITE)

DE, DB, NMI, BP, OF_, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC_, MC = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18)

VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 18: "#MC"}

# Vectors that push an error code (SDM Vol. 3A, Table 6-1).
HAS_ERROR_CODE = frozenset({DF, TS, NP, SS, GP, PF, AC_})
# Contributory exceptions for the double-fault rules (SDM Vol. 3A, Table 6-4/6-5).
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})

# Not an architectural bit: marks implicit supervisor accesses (GDT/IDT/TSS reads)
# in the access word handed to the walker; never appears in an error code.
ACC_IMPLICIT = 1 << 16


class GuestFault(Exception):
    """An exception the guest takes (vector, error code, and CR2 for #PF)."""

    __slots__ = ("vector", "error_code", "cr2")

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        super().__init__(vector)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2

    def __str__(self) -> str:
        s = VECTOR_NAMES.get(self.vector, f"vector {self.vector}")
        if self.error_code is not None:
            s += f"({self.error_code:#x})"
        if self.cr2 is not None:
            s += f" at {self.cr2:#x}"
        return s


class SoftwareInterrupt(GuestFault):
    """INT n, INT3 or INTO, raised with RIP after the instruction (they are traps).

    Unlike an exception it pushes no error code, its gate's DPL is checked against CPL,
    error codes of faults while delivering it have EXT = 0, and such a fault (or a VM exit)
    is reported at the instruction itself: length is how far back RIP goes (SDM Vol. 3A
    6.12.1.1, 6.13)."""

    __slots__ = ("length",)

    def __init__(self, vector: int, length: int):
        super().__init__(vector)
        self.length = length


class TripleFault(Exception):
    """The guest triple-faulted (KVM_EXIT_SHUTDOWN)."""
