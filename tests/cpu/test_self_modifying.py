"""Self-modifying code: a store into the instruction stream is what the CPU executes next.

The architecture (Intel SDM Vol. 3A):

- 8.1.3 "Handling Self- and Cross-Modifying Code": a program that stores new code and
  then jumps to it (option 1) or executes a serializing instruction such as CPUID
  (option 2) executes the new code, on every processor family.
- 11.6 "Self-Modifying Code" and 19.29.1 "Self-Modifying Code with Cache Enabled": P6 and
  later processors check every write against the instructions already prefetched, by
  linear address, and flush the prefetch queue on a hit, "eliminating the need to code a
  jump instruction after any writes that modify an instruction"; cached code lines are
  invalidated by physical address. So a store to the very next instruction, through the
  linear address it is fetched from, is seen by that instruction (cases A below). A write
  through another linear address is only guaranteed to be seen after a serializing
  instruction (11.6), which is what the alias case does.

Cases A-C run the same bytes on unicorn (QEMU's TCG, which detects self-modifying code
precisely), mapped flat, as the oracle: the sequence of instructions executed with the
registers before each, and the final registers and memory. Each case also names, by hand
from the SDM, the value the new code leaves and the one stale code would leave, so the
oracle itself is checked to tell them apart. Cases D (the code page remapped by a
page-table write or a memslot change) need paging or a hypervisor, which the flat
unicorn mapping does not have: their oracle is the SDM's TLB rules (4.10.4) and KVM's
memslot code, cited per test.

Every case runs three ways on the interpreter: as `continue` runs (the scheduler: basic
blocks, looping blocks), as `continue` runs while a breakpoint is set somewhere else
(single-instruction handlers in the run loop), and as `stepi` runs (one instruction per
step).
The caches involved (kvmdbg/cpu/decode_cache.py and cpu.py): decoded instructions and
compiled single/block handlers per (gva, hpa), each vCPU's icache/bcache by RIP, the
fetch fast path fast_x, the write fast path fast_w (a page that becomes code must leave
it), and cpu.smc, which ends a block right after the store that hit its code.
"""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, Uc
from unicorn import x86_const as U

from kvmdbg.cpu.executor import HALTED
from kvmdbg.kvm import scheduler
from kvmdbg.kvm.boot import LOAD_ADDRESS, PT0, Program, make_vm
from tests.helpers import asm, machine, patch_loop

M64 = (1 << 64) - 1
CODE = LOAD_ADDRESS
CODE_SIZE = 0x10000               # compared window of code (and patched code) memory
STACK_LO, STACK_HI = 0x70000, 0x80000
R64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi") + tuple(f"r{i}" for i in range(8, 16))
UC_GPRS = [getattr(U, f"UC_X86_REG_{n.upper()}") for n in R64]
RAX, RCX, RDX, RBX = 0, 1, 2, 3
R8, R9, R10 = 8, 9, 10
# continue: blocks; continue-bp: continue while a breakpoint is set (elsewhere), which runs
# single-instruction handlers in the run loop; stepi: one instruction per run.
MODES = ("continue", "continue-bp", "stepi")
NOWHERE = 0xDEAD000                 # a breakpoint address no case reaches
# Bare hardware; under EPT; under shadow paging, where the guest's first store to each
# page exits (KVM maps it writable on the write fault) and is executed again.
PROFILES = (None, "v6.12", "shadow")
PROFILE_IDS = ("bare", "ept", "shadow")


def pte(va: int) -> int:
    """The boot tables' PTE for va (4 KiB pages below 128 MiB, page tables from PT0)."""
    return PT0 + (va >> 12) * 8


# --- the oracle ---

