"""The CPUID the guest sees (design section 3: SMEP, SMAP, PCID, INVPCID, PKU, NX, 1 GiB pages)."""

from kvmdbg.arch.cpufeatures import CPUID_FEATURES
from kvmdbg.cpu.regs import CR4_PKE, MAXPHYADDR
from kvmdbg.errors import ConfigError

# Features a user may choose with --cpu (QEMU's names): (leaf, register, bit).
FEATURES = CPUID_FEATURES
# The boot contract's CPUID (design section 3): everything but x2apic.
DEFAULT_FEATURES = frozenset(FEATURES) - {"x2apic"}
# CPU models for --cpu MODEL,...: max has every feature here; qemu64 (QEMU's default
# model) has none of them but NX.
MODELS = {"max": frozenset(FEATURES), "host": frozenset(FEATURES), "qemu64": frozenset({"nx"})}


def parse_cpu_option(text: str) -> frozenset:
    """--cpu [MODEL][,+feat|,-feat|,feat=on|off]...: the chosen features, or ConfigError."""
    parts = [p.strip() for p in text.split(",")]
    feats = set(DEFAULT_FEATURES)
    if parts and parts[0] and parts[0][0] not in "+-" and "=" not in parts[0]:
        model = parts.pop(0)
        if model not in MODELS:
            raise ConfigError(f"--cpu: unknown CPU model '{model}' (known: "
                              f"{', '.join(MODELS)}).")
        feats = set(MODELS[model])
    for p in parts:
        if not p:
            continue
        if p[0] in "+-":
            name, on = p[1:], p[0] == "+"
        elif "=" in p:
            name, val = p.split("=", 1)
            if val not in ("on", "off", "true", "false"):
                raise ConfigError(f"--cpu: '{p}': the value must be on or off.")
            on = val in ("on", "true")
        else:
            raise ConfigError(f"--cpu: '{p}' is not +FEATURE, -FEATURE or FEATURE=on|off "
                              f"(QEMU's spelling).")
        name = name.replace("_", "-")
        if name not in FEATURES:
            raise ConfigError(f"--cpu: unknown feature '{name}' (known: "
                              f"{', '.join(FEATURES)}).")
        (feats.add if on else feats.discard)(name)
    return frozenset(feats)


def cpuid_features(cpuid) -> frozenset:
    """The FEATURES a CPUID function (leaf, subleaf) -> (eax, ebx, ecx, edx) reports: what
    the CPU then obeys (kvm_vcpu_after_set_cpuid derives its checks from the same bits)."""
    regs = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}
    return frozenset(name for name, (leaf, reg, bit) in FEATURES.items()
                     if cpuid(leaf, 0)[regs[reg]] >> bit & 1)


def _feature_bits(features) -> dict:
    bits: dict = {}
    for name in features:
        leaf, reg, bit = FEATURES[name]
        bits[(leaf, reg)] = bits.get((leaf, reg), 0) | (1 << bit)
    return bits


def _regs(s: bytes) -> tuple[int, int, int]:
    return tuple(int.from_bytes(s[i:i + 4], "little") for i in (0, 4, 8))


_VENDOR = _regs(b"GenuineIntel")          # ebx, edx, ecx order below


def guest_cpuid(leaf: int, subleaf: int, cpu, pku: bool = True,
                features=None) -> tuple[int, int, int, int]:
    """pku=False: KVM hides PKU without TDP (kvm_set_cpu_caps). features: the --cpu set
    (None: the boot contract's); what KVM hides stays hidden whatever the user asks."""
    a, b, c, d = _base_cpuid(leaf, subleaf, cpu, pku)
    if features is None or (leaf == 7 and subleaf != 0):
        return a, b, c, d
    every, chosen = _feature_bits(FEATURES), _feature_bits(features)
    out = {"ebx": b, "ecx": c, "edx": d}
    for reg in out:
        mask = every.get((leaf, reg), 0)
        out[reg] = (out[reg] & ~mask) | chosen.get((leaf, reg), 0)
    if leaf == 7:
        if not pku:                       # KVM hides PKU without TDP
            out["ecx"] &= ~(1 << 3)
        if not out["ecx"] & (1 << 3):     # no OSPKE without PKU
            out["ecx"] &= ~(1 << 4)
    return a, out["ebx"], out["ecx"], out["edx"]


def _base_cpuid(leaf: int, subleaf: int, cpu, pku: bool = True) -> tuple[int, int, int, int]:
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
