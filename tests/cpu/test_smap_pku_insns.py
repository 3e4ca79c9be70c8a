"""STAC/CLAC, WRPKRU/RDPKRU, the fences and CLFLUSH/CLFLUSHOPT against the SDM.

SDM Vol. 2: STAC/CLAC set/clear RFLAGS.AC, #UD if CPL > 0 (or if CPUID.(7,0):EBX.SMAP = 0);
WRPKRU: #UD if CR4.PKE = 0, #GP(0) if ECX != 0 or EDX != 0, PKRU := EAX; RDPKRU: #UD if
CR4.PKE = 0, #GP(0) if ECX != 0, EDX:EAX := 0:PKRU; LFENCE/MFENCE/SFENCE have no
architectural effect; CLFLUSH/CLFLUSHOPT m8 fault as a byte load would (#PF, #GP, #SS)
and change no architectural state. SDM Vol. 3A 4.6: with CR4.SMAP = 1 a supervisor data
access to a user-mode address is refused unless RFLAGS.AC = 1; with CR4.PKE = 1 PKRU's
AD bit for the page's key refuses data accesses (#PF with error-code bit 5, PK).

The guest programs run AC/PKRU changes between accesses to pages already cached by the
interpreter's fast paths and walk memo, so the very next access after each change shows
whether the change took effect. Exceptions go to logging handlers (guest code) that
record vector, error code, CR2, RIP and RFLAGS in guest memory and skip the instruction.
Constants are written from the SDM, not imported from kvmdbg.
"""

from __future__ import annotations

import pytest

from kvmdbg.cpu.executor import run
from kvmdbg.kvm.scheduler import run_vm
from tests.cpu.guest_idt import LIDT_INSN, install, load_idtr, q, set_tss_rsp0
from tests.helpers import asm, machine

UD, GP, SS, PF, BP = 6, 13, 12, 14, 3
P, RW, US = 1, 2, 4
EC_P, EC_W, EC_U, EC_PK = 1, 2, 4, 32
CR4_SMAP, CR4_PKE = 1 << 21, 1 << 22
AC = 1 << 18

KERNEL = 0x100000
USER_CODE, USER_STACK = 0x140000, 0x150000
USER_RSP = USER_STACK + 0x800
RSP0 = 0x70000
U1, U2, S_PAGE, NP_PAGE, RO_PAGE = 0x160000, 0x161000, 0x162000, 0x163000, 0x164000
PKEY = 6                              # U1's protection key; U2 has key 0
AD, WD = 1 << (2 * PKEY), 2 << (2 * PKEY)
LOG_N = 0x22000                       # number of exceptions logged
LOG = 0x22040                         # 64 bytes each: vector, error code, CR2, RIP, RFLAGS
MARK1, MARK2 = 0x1111_2222_3333_4444, 0x5555_6666_7777_8888


def boot_pte(va: int) -> int:
    return 0x4000 + (va >> 12) * 8


def put(vm, gpa: int, value: int) -> None:
    vm.write_gpa(gpa, value.to_bytes(8, "little"))


def logger(vector: int, has_ec: bool, skip: int) -> str:
    """Handler: log the exception, then return to the instruction `skip` bytes on."""
    ec = 8 if has_ec else 0
    return f"""
        push rax
        push rcx
        mov rax, qword ptr [{LOG_N:#x}]
        shl rax, 6
        mov qword ptr [rax + {LOG:#x}], {vector}
        mov rcx, {'qword ptr [rsp + 16]' if has_ec else '-1'}
        mov qword ptr [rax + {LOG + 8:#x}], rcx
        mov rcx, cr2
        mov qword ptr [rax + {LOG + 16:#x}], rcx
        mov rcx, qword ptr [rsp + {16 + ec}]
        mov qword ptr [rax + {LOG + 24:#x}], rcx
        mov rcx, qword ptr [rsp + {32 + ec}]
        mov qword ptr [rax + {LOG + 32:#x}], rcx
        inc qword ptr [{LOG_N:#x}]
        add qword ptr [rsp + {16 + ec}], {skip}
        pop rcx
        pop rax
        {'add rsp, 8' if has_ec else ''}
        iretq
    """


def layout(body: str, address: int):
    """Assemble body one line at a time (no labels); a line may end with '@TAG'.
    Returns (code, {tag: address of that line's instruction})."""
    code = b""
    tags = {}
    for line in body.strip().splitlines():
        text, _, tag = line.partition("@")
        if not text.strip():
            continue
        if tag.strip():
            tags[tag.strip()] = address + len(code)
        code += asm(text, address + len(code))
    return code, tags