def uc_run(code: bytes):
    """Run code on unicorn from CODE with the boot registers (RSP 0x80000, RSI = 1 vCPU)
    until HLT. Returns (trace, registers, code memory, stack): trace lists (rip, GPRs)
    before each instruction executed."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, CODE_SIZE)
    uc.mem_map(STACK_LO, STACK_HI - STACK_LO)
    uc.mem_write(CODE, code)
    uc.reg_write(U.UC_X86_REG_RSP, STACK_HI)
    uc.reg_write(U.UC_X86_REG_RSI, 1)
    trace = []

    def hook(uc, address, size, _data):
        regs = uc.reg_read_batch(UC_GPRS)
        # QEMU restarts a store that invalidated its own translation block, and calls the
        # hook again for each REP iteration: one entry per instruction executed.
        if not trace or trace[-1][0] != address:
            trace.append((address, list(regs)))
        if uc.mem_read(address, 1) == b"\xf4":
            uc.emu_stop()
        assert len(trace) < 5000, "runaway guest"

    uc.hook_add(UC_HOOK_CODE, hook)
    uc.emu_start(CODE, M64, count=100_000)
    return (trace, uc.reg_read_batch(UC_GPRS), bytes(uc.mem_read(CODE, CODE_SIZE)),
            bytes(uc.mem_read(STACK_LO, STACK_HI - STACK_LO)))


# --- the interpreter ---

def run_ours(code: bytes, mode: str, kvm=None, knobs=()):
    """Boot code (on bare hardware with kvm=None, else under that KVM profile) and run it
    to HLT as `continue` runs (the scheduler: blocks) or as `stepi` does (one instruction
    at a time). Returns (vm, cpu, trace), trace as uc_run's (None for continue)."""
    if kvm is None:
        vm, cpu = machine(code)
    else:
        vm = make_vm(Program(code), kvm, knobs)
        cpu = vm.vcpus[0].cpu
    v = vm.vcpus[0]
    if mode != "stepi":
        bps = {NOWHERE} if mode == "continue-bp" else None
        reason, _ = scheduler.run_vm(vm, 1_000_000, bps)
        assert reason == HALTED and not cpu.shutdown, (reason, cpu.shutdown)
        return vm, cpu, None
    trace = []
    while not cpu.halted:
        assert not cpu.shutdown, cpu.shutdown
        assert len(trace) < 5000, "runaway guest"
        trace.append((cpu.rip, list(cpu.r)))
        before = cpu.steps
        while cpu.steps == before and not cpu.halted:     # a VM exit retires nothing
            scheduler.step_vcpu(v, 1)
    return vm, cpu, trace


def hexs(trace):
    return [f"{rip:#x}" for rip, _ in trace]


def check_against_unicorn(src: str, mode: str, reg: int, new: int, stale: int,
                          kvm=None) -> None:
    """Assemble src, run it on unicorn and on the interpreter in `mode` (on bare hardware or
    under a KVM profile: a hypervisor does not change what the guest executes), and
    compare. reg holds `new` if the modified code ran and `stale` if the old one did (by
    hand, from the SDM): the oracle must say `new`, so the case really tells them apart."""
    code = asm(src)
    assert len(code) <= CODE_SIZE
    uc_trace, uc_regs, uc_code, uc_stack = uc_run(code)
    assert new != stale
    assert uc_regs[reg] == new, f"unicorn left {R64[reg]} = {uc_regs[reg]:#x}"
    vm, cpu, trace = run_ours(code, mode, kvm)
    if trace is not None:
        assert hexs(trace) == hexs(uc_trace)
        for (rip, ours), (_, theirs) in zip(trace, uc_trace):
            assert ours == theirs, f"registers before {rip:#x}"
    assert cpu.r[reg] == new, f"{R64[reg]} = {cpu.r[reg]:#x}; stale code gives {stale:#x}"
    assert list(cpu.r) == list(uc_regs)
    assert vm.read_gpa(CODE, CODE_SIZE) == uc_code
    assert vm.read_gpa(STACK_LO, STACK_HI - STACK_LO) == uc_stack
    assert vm.decode_cache.dropped > 0         # the interpreter did see code being written


# --- A: the store and the instruction it patches are in the same basic block ---

