"""The hardware TLB's invalidation rules, one SDM rule at a time (SDM Vol. 3A 4.10.4.1,
kvm-mmu-spec 8.1), plus the #GP cases of the instructions that invalidate.

Method: make a translation cached by reading through it, change the PTE in guest memory
behind the TLB's back (to a page holding a different marker), check that the stale
translation is still used (a TLB hit), then execute the operation as a guest instruction
and check, by reading again, which translations it dropped. Reads go through cpu.rd
after cpu.flush_fast(), so the answer comes from the TLB or a fresh walk, never from
the CPU's per-mode fast path.
"""

from __future__ import annotations

import pytest

from kvmdbg.cpu.executor import run
from kvmdbg.cpu.regs import GPR_INDEX
from kvmdbg.cpu.tlb import Tlb, TlbEntry
from tests.cpu.guest_idt import (LIDT_INSN, clear_record, frame, install_recorders, q, record,
                                 set_tss_rsp0)
from tests.helpers import asm, machine

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
CR0_PG = 1 << 31
CR4_PAE, CR4_PGE, CR4_PCIDE, CR4_SMEP = 1 << 5, 1 << 7, 1 << 17, 1 << 20
NOFLUSH = 1 << 63
PML4 = 0x1000
MSR_EFER = 0xC000_0080
GP, PF = 13, 14
NONE = 0xDEAD

# Identity-mapped VAs used as data pages; each is remapped between OLD and NEW frames.
VA1, VA2, VA3, VA4, VA5 = (0x600000 + i * 0x1000 for i in range(5))
OLD = {va: 0x700000 + i * 0x1000 for i, va in enumerate((VA1, VA2, VA3, VA4, VA5))}
NEW = {va: 0x780000 + i * 0x1000 for i, va in enumerate((VA1, VA2, VA3, VA4, VA5))}
DESC = 0x22000            # INVPCID descriptor


def marker(gpa):
    return 0x5A5A_0000_0000_0000 | gpa


def boot_pte(va):
    """GPA of the boot page-table entry mapping an identity-mapped va below 16 MiB."""
    return 0x4000 + (va >> 12) * 8


class Rig:
    """A booted guest with recording handlers for #UD, #GP and #PF."""

    def __init__(self):
        self.vm, self.cpu = machine("hlt")
        install_recorders(self.vm, (6, GP, PF))
        for frames in (OLD, NEW):
            for gpa in frames.values():
                self.put(gpa, marker(gpa))
        self.code = 0x110000
        assert self.op(LIDT_INSN) is None

    def put(self, gpa, value):
        self.vm.write_gpa(gpa, value.to_bytes(8, "little"))

    def map(self, va, gpa, flags=P | RW):
        self.put(boot_pte(va), gpa | flags)

    def op(self, text, **regs):
        """Run text as guest code at CPL 0; None, or (vector, error code) of the exception
        it raised (delivered to a recording handler)."""
        vm, cpu = self.vm, self.cpu
        clear_record(vm)
        code = asm(text + "\nhlt", self.code)
        vm.write_gpa(self.code, code)
        cpu.rip = self.code
        self.code += (len(code) + 0x3F) & ~0x3F
        cpu.halted = False
        cpu.r[4] = 0x80000
        for name, value in regs.items():
            cpu.r[GPR_INDEX[name]] = value
        assert run(cpu, 100) == "halted", cpu.shutdown
        rec = record(vm)
        if rec["vector"] == NONE:
            return None
        return rec["vector"], frame(vm, rec["rsp"], rec["vector"] in (GP, PF))["error_code"]

    def load(self, va):
        self.cpu.flush_fast()
        return self.cpu.rd(va, 8)

    def is_old(self, va):
        v = self.load(va)
        assert v in (marker(OLD[va]), marker(NEW[va])), hex(v)
        return v == marker(OLD[va])

    def cache(self, *pages):
        """Map each (va, global?) to its OLD frame and read it, so the TLB holds it."""
        for va, glob in pages:
            self.map(va, OLD[va], P | RW | (G if glob else 0))
            assert self.is_old(va)

    def remap(self, *vas):
        """Point the PTEs at the NEW frames without telling the TLB (G bits kept)."""
        for va in vas:
            flags = q(self.vm, boot_pte(va)) & (G | US | RW | P)
            self.map(va, NEW[va], flags)

    # control registers, as guest instructions
    def set_cr4(self, value):
        return self.op("mov cr4, rax", rax=value)

    def set_cr3(self, value):
        return self.op("mov cr3, rax", rax=value)

    def enable_pge(self):
        assert self.set_cr4(self.cpu.cr4 | CR4_PGE) is None

    def enable_pcid(self):
        assert self.set_cr4(self.cpu.cr4 | CR4_PCIDE) is None

    def to_pcid(self, pcid, noflush=True):
        assert self.set_cr3(PML4 | pcid | (NOFLUSH if noflush else 0)) is None
        assert self.cpu.cr3 == PML4 | pcid

    def invpcid(self, kind, pcid, addr=0):
        self.put(DESC, pcid)
        self.put(DESC + 8, addr)
        return self.op("invpcid rax, [rbx]", rax=kind, rbx=DESC)