def build(body: str, *, cpl: int, cr4: int = 0, user_rflags: int = 0x202, skip: int = 3,
          kvm=None, pages=None, touch_stack: bool = True):
    """A machine whose kernel sets CR4 |= cr4 and then runs body at CPL 0 (ending in hlt)
    or IRETQs to it at CPL 3 (ending in int3, whose DPL-3 gate halts). #UD, #GP, #SS and
    #PF are logged and skipped by `skip` bytes. pages: {page: PTE flags} for the test's
    data pages (default: U1 user with key PKEY, U2 user, S_PAGE supervisor, RO_PAGE
    supervisor read-only, NP_PAGE not present)."""
    if cpl == 0:
        user, tags = b"", {}
        enter = ""
    else:
        user, tags = layout(body + "\nint3", USER_CODE)
        # touch_stack: write the CPL-0 stack first, so under the KVM model the first
        # exception's frame does not take an EPT-violation exit (see the test of that).
        touch = f"mov qword ptr [{RSP0 - 8:#x}], 0" if touch_stack else ""
        enter = f"""
            {touch}
            push 0x23
            push {USER_RSP:#x}
            push {user_rflags:#x}
            push 0x1b
            push {USER_CODE:#x}
            iretq
        """
    prologue = asm(f"""
        {LIDT_INSN}
        mov rax, cr4
        or rax, {cr4:#x}
        mov cr4, rax
        {enter}
    """, KERNEL)
    if cpl == 0:
        kernel, tags = layout(body + "\nhlt", KERNEL + len(prologue))
        code = prologue + kernel
    else:
        code = prologue
    vm, cpu = machine(code, kvm=kvm)
    for vector, has_ec in ((UD, False), (GP, True), (SS, True), (PF, True)):
        install(vm, vector, logger(vector, has_ec, skip))
    install(vm, BP, "hlt", dpl=3)
    load_idtr(vm)
    put(vm, LOG_N, 0)
    for gpa in (0x1000, 0x2000, 0x3000):          # boot PML4E, PDPTE, PDE of the low 2 MiB
        put(vm, gpa, q(vm, gpa) | US)
    for page in (USER_CODE, USER_STACK):
        put(vm, boot_pte(page), page | P | RW | US)
    if pages is None:
        pages = {U1: P | RW | US | PKEY << 59, U2: P | RW | US, S_PAGE: P | RW,
                 RO_PAGE: P, NP_PAGE: RW}
    for page, flags in pages.items():
        put(vm, boot_pte(page), page | flags)
        put(vm, page, MARK1)
    if user:
        vm.write_gpa(USER_CODE, user)
    set_tss_rsp0(vm, cpu, RSP0)
    return vm, cpu, tags


def go(vm, cpu, limit: int = 10_000):
    """Run until the program halts (through the KVM model's vCPU loop when there is one);
    returns the exceptions logged."""
    if vm.bare:
        assert run(cpu, limit) == "halted", cpu.shutdown
    else:
        assert run_vm(vm, limit)[0] == "halted", cpu.shutdown
    return [{"vector": q(vm, LOG + 64 * i), "ec": q(vm, LOG + 64 * i + 8),
             "cr2": q(vm, LOG + 64 * i + 16), "rip": q(vm, LOG + 64 * i + 24),
             "rflags": q(vm, LOG + 64 * i + 32)} for i in range(q(vm, LOG_N))]


def pf(ec: int, cr2: int, rip: int) -> tuple:
    return (PF, ec, cr2, rip)


def brief(log) -> list:
    """(vector, error code, CR2 for #PF, RIP) of each logged exception."""
    return [(e["vector"], None if e["ec"] == 2**64 - 1 else e["ec"],
             e["cr2"] if e["vector"] == PF else None, e["rip"]) for e in log]


KVMS = [None, "v6.12"]


# --- STAC / CLAC and SMAP ---

