"""The CPUID the guest sees (design section 3: SMEP, SMAP, PCID, INVPCID, PKU, NX, 1 GiB pages)."""

from kvmdbg.cpu.regs import CR4_PKE, MAXPHYADDR


def _regs(s: bytes) -> tuple[int, int, int]:
    return tuple(int.from_bytes(s[i:i + 4], "little") for i in (0, 4, 8))


_VENDOR = _regs(b"GenuineIntel")          # ebx, edx, ecx order below


def guest_cpuid(leaf: int, subleaf: int, cpu, pku: bool = True) -> tuple[int, int, int, int]:
    """pku=False: KVM hides PKU without TDP (kvm_set_cpu_caps)."""
    if leaf == 0:
        return 0xD, _VENDOR[0], _VENDOR[2], _VENDOR[1]
    if leaf == 1:
        # family 6; edx: FPU PSE TSC MSR PAE CX8 APIC SEP MTRR PGE CMOV PAT FXSR SSE SSE2
        edx = sum(1 << b for b in (0, 3, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16, 24, 25, 26))
        ecx = (1 << 23) | (1 << 17) | (1 << 0)         # POPCNT, PCID, SSE3
        return 0x000606A6, cpu.index << 24, ecx, edx
    if leaf == 7 and subleaf == 0:
        ebx = (1 << 7) | (1 << 10) | (1 << 20)            # SMEP, INVPCID, SMAP
        ecx = ((1 << 3) if pku else 0) | ((1 << 4) if cpu.cr4 & CR4_PKE else 0)   # PKU, OSPKE
        return 0, ebx, ecx, 0
    if leaf == 0x8000_0000:
        return 0x8000_0008, 0, 0, 0
    if leaf == 0x8000_0001:
        edx = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 29)   # SYSCALL, NX, 1GB pages, LM
        return 0, 0, 1 | 1 << 5, edx                       # ecx: LAHF/SAHF, LZCNT (ABM)
    if leaf == 0x8000_0008:
        return MAXPHYADDR | (48 << 8), 0, 0, 0
    return 0, 0, 0, 0
