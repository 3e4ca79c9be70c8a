"""32-bit and PAE paging in the hardware walker, against two independent oracles.

1. Unicorn (QEMU's TCG, tests/cpu/unicorn_oracle.py) on random page tables and accesses:
   whether the access faults, where it lands, and the accessed/dirty flags it leaves.
2. The SDM rules, written out here with constants of their own: the access-rights table
   (SDM Vol. 3A 4.6.1) and #PF error codes (4.7) per paging mode, the reserved bits of
   PDPTEs and their #GP on the MOV that loads them (4.4.1), and TLB behaviour (4.10).

The walk is driven directly (walker.walk with the CPU's registers set through its
setters and MOV-to-CR semantics from cpu/system.py), since 32-bit instruction execution
is being built separately.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmdbg.cpu import system
from kvmdbg.cpu.faults import GuestFault
from kvmdbg.cpu.walker import walk
from kvmdbg.kvm.vm import Vm
from tests.cpu import unicorn_oracle as U

# --- architectural constants, written from the SDM (not imported from kvmdbg) ---
P, RW, US, PWT, PCD, A, D, PS, G = (1 << i for i in range(9))
XD = 1 << 63
EC_P, EC_W, EC_U, EC_RSVD, EC_ID = 1, 2, 4, 8, 16
CR0_PE, CR0_ET, CR0_WP, CR0_PG, CR0_CD, CR0_NW = 1, 1 << 4, 1 << 16, 1 << 31, 1 << 30, 1 << 29
CR4_PSE, CR4_PAE, CR4_PGE, CR4_SMEP, CR4_SMAP = 1 << 4, 1 << 5, 1 << 7, 1 << 20, 1 << 21
EFER_NXE = 1 << 11
RFLAGS_AC = 1 << 18
PF_VECTOR, GP_VECTOR = 14, 13
MAXPHYADDR = 46                       # what the model's CPUID reports (leaf 0x80000008)
ACC_W, ACC_U, ACC_F = 2, 4, 16        # the access kinds, in #PF error-code positions

PD32, CODE_PT, PDPT_PAGE = 0x100000, 0x101000, 0x100000
KIND_ACC = {"read": 0, "write": ACC_W, "fetch": ACC_F}


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def new_cpu(memory: dict):
    vm = Vm(U.MEM, 1, bare=True)
    for pa, data in memory.items():
        vm.write_gpa(pa, data)
    return vm, vm.vcpus[0].cpu


def enter_paging(cpu, *, pae, cr3, pse=False, pge=False, smep=False, smap=False, wp=True,
                 nxe=False, ac=False, cpl=0):
    """The registers for a walk: CR4/EFER/CR3 through the setters, then MOV to CR0 setting
    PG (which loads the PDPTE registers under PAE, SDM 4.4.1)."""
    cpu.set_cs(0x1B if cpl == 3 else 0x08)
    cpu.set_rflags(0x2 | (RFLAGS_AC if ac else 0))
    cpu.set_efer(EFER_NXE if nxe else 0)
    cpu.set_cr4((CR4_PAE if pae else 0) | (CR4_PSE if pse else 0) | (CR4_PGE if pge else 0)
                | (CR4_SMEP if smep else 0) | (CR4_SMAP if smap else 0))
    cpu.set_cr3(cr3)
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_ET | CR0_PG | (CR0_WP if wp else 0))


def kvmdbg_walk(cpu, va, acc):
    """('fault', error code, cr2) or ('ok', gpa of va)."""
    try:
        e = walk(cpu, va, acc)
    except GuestFault as f:
        assert f.vector == PF_VECTOR
        return ("fault", f.error_code, f.cr2)
    return ("ok", e.gpa | (va & 0xFFF))


# --- random tables (shared by the unicorn test and the KVM-walker test in tests/kvm) ---

def flags(draw, names):
    bits = {"P": P, "RW": RW, "US": US, "A": A, "D": D, "PS": PS, "G": G, "XD": XD,
            "PWT": PWT, "PCD": PCD, "PAT": 1 << 12}
    v = 0
    for n in names:
        chance = 0.9 if n == "P" else 0.15 if n == "XD" else 0.5
        if draw(st.floats(0, 1)) < chance:
            v |= bits[n]
    return v


def random_tables(draw, pae: bool, cpl: int, rsvd: bool = True):
    """(memory {pa: bytes}, cr3, va, [(pa, size)] of every entry written). The code page
    CODE_VA is mapped through its own entries; va never shares them."""
    mem = {}
    entries = []
    code_us = US if cpl == 3 else 0
    off = draw(st.integers(0, 1023)) * 4
    pt_idx = draw(st.integers(0, 511 if pae else 1023))
    # 4 KiB pages in 4..8 MiB (not 4 MiB-aligned: a PS PDE without CR4.PSE makes the
    # 4 MiB frames at 8 and 12 MiB page tables, which the data must not overlap).
    frame = draw(st.integers(0x401, 0x7FF)) << 12
    if pae:
        cr3 = PDPT_PAGE + 32 * draw(st.integers(0, 127))
        i = draw(st.integers(0, 3))
        j = draw(st.integers(1 if i == 0 else 0, 511))
        va = i << 30 | j << 21 | pt_idx << 12 | off
        pdptes = [0] * 4
        for k in range(4):
            present = k == 0 or draw(st.floats(0, 1)) < 0.9
            pdptes[k] = (0x102000 + k * 0x1000) | (P if present else 0) | flags(draw, ["PWT", "PCD"])
        for k, e in enumerate(pdptes):
            mem[cr3 + 8 * k] = u64(e)
        mem[0x102000] = u64(CODE_PT | P | RW | US)
        mem[CODE_PT + 8 * (U.CODE_VA >> 12 & 511)] = u64(U.CODE_PA | P | RW | code_us)
        pde = flags(draw, ["P", "RW", "US", "A", "D", "PS", "G", "XD"])
        if pde & PS:
            pde |= draw(st.integers(2, 7)) << 21 | flags(draw, ["PAT"])   # a 2 MiB frame
            if rsvd and draw(st.floats(0, 1)) < 0.2:
                pde |= 1 << draw(st.integers(13, 20))            # reserved (SDM 4.4.2)
        else:
            pde |= draw(st.integers(0x106, 0x10F)) << 12
        pde_pa = (pdptes[i] & ~0xFFF) + 8 * j
        mem[pde_pa] = u64(pde)
        entries.append((pde_pa, 8))
        if not pde & PS:
            pte = frame | flags(draw, ["P", "RW", "US", "A", "D", "G", "XD"])
            pte_pa = (pde & 0xFFFFF000) + 8 * pt_idx
            mem[pte_pa] = u64(pte)
            entries.append((pte_pa, 8))
        return mem, cr3, va, entries
    cr3 = PD32
    i = draw(st.integers(1, 1023))
    va = i << 22 | pt_idx << 12 | off
    mem[PD32] = u32(CODE_PT | P | RW | US)
    mem[CODE_PT + 4 * (U.CODE_VA >> 12 & 1023)] = u32(U.CODE_PA | P | RW | code_us)
    pde = flags(draw, ["P", "RW", "US", "A", "D", "PS", "G"])
    # With PS the address is a 4 MiB frame (PSE) or, without CR4.PSE, a page table there.
    pde |= ((draw(st.integers(2, 3)) << 22 | flags(draw, ["PAT"])) if pde & PS
            else draw(st.integers(0x102, 0x10F)) << 12)
    mem[PD32 + 4 * i] = u32(pde)
    entries.append((PD32 + 4 * i, 4))
    pte = frame | flags(draw, ["P", "RW", "US", "A", "D", "G"])
    pte_pa = (pde & 0xFFFFF000) + 4 * pt_idx
    mem[pte_pa] = u32(pte)
    entries.append((pte_pa, 4))
    return mem, cr3, va, entries


@st.composite
def cases(draw, rsvd=True):
    pae = draw(st.booleans())
    cpl = draw(st.sampled_from([0, 3]))
    mem, cr3, va, entries = random_tables(draw, pae, cpl, rsvd)
    regs = dict(pae=pae, cr3=cr3, pse=draw(st.booleans()), pge=draw(st.booleans()),
                smep=draw(st.booleans()), smap=draw(st.booleans()), wp=draw(st.booleans()),
                nxe=draw(st.floats(0, 1)) < 0.7, ac=draw(st.booleans()), cpl=cpl)
    kind = draw(st.sampled_from(sorted(KIND_ACC)))
    return mem, regs, va, entries, kind


def cr_values(regs):
    cr0 = CR0_PE | CR0_ET | CR0_PG | (CR0_WP if regs["wp"] else 0)
    cr4 = ((CR4_PAE if regs["pae"] else 0) | (CR4_PSE if regs["pse"] else 0)
           | (CR4_PGE if regs["pge"] else 0) | (CR4_SMEP if regs["smep"] else 0)
           | (CR4_SMAP if regs["smap"] else 0))
    return cr0, cr4, EFER_NXE if regs["nxe"] else 0


# --- oracle 1: unicorn ---

@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_walk_agrees_with_unicorn(case):
    mem, regs, va, entries, kind = case
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, **regs)
    acc = KIND_ACC[kind] | (ACC_U if regs["cpl"] == 3 else 0)
    mine = kvmdbg_walk(cpu, va, acc)
    cr0, cr4, efer = cr_values(regs)
    marker = 0x5AC3_0000 | (va & 0xFFFF)
    probe = []
    if mine[0] == "ok":
        probe = [(mine[1], U.INT3 if kind == "fetch" else u32(marker) if kind == "read" else u32(0))]
    value = 0x0BAD_F00D
    theirs, after = U.access(mem, cr0, regs["cr3"], cr4, efer, regs["cpl"], regs["ac"], kind,
                             va, value, probe, entries + ([(mine[1], 4)] if probe else []))
    if mine[0] == "fault":
        assert theirs.fault_cr2 == va, f"kvmdbg faults ({mine[1]:#x}), unicorn does not"
        return
    assert theirs.fault_cr2 is None, "unicorn faults, kvmdbg translates to %#x" % mine[1]
    if kind == "read":
        assert theirs.eax == marker
    elif kind == "write":
        assert after[mine[1]] == u32(value)
    else:
        assert theirs.eip == va + 1                 # executed the int3 placed at mine[1]
    for pa, size in entries:                        # accessed/dirty flags (SDM 4.8)
        if pa != mine[1]:                           # (an unused PTE under a 4 MiB page)
            assert vm.peek_gpa(pa, size) == after[pa], f"entry at {pa:#x}"


# --- oracle 2: the SDM's rules ---

def sdm_error_code(*, pae, user_bits, rw_bits, xd_bits, nxe, wp, smep, smap, ac, cpl, kind):
    """None if allowed, else the #PF error code SDM 4.6.1 / 4.7 give for a present,
    reserved-bit-free two-level translation whose entries have these U/S, R/W, XD bits."""
    write, fetch = kind == "write", kind == "fetch"
    code = (EC_W if write else 0) | (EC_U if cpl == 3 else 0)
    # I/D (4.7): a fetch, with SMEP, or with NXE under PAE or 4-level paging.
    if fetch and (smep or (pae and nxe)):
        code |= EC_ID
    if pae and any(xd_bits) and not nxe:
        return EC_P | EC_RSVD | code                 # XD is reserved without NXE (4.4.2)
    user_page, writable = all(user_bits), all(rw_bits)
    executable = not (pae and nxe and any(xd_bits))  # 32-bit paging has no XD
    if cpl == 3:
        ok = user_page and (executable if fetch else writable if write else True)
    elif fetch:
        ok = executable and not (user_page and smep)
    elif user_page and smap and not ac:
        ok = False
    else:
        ok = not write or writable or not wp
    return None if ok else EC_P | code


VA_RIGHTS = 0x40A0_3000        # PDPTE 1, PDE 5 (PAE) / PDE 0x102 (32-bit); PTE 3
DATA_PAGE = 0x500000


def two_level(pae, pde_bits, pte_bits, pde_xd=0, pte_xd=0):
    """Memory for VA_RIGHTS -> DATA_PAGE through a PDE and a PTE with these bits."""
    if pae:
        pdpt = {PDPT_PAGE + 8 * k: u64(0x102000 + k * 0x1000 | P) for k in range(4)}
        pde_pa = 0x103000 + 8 * (VA_RIGHTS >> 21 & 511)
        return {**pdpt, pde_pa: u64(0x106000 | P | pde_bits | pde_xd),
                0x106000 + 8 * (VA_RIGHTS >> 12 & 511): u64(DATA_PAGE | P | pte_bits | pte_xd)}
    return {PD32 + 4 * (VA_RIGHTS >> 22): u32(0x106000 | P | pde_bits),
            0x106000 + 4 * (VA_RIGHTS >> 12 & 1023): u32(DATA_PAGE | P | pte_bits)}


RIGHTS = [(pae, ub, rb, xb, nxe, wp, smep, smap, ac, cpl, kind)
          for pae in (False, True)
          for ub in itertools.product((0, US), repeat=2)
          for rb in itertools.product((0, RW), repeat=2)
          for xb in (itertools.product((0, XD), repeat=2) if pae else [(0, 0)])
          for nxe in (False, True)
          for wp, smep, smap, ac in itertools.product((False, True), repeat=4)
          for cpl in (0, 3)
          for kind in ("read", "write", "fetch")]


@pytest.fixture(scope="module")
def rights_vm():
    return Vm(U.MEM, 1, bare=True)


@pytest.mark.parametrize("pae", [False, True], ids=["32-bit", "PAE"])
def test_rights_and_error_codes_follow_the_sdm(rights_vm, pae):
    """Every combination of U/S, R/W (and XD) at both levels with WP, SMEP, SMAP, AC,
    NXE, CPL and access kind (SDM 4.6.1 table, error codes of 4.7)."""
    vm = rights_vm
    cpu = vm.vcpus[0].cpu
    bad = []
    for case in RIGHTS:
        p, ub, rb, xb, nxe, wp, smep, smap, ac, cpl, kind = case
        if p != pae:
            continue
        for pa, data in two_level(pae, ub[0] | rb[0] | A, ub[1] | rb[1] | A | D, xb[0], xb[1]).items():
            vm.write_gpa(pa, data)
        cpu.set_cr0(CR0_PE | CR0_ET)
        enter_paging(cpu, pae=pae, cr3=PDPT_PAGE, smep=smep, smap=smap, wp=wp, nxe=nxe, ac=ac,
                     cpl=cpl)
        acc = KIND_ACC[kind] | (ACC_U if cpl == 3 else 0)
        got = kvmdbg_walk(cpu, VA_RIGHTS, acc)
        want = sdm_error_code(pae=pae, user_bits=ub, rw_bits=rb, xd_bits=xb, nxe=nxe, wp=wp,
                              smep=smep, smap=smap, ac=ac, cpl=cpl, kind=kind)
        got_code = got[1] if got[0] == "fault" else None
        if got_code != want or (got[0] == "ok" and got[1] != DATA_PAGE | (VA_RIGHTS & 0xFFF)):
            bad.append((case, got, want))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


def test_pdpte_rights_bits_are_reserved_and_not_used():
    """PDPTEs have no R/W, U/S (reserved, 4.4.1 Table 4-8): rights come from the PDE and
    PTE only, so a user write through a PDPTE with bits 1/2 clear succeeds."""
    vm, cpu = new_cpu(two_level(True, US | RW, US | RW))
    enter_paging(cpu, pae=True, cr3=PDPT_PAGE, cpl=3)
    assert kvmdbg_walk(cpu, VA_RIGHTS, ACC_W | ACC_U) == ("ok", DATA_PAGE | (VA_RIGHTS & 0xFFF))


def test_not_present_pdpte_faults_with_p_clear():
    mem = two_level(True, RW, RW)
    mem[PDPT_PAGE + 8] = u64(0)                      # VA_RIGHTS's PDPTE (index 1)
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=True, cr3=PDPT_PAGE)
    assert kvmdbg_walk(cpu, VA_RIGHTS, ACC_W) == ("fault", EC_W, VA_RIGHTS)


@pytest.mark.parametrize("bit", [13, 17, 20])
def test_pae_2m_reserved_bits(bit):
    """SDM 4.4.2: with P and PS set, bits 20:13 of a PDE are reserved."""
    mem = two_level(True, RW | PS, 0)
    pde_pa = 0x103000 + 8 * (VA_RIGHTS >> 21 & 511)
    mem[pde_pa] = u64(0x600000 | P | RW | PS | 1 << bit)
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=True, cr3=PDPT_PAGE)
    assert kvmdbg_walk(cpu, VA_RIGHTS, 0) == ("fault", EC_P | EC_RSVD, VA_RIGHTS)


@pytest.mark.parametrize("bit", [MAXPHYADDR, 51, 52, 58, 62])
def test_pae_high_address_bits_are_reserved(bit):
    """SDM 4.4.2: bits 62:MAXPHYADDR of a present PDE or PTE are reserved (unlike 4-level
    paging, where 62:52 are ignored)."""
    mem = two_level(True, RW, RW)
    mem[0x106000 + 8 * (VA_RIGHTS >> 12 & 511)] = u64(DATA_PAGE | P | 1 << bit)
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=True, cr3=PDPT_PAGE)
    assert kvmdbg_walk(cpu, VA_RIGHTS, 0) == ("fault", EC_P | EC_RSVD, VA_RIGHTS)


@pytest.mark.parametrize("bit", [13, 16, 20, 21])
def test_4m_pde_bits_21_13_are_reserved_without_pse36(bit):
    """SDM 4.3 Table 4-4 with M = 32 (CPUID.01H:EDX.PSE-36 [bit 17] is 0 in the model's
    CPUID): a 4 MiB PDE's bits 21:13 are reserved."""
    vm, cpu = new_cpu({PD32 + 4 * (VA_RIGHTS >> 22): u32(0x800000 | P | RW | PS | 1 << bit)})
    enter_paging(cpu, pae=False, cr3=PD32, pse=True)
    assert kvmdbg_walk(cpu, VA_RIGHTS, 0) == ("fault", EC_P | EC_RSVD, VA_RIGHTS)


