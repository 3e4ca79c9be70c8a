"""The CPUID feature bits kvmdbg's CPU model knows (arch/x86/include/asm/cpufeatures.h;
SDM Vol. 2A CPUID, tables 3-8 to 3-10), by the names QEMU's -cpu and /proc/cpuinfo use.

Each is (leaf, register, bit) of CPUID with subleaf 0. The CPU itself (kvmdbg/cpu) holds
the set of names its CPUID reports (Cpu.features) and checks them where the SDM says an
instruction or a control bit depends on one.
"""

X86_FEATURE_PCID = (1, "ecx", 17)
X86_FEATURE_X2APIC = (1, "ecx", 21)
X86_FEATURE_SMEP = (7, "ebx", 7)
X86_FEATURE_INVPCID = (7, "ebx", 10)
X86_FEATURE_SMAP = (7, "ebx", 20)
X86_FEATURE_PKU = (7, "ecx", 3)
X86_FEATURE_OSPKE = (7, "ecx", 4)
X86_FEATURE_NX = (0x8000_0001, "edx", 20)
X86_FEATURE_GBPAGES = (0x8000_0001, "edx", 26)

# The features a user may choose (--cpu), by QEMU's name.
CPUID_FEATURES = {
    "pcid": X86_FEATURE_PCID,
    "x2apic": X86_FEATURE_X2APIC,
    "smep": X86_FEATURE_SMEP,
    "invpcid": X86_FEATURE_INVPCID,
    "smap": X86_FEATURE_SMAP,
    "pku": X86_FEATURE_PKU,
    "nx": X86_FEATURE_NX,
    "pdpe1gb": X86_FEATURE_GBPAGES,
}
