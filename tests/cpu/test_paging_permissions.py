"""The hardware walker's access rights and #PF error codes against SDM Vol. 3A 4.6-4.8.

The oracle below is written from the SDM 4.6.1 table (kvm-mmu-spec 8.3) and the
error-code definition of SDM 4.7; it shares no code or constants with kvmdbg. Each
case sets up a private 4-level mapping in guest memory, sets the CPU state, empties
the TLB and performs the access through the CPU's own entry points (cpu.rd, cpu.wr,
cpu.rd_implicit, instruction fetch; cpu.translate for an implicit write, which no
instruction here performs).
"""

from __future__ import annotations

import itertools

import pytest

from kvmdbg.cpu.faults import ACC_IMPLICIT, PFERR_WRITE, GuestFault
from tests.cpu.guest_idt import (LIDT_INSN, REC, install, load_idtr, program, q, set_tss_rsp0)
from tests.helpers import machine, run_until_halt

# --- architectural constants, written from the SDM (not imported from kvmdbg) ---
P, RW, US, PWT, PCD, A, D, PS, G = (1 << i for i in range(9))
XD = 1 << 63
EC_P, EC_W, EC_U, EC_RSVD, EC_ID, EC_PK = 1, 2, 4, 8, 16, 32
CR0_WP, CR0_PG = 1 << 16, 1 << 31
CR4_PGE, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 7, 1 << 20, 1 << 21, 1 << 22
EFER_NXE = 1 << 11
RFLAGS_AC = 1 << 18
PF_VECTOR = 14

# --- a private mapping: PML4 (boot, 0x1000) -> PDPT_T -> PD_T -> PT_T -> DATA ---
PML4 = 0x1000
PDPT_T, PD_T, PT_T, DATA = 0x300000, 0x301000, 0x302000, 0x303000
IDX = {4: 1, 3: 1, 2: 2, 1: 3}                  # distinct indices catch index mix-ups
OFF = 0x7F8
VA = (IDX[4] << 39) | (IDX[3] << 30) | (IDX[2] << 21) | (IDX[1] << 12) | OFF
ENTRY = {4: PML4 + 8 * IDX[4], 3: PDPT_T + 8 * IDX[3], 2: PD_T + 8 * IDX[2], 1: PT_T + 8 * IDX[1]}
NEXT = {4: PDPT_T, 3: PD_T, 2: PT_T, 1: DATA}
MARK = 0x9090_9090_9090_9090                    # also NOPs, so a fetch at VA decodes
NEW = 0x9090_9090_9090_90F4
PKEY = 5

KINDS = ("read", "write", "fetch", "implicit-read", "implicit-write")


# --- the oracle (SDM 4.6.1, 4.6.2, 4.7) ---

def oracle(*, user_page, writable, xd_any, wp, smep, smap, ac, nxe, pke, ad, wd, cpl, kind):
    """None if the access is allowed, else the #PF error code the SDM prescribes.

    user_page: U/S=1 in every paging-structure entry; writable: R/W=1 in every entry;
    xd_any: XD=1 in some entry.
    """
    implicit = kind.startswith("implicit")
    write = kind.endswith("write")
    fetch = kind == "fetch"
    user_access = cpl == 3 and not implicit           # implicit accesses are supervisor
    code = (EC_W if write else 0) | (EC_U if user_access else 0)
    if fetch and (nxe or smep):
        code |= EC_ID
    if xd_any and not nxe:                             # XD is a reserved bit without NXE
        return EC_P | EC_RSVD | code
    executable = not (nxe and xd_any)
    if user_access:
        if not user_page:
            ok = False
        elif fetch:
            ok = executable
        elif write:
            ok = writable
        else:
            ok = True
    elif fetch:
        ok = executable and not (user_page and smep)
    elif user_page and smap and (implicit or not ac):
        ok = False
    elif write:
        ok = writable or not wp
    else:
        ok = True
    # Protection keys: data accesses to user-mode addresses; the PK bit is reported
    # whenever the key forbids the access, whatever else is wrong with it (SDM 4.7).
    pk = pke and user_page and not fetch and (ad or (wd and write and (user_access or wp)))
    if ok and not pk:
        return None
    return EC_P | code | (EC_PK if pk else 0)