@pytest.mark.parametrize("kvm", KVMS)
def test_stac_clac_switch_smap_on_the_next_access_to_a_cached_page(kvm):
    """Each STAC/CLAC is followed at once by an access to U1, which the previous access
    left in the fast paths: a stale translation would let the CLAC'd write through."""
    vm, cpu, tags = build(f"""
        mov rdi, {U1:#x}
        mov rsi, {MARK2:#x}
        stac
        mov qword ptr [rdi], rsi           @write-ac1
        clac
        mov qword ptr [rdi], rsi           @write-ac0
        stac
        mov qword ptr [rdi], rsi           @write-ac1-again
        clac
        mov rbx, qword ptr [rdi]           @read-ac0
        stac
        mov rbx, qword ptr [rdi]           @read-ac1
    """, cpl=0, cr4=CR4_SMAP, kvm=kvm)
    put(vm, U1, 0)
    log = go(vm, cpu)
    assert brief(log) == [pf(EC_P | EC_W, U1, tags["write-ac0"]),
                          pf(EC_P, U1, tags["read-ac0"])]
    assert [e["rflags"] & AC for e in log] == [0, 0]
    assert q(vm, U1) == MARK2 and cpu.r[3] == MARK2
    assert cpu.get_rflags() & AC


def test_stac_leaves_no_stale_walk_memo():
    """A walk made after STAC must be memoised under the AC=1 mode: after CLAC and an
    INVLPG of the page, the next supervisor write re-walks under AC=0 and faults."""
    vm, cpu, tags = build(f"""
        mov rdi, {U2:#x}
        mov rsi, {MARK2:#x}
        mov rax, qword ptr [{S_PAGE:#x}]
        stac
        mov qword ptr [rdi], rsi
        clac
        invlpg [rdi]
        mov qword ptr [rdi], rsi           @write-ac0
    """, cpl=0, cr4=CR4_SMAP)
    assert brief(go(vm, cpu)) == [pf(EC_P | EC_W, U2, tags["write-ac0"])]


def test_stac_clac_set_and_clear_ac_whatever_cr4_smap():
    vm, cpu, _ = build("""
        stac
        pushfq
        pop r8
        clac
        pushfq
        pop r9
        stac
        stac
        pushfq
        pop r10
    """, cpl=0)
    assert go(vm, cpu) == []
    assert cpu.r[8] & AC and not cpu.r[9] & AC and cpu.r[10] & AC
    assert cpu.r[8] & ~AC == cpu.r[9] == cpu.r[10] & ~AC


def test_stac_clac_at_cpl3_are_ud_and_leave_ac():
    """The guest's CPUID reports SMAP (so CPL is the only #UD condition left); STAC with
    AC=0 and CLAC with AC=1 at CPL 3 both #UD and AC keeps its value."""
    vm, cpu, tags = build("""
        mov eax, 7
        xor ecx, ecx
        cpuid
        mov r12, rbx
        stac                     @stac
        pushfq
        pop r8
        pushfq
        or qword ptr [rsp], 0x40000
        popfq
        clac                     @clac
        pushfq
        pop r9
    """, cpl=3)
    log = go(vm, cpu)
    assert cpu.r[12] >> 20 & 1, "CPUID.(7,0):EBX.SMAP"
    assert brief(log) == [(UD, None, None, tags["stac"]), (UD, None, None, tags["clac"])]
    assert [e["rflags"] & AC for e in log] == [0, AC]
    assert not cpu.r[8] & AC and cpu.r[9] & AC


# --- WRPKRU / RDPKRU and protection keys ---

@pytest.mark.parametrize("kvm", KVMS)
def test_wrpkru_switches_key_rights_on_the_next_access_to_a_cached_page(kvm):
    """User reads of U1 (key PKEY) right after each WRPKRU: AD faults with PK set, clearing
    it allows the read again, WD allows reads and refuses writes; U2 (key 0) unaffected."""
    vm, cpu, tags = build(f"""
        mov rdi, {U1:#x}
        mov rsi, {U2:#x}
        xor ecx, ecx
        xor edx, edx
        xor eax, eax
        wrpkru
        mov rbx, qword ptr [rdi]
        mov rbx, qword ptr [rsi]
        mov eax, {AD:#x}
        wrpkru
        mov rbx, qword ptr [rdi]           @read-ad
        mov r8, qword ptr [rsi]
        xor eax, eax
        wrpkru
        mov r9, qword ptr [rdi]
        mov eax, {WD:#x}
        wrpkru
        mov r10, qword ptr [rdi]
        mov qword ptr [rdi], rsi           @write-wd
        mov qword ptr [rsi], rsi
    """, cpl=3, cr4=CR4_PKE, kvm=kvm)
    log = go(vm, cpu)
    assert brief(log) == [pf(EC_P | EC_U | EC_PK, U1, tags["read-ad"]),
                          pf(EC_P | EC_W | EC_U | EC_PK, U1, tags["write-wd"])]
    assert cpu.r[8] == cpu.r[9] == cpu.r[10] == MARK1
    assert q(vm, U1) == MARK1 and q(vm, U2) == U2
    assert cpu.pkru == WD