@pytest.fixture
def rig():
    return Rig()


def test_stale_translation_is_used_until_invalidated(rig):
    rig.cache((VA1, False))
    rig.remap(VA1)
    assert rig.is_old(VA1), "a TLB hit must not re-read the PTE"
    assert rig.is_old(VA1)


# --- MOV to CR3 ---

@pytest.mark.parametrize("pge", (True, False))
def test_mov_cr3_without_pcids(rig, pge):
    """PCIDE=0: all non-global entries (PCID 000H) go; global ones stay if CR4.PGE=1
    (without PGE the G bit means nothing)."""
    if pge:
        rig.enable_pge()
    rig.cache((VA1, False), (VA2, True))
    rig.remap(VA1, VA2)
    assert rig.is_old(VA1) and rig.is_old(VA2)
    assert rig.set_cr3(PML4) is None
    assert not rig.is_old(VA1)
    assert rig.is_old(VA2) == pge


def test_mov_cr3_with_pcids_flushes_only_the_new_pcid(rig):
    rig.enable_pge()
    rig.enable_pcid()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False), (VA2, True))
    rig.to_pcid(2, noflush=False)
    rig.cache((VA1, False), (VA3, False))
    rig.remap(VA1, VA2, VA3)
    assert rig.is_old(VA1) and rig.is_old(VA3) and rig.is_old(VA2)
    rig.to_pcid(1, noflush=False)          # flushes PCID 1's non-global entries only
    assert not rig.is_old(VA1)
    assert rig.is_old(VA2), "global entries survive MOV to CR3"
    rig.to_pcid(2, noflush=True)
    assert rig.is_old(VA1) and rig.is_old(VA3), "PCID 2 was not the one loaded"


def test_mov_cr3_bit63_flushes_nothing(rig):
    rig.enable_pcid()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False))
    rig.remap(VA1)
    rig.to_pcid(1, noflush=True)
    assert rig.is_old(VA1)
    # bit 63 is not stored: MOV from CR3 reads it back clear
    assert rig.op("mov rax, cr3") is None
    assert rig.cpu.r[0] == PML4 | 1


def test_global_entries_are_used_from_another_pcid(rig):
    rig.enable_pge()
    rig.enable_pcid()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA2, True))
    rig.to_pcid(2, noflush=False)
    rig.remap(VA2)
    fills = rig.cpu.tlb.fills
    assert rig.is_old(VA2), "a global entry made under PCID 1 is used under PCID 2"
    assert rig.cpu.tlb.fills == fills


# --- MOV to CR4 ---