# --- machine set-up ---

@pytest.fixture(scope="module")
def rig():
    vm, cpu = machine("hlt")
    page = bytearray(MARK.to_bytes(8, "little") * 512)
    vm.write_gpa(DATA, page)
    return vm, cpu


def put(vm, gpa, value):
    vm.write_gpa(gpa, value.to_bytes(8, "little"))


def map_chain(vm, extra=None, clear=None):
    """(Re)write the four entries of VA: P|RW|US at every level, leaf key PKEY; then OR in
    extra[level] and clear clear[level]. A/D start clear. Returns the entries written."""
    extra = extra or {}
    clear = clear or {}
    out = {}
    for level in (4, 3, 2, 1):
        v = NEXT[level] | P | RW | US
        if level == 1:
            v |= PKEY << 59
        v = (v | extra.get(level, 0)) & ~clear.get(level, 0)
        put(vm, ENTRY[level], v)
        out[level] = v
    return out


def entries(vm):
    return {level: q(vm, ENTRY[level]) for level in (4, 3, 2, 1)}


def set_state(cpu, *, wp=1, smep=0, smap=0, ac=0, nxe=1, pke=0, ad=0, wd=0, cpl=0):
    cpu.cr0 = (cpu.cr0 | CR0_WP) if wp else (cpu.cr0 & ~CR0_WP)
    cr4 = cpu.cr4 & ~(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PGE)
    cpu.cr4 = cr4 | (CR4_SMEP if smep else 0) | (CR4_SMAP if smap else 0) | (CR4_PKE if pke else 0)
    cpu.efer = (cpu.efer | EFER_NXE) if nxe else (cpu.efer & ~EFER_NXE)
    # The page's key gets (ad, wd); every other key gets the opposite, so reading the
    # wrong key's bits shows up as a mismatch.
    pkru = 0
    for k in range(16):
        a, w = (ad, wd) if k == PKEY else (1 - ad, 1 - wd)
        pkru |= (a | w << 1) << (2 * k)
    cpu.pkru = pkru
    cpu.set_rflags(0x2 | (RFLAGS_AC if ac else 0))
    cpu.cs = 0x08 if cpl == 0 else 0x1B
    cpu.ss = 0x10 if cpl == 0 else 0x23
    cpu.tlb.flush_all()
    cpu.flush_fast()


def do_access(vm, cpu, kind, va=VA):
    """Perform the access; returns None, or the GuestFault it raised. Checks the data."""
    try:
        if kind == "read":
            assert cpu.rd(va, 8) == MARK
        elif kind == "implicit-read":
            assert cpu.rd_implicit(va, 8) == MARK
        elif kind == "write":
            cpu.wr(va, 8, NEW)
            assert q(vm, DATA + (va & 0xFFF)) == NEW
            put(vm, DATA + (va & 0xFFF), MARK)
        elif kind == "implicit-write":
            e = cpu.translate(va, PFERR_WRITE | ACC_IMPLICIT)
            assert e.gpa == DATA
        else:
            cpu.fetch_handler(va)
    except GuestFault as f:
        return f
    return None


def check_case(vm, cpu, state, kind, extra, clear, expect, problems):
    before = map_chain(vm, extra, clear)
    set_state(cpu, **state)
    fault = do_access(vm, cpu, kind)
    after = entries(vm)
    label = f"{kind} {state} extra={extra} clear={clear}"
    if expect is None:
        if fault is not None:
            problems.append(f"{label}: expected success, got {fault}")
            return
        want = {lvl: before[lvl] | A for lvl in before}
        if kind.endswith("write"):
            want[1] |= D
        if after != want:
            problems.append(f"{label}: A/D after success "
                            f"{ {k: hex(v) for k, v in after.items()} }, want "
                            f"{ {k: hex(v) for k, v in want.items()} }")
    else:
        if fault is None:
            problems.append(f"{label}: expected #PF({expect:#x}), access succeeded")
        elif (fault.vector, fault.error_code, fault.cr2) != (PF_VECTOR, expect, VA):
            problems.append(f"{label}: got {fault} cr2={fault.cr2}, want #PF({expect:#x}) at {VA:#x}")
        elif after != before:
            problems.append(f"{label}: a faulting access changed paging entries")


