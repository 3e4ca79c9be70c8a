"""A guest IDT of 64-bit gates built from the test (SDM Vol. 3A 6.14.1, Figure 6-8).

Layout (all below the 16 MiB of RAM that tests.helpers.machine gives, clear of the
boot page tables at 0x1000-0xBFFF, the stack below 0x80000 and the program at 0x100000):

- IDT_BASE: the table, 256 gates of 16 bytes;
- IDTR_ADDR: a 10-byte pseudo-descriptor the program loads with LIDT_INSN;
- HANDLERS: handler code, 0x100 bytes per vector;
- REC: where the recording handlers store what they saw.
"""

from __future__ import annotations

from tests.helpers import asm

IDT_BASE = 0x20000
IDTR_ADDR = 0x1FFF0
HANDLERS = 0x120000
REC = 0x21000
LIDT_INSN = f"lidt [{IDTR_ADDR:#x}]"

INTERRUPT_GATE, TRAP_GATE = 0xE, 0xF
KERNEL_CS = 0x08


def gate(offset: int, selector: int = KERNEL_CS, kind: int = INTERRUPT_GATE, dpl: int = 0,
         present: bool = True, ist: int = 0) -> bytes:
    """The 16 bytes of a 64-bit interrupt/trap gate (bit layout written from the SDM figure)."""
    lo = ((offset & 0xFFFF)
          | (selector & 0xFFFF) << 16
          | (ist & 7) << 32
          | (kind & 0xF) << 40
          | (dpl & 3) << 45
          | int(present) << 47
          | ((offset >> 16) & 0xFFFF) << 48)
    hi = (offset >> 32) & 0xFFFF_FFFF
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


def set_tss_rsp0(vm, cpu, rsp0: int) -> None:
    """RSP0 in the TSS the boot contract loaded into TR (identity-mapped: its base is a gpa;
    RSP0 at offset 4, SDM Vol. 3A Figure 8-11)."""
    vm.write_gpa(cpu.seg_cache["tr"].base + 4, rsp0.to_bytes(8, "little"))


def set_tss_ist(vm, cpu, n: int, rsp: int) -> None:
    """ISTn (n = 1..7) in that TSS: offset 0x24 + 8 * (n - 1) (SDM Vol. 3A Figure 8-11)."""
    vm.write_gpa(cpu.seg_cache["tr"].base + 0x24 + 8 * (n - 1), rsp.to_bytes(8, "little"))


def load_idtr(vm, base: int = IDT_BASE, limit: int = 256 * 16 - 1) -> None:
    """Write the pseudo-descriptor LIDT_INSN loads."""
    vm.write_gpa(IDTR_ADDR, limit.to_bytes(2, "little") + base.to_bytes(8, "little"))


def install(vm, vector: int, body: str, base: int = IDT_BASE, **gate_args) -> int:
    """Assemble body as the handler for vector, point the gate at it; returns its address."""
    addr = HANDLERS + vector * 0x100
    code = asm(body, addr)
    assert code and len(code) <= 0x100, body
    vm.write_gpa(addr, code)
    vm.write_gpa(base + vector * 16, gate(addr, **gate_args))
    return addr


def recorder(vector: int) -> str:
    """A handler that records (vector, RSP at entry, CR2, RFLAGS inside the handler) and halts."""
    return f"""
        mov qword ptr [{REC:#x}], {vector}
        mov qword ptr [{REC + 8:#x}], rsp
        mov rax, cr2
        mov qword ptr [{REC + 16:#x}], rax
        pushfq
        pop rax
        mov qword ptr [{REC + 24:#x}], rax
        hlt
    """


def install_recorders(vm, vectors, **gate_args) -> None:
    for v in vectors:
        install(vm, v, recorder(v), **gate_args)
    load_idtr(vm)
    clear_record(vm)


def clear_record(vm) -> None:
    vm.write_gpa(REC, (0xDEAD).to_bytes(8, "little") * 4)


def q(vm, gpa: int) -> int:
    return int.from_bytes(vm.read_gpa(gpa, 8), "little")


def record(vm) -> dict:
    """What the recording handler stored: vector, rsp, cr2, rflags (vector 0xDEAD: none ran)."""
    return {"vector": q(vm, REC), "rsp": q(vm, REC + 8), "cr2": q(vm, REC + 16),
            "rflags": q(vm, REC + 24)}


def frame(vm, rsp: int, has_error_code: bool) -> dict:
    """The 64-bit interrupt stack frame at rsp (identity-mapped memory), read from memory."""
    words = [q(vm, rsp + 8 * i) for i in range(6)]
    if not has_error_code:
        words = [None] + words[:5]
    return dict(zip(("error_code", "rip", "cs", "rflags", "rsp", "ss"), words))


def program(*parts: str, address: int = 0x100000):
    """Assemble parts back to back; returns (code, [address of each part])."""
    code = b""
    addrs = []
    for p in parts:
        addrs.append(address + len(code))
        code += asm(p, address + len(code)) if p.strip() else b""
    return code, addrs