SAME_BLOCK = {
    # The immediate of the very next instruction.
    "next-immediate": ("""
        lea rbx, [rip + target]
        mov dword ptr [rbx + 1], 0x2222
    target:
        mov eax, 0x1111
        hlt
    """, RAX, 0x2222, 0x1111),
    # The next instruction becomes two of other lengths, in two stores; between them the
    # bytes decode as an ADD to memory that must never run.
    # (ff c3 = inc ebx, then three NOPs.)
    "next-opcode-and-length": ("""
        lea rdi, [rip + target]
        mov dword ptr [rdi], 0x9090c3ff
        mov byte ptr [rdi + 4], 0x90
    target:
        mov eax, 0x1111
        mov ecx, 0x3333
        hlt
    """, RBX, 1, 0),
    # Unrelated instructions between the store and the patched one.
    "later-in-block": ("""
        lea rbx, [rip + target]
        mov byte ptr [rbx + 2], 0x22
        add ecx, 5
        imul ecx, ecx, 3
    target:
        mov eax, 0x1111
        hlt
    """, RAX, 0x2211, 0x1111),
    # A read-modify-write instruction on the next instruction's immediate.
    "read-modify-write": ("""
        lea rbx, [rip + target]
        add byte ptr [rbx + 1], 0x11
    target:
        mov eax, 0x1111
        hlt
    """, RAX, 0x1122, 0x1111),
    # XCHG with memory as the store.
    "xchg": ("""
        lea rbx, [rip + target]
        mov ecx, 0x4444
        xchg dword ptr [rbx + 1], ecx
    target:
        mov eax, 0x1111
        hlt
    """, RAX, 0x4444, 0x1111),
    # REP STOSB turns the next instruction into NOPs.
    "rep-stosb": ("""
        lea rdi, [rip + target]
        mov ecx, 5
        mov al, 0x90
        mov edx, 0x77
        rep stosb
    target:
        mov edx, 0x1111
        hlt
    """, RDX, 0x77, 0x1111),
    # A PUSH whose stack is the code: the pushed qword is the next instruction.
    "push": ("""
        lea rsp, [rip + target + 8]
        movabs rax, 0x90909000002222b8
        push rax
    target:
        mov eax, 0x1111
        nop
        nop
        nop
        mov rsp, 0x80000
        hlt
    """, RAX, 0x2222, 0x1111),
    # A looping block rewrites, in each pass, the instruction right after the store.
    "looping-block-this-pass": (patch_loop(4), RDX, 0x4321, 0x0432),         # stale: each pass one store behind
    # A looping block rewrites its own first instruction for the next pass.
    "looping-block-next-pass": ("""
        mov ecx, 4
    top:
        mov eax, 9
        shl edx, 4
        or edx, eax
        lea rbx, [rip + top + 1]
        mov dword ptr [rbx], ecx
        dec ecx
        jnz top
        hlt
    """, RDX, 0x9432, 0x9999),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kvm", PROFILES, ids=PROFILE_IDS)
@pytest.mark.parametrize("case", SAME_BLOCK)
def test_store_to_the_next_instructions_of_the_same_block(case, kvm, mode):
    src, reg, new, stale = SAME_BLOCK[case]
    check_against_unicorn(src, mode, reg, new, stale, kvm)


# --- B: another block, compiled (executed) already, is patched and then run again ---

OTHER_BLOCK = {
    # A function on the same page as the code that patches it.
    "same-page": ("""
        call func
        mov r8d, eax
        lea rbx, [rip + func]
        mov dword ptr [rbx + 1], 0x2222
        call func
        mov r9d, eax
        hlt
    func:
        mov eax, 0x1111
        ret
    """, R9, 0x2222, 0x1111),
    # A function on another page; the patched instruction is inside its block, not first.
    "other-page-mid-block": ("""
        call func
        mov r8d, eax
        mov dword ptr [func + 3], 0x2222
        call func
        mov r9d, eax
        hlt
    .org 0x102000, 0xf4
    func:
        nop
        nop
        mov eax, 0x1111
        add eax, 1
        ret
    """, R9, 0x2223, 0x1112),
    # A jump target in the middle of a loop that runs many times before and after.
    "hot-loop": ("""
        mov ecx, 40
    first:
        call func
        add r8d, eax
        dec ecx
        jnz first
        mov byte ptr [func + 1], 2
        mov ecx, 40
    second:
        call func
        add r9d, eax
        dec ecx
        jnz second
        hlt
    func:
        mov eax, 1
        ret
    """, R9, 80, 40),
    # JIT style: code written as data into a fresh page (whose write fast path is open),
    # run, rewritten, run again.
    "jit": ("""
        mov rbx, 0x104000
        mov dword ptr [rbx], 0x001111b8
        mov dword ptr [rbx + 4], 0xc300
        call rbx
        mov r8d, eax
        mov dword ptr [rbx], 0x002222b8
        call rbx
        mov r9d, eax
        hlt
    """, R9, 0x2222, 0x1111),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kvm", PROFILES, ids=PROFILE_IDS)
@pytest.mark.parametrize("case", OTHER_BLOCK)
def test_store_to_a_block_that_ran_already(case, kvm, mode):
    src, reg, new, stale = OTHER_BLOCK[case]
    check_against_unicorn(src, mode, reg, new, stale, kvm)


# Cross-modifying code: vCPU 1 patches a function vCPU 0 has run many times (the decode
# cache is shared; each vCPU has its own icache/bcache and fast paths). vCPU 1 sleeps in
# HLT until vCPU 0, having run the function alone (as blocks), wakes it through the VMM's
# kick port (0x513). The protocol is SDM 8.1.3's: the modifying processor stores the
# code, then sets a flag; the executing one waits for the flag, executes a serializing
# instruction (CPUID), then runs the modified code.
FLAG = 0x200000
CROSS_MODIFYING = f"""
        test edi, edi
        jnz modifier
        mov ecx, 40
    warm:
        call func
        dec ecx
        jnz warm
        mov r8d, eax
        mov eax, 1
        mov dx, 0x513
        out dx, eax
    wait:
        pause
        cmp byte ptr [{FLAG:#x}], 1
        jne wait
        xor eax, eax
        cpuid
        call func
        mov r9d, eax
        hlt
    modifier:
        hlt
        mov dword ptr [func + 1], 0x2222
        mov byte ptr [{FLAG:#x}], 1
        hlt
    func:
        mov eax, 0x1111
        ret
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kvm", (None, "v6.12"), ids=("bare", "ept"))
def test_code_patched_by_another_vcpu(kvm, mode):
    code = asm(CROSS_MODIFYING)
    if kvm is None:
        vm, _ = machine(code, vcpus=2)
    else:
        vm = make_vm(Program(code), kvm, (), 2)
    if mode == "stepi":
        # One instruction at a time on whichever vCPU the scheduler would run next.
        for _ in range(100_000):
            v = scheduler.pick(vm)
            if v is None:
                break
            scheduler.step_vcpu(v, 1)
        else:
            raise AssertionError("the vCPUs did not halt")
    else:
        reason, _ = scheduler.run_vm(vm, 1_000_000, {NOWHERE} if mode == "continue-bp" else None)
        assert reason == HALTED
    c0 = vm.vcpus[0].cpu
    assert not c0.shutdown and vm.vcpus[1].cpu.halted
    assert (c0.r[R8], c0.r[R9]) == (0x1111, 0x2222)


# --- C: an instruction that crosses a page boundary ---

# mov eax, imm32 at 0x100ffe: the opcode and the low immediate byte on the first page, the
# other three bytes on the second; it runs twice, patched in between.
CROSS = """
        xor ebx, ebx
    again:
        jmp pre
    .org 0x100ff0, 0xf4
    pre:
        {before}
    .org 0x100ffe, 0x90
    cross:
        mov eax, 0x44332211
        add ebx, 1
        cmp ebx, 1
        jne done
        mov r8d, eax
        {patch}
        jmp again
    done:
        mov r9d, eax
        hlt
"""

CROSSING = {
    # Patched from code on the second page (the same page as the patched byte).
    "second-page-byte": (CROSS.format(before="", patch="mov byte ptr [0x101000], 0x55"),
                         R9, 0x44335511, 0x44332211),
    # The last byte of the instruction, the one furthest into the second page.
    "last-byte": (CROSS.format(before="", patch="mov byte ptr [0x101002], 0x66"),
                  R9, 0x66332211, 0x44332211),
    # The byte on the first page (the immediate's low byte).
    "first-page-byte": (CROSS.format(before="", patch="mov byte ptr [0x100fff], 0x77"),
                        R9, 0x44332277, 0x44332211),
    # One unaligned store split across the boundary, over the whole immediate.
    "split-store": (CROSS.format(before="", patch="mov dword ptr [0x100fff], 0x88776655"),
                    R9, 0x88776655, 0x44332211),
    # The store runs on the first page, just before the crossing instruction (the block
    # ends before it); it patches the second-page byte on the second pass only.
    "store-just-before": (CROSS.format(
        before="cmp ebx, 1; jne skip; mov byte ptr [0x101001], 0x88; skip:",
        patch=""), R9, 0x44882211, 0x44332211),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kvm", PROFILES, ids=PROFILE_IDS)
@pytest.mark.parametrize("case", CROSSING)
def test_store_to_an_instruction_crossing_a_page(case, kvm, mode):
    src, reg, new, stale = CROSSING[case]
    check_against_unicorn(src, mode, reg, new, stale, kvm)


def test_crossing_cases_really_cross():
    """The instruction the C cases patch starts 2 bytes before the page boundary."""
    for src, *_ in CROSSING.values():
        code = asm(src)
        assert code[0xFFE:0x1003] == bytes.fromhex("b811223344")


# --- D: the code's virtual page is remapped (bare hardware, EPT, shadow paging) ---

VA = 0x105000                      # the function's linear address
OLD, NEW, ALIAS = 0x105000, 0x106000, 0x1F0000
FUNCS = f"""
    .org {OLD:#x}, 0xf4
        mov eax, 0x1111
        ret
    .org {NEW:#x}, 0xf4
        mov eax, 0x2222
        ret
"""
# Each program calls the function at VA (r8), remaps or rewrites it, calls it again (r9),
# and (where it maps back) a third time (r10). The values are the SDM's:
REMAP = {
    # SDM 4.10.4.1: INVLPG invalidates the TLB entries for the page; the next fetch walks
    # the tables again and finds NEW. Mapping OLD back (and INVLPG) runs OLD again.
    "pte+invlpg": (f"""
        mov rbx, {VA:#x}
        call rbx
        mov r8d, eax
        mov qword ptr [{pte(VA):#x}], {NEW | 3:#x}
        invlpg [rbx]
        call rbx
        mov r9d, eax
        mov qword ptr [{pte(VA):#x}], {OLD | 3:#x}
        invlpg [rbx]
        call rbx
        mov r10d, eax
        hlt
    """, (0x1111, 0x2222, 0x1111)),
    # No INVLPG for the change that matters: the PTE goes not-present (with INVLPG), then
    # present with NEW. SDM 4.10.4.3: "If a paging-structure entry is modified to change
    # the P flag from 0 to 1, no invalidation is necessary", since no TLB entry is ever
    # made from a not-present entry (4.10.2.2). (Changing a present PTE without INVLPG
    # would let the processor use either translation, 4.10.4.2, so no test can pin it.)
    "present-0-to-1-without-invlpg": (f"""
        mov rbx, {VA:#x}
        call rbx
        mov r8d, eax
        mov qword ptr [{pte(VA):#x}], 0
        invlpg [rbx]
        mov qword ptr [{pte(VA):#x}], {NEW | 3:#x}
        call rbx
        mov r9d, eax
        hlt
    """, (0x1111, 0x2222, 0)),
    # MOV to CR3 invalidates every non-global TLB entry (SDM 4.10.4.1), INVLPG or not.
    "pte+cr3-reload": (f"""
        mov rbx, {VA:#x}
        call rbx
        mov r8d, eax
        mov qword ptr [{pte(VA):#x}], {NEW | 3:#x}
        mov rax, cr3
        mov cr3, rax
        call rbx
        mov r9d, eax
        hlt
    """, (0x1111, 0x2222, 0)),
    # The code rewritten through another linear address mapping the same physical page,
    # then CPUID: SDM 11.6 guarantees the new code only after a serializing instruction
    # when the linear addresses differ (8.1.3, option 2).
    "alias+cpuid": (f"""
        mov rbx, {VA:#x}
        call rbx
        mov r8d, eax
        mov qword ptr [{pte(ALIAS):#x}], {OLD | 3:#x}
        invlpg [{ALIAS:#x}]
        mov dword ptr [{ALIAS + 1:#x}], 0x3333
        xor eax, eax
        cpuid
        mov rbx, {VA:#x}
        call rbx
        mov r9d, eax
        hlt
    """, (0x1111, 0x3333, 0)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kvm", PROFILES, ids=PROFILE_IDS)
@pytest.mark.parametrize("case", REMAP)
def test_code_page_remapped_by_a_page_table_write(case, kvm, mode):
    src, want = REMAP[case]
    vm, cpu, _ = run_ours(asm(src + FUNCS), mode, kvm=kvm)
    assert (cpu.r[R8], cpu.r[R9], cpu.r[R10]) == want
    # Only the alias case writes code; the others only move the translation.
    old = vm.read_gpa(OLD, 6)
    assert old == (bytes.fromhex("b833330000c3") if case == "alias+cpuid"
                   else bytes.fromhex("b811110000c3"))
    assert vm.read_gpa(NEW, 6) == bytes.fromhex("b822220000c3")


# A memslot change under the guest: port 0x510 makes the VMM delete the slot holding gfn
# 0x105 and create a fresh, zeroed one-page slot there (kvmdbg/kvm/userspace.py overlay);
# port 0x511 puts the original back. KVM zaps the deleted slot's SPTEs and flushes the
# TLBs (kvm_arch_flush_shadow_memslot, arch/x86/kvm/mmu/mmu.c: kvm_mmu_zap_all_fast with
# KVM_X86_QUIRK_SLOT_ZAP_ALL, else kvm_mmu_zap_memslot, which flushes), so the guest's
# next access to VA reaches the new page: it reads zeros there, writes a function into
# it and runs that (8.1.3 option 1), and after 0x511 runs the original again.
OVERLAY = f"""
        mov rbx, {VA:#x}
        call rbx
        mov r8d, eax
        mov eax, {VA >> 12:#x}
        mov dx, 0x510
        out dx, eax
        mov r11, qword ptr [rbx]
        mov dword ptr [rbx], 0x003333b8
        mov dword ptr [rbx + 4], 0xc300
        call rbx
        mov r9d, eax
        mov eax, {VA >> 12:#x}
        mov dx, 0x511
        out dx, eax
        call rbx
        mov r10d, eax
        hlt
""" + FUNCS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kvm, knobs", [
    ("v6.12", ()), ("v6.12", ("slot_zap_all=0",)), ("shadow", ()), ("shadow", ("slot_zap_all=0",)),
    # No hypervisor, but the VMM still serves the ports: the guest must see the memory the
    # memslots map as it does under KVM (nothing stale in its TLB or fast paths).
    (None, ()),
], ids=("ept-zap-all", "ept-zap-slot", "shadow-zap-all", "shadow-zap-slot", "bare"))
def test_code_page_replaced_by_a_memslot_overlay(kvm, knobs, mode):
    vm, cpu, _ = run_ours(asm(OVERLAY), mode, kvm=kvm, knobs=knobs)
    assert (cpu.r[R8], cpu.r[11], cpu.r[R9], cpu.r[R10]) == (0x1111, 0, 0x3333, 0x1111)
    assert vm.read_gpa(OLD, 6) == bytes.fromhex("b811110000c3")    # the original, untouched
