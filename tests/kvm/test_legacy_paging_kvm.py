"""KVM with a PAE or 32-bit guest: MMU roles, load_pdptrs, KVM's software walker.

Oracles: KVM's source (arch/x86/kvm/mmu/mmu.c kvm_calc_cpu_role, x86.c load_pdptrs and
the CR-write paths that call it, paging_tmpl.h walk_addr_generic), the SDM rules for
PDPTE reserved bits (Vol. 3A 4.4.1), and, for the walker, the hardware walk that
tests/cpu/test_legacy_paging.py checks against unicorn: on the same tables KVM's walker
(used by the emulator and by shadow paging) must find the same translation, fault with
the same error code and leave the same accessed/dirty flags.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from kvmdbg.cpu.faults import GuestFault
from kvmdbg.errors import UnsupportedPaging
from kvmdbg.kvm import x86
from kvmdbg.kvm.profiles import get_profile
from kvmdbg.kvm.vm import Vm
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu import paging_tmpl as PT
from tests.cpu import test_legacy_paging as H

# union kvm_mmu_page_role bits (KVM's mmu_internal.h / kvm_host.h), written out here.
ROLE_LEVEL_MASK, ROLE_HAS_4_BYTE_GPTE, ROLE_DIRECT = 0xF, 1 << 4, 1 << 7
PT32_ROOT_LEVEL, PT32E_ROOT_LEVEL = 2, 3
GP_VECTOR = 13


def kvm_vcpu(profile: str, memory: dict):
    vm = Vm(H.U.MEM, 1, profile=get_profile(profile))
    for pa, data in memory.items():
        vm.write_gpa(pa, data)
    return vm, vm.vcpus[0]


def kvm_enter_paging(vcpu, *, pae, cr3, pse=False, pge=False, smep=False, smap=False, wp=True,
                     nxe=False, ac=False, cpl=0):
    """CR4/EFER/CR3 as the guest would have them before paging, then KVM's MOV-to-CR0 exit
    handler setting PG (kvm_set_cr0: load_pdptrs for PAE, then the MMU reset)."""
    cpu = vcpu.cpu
    cpu.set_cs(0x1B if cpl == 3 else 0x08)
    cpu.set_rflags(0x2 | (H.RFLAGS_AC if ac else 0))
    cpu.set_efer(H.EFER_NXE if nxe else 0)
    cpu.set_cr4((H.CR4_PAE if pae else 0) | (H.CR4_PSE if pse else 0) | (H.CR4_PGE if pge else 0)
                | (H.CR4_SMEP if smep else 0) | (H.CR4_SMAP if smap else 0))
    cpu.set_cr3(cr3)
    x86.kvm_set_cr0(vcpu, H.CR0_PE | H.CR0_ET | H.CR0_PG | (H.CR0_WP if wp else 0))


# --- roles (kvm_calc_cpu_role) ---

@pytest.mark.parametrize("profile", ["v6.12", "v5.15"])
@pytest.mark.parametrize("pae, level, four_byte", [(True, PT32E_ROOT_LEVEL, 0),
                                                   (False, PT32_ROOT_LEVEL, ROLE_HAS_4_BYTE_GPTE)])
def test_cpu_role_of_a_non_long_mode_guest(profile, pae, level, four_byte):
    """kvm_calc_cpu_role: base.level = CR4.PAE ? PT32E_ROOT_LEVEL : PT32_ROOT_LEVEL outside
    long mode, has_4_byte_gpte = !CR4.PAE; under TDP the root stays a direct 4-level
    EPT root whatever the guest's mode."""
    vm, vcpu = kvm_vcpu(profile, {H.PDPT_PAGE: H.u64(0x102000 | H.P)})
    kvm_enter_paging(vcpu, pae=pae, cr3=H.PDPT_PAGE, pse=True)
    base = vcpu.mmu.cpu_role & 0xFFFF_FFFF
    assert base & ROLE_LEVEL_MASK == level
    assert base & ROLE_HAS_4_BYTE_GPTE == four_byte
    assert not base & ROLE_DIRECT
    root = vcpu.mmu.root_role
    assert root & ROLE_DIRECT and root & ROLE_LEVEL_MASK == 4


# --- load_pdptrs (x86.c) ---

@pytest.mark.parametrize("bit", H.PDPTE_RSVD_BITS)
@pytest.mark.parametrize("profile", ["v6.12", "shadow"])
def test_kvm_set_cr0_injects_gp_for_a_reserved_pdpte(profile, bit):
    """kvm_set_cr0 -> load_pdptrs fails on a present PDPTE with a reserved bit
    (rsvd_bits_mask[0][2]: 63:MAXPHYADDR, 8:5, 2:1) -> #GP, CR0 unchanged."""
    pdpt = [H.GOOD[0], H.GOOD[1], H.GOOD[2] | 1 << bit, H.GOOD[3]]
    vm, vcpu = kvm_vcpu(profile, {H.PDPT_PAGE + 8 * k: H.u64(e) for k, e in enumerate(pdpt)})
    cpu = vcpu.cpu
    cpu.set_cr4(H.CR4_PAE)
    cpu.set_cr3(H.PDPT_PAGE)
    old = cpu.cr0
    with pytest.raises(GuestFault) as e:
        x86.kvm_set_cr0(vcpu, H.CR0_PE | H.CR0_PG)
    assert e.value.vector == GP_VECTOR and cpu.cr0 == old


