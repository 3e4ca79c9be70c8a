"""The CPU behaves as its CPUID says (issue #12), bare and under KVM, with --cpu's features.

Oracles, each cited at its test: SDM Vol. 3A 2.5 (CR4 bits "reserved" unless CPUID
enumerates the feature) and KVM's __cr4_reserved_bits / kvm_is_valid_cr4 with the guest's
CPUID; SDM Vol. 2B INVPCID and STAC/CLAC (#UD without the CPUID bit); SDM Vol. 3A 2.2.1
and KVM's __kvm_valid_efer (EFER.NXE needs CPUID.80000001H:EDX.NX); SDM Vol. 3A 4.1.4 and
4.5.4 (PS in a PDPTE is reserved without CPUID.80000001H:EDX.Page1GB: a #PF with RSVD);
kvm_set_cpu_caps (KVM hides PKU without TDP, so under shadow paging +pku is still #GP).

Each case is real guest code: the exceptions go to recording handlers (tests/cpu/
guest_idt.py); a case that reaches its final hlt took none. Constants are the SDM's.
"""

from __future__ import annotations

import pytest

from kvmdbg.kvm.boot import PDPT, PT0
from kvmdbg.kvm.scheduler import run_vm
from tests.cpu.guest_idt import LIDT_INSN, frame, install_recorders, q, record
from tests.helpers import machine, run_cli

UD, GP, PF = 6, 13, 14
EC_P, EC_RSVD = 1, 8
PS, P, RW, XD = 1 << 7, 1, 2, 1 << 63
OUT = 0x23000                  # where guest code stores what it read
DESC = 0x23100                 # a zeroed INVPCID descriptor
ENVS = [None, "v6.12", "shadow"]          # bare hardware, KVM with EPT, KVM shadow paging


def run_guest(body: str, cpu: str, kvm=None, setup=None):
    """(what happened, vm): (vector, error code or None) of the first exception `body`
    raises, or None if it reached its hlt. setup(vm) runs before the guest does."""
    vm, _ = machine(f"{LIDT_INSN}\n{body}\nhlt", kvm=kvm, cpu=cpu)
    install_recorders(vm, (UD, GP, PF))
    if setup is not None:
        setup(vm)
    run_vm(vm, 100_000)
    r = record(vm)
    if r["vector"] == 0xDEAD:
        return None, vm
    return (r["vector"], frame(vm, r["rsp"], r["vector"] != UD)["error_code"]), vm


def outcome(body: str, cpu: str, kvm=None, setup=None):
    return run_guest(body, cpu, kvm, setup)[0]


# SDM Vol. 3A 2.5: CR4.PCIDE (bit 17), SMEP (20), SMAP (21), PKE (22) are reserved unless
# CPUID reports PCID / SMEP / SMAP / PKU; MOV to CR4 setting a reserved bit is #GP(0).
# KVM: __cr4_reserved_bits(guest_cpuid_has, vcpu), checked by kvm_is_valid_cr4.
CR4_BITS = {"pcid": 1 << 17, "smep": 1 << 20, "smap": 1 << 21, "pku": 1 << 22}


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("feature", CR4_BITS)
@pytest.mark.parametrize("on", [True, False])
def test_cr4_bit_needs_its_feature(kvm, feature, on):
    got = outcome(f"mov rax, cr4; or rax, {CR4_BITS[feature]:#x}; mov cr4, rax",
                  f"max,{'+' if on else '-'}{feature}", kvm)
    # kvm_set_cpu_caps: no PKU in the guest's CPUID without TDP, whatever the user asks.
    hidden = feature == "pku" and kvm == "shadow"
    assert got == (None if on and not hidden else (GP, 0))


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("on", [True, False])
def test_invpcid_needs_its_feature(kvm, on):
    # SDM INVPCID: #UD if CPUID.(EAX=07H,ECX=0):EBX.INVPCID[bit 10] = 0. Type 2 (all
    # contexts, globals too) with a zero descriptor is otherwise fine at CPL 0.
    got = outcome(f"mov eax, 2; invpcid rax, [{DESC:#x}]",
                  f"max,{'+' if on else '-'}invpcid", kvm)
    assert got == (None if on else (UD, None))


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("on", [True, False])
def test_stac_clac_need_smap(kvm, on):
    # SDM STAC/CLAC: #UD if CPUID.(EAX=07H,ECX=0H):EBX.SMAP[bit 20] = 0.
    assert outcome("stac", f"max,{'+' if on else '-'}smap", kvm) == (None if on else (UD, None))
    assert outcome("clac", f"max,{'+' if on else '-'}smap", kvm) == (None if on else (UD, None))


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("on", [True, False])
def test_efer_nxe_needs_nx(kvm, on):
    # SDM Vol. 3A 2.2.1 / Vol. 4 IA32_EFER: bit 11 NXE exists if CPUID.80000001H:EDX.NX
    # [bit 20] = 1; WRMSR setting a reserved bit is #GP(0) (KVM: __kvm_valid_efer).
    body = f"""
        mov ecx, 0xc0000080
        rdmsr
        mov [{OUT:#x}], eax
        btr eax, 11
        wrmsr
        bts eax, 11
        wrmsr
    """
    got, vm = run_guest(body, f"max,{'+' if on else '-'}nx", kvm)
    assert got == (None if on else (GP, 0))
    # The boot state honours the same CPUID: NXE is set only where it can be.
    assert q(vm, OUT) >> 11 & 1 == on


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("on", [True, False])
def test_xd_bit_is_reserved_without_nx(kvm, on):
    # SDM 4.5.4 (tables 4-18 to 4-20): with IA32_EFER.NXE = 0, bit 63 of a paging-structure
    # entry is reserved: a #PF with P and RSVD set (4.7). Without NX, NXE cannot be set.
    va = 0x200000

    def set_xd(vm):
        pte = PT0 + (va >> 12) * 8
        vm.write_gpa(pte, (va | P | RW | XD).to_bytes(8, "little"))

    got = outcome(f"mov rax, [{va:#x}]", f"max,{'+' if on else '-'}nx", kvm, set_xd)
    assert got == (None if on else (PF, EC_P | EC_RSVD))