def report(problems):
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:25])


# --- the full matrix on the leaf ---

@pytest.mark.parametrize("cpl", (0, 3))
@pytest.mark.parametrize("kind", KINDS)
def test_leaf_rights_matrix(rig, cpl, kind):
    """U/S, R/W, XD in the PTE x WP, SMEP, SMAP, AC, NXE x PKE with PKRU AD/WD."""
    vm, cpu = rig
    problems = []
    for us, rw, xd, wp, smep, smap, ac, nxe, pke, ad, wd in itertools.product((0, 1), repeat=11):
        if not pke and (ad or wd):
            continue        # PKRU is irrelevant without PKE; one representative is enough
        state = dict(wp=wp, smep=smep, smap=smap, ac=ac, nxe=nxe, pke=pke, ad=ad, wd=wd, cpl=cpl)
        expect = oracle(user_page=us, writable=rw, xd_any=xd, kind=kind, **state)
        clear = {1: (0 if us else US) | (0 if rw else RW)}
        extra = {1: XD if xd else 0}
        check_case(vm, cpu, state, kind, extra, clear, expect, problems)
    report(problems)


# --- the same rules when the restricting bit is in a non-leaf entry ---

@pytest.mark.parametrize("level", (4, 3, 2))
@pytest.mark.parametrize("bit", ("us", "rw", "xd"))
def test_nonleaf_rights(rig, level, bit):
    """A user-mode address needs U/S=1 at every level, W needs R/W=1 everywhere, XD
    anywhere forbids fetches; a supervisor-mode address (U/S=0 above the leaf) is not
    subject to protection keys even though the leaf says U/S=1."""
    vm, cpu = rig
    problems = []
    clear = {level: US} if bit == "us" else {level: RW} if bit == "rw" else {}
    extra = {level: XD} if bit == "xd" else {}
    for wp, smep, smap, ac, nxe, pk, cpl3 in itertools.product((0, 1), repeat=7):
        cpl = 3 if cpl3 else 0
        for kind in KINDS:
            state = dict(wp=wp, smep=smep, smap=smap, ac=ac, nxe=nxe, pke=pk, ad=pk, wd=pk, cpl=cpl)
            expect = oracle(user_page=bit != "us", writable=bit != "rw", xd_any=bit == "xd",
                            kind=kind, **state)
            check_case(vm, cpu, state, kind, extra, clear, expect, problems)
    report(problems)


def test_oracle_spot_checks():
    """A few rows of the SDM table worked by hand, so the oracle itself is anchored."""
    base = dict(wp=1, smep=0, smap=0, ac=0, nxe=1, pke=0, ad=0, wd=0)
    # supervisor write to a read-only supervisor page with WP=1: P|W
    assert oracle(user_page=0, writable=0, xd_any=0, cpl=0, kind="write", **base) == 0x3
    # same with WP=0: allowed
    assert oracle(user_page=0, writable=0, xd_any=0, cpl=0, kind="write", **{**base, "wp": 0}) is None
    # user read of a supervisor page: P|U
    assert oracle(user_page=0, writable=1, xd_any=0, cpl=3, kind="read", **base) == 0x5
    # user fetch of an XD page with NXE: P|U|I/D
    assert oracle(user_page=1, writable=1, xd_any=1, cpl=3, kind="fetch", **base) == 0x15
    # supervisor fetch of a user page with SMEP, NXE=0: P|I/D (I/D because of SMEP)
    assert oracle(user_page=1, writable=1, xd_any=0, cpl=0, kind="fetch",
                  **{**base, "smep": 1, "nxe": 0}) == 0x11
    # XD set with NXE=0: reserved-bit fault P|RSVD
    assert oracle(user_page=0, writable=1, xd_any=1, cpl=0, kind="read", **{**base, "nxe": 0}) == 0x9
    # SMAP: explicit supervisor read of a user page, AC=0 faults, AC=1 is allowed,
    # an implicit read faults whatever AC says
    s = {**base, "smap": 1}
    assert oracle(user_page=1, writable=1, xd_any=0, cpl=0, kind="read", **s) == 0x1
    assert oracle(user_page=1, writable=1, xd_any=0, cpl=0, kind="read", **{**s, "ac": 1}) is None
    assert oracle(user_page=1, writable=1, xd_any=0, cpl=3, kind="implicit-read", **{**s, "ac": 1}) == 0x1
    # PK: user write with WD: P|W|U|PK; supervisor write with WD only counts with WP=1
    k = {**base, "pke": 1, "wd": 1}
    assert oracle(user_page=1, writable=1, xd_any=0, cpl=3, kind="write", **k) == 0x27
    assert oracle(user_page=1, writable=1, xd_any=0, cpl=0, kind="write", **{**k, "wp": 0}) is None
    # PK is reported together with another violation (user write to a read-only page, AD)
    assert oracle(user_page=1, writable=0, xd_any=0, cpl=3, kind="write",
                  **{**base, "pke": 1, "ad": 1}) == 0x27