@pytest.mark.parametrize("profile", ["v6.12", "shadow"])
def test_load_pdptrs_on_cr0_cr4_and_cr3(profile):
    """The PDPTEs KVM loads (mmu->pdptrs) and those the guest's processor then uses: on PG
    set, on a CR4.PGE change, and on every CR3 write of a PAE guest (kvm_set_cr3 reloads
    even an unchanged CR3). SMAP changes do not reload (X86_CR4_PDPTR_BITS)."""
    vm, vcpu = kvm_vcpu(profile, {H.PDPT_PAGE + 8 * k: H.u64(e) for k, e in enumerate(H.GOOD)})
    cpu = vcpu.cpu
    cpu.set_cr4(H.CR4_PAE)
    cpu.set_cr3(H.PDPT_PAGE)
    x86.kvm_set_cr0(vcpu, H.CR0_PE | H.CR0_PG)
    assert vcpu.mmu.pdptrs == cpu.pdptes == tuple(H.GOOD)
    vm.write_gpa(H.PDPT_PAGE, H.u64(0))
    x86.kvm_set_cr4(vcpu, H.CR4_PAE | H.CR4_SMAP)
    assert vcpu.mmu.pdptrs[0] == H.GOOD[0]
    x86.kvm_set_cr4(vcpu, H.CR4_PAE | H.CR4_SMAP | H.CR4_PGE)
    assert vcpu.mmu.pdptrs[0] == cpu.pdptes[0] == 0
    vm.write_gpa(H.PDPT_PAGE, H.u64(H.GOOD[0]))
    x86.kvm_set_cr3(vcpu, H.PDPT_PAGE)
    assert vcpu.mmu.pdptrs[0] == cpu.pdptes[0] == H.GOOD[0]
    vm.write_gpa(H.PDPT_PAGE + 8, H.u64(H.GOOD[1] | 1 << 63))
    with pytest.raises(GuestFault):
        x86.kvm_set_cr3(vcpu, H.PDPT_PAGE)


def test_load_pdptrs_fails_outside_the_memslots():
    """kvm_vcpu_read_guest_page fails for a gfn in no memslot: load_pdptrs returns 0."""
    vm, vcpu = kvm_vcpu("v6.12", {})
    assert not x86.load_pdptrs(vcpu, H.U.MEM + 0x1000)


def test_shadow_paging_frees_the_root_when_pdptes_change():
    """load_pdptrs: !tdp_enabled and the PDPTEs differ -> kvm_mmu_free_roots(CURRENT)."""
    vm, vcpu = kvm_vcpu("shadow", {H.PDPT_PAGE + 8 * k: H.u64(e) for k, e in enumerate(H.GOOD)})
    freed = []
    vcpu.mmu.ops.free_root = lambda v, sp, invalid: freed.append(sp)
    vcpu.mmu.root = M.RootInfo(H.PDPT_PAGE, object())
    x86.load_pdptrs(vcpu, H.PDPT_PAGE)
    assert len(freed) == 1 and not vcpu.mmu.root.valid
    vcpu.mmu.root = M.RootInfo(H.PDPT_PAGE, object())
    x86.load_pdptrs(vcpu, H.PDPT_PAGE)               # unchanged: the root stays
    assert len(freed) == 1 and vcpu.mmu.root.valid


@pytest.mark.parametrize("pae, mode", [(True, "PAE"), (False, "32-bit")])
def test_shadow_paging_of_a_non_long_mode_guest_stops_with_one_line(pae, mode):
    """mmu_alloc_shadow_roots' four pae_root entries are not modelled: loading the MMU
    stops with a message instead of building 4-level shadow tables for a 3/2-level guest."""
    vm, vcpu = kvm_vcpu("shadow", {H.PDPT_PAGE + 8 * k: H.u64(e) for k, e in enumerate(H.GOOD)})
    kvm_enter_paging(vcpu, pae=pae, cr3=H.PDPT_PAGE)
    with pytest.raises(UnsupportedPaging) as e:
        M.kvm_mmu_reload(vcpu)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"shadow paging of a {mode} guest is not modelled yet")


# --- KVM's walker against the hardware walker ---

def kvm_walk(vcpu, va, pfec):
    try:
        w = PT.walk_vcpu(vcpu, va, pfec)
    except PT.WalkFault as f:
        return ("fault", f.error_code, f.address)
    return ("ok", w.gfn << 12 | (va & 0xFFF))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(H.cases())