def test_4m_page_and_ps_ignored_without_cr4_pse():
    """SDM 4.3: PS maps 4 MiB only with CR4.PSE; otherwise the PDE references a table."""
    pde_pa = PD32 + 4 * (VA_RIGHTS >> 22)
    mem = {pde_pa: u32(0x800000 | P | RW | PS),
           0x800000 + 4 * (VA_RIGHTS >> 12 & 1023): u32(DATA_PAGE | P)}
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=False, cr3=PD32, pse=True)
    assert kvmdbg_walk(cpu, VA_RIGHTS, 0) == ("ok", 0x800000 | (VA_RIGHTS & 0x3FFFFF))
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=False, cr3=PD32, pse=False)
    assert kvmdbg_walk(cpu, VA_RIGHTS, 0) == ("ok", DATA_PAGE | (VA_RIGHTS & 0xFFF))


def test_32bit_paging_writes_4_byte_accessed_and_dirty_flags():
    """SDM 4.8 on 4-byte entries: A in the PDE, A and D in the PTE, nothing beyond them."""
    pde_pa = PD32 + 4 * (VA_RIGHTS >> 22)
    pte_pa = 0x106000 + 4 * (VA_RIGHTS >> 12 & 1023)
    vm, cpu = new_cpu({**two_level(False, RW, RW), pte_pa + 4: u32(0xFFFFFFFF & ~(A | D))})
    enter_paging(cpu, pae=False, cr3=PD32)
    kvmdbg_walk(cpu, VA_RIGHTS, ACC_W)
    assert vm.peek_gpa(pde_pa, 4) == u32(0x106000 | P | RW | A)
    assert vm.peek_gpa(pte_pa, 4) == u32(DATA_PAGE | P | RW | A | D)
    assert vm.peek_gpa(pte_pa + 4, 4) == u32(0xFFFFFFFF & ~(A | D))