# --- not-present and reserved bits ---

def fault_of(vm, cpu, kind="read", cpl=0, nxe=1, smep=0):
    set_state(cpu, nxe=nxe, smep=smep, cpl=cpl)
    return do_access(vm, cpu, kind)


@pytest.mark.parametrize("level", (4, 3, 2, 1))
@pytest.mark.parametrize("kind,cpl,code", [("read", 0, 0x0), ("write", 0, 0x2), ("read", 3, 0x4),
                                           ("write", 3, 0x6), ("fetch", 0, 0x10), ("fetch", 3, 0x14)])
def test_not_present_at_each_level(rig, level, kind, cpl, code):
    vm, cpu = rig
    # reserved bits in a not-present entry are ignored: still P=0, no RSVD
    before = map_chain(vm, extra={level: 1 << 51 | PS}, clear={level: P})
    f = fault_of(vm, cpu, kind, cpl)
    assert f is not None and (f.vector, f.error_code, f.cr2) == (PF_VECTOR, code, VA)
    assert entries(vm) == before, "no accessed flag may be set by a faulting walk"


def test_fetch_not_present_without_nxe_or_smep_has_no_id_bit(rig):
    vm, cpu = rig
    map_chain(vm, clear={1: P})
    f = fault_of(vm, cpu, "fetch", 0, nxe=0, smep=0)
    assert (f.vector, f.error_code) == (PF_VECTOR, 0x0)
    f = fault_of(vm, cpu, "fetch", 0, nxe=0, smep=1)
    assert (f.vector, f.error_code) == (PF_VECTOR, 0x10)


RSVD_CASES = [
    # (name, level, bits to set, NXE)
    ("bit51-pml4e", 4, 1 << 51, 1), ("bit51-pdpte", 3, 1 << 51, 1),
    ("bit51-pde", 2, 1 << 51, 1), ("bit51-pte", 1, 1 << 51, 1),
    ("bit46-pte (MAXPHYADDR)", 1, 1 << 46, 1), ("bit46-pml4e", 4, 1 << 46, 1),
    ("xd-without-nxe-pml4e", 4, XD, 0), ("xd-without-nxe-pdpte", 3, XD, 0),
    ("xd-without-nxe-pde", 2, XD, 0), ("xd-without-nxe-pte", 1, XD, 0),
    ("ps-in-pml4e", 4, PS, 1),
]


@pytest.mark.parametrize("name,level,bits,nxe", RSVD_CASES, ids=[c[0] for c in RSVD_CASES])
@pytest.mark.parametrize("kind,cpl,code", [("read", 0, 0x9), ("write", 0, 0xB), ("read", 3, 0xD),
                                           ("fetch", 0, None)])
