"""Page-granular invalidation of the CPU's fast paths (Cpu.flush_fast_page) against the
wholesale flush: the fast paths are a cache of the TLB, so on any program the guest must
see the same thing whether an INVLPG or a #PF drops one page's copies or all of them.

Random programs read, write, edit PTEs and a 2 MiB PDE (without flushing, or followed by
INVLPG of some address) and take #PFs that a handler logs and skips; every read's value
and every fault's CR2 and error code go to a log. Each program runs twice from the same
state, once with each flush, bare and under the KVM model (EPT and shadow paging); the
logs, registers and step counts must be identical. That the comparison can tell: a
flush_fast_page that forgot the pieces of a large page fails it (see the last test).
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings, strategies as st

from kvmdbg.arch.pgtable_types import PAGE_PRESENT as P, PAGE_PSE as PS, PAGE_RW as RW, PAGE_USER as US
from kvmdbg.cpu.faults import PF
from kvmdbg.kvm.scheduler import run_vm
from tests.cpu.guest_idt import LIDT_INSN, install, load_idtr
from tests.helpers import machine

SMALL = [0x400000 + i * 0x1000 for i in range(4)]      # 4 KiB pages: PT at 0x6000, 0..3
SMALL_PTE = [0x6000 + i * 8 for i in range(4)]
LARGE = [0x600000, 0x7FF000]                           # pieces of one 2 MiB page (PD[3])
PDE3 = 0x3000 + 3 * 8
FRAMES = [0x900000 + j * 0x1000 for j in range(4)]
LARGE_FRAMES = [0xA00000, 0xC00000]
LOG, LOGP = 0x30000, 0x2FFF8
ADDRESSES = SMALL + LARGE

FLAGS = st.sampled_from([P | RW, P, 0, P | RW | US])
# Reads, remaps and INVLPGs of the large page's pieces are drawn more often: mixing
# them is where a page flush differs most from a wholesale one.
op = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("read"), st.sampled_from(LARGE)),
    st.tuples(st.just("pde"), st.integers(0, 1), st.just(P | RW)),
    st.tuples(st.just("invlpg"), st.sampled_from(LARGE)),
    st.tuples(st.just("write"), st.sampled_from(ADDRESSES), st.integers(1, 0xFFFF)),
    st.tuples(st.just("pte"), st.integers(0, 3), st.integers(0, 3), FLAGS),
    st.tuples(st.just("pde"), st.integers(0, 1), FLAGS),
    st.tuples(st.just("invlpg"), st.sampled_from(ADDRESSES)),
)

HANDLER = f"""
    mov rax, cr2
    mov rdx, qword ptr [r15]
    mov qword ptr [rdx], rax
    mov rax, qword ptr [rsp]
    mov qword ptr [rdx + 8], rax
    add rdx, 16
    mov qword ptr [r15], rdx
    add qword ptr [rsp + 8], 3
    add rsp, 8
    iretq
"""


def source(ops, op_lines=None) -> str:
    """Every access that can fault is a 3-byte `mov` through RBX (the handler skips 3).
    op_lines: the lines of the ops this module does not know (another test's)."""
    lines = [LIDT_INSN, f"mov r15, {LOGP:#x}"]     # (keystone can mis-encode [abs] as [rip+abs])
    for o in ops:
        if o[0] == "read":
            lines += [f"mov rbx, {o[1]:#x}", "mov rax, qword ptr [rbx]",
                      "mov rdx, qword ptr [r15]", "mov qword ptr [rdx], rax",
                      "add qword ptr [r15], 8"]
        elif o[0] == "write":
            lines += [f"mov rbx, {o[1]:#x}", f"mov rcx, {o[2]:#x}", "mov qword ptr [rbx], rcx"]
        elif o[0] == "pte":
            lines += [f"mov rax, {FRAMES[o[2]] | o[3]:#x}", f"mov qword ptr [{SMALL_PTE[o[1]]:#x}], rax"]
        elif o[0] == "pde":
            lines += [f"mov rax, {LARGE_FRAMES[o[1]] | o[2] | PS:#x}", f"mov qword ptr [{PDE3:#x}], rax"]
        elif o[0] == "invlpg":
            lines += [f"mov rbx, {o[1]:#x}", "invlpg [rbx]"]
        else:
            lines += op_lines(o)
    lines.append("hlt")
    return "\n".join(lines)


def build(ops, kvm, op_lines=None):
    """The VM with the program, its #PF handler, its log and its frames' contents."""
    vm, _cpu = machine(source(ops, op_lines), kvm=kvm)
    load_idtr(vm)
    install(vm, PF, HANDLER)
    vm.write_gpa(LOGP, LOG.to_bytes(8, "little"))
    for j, frame in enumerate(FRAMES + LARGE_FRAMES):
        for k in range(0, 0x200000 if frame in LARGE_FRAMES else 0x1000, 0x1000):
            vm.write_gpa(frame + k, (0x1000 * (j + 1) + k // 0x1000).to_bytes(8, "little"))
    vm.write_gpa(PDE3, (LARGE_FRAMES[0] | P | RW | PS).to_bytes(8, "little"))
    return vm


def run(ops, kvm, wholesale: bool):
    vm = build(ops, kvm)
    cpu = vm.vcpus[0].cpu
    if wholesale:
        for v in vm.vcpus:
            v.cpu.tlb.on_invalidate_page = lambda vpn, c=v.cpu: c.flush_fast()
    if kvm is None:
        from kvmdbg.cpu.executor import run as run_cpu
        run_cpu(cpu, 200_000)
    else:
        run_vm(vm, 200_000)
    n = (int.from_bytes(vm.read_gpa(LOGP, 8), "little") - LOG) // 8
    return vm.read_gpa(LOG, 8 * n), list(cpu.r), cpu.rip, cpu.steps, cpu.halted


REMAP_SMALL = [("read", SMALL[0]), ("pte", 0, 1, P | RW), ("invlpg", SMALL[0]), ("read", SMALL[0])]
REMAP_LARGE = [("read", LARGE[0]), ("read", LARGE[1]), ("pde", 1, P | RW), ("invlpg", LARGE[0]),
               ("read", LARGE[1])]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=4, max_size=30), kvm=st.sampled_from([None, "v6.12", "shadow"]))
@example(ops=REMAP_SMALL, kvm=None)
@example(ops=REMAP_LARGE, kvm=None)
@example(ops=REMAP_LARGE, kvm="v6.12")
def test_page_flush_sees_what_the_wholesale_flush_sees(ops, kvm):
    ours = run(ops, kvm, wholesale=False)
    assert ours[4], "the program did not run to its hlt"
    assert ours == run(ops, kvm, wholesale=True)


def test_the_comparison_catches_a_forgotten_large_page_piece(monkeypatch):
    """Read two pieces of the 2 MiB page, remap it, INVLPG the first: the second piece must
    show the new frame too (SDM 4.10.4.1: INVLPG invalidates the whole large page)."""
    ops = REMAP_LARGE
    log = run(ops, None, wholesale=False)[0]
    reads = [int.from_bytes(log[i:i + 8], "little") for i in range(0, len(log), 8)]
    assert reads == [0x5000, 0x51FF, 0x61FF]
    from kvmdbg.cpu.cpu import Cpu
    monkeypatch.setattr(Cpu, "_note_large", lambda self, e: None)
    assert run(ops, None, wholesale=False)[0] != log
