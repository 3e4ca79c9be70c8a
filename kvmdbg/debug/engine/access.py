"""Which guest-virtual bytes an instruction is about to read or write (for rwatch/awatch).

The interpreter has no memory-access hooks (they would cost every guest access), so
read watchpoints decode the instruction before it runs and compute its data accesses
from its operands and the current registers: explicit memory operands, the implicit
stack accesses of push/pop/call/ret, and the string instructions' [rsi]/[rdi]
(the whole range for a rep prefix). Page-table and descriptor-table reads made by the
CPU itself are not data accesses and are not reported.
"""

from __future__ import annotations

from kvmdbg.bits import M64
from kvmdbg.cpu.regs import SUBREGS

READ, WRITE = 1, 2

# Instructions whose first operand is written without being read.
_WRITE_ONLY_DST = ("mov", "movabs", "movzx", "movsx", "movsxd", "lea", "pop", "movnti") + tuple(
    "set" + cc for cc in ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l",
                          "ge", "le", "g", "nb", "nae", "c", "nc", "z", "nz", "na", "nbe", "pe",
                          "po", "nge", "nl", "ng", "nle"))
# Instructions that only read all their operands.
_READ_ONLY = ("cmp", "test", "bt", "push", "call", "jmp", "lgdt", "lidt", "div", "idiv",
              "mul", "imul1", "invpcid")
# One-operand instructions that read and write their operand.
_READ_MODIFY_WRITE_1 = ("inc", "dec", "neg", "not", "shl", "shr", "sar", "sal", "rol", "ror",
                        "rcl", "rcr")
# Operands that are addresses, not accesses.
_NO_ACCESS = ("lea", "nop", "invlpg", "prefetch", "prefetchw", "prefetcht0", "prefetcht1",
              "prefetcht2", "prefetchnta", "clflush", "clflushopt")


def _reg(cpu, name: str) -> int:
    if name == "rip":
        return cpu.rip
    i, size, shift = SUBREGS[name]
    return (cpu.r[i] >> shift) & ((1 << (8 * size)) - 1)


def effective_address(cpu, d, op) -> int:
    ea = op.disp
    if op.base == "rip":
        ea += d.address + d.length
    elif op.base:
        ea += _reg(cpu, op.base)
    if op.index:
        ea += _reg(cpu, op.index) * op.scale
    if d.addr_size == 4:
        ea &= 0xFFFF_FFFF
    if op.segment == "fs":
        ea += cpu.fs_base
    elif op.segment == "gs":
        ea += cpu.gs_base
    return ea & M64


def accesses(cpu, d) -> list[tuple[int, int, int]]:
    """[(gva, size, READ|WRITE)] the instruction d is about to make, with today's registers."""
    if d is None:
        return []
    m = d.mnemonic
    base = m.rstrip("bwdq") if m.startswith(("stos", "lods", "movs", "cmps", "scas")) and \
        m not in ("movsx", "movsxd") else m
    out = []
    rsp = cpu.r[4]
    if base in ("stos", "lods", "movs", "cmps", "scas"):
        size = next((o.size for o in d.operands if o.kind == "mem"), 1)
        count = cpu.r[1] if d.rep else 1
        if count == 0:
            return []
        down = bool(cpu.get_rflags() & 0x400)

        def span(addr):
            lo = addr - size * (count - 1) if down else addr
            return lo & M64, size * count

        rsi, rdi = cpu.r[6], cpu.r[7]
        if base in ("lods", "movs", "cmps"):
            a, n = span(rsi)
            out.append((a, n, READ))
        if base in ("stos", "movs"):
            a, n = span(rdi)
            out.append((a, n, WRITE))
        if base in ("cmps", "scas"):
            a, n = span(rdi)
            out.append((a, n, READ))
        return out
    if m in _NO_ACCESS:
        return []
    for i, op in enumerate(d.operands):
        if op.kind != "mem":
            continue
        ea = effective_address(cpu, d, op)
        if i == 0 and m in _WRITE_ONLY_DST:
            kind = WRITE
        elif i == 0 and (m in _READ_MODIFY_WRITE_1 or (len(d.operands) > 1 and m not in _READ_ONLY)):
            kind = READ | WRITE
        else:
            kind = READ
        out.append((ea, op.size, kind))
    if m in ("push", "pushfq", "call"):
        out.append(((rsp - 8) & M64, 8, WRITE))
    elif m in ("pop", "popfq", "ret", "leave"):
        out.append(((_reg(cpu, "rbp") if m == "leave" else rsp) & M64, 8, READ))
    elif m == "iretq":
        out.append((rsp, 40, READ))
    return out


def touches(cpu, d, lo: int, size: int, want: int) -> bool:
    """Does instruction d access [lo, lo+size) with an access of kind `want` (READ/WRITE bits)?"""
    for a, n, kind in accesses(cpu, d):
        if kind & want and a < lo + size and lo < a + n:
            return True
    return False