def test_reserved_bits(rig, name, level, bits, nxe, kind, cpl, code):
    vm, cpu = rig
    if code is None:       # fetch: I/D only with NXE (SMEP is off here)
        code = 0x19 if nxe else 0x9
    before = map_chain(vm, extra={level: bits})
    f = fault_of(vm, cpu, kind, cpl, nxe=nxe)
    assert f is not None and (f.vector, f.error_code, f.cr2) == (PF_VECTOR, code, VA), f
    assert entries(vm) == before


def test_reserved_bit_found_before_a_lower_not_present_entry(rig):
    vm, cpu = rig
    map_chain(vm, extra={3: 1 << 50}, clear={1: P})
    f = fault_of(vm, cpu)
    assert f.error_code == EC_P | EC_RSVD
    map_chain(vm, extra={1: 1 << 50}, clear={3: P})
    f = fault_of(vm, cpu)
    assert f.error_code == 0


def test_bits_below_maxphyaddr_and_ignored_bits_are_not_reserved(rig):
    vm, cpu = rig
    # bits 11:9 and 62:52 are ignored (62:59 is the key in the leaf; PKE is off)
    map_chain(vm, extra={lvl: 0xE00 | (0x7FF << 52) for lvl in (4, 3, 2, 1)})
    assert fault_of(vm, cpu) is None
    # bit 45 is an address bit with MAXPHYADDR = 46: the translation is made (the
    # guest-physical address has no RAM behind it, so it reads as MMIO all-ones)
    map_chain(vm, extra={1: 1 << 45})
    set_state(cpu)
    e = cpu.translate(VA, 0)
    assert e.gpa == (1 << 45) | DATA


# --- large pages ---

VA_2M = (IDX[4] << 39) | (IDX[3] << 30) | (5 << 21)             # PD_T[5] is a 2 MiB leaf
VA_1G = (IDX[4] << 39) | (2 << 30)                               # PDPT_T[2] is a 1 GiB leaf
LARGE_2M = 0x400000


def test_2mib_page_translates_and_sets_flags(rig):
    vm, cpu = rig
    map_chain(vm)
    pde = PD_T + 8 * 5
    put(vm, pde, LARGE_2M | P | RW | PS)
    for off in (0x0, 0x1238, 0x12340, 0x1FFFF8):
        put(vm, LARGE_2M + off, 0x2000_0000 + off)
    set_state(cpu)
    for off in (0x0, 0x1238, 0x12340, 0x1FFFF8):
        assert cpu.rd(VA_2M + off, 8) == 0x2000_0000 + off
        assert cpu.translate(VA_2M + off, 0).gpa == LARGE_2M + (off & ~0xFFF)
    assert q(vm, pde) == LARGE_2M | P | RW | PS | A           # accessed, not dirty
    assert q(vm, ENTRY[4]) & A and q(vm, ENTRY[3]) & A
    cpu.wr(VA_2M + 0x12340, 8, 7)
    assert q(vm, LARGE_2M + 0x12340) == 7
    assert q(vm, pde) == LARGE_2M | P | RW | PS | A | D       # D on the 2 MiB leaf
    assert not q(vm, ENTRY[3]) & D and not q(vm, ENTRY[4]) & D
    assert q(vm, ENTRY[2]) == NEXT[2] | P | RW | US           # the 4 KiB path untouched
    # the leaf's rights apply: read-only 2 MiB page, supervisor write with WP=1
    put(vm, pde, LARGE_2M | P | PS)
    set_state(cpu)
    f = do_access(vm, cpu, "write", VA_2M + 0x3000)
    assert (f.vector, f.error_code, f.cr2) == (PF_VECTOR, EC_P | EC_W, VA_2M + 0x3000)
    # PAT (bit 12) is allowed in a 2 MiB leaf; bits 20:13 are reserved
    put(vm, pde, LARGE_2M | P | RW | PS | (1 << 12))
    set_state(cpu)
    assert cpu.rd(VA_2M + 0x1238, 8) == 0x2000_1238
    for bit in (13, 20):
        put(vm, pde, LARGE_2M | P | RW | PS | (1 << bit))
        set_state(cpu)
        f = do_access(vm, cpu, "read", VA_2M + 8)
        assert (f.vector, f.error_code, f.cr2) == (PF_VECTOR, EC_P | EC_RSVD, VA_2M + 8)