@pytest.mark.parametrize("direction", ("off", "on"))
def test_cr4_pge_change_flushes_everything(rig, direction):
    rig.enable_pcid()
    if direction == "off":
        rig.enable_pge()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False))
    rig.to_pcid(2, noflush=False)
    rig.cache((VA3, False), (VA2, direction == "off"))
    rig.remap(VA1, VA2, VA3)
    assert rig.is_old(VA3) and rig.is_old(VA2)
    assert rig.set_cr4(rig.cpu.cr4 ^ CR4_PGE) is None
    assert not rig.is_old(VA3) and not rig.is_old(VA2)
    rig.to_pcid(1, noflush=True)
    assert not rig.is_old(VA1), "all PCIDs are flushed"


def test_cr4_pcide_1_to_0_flushes_everything(rig):
    rig.enable_pge()
    rig.enable_pcid()
    rig.cache((VA3, False))                # PCID 0
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False), (VA2, True))
    rig.remap(VA1, VA2, VA3)
    rig.to_pcid(0, noflush=True)
    assert rig.is_old(VA3) and rig.is_old(VA2)
    assert rig.set_cr4(rig.cpu.cr4 & ~CR4_PCIDE) is None
    assert not rig.is_old(VA3) and not rig.is_old(VA2)
    rig.enable_pcid()
    rig.to_pcid(1, noflush=True)
    assert not rig.is_old(VA1)


def test_cr4_smep_0_to_1_flushes_the_current_pcid(rig):
    rig.enable_pcid()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False))
    rig.to_pcid(2, noflush=False)
    rig.cache((VA1, False), (VA3, False))
    rig.remap(VA1, VA3)
    assert rig.set_cr4(rig.cpu.cr4 | CR4_SMEP) is None
    assert not rig.is_old(VA1) and not rig.is_old(VA3)
    rig.to_pcid(1, noflush=True)
    assert rig.is_old(VA1), "only the current PCID is flushed"


def test_cr4_smep_1_to_0_flushes_nothing(rig):
    assert rig.set_cr4(rig.cpu.cr4 | CR4_SMEP) is None
    rig.cache((VA1, False))
    rig.remap(VA1)
    assert rig.set_cr4(rig.cpu.cr4 & ~CR4_SMEP) is None
    assert rig.is_old(VA1), "clearing SMEP requires no invalidation (SDM 4.10.4.1)"


def test_cr4_pae_clear_is_gp_in_long_mode(rig):
    rig.cache((VA1, False))
    rig.remap(VA1)
    cr4 = rig.cpu.cr4
    assert rig.set_cr4(cr4 & ~CR4_PAE) == (GP, 0)
    assert rig.cpu.cr4 == cr4
    assert rig.is_old(VA1), "a faulting MOV to CR4 invalidates nothing"


def test_cr0_pg_clear_is_gp_in_long_mode(rig):
    rig.cache((VA1, False))
    rig.remap(VA1)
    cr0 = rig.cpu.cr0
    assert rig.op("mov cr0, rax", rax=cr0 & ~CR0_PG) == (GP, 0)
    assert rig.cpu.cr0 == cr0
    assert rig.is_old(VA1)


@pytest.mark.parametrize("change", ["bit32", "nw-without-cd", "pe-off-with-pg"])
def test_cr0_invalid_values_gp(rig, change):
    cr0 = rig.cpu.cr0
    value = {"bit32": cr0 | 1 << 32, "nw-without-cd": cr0 | 1 << 29,
             "pe-off-with-pg": cr0 & ~1}[change]
    assert rig.op("mov cr0, rax", rax=value) == (GP, 0)
    assert rig.cpu.cr0 == cr0


@pytest.mark.parametrize("bit", (46, 51, 62, 63))
def test_cr3_reserved_bits_gp(rig, bit):
    """Bits MAXPHYADDR (46)..62 are reserved; so is 63 while CR4.PCIDE=0."""
    rig.cache((VA1, False))
    rig.remap(VA1)
    assert rig.set_cr3(PML4 | 1 << bit) == (GP, 0)
    assert rig.cpu.cr3 == PML4
    assert rig.is_old(VA1), "a faulting MOV to CR3 invalidates nothing"