# --- PDPTE registers (SDM 4.4.1) ---

PDPTE_RSVD_BITS = [1, 2, 5, 6, 7, 8, MAXPHYADDR, 51, 52, 62, 63]


def pae_cpu(pdptes, cr3=PDPT_PAGE):
    """A CPU with CR4.PAE set and paging off; the PDPT at cr3 holds pdptes."""
    vm, cpu = new_cpu({cr3 + 8 * k: u64(e) for k, e in enumerate(pdptes)})
    cpu.set_cr4(CR4_PAE)
    cpu.set_cr3(cr3)
    return vm, cpu


def gp(fn, *args):
    with pytest.raises(GuestFault) as e:
        fn(*args)
    assert e.value.vector == GP_VECTOR


GOOD = [0x102000 | P, 0x103000 | P, 0x104000 | P | PWT | PCD, 0]


@pytest.mark.parametrize("bit", PDPTE_RSVD_BITS)
def test_mov_cr0_loading_a_reserved_pdpte_faults_gp_and_has_no_effect(bit):
    vm, cpu = pae_cpu([GOOD[0], GOOD[1] | 1 << bit, GOOD[2], GOOD[3]])
    before = cpu.cr0, cpu.pdptes
    gp(system.arch_set_cr, cpu, 0, CR0_PE | CR0_PG)
    assert (cpu.cr0, cpu.pdptes) == before


