"""--cpu: QEMU's [MODEL][,+feature,-feature] spelling, and the CPUID bits the guest reads
(Intel SDM vol. 2A, CPUID: leaf 1 ECX bit 17 PCID, 21 x2APIC; leaf 7 EBX bit 7 SMEP,
10 INVPCID, 20 SMAP, ECX bit 3 PKU; leaf 0x80000001 EDX bit 20 NX, 26 1 GiB pages)."""

from __future__ import annotations

import pytest

from kvmdbg.errors import ConfigError
from kvmdbg.kvm.boot import Program, make_vm
from kvmdbg.kvm.cpuid import DEFAULT_FEATURES, parse_cpu_option

BITS = {"pcid": (1, 2, 17), "x2apic": (1, 2, 21), "smep": (7, 1, 7), "invpcid": (7, 1, 10),
        "smap": (7, 1, 20), "pku": (7, 2, 3), "nx": (0x80000001, 3, 20),
        "pdpe1gb": (0x80000001, 3, 26)}          # leaf, register index (eax ebx ecx edx), bit


def seen(vm):
    v = vm.vcpus[0]
    out = set()
    for name, (leaf, reg, bit) in BITS.items():
        if v.cpuid(v.cpu, leaf, 0)[reg] >> bit & 1:
            out.add(name)
    return out


def test_parse():
    assert parse_cpu_option("qemu64,+pcid,+invpcid") == {"nx", "pcid", "invpcid"}
    assert parse_cpu_option("qemu64,-pcid,+invpcid") == {"nx", "invpcid"}
    assert parse_cpu_option("max") == set(BITS)
    assert parse_cpu_option("-smap,x2apic=on") == (DEFAULT_FEATURES - {"smap"}) | {"x2apic"}


@pytest.mark.parametrize("text, words", [
    ("qemu64,+fancy", "unknown feature 'fancy'"),
    ("pentium", "unknown CPU model 'pentium'"),
    ("max,pcid", "not +FEATURE"),
    ("max,pcid=maybe", "on or off"),
])
def test_parse_errors_one_line(text, words):
    with pytest.raises(ConfigError) as e:
        parse_cpu_option(text)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["qemu64,+pcid,+invpcid", "qemu64,-pcid,-invpcid",
                                  "qemu64,-pcid,+invpcid", "max", "max,-pku,-smep"])
def test_cpuid_bits_follow_the_option(text):
    vm = make_vm(Program(b"\xf4"), "v6.12", cpu=text)
    assert seen(vm) == parse_cpu_option(text)


def test_default_is_the_boot_contracts():
    vm = make_vm(Program(b"\xf4"), "v6.12")
    assert seen(vm) == set(DEFAULT_FEATURES)


def test_kvm_still_hides_pku_without_tdp():
    from kvmdbg.kvm.profiles import PROFILES
    shadow = next(p.name for p in PROFILES.values() if not p.tdp_enabled)
    vm = make_vm(Program(b"\xf4"), shadow, cpu="max")
    assert "pku" not in seen(vm)