CR4_RESERVED = [11, 12, 13, 14, 15, 16, 18, 19, 23, 24, 25, 31, 32, 63]


@pytest.mark.parametrize("bit", CR4_RESERVED)
def test_cr4_reserved_or_unsupported_bits_gp(rig, bit):
    """Bits the CPUID of design section 3 does not advertise (UMIP, LA57, VMX, SMX,
    FSGSBASE, OSXSAVE, KL, CET, PKS) and architecturally reserved ones: #GP(0)."""
    cr4 = rig.cpu.cr4
    assert rig.set_cr4(cr4 | 1 << bit) == (GP, 0)
    assert rig.cpu.cr4 == cr4


def test_cr4_advertised_bits_accepted(rig):
    cr4 = rig.cpu.cr4 | CR4_SMEP | (1 << 21) | (1 << 22) | CR4_PGE | CR4_PCIDE
    assert rig.set_cr4(cr4) is None
    assert rig.cpu.cr4 == cr4


def test_cr4_pcide_set_needs_cr3_low_bits_clear(rig):
    assert rig.set_cr3(PML4 | 0x8) is None           # PWT: allowed with PCIDE=0
    cr4 = rig.cpu.cr4
    assert rig.set_cr4(cr4 | CR4_PCIDE) == (GP, 0)
    assert rig.cpu.cr4 == cr4
    assert rig.set_cr3(PML4) is None
    assert rig.set_cr4(cr4 | CR4_PCIDE) is None


@pytest.mark.parametrize("bit", (1, 9, 12, 14, 15, 16, 32, 63))
def test_efer_reserved_bits_gp(rig, bit):
    efer = rig.cpu.efer
    value = efer | 1 << bit
    assert rig.op("wrmsr", rcx=MSR_EFER, rax=value & 0xFFFF_FFFF, rdx=value >> 32) == (GP, 0)
    assert rig.cpu.efer == efer


def test_efer_lme_clear_with_paging_gp_and_sce_ok(rig):
    efer = rig.cpu.efer
    assert rig.op("wrmsr", rcx=MSR_EFER, rax=efer & ~(1 << 8), rdx=0) == (GP, 0)
    assert rig.cpu.efer == efer
    assert rig.op("wrmsr", rcx=MSR_EFER, rax=efer | 1, rdx=0) is None
    assert rig.cpu.efer == efer | 1


# --- INVLPG ---

def test_invlpg_current_pcid_and_globals(rig):
    rig.enable_pge()
    rig.enable_pcid()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False))
    rig.to_pcid(2, noflush=False)
    rig.cache((VA1, False), (VA2, True), (VA3, False))
    rig.remap(VA1, VA2, VA3)
    assert rig.op("invlpg [rax]", rax=VA1 + 0x123) is None
    assert not rig.is_old(VA1), "the page in the current PCID"
    assert rig.is_old(VA3), "other pages are untouched"
    assert rig.is_old(VA2)
    assert rig.op("invlpg [rax]", rax=VA2) is None
    assert not rig.is_old(VA2), "global entries for the page go too"
    rig.to_pcid(1, noflush=True)
    assert rig.is_old(VA1), "other PCIDs keep their entries for the page"
    assert rig.op("invlpg [rax]", rax=0x8000_0000_0000) is None   # non-canonical: a no-op