@pytest.mark.parametrize("bit", PDPTE_RSVD_BITS)
def test_reserved_bits_of_a_not_present_pdpte_do_not_matter(bit):
    vm, cpu = pae_cpu([GOOD[0], GOOD[1], GOOD[2], 1 << bit])
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG)
    assert cpu.pdptes == (GOOD[0], GOOD[1], GOOD[2], 1 << bit)


def test_mov_cr3_loads_from_a_32_byte_aligned_table_and_gp_leaves_cr3():
    """CR3[31:5] locate the table (Table 4-7); a bad PDPTE in the new table #GPs and CR3
    keeps its old value."""
    vm, cpu = pae_cpu(GOOD)
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG)
    other = PDPT_PAGE + 0x60
    vm.write_gpa(other, b"".join(u64(e) for e in [GOOD[1], GOOD[0], 0, GOOD[2]]))
    system.arch_set_cr(cpu, 3, other | 0x1F)         # bits 4:0 are ignored with PAE paging
    assert cpu.pdptes == (GOOD[1], GOOD[0], 0, GOOD[2])
    vm.write_gpa(other + 0x20, u64(GOOD[0] | 1 << 5))
    gp(system.arch_set_cr, cpu, 3, other + 0x20)
    assert cpu.cr3 == other | 0x1F and cpu.pdptes == (GOOD[1], GOOD[0], 0, GOOD[2])