def test_wrpkru_leaves_no_stale_walk_memo():
    """A walk made after WRPKRU clears AD must be memoised under PKRU=0: once AD is set
    again and the TLB entry is gone, the next access re-walks and faults."""
    vm, cpu, tags = build(f"""
        mov rsi, {U1:#x}
        xor ecx, ecx
        xor edx, edx
        mov eax, {AD:#x}
        wrpkru
        invlpg [rsi]
        xor eax, eax
        wrpkru
        mov rbx, qword ptr [rsi]
        mov eax, {AD:#x}
        wrpkru
        invlpg [rsi]
        mov rbx, qword ptr [rsi]           @read-ad
    """, cpl=0, cr4=CR4_PKE)
    # a supervisor access to a user-mode address is subject to PKRU too (SDM 4.6.2)
    assert brief(go(vm, cpu)) == [pf(EC_P | EC_PK, U1, tags["read-ad"])]


def test_rdpkru_returns_what_wrpkru_wrote_and_ecx_edx_rules():
    vm, cpu, tags = build("""
        mov eax, 0x5555000c
        xor ecx, ecx
        xor edx, edx
        wrpkru
        mov rax, -1
        mov rdx, -1
        mov rcx, 0xffffffff00000000
        rdpkru
        mov r8, rax
        mov r9, rdx
        mov eax, 0x30
        mov ecx, 1
        xor edx, edx
        wrpkru                   @wr-ecx
        xor ecx, ecx
        mov edx, 1
        wrpkru                   @wr-edx
        mov ecx, 2
        rdpkru                   @rd-ecx
        mov r10, rax
        mov r11, rdx
    """, cpl=3, cr4=CR4_PKE)
    log = go(vm, cpu)
    assert brief(log) == [(GP, 0, None, tags["wr-ecx"]), (GP, 0, None, tags["wr-edx"]),
                          (GP, 0, None, tags["rd-ecx"])]
    assert cpu.r[8] == 0x5555000C and cpu.r[9] == 0
    assert cpu.pkru == 0x5555000C
    assert cpu.r[10] == 0x30 and cpu.r[11] == 1, "a faulting RDPKRU writes nothing"


@pytest.mark.parametrize("cpl", (0, 3))
def test_wrpkru_rdpkru_are_ud_without_cr4_pke(cpl):
    """#UD, not #GP, even with ECX != 0; PKRU unchanged."""
    vm, cpu, tags = build("""
        mov eax, 0xc
        xor ecx, ecx
        xor edx, edx
        wrpkru                   @wr
        mov ecx, 1
        wrpkru                   @wr-ecx
        mov rax, 0x77
        mov rdx, 0x88
        xor ecx, ecx
        rdpkru                   @rd
    """, cpl=cpl)
    log = go(vm, cpu)
    assert brief(log) == [(UD, None, None, tags[t]) for t in ("wr", "wr-ecx", "rd")]
    assert cpu.pkru == 0 and cpu.r[0] == 0x77 and cpu.r[2] == 0x88


# --- fences ---

FENCE_BODY = """
    mov rax, 0x1234
    mov rbx, {U1:#x}
    mov qword ptr [rbx], rax
    add rax, -0x1234
    {fences}
    mov rcx, qword ptr [rbx]
"""


@pytest.mark.parametrize("cpl", (0, 3))
def test_fences_retire_and_change_nothing(cpl):
    """The same program with and without LFENCE/MFENCE/SFENCE ends in the same state:
    registers, RFLAGS (lazy flags of the ADD before them), memory; each fence retires."""
    ends = []
    for fences in ("lfence\nmfence\nsfence", ""):
        vm, cpu, tags = build(FENCE_BODY.format(U1=U1, fences=fences), cpl=cpl)
        assert go(vm, cpu) == []
        ends.append((list(cpu.r), cpu.get_rflags(), q(vm, U1), cpu.steps, cpu.rip))
    (r1, f1, m1, s1, rip1), (r0, f0, m0, s0, rip0) = ends
    assert r1 == r0 and f1 == f0 and m1 == m0 == 0x1234
    assert s1 == s0 + 3
    if cpl == 0:                        # at CPL 3 both halt in the same int3 handler
        assert rip1 == rip0 + 9
    assert f1 & 0x40, "ZF from the ADD survives the fences"