def test_invlpg_drops_a_whole_2mib_page(rig):
    """Entries for every 4 KiB piece of a 2 MiB page go, whichever address in it is
    named, including one that was never accessed itself."""
    base = 0x1000000                        # PD[8]: beyond the boot map's 16 MiB of RAM
    pde = 0x3000 + 8 * 8
    rig.put(pde, 0x400000 | P | RW | PS)
    for off in (0x1000, 0x5000, 0x1FF000):
        rig.put(0x400000 + off, marker(0x400000 + off))
        rig.put(0x800000 + off, marker(0x800000 + off))
    rig.cache((VA1, False))
    for off in (0x1000, 0x5000, 0x1FF000):
        assert rig.load(base + off) == marker(0x400000 + off)
    rig.put(pde, 0x800000 | P | RW | PS)
    rig.remap(VA1)
    for off in (0x1000, 0x5000, 0x1FF000):
        assert rig.load(base + off) == marker(0x400000 + off)
    assert rig.op("invlpg [rax]", rax=base + 0x3000) is None
    for off in (0x1000, 0x5000, 0x1FF000):
        assert rig.load(base + off) == marker(0x800000 + off)
    assert rig.is_old(VA1)


# --- INVPCID ---

def invpcid_setup(rig):
    """PCIDs 1 and 2 both cache VA1 and VA3 (non-global); VA2 is global; current PCID 2."""
    rig.enable_pge()
    rig.enable_pcid()
    rig.to_pcid(1, noflush=False)
    rig.cache((VA1, False), (VA3, False), (VA2, True))
    rig.to_pcid(2, noflush=False)
    rig.cache((VA1, False), (VA3, False))
    rig.remap(VA1, VA2, VA3)


def state_by_pcid(rig):
    """{pcid: (VA1 old?, VA3 old?)} and VA2 old?, ending in PCID 2."""
    out = {}
    for pcid in (1, 2):
        rig.to_pcid(pcid, noflush=True)
        out[pcid] = (rig.is_old(VA1), rig.is_old(VA3))
    return out, rig.is_old(VA2)


def test_invpcid_individual_address(rig):
    invpcid_setup(rig)
    assert rig.invpcid(0, 1, VA1 + 0x10) is None
    assert rig.invpcid(0, 2, VA2) is None             # a global translation: kept
    assert state_by_pcid(rig) == ({1: (False, True), 2: (True, True)}, True)


def test_invpcid_single_context(rig):
    invpcid_setup(rig)
    assert rig.invpcid(1, 1) is None
    assert state_by_pcid(rig) == ({1: (False, False), 2: (True, True)}, True)


def test_invpcid_all_contexts_including_globals(rig):
    invpcid_setup(rig)
    assert rig.invpcid(2, 0) is None
    assert state_by_pcid(rig) == ({1: (False, False), 2: (False, False)}, False)


def test_invpcid_all_contexts_except_globals(rig):
    invpcid_setup(rig)
    assert rig.invpcid(3, 0) is None
    assert state_by_pcid(rig) == ({1: (False, False), 2: (False, False)}, True)


@pytest.mark.parametrize("kind,pcid,addr,pcide", [
    (4, 0, 0, True), (0x100000000, 0, 0, True),       # type > 3 (the register is 64-bit)
    (0, 1 << 12, VA1, True), (1, 1 << 12, 0, True),   # descriptor bits 63:12 set
    (2, 1 << 63, 0, True), (3, 1 << 20, 0, True),
    (0, 1, 0x8000_0000_0000, True),                   # type 0, non-canonical address
    (0, 1, VA1, False), (1, 1, 0, False),             # PCID != 0 with CR4.PCIDE = 0
])
def test_invpcid_gp(rig, kind, pcid, addr, pcide):
    rig.enable_pge()
    if pcide:
        rig.enable_pcid()
    rig.cache((VA1, False), (VA2, True))
    rig.remap(VA1, VA2)
    assert rig.invpcid(kind, pcid, addr) == (GP, 0)
    assert rig.is_old(VA1) and rig.is_old(VA2), "a faulting INVPCID invalidates nothing"


@pytest.mark.parametrize("kind", (2, 3))
def test_invpcid_types_2_3_ignore_the_pcid_without_pcide(rig, kind):
    rig.cache((VA1, False))
    rig.remap(VA1)
    assert rig.invpcid(kind, 5) is None
    assert not rig.is_old(VA1)