def test_pdpte_registers_are_not_reread_by_walks_until_a_reload():
    """The walk uses the registers (4.4.2); a changed PDPT in memory counts only after a
    MOV to CR3, even of the same value."""
    vm, cpu = pae_cpu(GOOD)
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG)
    vm.write_gpa(PDPT_PAGE, u64(0))
    assert cpu.pdptes[0] == GOOD[0]
    try:
        walk(cpu, 0x1000, 0)
    except GuestFault as f:
        assert f.error_code & EC_P == 0 and f.cr2 == 0x1000   # the PDE is absent, not the PDPTE
    system.arch_set_cr(cpu, 3, cpu.cr3)
    assert cpu.pdptes[0] == 0


@pytest.mark.parametrize("bit, loads", [(CR4_PGE, True), (CR4_PSE, True), (CR4_SMEP, True),
                                        (CR4_SMAP, False)])
def test_which_mov_to_cr4_loads_pdptes(bit, loads):
    """SDM 4.4.1: changing PAE, PGE, PSE or SMEP with PAE paging on loads them; SMAP not."""
    vm, cpu = pae_cpu(GOOD)
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG)
    vm.write_gpa(PDPT_PAGE + 8, u64(GOOD[1] | 1 << 7))   # now reserved
    if loads:
        gp(system.arch_set_cr, cpu, 4, CR4_PAE | bit)
        assert cpu.cr4 == CR4_PAE
    else:
        system.arch_set_cr(cpu, 4, CR4_PAE | bit)
        assert cpu.pdptes == tuple(GOOD)