# --- CLFLUSH / CLFLUSHOPT ---

@pytest.mark.parametrize("insn", ("clflush", "clflushopt"))
@pytest.mark.parametrize("cpl", (0, 3))
def test_clflush_of_an_unmapped_address_is_a_read_page_fault(insn, cpl):
    skip = 3 if insn == "clflush" else 4
    vm, cpu, tags = build(f"""
        mov rdi, {NP_PAGE + 0x40:#x}
        mov rbx, 0x99
        {insn} byte ptr [rdi]      @flush
        mov rbx, 0x42
    """, cpl=cpl, skip=skip)
    log = go(vm, cpu)
    assert brief(log) == [pf(EC_U if cpl else 0, NP_PAGE + 0x40, tags["flush"])]
    assert cpu.r[3] == 0x42


@pytest.mark.parametrize("insn", ("clflush", "clflushopt"))
def test_clflush_of_mapped_lines_changes_nothing(insn):
    """CLFLUSH is checked as a read: a read-only page is fine (no write check), a page seen
    for the first time and one already cached alike; registers, flags and memory stay."""
    body = f"""
        mov rdi, {RO_PAGE + 0x7:#x}
        mov rsi, {S_PAGE + 0xFFF:#x}
        mov rax, qword ptr [{S_PAGE:#x}]
        add rax, 1
        {{f1}}
        {{f2}}
        mov rcx, qword ptr [rdi]
    """
    ends = []
    for f1, f2 in ((f"{insn} byte ptr [rdi]", f"{insn} byte ptr [rsi]"), ("", "")):
        vm, cpu, _ = build(body.format(f1=f1, f2=f2), cpl=0)
        assert go(vm, cpu) == []
        ends.append((list(cpu.r), cpu.get_rflags(), bytes(vm.read_gpa(RO_PAGE, 4096)),
                     bytes(vm.read_gpa(S_PAGE, 4096)), cpu.steps))
    (r1, f1_, ro1, s1, n1), (r0, f0, ro0, s0, n0) = ends
    assert r1 == r0 and f1_ == f0 and ro1 == ro0 and s1 == s0 and n1 == n0 + 2


def test_clflush_is_checked_as_a_user_read_at_cpl3():
    vm, cpu, tags = build(f"""
        mov rdi, {U1 + 0x10:#x}
        clflush byte ptr [rdi]
        mov rdi, {S_PAGE + 0x10:#x}
        clflush byte ptr [rdi]     @flush-supervisor
    """, cpl=3)
    assert brief(go(vm, cpu)) == [pf(EC_P | EC_U, S_PAGE + 0x10, tags["flush-supervisor"])]


@pytest.mark.parametrize("text,vector,skip", [("clflush byte ptr [rdi]", GP, 3),
                                             ("clflush byte ptr [rsp + 1]", SS, 5)])
def test_clflush_non_canonical_is_gp_or_ss(text, vector, skip):
    """Like a byte load: #GP(0) through DS, #SS(0) through SS (an RSP base)."""
    vm, cpu, tags = build(f"""
        mov rdi, 0x8000000000000000
        mov rsp, 0x8000000000000000
        {text}                      @flush
    """, cpl=3, skip=skip)
    assert brief(go(vm, cpu)) == [(vector, 0, None, tags["flush"])]


def test_exception_frame_write_that_exits_leaves_the_cpl_alone():
    """Under EPT the first exception from CPL 3 writes its frame to a kernel stack page
    that is not mapped in EPT yet: the write takes an EPT-violation exit, KVM maps the page
    and the instruction runs again. Nothing may have changed meanwhile: the user read of a
    supervisor page must fault again as a user access (SDM 4.7: error code U=1)."""
    vm, cpu, tags = build(f"""
        mov rdi, {S_PAGE:#x}
        mov rbx, qword ptr [rdi]           @load
    """, cpl=3, kvm="v6.12", touch_stack=False)
    assert brief(go(vm, cpu)) == [pf(EC_P | EC_U, S_PAGE, tags["load"])]