def test_1gib_page_translates_and_sets_flags(rig):
    vm, cpu = rig
    map_chain(vm)
    pdpte = PDPT_T + 8 * 2
    put(vm, pdpte, 0 | P | RW | US | PS)
    for off in (0x500000, 0x5ABCD8, 0xFFFFF8):
        put(vm, off, 0x1000_0000 + off)
    set_state(cpu, cpl=3)
    for off in (0x500000, 0x5ABCD8, 0xFFFFF8):
        assert cpu.rd(VA_1G + off, 8) == 0x1000_0000 + off
        assert cpu.translate(VA_1G + off, 4).gpa == off & ~0xFFF
    assert q(vm, pdpte) == P | RW | US | PS | A
    cpu.wr(VA_1G + 0x5ABCD8, 8, 9)
    assert q(vm, 0x5ABCD8) == 9
    assert q(vm, pdpte) == P | RW | US | PS | A | D
    for bit in (13, 29):
        put(vm, pdpte, P | RW | PS | (1 << bit))
        set_state(cpu)
        f = do_access(vm, cpu, "read", VA_1G + 0x500000)
        assert (f.vector, f.error_code, f.cr2) == (PF_VECTOR, EC_P | EC_RSVD, VA_1G + 0x500000)
    put(vm, pdpte, P | RW | PS | (1 << 12))
    set_state(cpu)
    assert cpu.rd(VA_1G + 0x500000, 8) == 0x1000_0000 + 0x500000


def test_accessed_and_dirty_flags(rig):
    vm, cpu = rig
    before = map_chain(vm)
    set_state(cpu)
    cpu.rd(VA, 8)
    assert entries(vm) == {lvl: v | A for lvl, v in before.items()}
    # a read that hits the TLB sets nothing; a write after it must still set D
    cpu.rd(VA, 8)
    cpu.wr(VA, 8, MARK)
    after = entries(vm)
    assert after[1] == before[1] | A | D
    assert all(not after[lvl] & D for lvl in (4, 3, 2))
    # existing A/D flags are left set; a fetch sets A only
    before = map_chain(vm)
    set_state(cpu)
    cpu.fetch_handler(VA)
    assert entries(vm) == {lvl: v | A for lvl, v in before.items()}


# --- end to end: a guest #PF handler records CR2 and the error code ---

PF_HANDLER = f"""
    mov rax, cr2
    mov qword ptr [{REC:#x}], rax
    mov rax, qword ptr [rsp]
    mov qword ptr [{REC + 8:#x}], rax
    mov qword ptr [{REC + 16:#x}], rsp
    hlt
"""

RO_PAGE, NX_PAGE, NP_PAGE = 0x200000, 0x202000, 0x204000     # identity-mapped by the boot tables


def boot_pte(va):
    """GPA of the boot page-table entry for an identity-mapped va below 16 MiB."""
    return 0x4000 + (va >> 12) * 8


def e2e(body: str, setup=None):
    code, _ = program(LIDT_INSN, body)
    vm, cpu = machine(code)
    install(vm, PF_VECTOR, PF_HANDLER)
    load_idtr(vm)
    put(vm, REC, 0xDEAD)
    put(vm, boot_pte(RO_PAGE), RO_PAGE | P)
    put(vm, boot_pte(NP_PAGE), NP_PAGE | RW)
    put(vm, boot_pte(NX_PAGE), NX_PAGE | P | RW | XD)
    vm.write_gpa(NX_PAGE, b"\x90\xf4")
    if setup:
        setup(vm, cpu)
    assert run_until_halt(cpu, 1000) == "halted", cpu.shutdown
    return vm, cpu, q(vm, REC), q(vm, REC + 8)