@pytest.mark.parametrize("bit, loads", [(CR0_CD, True), (CR0_NW | CR0_CD, True), (CR0_WP, False)])
def test_which_mov_to_cr0_loads_pdptes(bit, loads):
    vm, cpu = pae_cpu(GOOD)
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG)
    vm.write_gpa(PDPT_PAGE, u64(0x102000 | P | 1 << 63))
    if loads:
        gp(system.arch_set_cr, cpu, 0, CR0_PE | CR0_PG | bit)
    else:
        system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG | bit)
        assert cpu.pdptes == tuple(GOOD)


def test_setting_cr4_pae_with_paging_on_enters_pae_paging_and_loads():
    """A MOV to CR4 that sets PAE while CR0.PG=1 switches from 32-bit to PAE paging."""
    vm, cpu = new_cpu({PDPT_PAGE + 8 * k: u64(e) for k, e in enumerate(GOOD)})
    cpu.set_cr3(PDPT_PAGE)
    system.arch_set_cr(cpu, 0, CR0_PE | CR0_PG)
    assert cpu.pdptes == (0, 0, 0, 0)                # 32-bit paging: nothing loaded
    system.arch_set_cr(cpu, 4, CR4_PAE)
    assert cpu.pdptes == tuple(GOOD)


# --- TLB (SDM 4.10) ---