def test_invpcid_and_invlpg_need_cpl0(rig):
    cpu = rig.cpu
    set_tss_rsp0(rig.vm, cpu, 0x70000)
    # CPL 3 code must be able to fetch: make the scratch code page user-accessible
    for gpa in (0x1000, 0x2000, 0x3000):
        rig.put(gpa, q(rig.vm, gpa) | US)
    rig.put(boot_pte(rig.code), rig.code | P | RW | US)
    rig.put(boot_pte(rig.code + 0x1000), (rig.code + 0x1000) | P | RW | US)
    cpu.cs, cpu.ss = 0x1B, 0x23
    cpu.tlb.flush_all()
    cpu.flush_fast()
    assert rig.op("invlpg [rax]", rax=VA1) == (GP, 0)
    cpu.cs, cpu.ss = 0x1B, 0x23
    assert rig.invpcid(2, 0) == (GP, 0)


# --- #PF invalidates the faulting address's entries ---

def test_page_fault_invalidates_the_faulting_page(rig):
    """SDM 4.10.4.2 (kvm-mmu-spec 8.1): a #PF invalidates the TLB entries for the faulting
    address, so after it the next access walks the paging structures again."""
    rig.map(VA1, OLD[VA1], P)              # read-only
    assert rig.is_old(VA1)
    rig.cache((VA3, False))
    rig.map(VA1, NEW[VA1], P)
    rig.remap(VA3)
    assert rig.is_old(VA1)
    assert rig.op(f"mov qword ptr [{VA1 + 8:#x}], 1") == (PF, 0x3)
    assert rig.cpu.cr2 == VA1 + 8
    assert not rig.is_old(VA1), "the #PF dropped the stale entry"
    assert rig.is_old(VA3), "and nothing else"


# --- capacity ---

def entry(vpn, glob=False):
    return TlbEntry(vpn, None, vpn << 12, vpn << 12, True, True, False, True, glob, 0, 12)


def test_tlb_capacity_fifo_per_context():
    tlb = Tlb(capacity=3, max_contexts=2)
    for vpn in (10, 11, 12):
        tlb.fill(1, 0, 0, entry(vpn))
    tlb.fill(1, 0, 0, entry(11))             # a refill of a cached page evicts nothing
    assert len(tlb) == 3
    tlb.fill(1, 0, 0, entry(13))             # evicts the oldest: 10
    assert tlb.lookup(1, 0, 0, 10, False) is None
    assert all(tlb.lookup(1, 0, 0, v, False) is not None for v in (11, 12, 13))
    tlb.fill(1, 0, 0, entry(14))
    assert tlb.lookup(1, 0, 0, 11, False) is None
    assert len(tlb) == 3
    # contexts are bounded too: a third context evicts the oldest context
    tlb.fill(1, 5, 0, entry(20))
    tlb.fill(1, 7, 0, entry(21, glob=True))
    assert len(tlb.contexts) <= 2
    assert tlb.lookup(1, 0, 0, 12, False) is None
    assert tlb.lookup(1, 5, 0, 20, False) is not None
    assert tlb.lookup(1, 7, 0, 21, True) is not None       # global: any PCID
    assert tlb.lookup(1, 7, 0, 21, False) is None          # but only with PGE
    assert len(tlb) <= tlb.capacity * tlb.max_contexts


def test_tlb_capacity_bounds_the_cpu_tlb(rig):
    cpu = rig.cpu
    cpu.tlb = Tlb(capacity=4)
    for va in (VA1, VA2, VA3, VA4, VA5):
        rig.map(va, OLD[va])
    for va in (VA1, VA2, VA3, VA4):
        assert rig.is_old(va)
    rig.remap(VA1, VA2, VA3, VA4, VA5)
    assert not rig.is_old(VA5)               # fills the fifth entry: VA1 is evicted
    assert len(cpu.tlb) == 4
    assert rig.is_old(VA2) and rig.is_old(VA4)
    assert not rig.is_old(VA1)