@pytest.mark.parametrize("kvm", ENVS)
@pytest.mark.parametrize("on", [True, False])
def test_1g_page_needs_pdpe1gb(kvm, on):
    # SDM 4.1.4 / 4.5.4: a PDPTE with PS = 1 maps a 1 GiB page if CPUID.80000001H:EDX.
    # Page1GB[bit 26] = 1; otherwise PS is reserved: #PF, error code P | RSVD (4.7), CR2 =
    # the address. PDPT[1] maps 1 GiB..2 GiB onto guest-physical 0.. here.
    def map_1g(vm):
        vm.write_gpa(PDPT + 8, (0 | P | RW | PS).to_bytes(8, "little"))

    va = (1 << 30) + 0x100000                 # guest-physical 0x100000: the program itself
    body = f"mov rax, [{va:#x}]; mov [{OUT:#x}], rax"
    got, vm = run_guest(body, f"max,{'+' if on else '-'}pdpe1gb", kvm, map_1g)
    if on:
        assert got is None
        assert q(vm, OUT) == int.from_bytes(vm.read_gpa(0x100000, 8), "little")
    else:
        assert got == (PF, EC_P | EC_RSVD)
        assert record(vm)["cr2"] == va


# --- the same rules through the command line (kvmdbg --cpu ... -batch) ---


def _cli(tmp_path, cpu: str, source: str, *cmds: str):
    from tests.helpers import asm
    p = tmp_path / "t.bin"
    p.write_bytes(asm(source))
    args = ["-batch", "--cpu", cpu, "-ex", "continue"]
    for c in cmds:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, str(p))
    assert rc == 0, err
    return out + err


# One case per feature class: a CR4 bit (PCIDE), an instruction (INVPCID), an EFER bit
# (NXE) and a paging-structure bit (PS in a PDPTE). With no IDT the exception the SDM names
# ends in a triple fault, whose first fault the stop line reports.
def test_cli_pcide_without_pcid_is_gp(tmp_path):
    src = "mov rax, cr4; bts rax, 17; mov cr4, rax; hlt"
    assert "triple fault: #GP(0x0) at rip 0x100008" in _cli(tmp_path, "qemu64,-pcid", src)
    out = _cli(tmp_path, "qemu64,+pcid", src, "print/x $cr4")
    assert "halted" in out and "#GP" not in out


def test_cli_invpcid_without_invpcid_is_ud(tmp_path):
    src = f"mov eax, 2; invpcid rax, [{DESC:#x}]; hlt"
    assert "triple fault: #UD at rip 0x100005" in _cli(tmp_path, "qemu64,-pcid,-invpcid", src)
    assert "#UD" not in _cli(tmp_path, "qemu64,-pcid,+invpcid", src)


def test_cli_nxe_without_nx_is_gp(tmp_path):
    src = "mov ecx, 0xc0000080; rdmsr; bts eax, 11; wrmsr; hlt"
    assert "triple fault: #GP(0x0)" in _cli(tmp_path, "qemu64,-nx", src)
    assert "#GP" not in _cli(tmp_path, "qemu64", src)          # qemu64 has NX


def test_cli_1g_page_without_pdpe1gb_is_rsvd_pf(tmp_path):
    # PDPT[1] := 0 | PS | RW | P from guest code, then a read through it.
    src = f"""
        mov rax, {PS | RW | P:#x}
        mov [{PDPT + 8:#x}], rax
        mov rax, [{(1 << 30) + 0x100000:#x}]
        hlt
    """
    out = _cli(tmp_path, "qemu64,-pdpe1gb", src)
    assert "triple fault: #PF(0x9)" in out
    assert "#PF" not in _cli(tmp_path, "qemu64,+pdpe1gb", src)