def translate(cpu, va, acc=0):
    return cpu.translate(va, acc)


def test_4m_global_page_tlb_entries_survive_cr3_and_go_with_invlpg():
    """4.10.2.2/4.10.4.1: with CR4.PGE a G=1 translation survives MOV to CR3; INVLPG of any
    address in the 4 MiB page drops every 4 KiB piece of it; a PGE change drops it."""
    pde_pa = PD32 + 4 * (VA_RIGHTS >> 22)
    vm, cpu = new_cpu({pde_pa: u32(0x800000 | P | RW | PS | G | A | D)})
    enter_paging(cpu, pae=False, cr3=PD32, pse=True, pge=True)
    base = VA_RIGHTS & ~0x3FFFFF
    for k in (0, 1, 0x3FF):
        translate(cpu, base + k * 0x1000)
    vm.write_gpa(pde_pa, u32(0))                     # the TLB is all that maps it now
    system.arch_set_cr(cpu, 3, PD32)
    assert translate(cpu, base + 0x1000).gpa == 0x801000
    entry = next(e for _t, e in cpu.tlb.entries() if e.vpn == (base >> 12) + 1)
    assert entry.size_shift == 22 and entry.glob
    system.invlpg(cpu, base + 0x3FF000)
    assert not [e for _t, e in cpu.tlb.entries() if e.vpn >> 10 == base >> 22]
    with pytest.raises(GuestFault):
        translate(cpu, base)


def test_non_global_and_pge_off_entries_go_with_mov_cr3():
    pde_pa = PD32 + 4 * (VA_RIGHTS >> 22)
    vm, cpu = new_cpu({pde_pa: u32(0x800000 | P | RW | PS | G | A | D)})
    enter_paging(cpu, pae=False, cr3=PD32, pse=True, pge=False)
    translate(cpu, VA_RIGHTS)
    vm.write_gpa(pde_pa, u32(0))
    system.arch_set_cr(cpu, 3, PD32)
    with pytest.raises(GuestFault):
        translate(cpu, VA_RIGHTS)


def test_pae_2m_global_entry_and_cr4_pge_flush():
    mem = two_level(True, 0, 0)
    pde_pa = 0x103000 + 8 * (VA_RIGHTS >> 21 & 511)
    mem[pde_pa] = u64(0x600000 | P | RW | PS | G | A | D)
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=True, cr3=PDPT_PAGE, pge=True)
    e = translate(cpu, VA_RIGHTS)
    assert (e.gpa, e.size_shift, e.glob) == (0x600000 | (VA_RIGHTS & 0x1FF000), 21, True)
    vm.write_gpa(pde_pa, u64(0))
    system.arch_set_cr(cpu, 3, PDPT_PAGE)
    assert translate(cpu, VA_RIGHTS).gpa == e.gpa   # global: kept
    system.arch_set_cr(cpu, 4, CR4_PAE)             # PGE 1 -> 0 flushes everything
    with pytest.raises(GuestFault):
        translate(cpu, VA_RIGHTS)


def test_walk_memo_sees_new_pdptes_after_a_same_value_cr3_reload():
    """The CPU memoises walks per mode; the PDPTE registers are part of the mode, so a MOV
    to CR3 of the same value after changing the PDPT gives the new translation."""
    mem = two_level(True, RW, RW)
    vm, cpu = new_cpu(mem)
    enter_paging(cpu, pae=True, cr3=PDPT_PAGE)
    assert translate(cpu, VA_RIGHTS).gpa == DATA_PAGE
    # PDPTE 1 -> a PD whose entry maps another PT -> another page.
    vm.write_gpa(PDPT_PAGE + 8, u64(0x108000 | P))
    vm.write_gpa(0x108000 + 8 * (VA_RIGHTS >> 21 & 511), u64(0x109000 | P | RW))
    vm.write_gpa(0x109000 + 8 * (VA_RIGHTS >> 12 & 511), u64(0x700000 | P | RW))
    system.arch_set_cr(cpu, 3, PDPT_PAGE)
    assert translate(cpu, VA_RIGHTS).gpa == 0x700000