@pytest.mark.parametrize("body,addr,code", [
    (f"mov qword ptr [{RO_PAGE + 0x18:#x}], 1", RO_PAGE + 0x18, EC_P | EC_W),
    (f"mov rax, qword ptr [{NP_PAGE + 0x20:#x}]", NP_PAGE + 0x20, 0),
    (f"mov qword ptr [{NP_PAGE + 0xFF8:#x}], rax", NP_PAGE + 0xFF8, EC_W),
    (f"mov rax, {NX_PAGE:#x}\njmp rax", NX_PAGE, EC_P | EC_ID),
], ids=["write-readonly", "read-not-present", "write-not-present", "fetch-nx"])
def test_guest_pf_handler_sees_cr2_and_error_code(body, addr, code):
    vm, cpu, cr2, err = e2e(body)
    assert (cr2, err) == (addr, code)
    assert cpu.cr2 == addr
    # the frame's RIP: the faulting instruction (for the jmp: the target, where the fetch failed)
    rsp = q(vm, REC + 16)
    saved_rip = q(vm, rsp + 8)
    if code & EC_ID:
        assert saved_rip == NX_PAGE
    else:
        assert saved_rip == 0x100000 + len(program(LIDT_INSN)[0])


def test_guest_pf_split_access_reports_second_page():
    """An 8-byte write straddling into a not-present page faults with CR2 = the first
    byte on the missing page, and writes nothing to the first page (SDM 4.7: the address
    that caused the fault)."""
    va = NP_PAGE - 4
    vm, cpu, cr2, err = e2e(f"mov rax, -1\nmov qword ptr [{va:#x}], rax")
    assert (cr2, err) == (NP_PAGE, EC_W)
    assert vm.read_gpa(NP_PAGE - 4, 4) == b"\x00" * 4


def test_guest_pf_from_user_mode():
    """CPL 3 code reads a supervisor page: #PF(P|U), delivered on the CPL-0 stack."""
    user_code = 0x140000
    user_stack = 0x150000
    body = f"""
        push 0x23
        push {user_stack + 0x800:#x}
        push 0x202
        push 0x1b
        push {user_code:#x}
        iretq
    """

    def setup(vm, cpu):
        # make the user code/stack pages user-accessible at every level
        for gpa in (0x1000, 0x2000, 0x3000):
            put(vm, gpa, q(vm, gpa) | US)
        for page in (user_code, user_stack):
            put(vm, boot_pte(page), page | P | RW | US)
        vm.write_gpa(user_code, bytes.fromhex("488b042500002000"))   # mov rax, [0x200000]
        set_tss_rsp0(vm, cpu, 0x70000)

    vm, cpu, cr2, err = e2e(body, setup)
    assert (cr2, err) == (RO_PAGE, EC_P | EC_U)
    rsp = q(vm, REC + 16)
    assert rsp == 0x70000 - 48
    assert [q(vm, rsp + 8 * i) for i in range(1, 6)] == [user_code, 0x1B, 0x202,
                                                         user_stack + 0x800, 0x23]


# --- implicit reads served from the read fast path ---

@pytest.mark.parametrize("cpl", (0, 3))
def test_implicit_read_after_an_explicit_read_of_the_page(rig, cpl):
    """An explicit read first puts the page in the CPU's read fast path; an implicit
    supervisor read of it (what delivery does to the IDT, GDT and TSS) must still follow
    the implicit rules: with SMAP a user page faults whatever AC says (SDM 4.6.1)."""
    vm, cpu = rig
    problems = []
    for us, smap, ac in itertools.product((0, 1), repeat=3):
        state = dict(wp=1, smep=0, smap=smap, ac=ac, nxe=1, pke=0, ad=0, wd=0, cpl=cpl)
        expect = oracle(user_page=us, writable=1, xd_any=0, kind="implicit-read", **state)
        map_chain(vm, clear={1: 0 if us else US})
        set_state(cpu, **state)
        try:
            cpu.rd(VA, 8)                     # may fault; when it does not, it fills fast_r
        except GuestFault:
            pass
        fault = do_access(vm, cpu, "implicit-read")
        got = None if fault is None else fault.error_code
        if got != expect:
            problems.append(f"us={us} smap={smap} ac={ac} cpl={cpl}: got {got}, want {expect}")
    report(problems)