def test_kvm_walker_agrees_with_the_hardware_walker(case):
    mem, regs, va, entries, kind = case
    hw_vm, hw_cpu = H.new_cpu(mem)
    H.enter_paging(hw_cpu, **regs)
    acc = H.KIND_ACC[kind] | (H.ACC_U if regs["cpl"] == 3 else 0)
    hw = H.kvmdbg_walk(hw_cpu, va, acc)
    vm, vcpu = kvm_vcpu("v6.12", mem)
    kvm_enter_paging(vcpu, **regs)
    kv = kvm_walk(vcpu, va, acc)
    if hw[0] == "fault" and kv[0] == "fault" and not regs["pae"] and regs["nxe"]:
        # walk_addr_generic sets I/D for a fetch when role.efer_nx, which kvm_calc_cpu_role
        # takes from EFER.NX even with 32-bit paging; the SDM (4.7) sets it only with PAE.
        if kind == "fetch":
            assert kv[1] == hw[1] | H.EC_ID
            return
    assert kv == hw
    if hw[0] == "ok":
        for pa, size in entries:
            assert vm.peek_gpa(pa, size) == hw_vm.peek_gpa(pa, size), f"entry at {pa:#x}"


# --- KVM's walker on its own rules (reset_guest_rsvds_bits_mask, walk_addr_generic) ---

def pae_guest(mem_extra):
    mem = {**H.two_level(True, H.RW, H.RW), **mem_extra}
    vm, vcpu = kvm_vcpu("v6.12", mem)
    kvm_enter_paging(vcpu, pae=True, cr3=H.PDPT_PAGE)
    return vm, vcpu


PTE_PAE = 0x106000 + 8 * (H.VA_RIGHTS >> 12 & 511)
PDE_32 = H.PD32 + 4 * (H.VA_RIGHTS >> 22)
PTE_32 = 0x106000 + 4 * (H.VA_RIGHTS >> 12 & 1023)


@pytest.mark.parametrize("bit", [H.MAXPHYADDR, 52, 58, 62])
def test_pae_gpte_bits_62_maxphyaddr_are_reserved(bit):
    """PT32E_ROOT_LEVEL: rsvd_bits(maxphyaddr, 62) in PDEs and PTEs (SDM 4.4.2 alike)."""
    vm, vcpu = pae_guest({PTE_PAE: H.u64(H.DATA_PAGE | H.P | H.RW | 1 << bit)})
    assert kvm_walk(vcpu, H.VA_RIGHTS, 0) == ("fault", H.EC_P | H.EC_RSVD, H.VA_RIGHTS)


def test_32bit_gptes_are_4_bytes_and_ad_updates_leave_the_neighbour():
    """PTTYPE 32: pt_element_t is u32, so the A/D cmpxchg writes 4 bytes (SDM 4.8)."""
    neighbour = H.u32(0xFFFFF000 | H.P)
    vm, vcpu = kvm_vcpu("v6.12", {**H.two_level(False, H.RW, H.RW), PTE_32 + 4: neighbour})
    kvm_enter_paging(vcpu, pae=False, cr3=H.PD32)
    assert kvm_walk(vcpu, H.VA_RIGHTS, H.ACC_W) == ("ok", H.DATA_PAGE | (H.VA_RIGHTS & 0xFFF))
    assert vm.peek_gpa(PDE_32, 4) == H.u32(0x106000 | H.P | H.RW | H.A)
    assert vm.peek_gpa(PTE_32, 4) == H.u32(H.DATA_PAGE | H.P | H.RW | H.A | H.D)
    assert vm.peek_gpa(PTE_32 + 4, 4) == neighbour


def test_kvm_assumes_pse36_for_4m_pages():
    """is_cpuid_PSE36() is 1 in KVM: a 4 MiB PDE's bits 16:13 are address bits 35:32
    (pse36_gfn_delta) and bits 21:17 are reserved (rsvd_bits(17, 21)), whatever the
    guest's CPUID says; the model's hardware (no PSE-36 in CPUID) reserves 21:13."""
    vm, vcpu = kvm_vcpu("v6.12", {PDE_32: H.u32(0x800000 | H.P | H.PS | 1 << 13)})
    kvm_enter_paging(vcpu, pae=False, cr3=H.PD32, pse=True)
    assert kvm_walk(vcpu, H.VA_RIGHTS, 0) == ("ok", 1 << 32 | 0x800000 | (H.VA_RIGHTS & 0x3FFFFF))
    vm.write_gpa(PDE_32, H.u32(0x800000 | H.P | H.PS | 1 << 17))
    assert kvm_walk(vcpu, H.VA_RIGHTS, 0) == ("fault", H.EC_P | H.EC_RSVD, H.VA_RIGHTS)
