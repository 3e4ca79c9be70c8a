"""Data movement: mov, movzx, movsx, movsxd, lea, xchg, cmovcc, setcc, cbw family, nop."""

from kvmdbg.bits import MASKS
from kvmdbg.cpu.flags import ALIASES, CONDITIONS
from kvmdbg.cpu.translate import handles

SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")


@handles("mov", "movabs")
def mov(g):
    dst, src = g.op(0), g.op(1)
    if any(o.kind == "reg" and (o.reg.startswith("cr") or o.reg in SEGMENTS) for o in (dst, src)):
        g.stop_block()          # a control or segment register: the mode may change
    if dst.kind == "reg" and dst.reg.startswith("cr"):
        g.require_cpl0()
        n = int(dst.reg[2:])
        if n == 2:
            g.emit(f"cpu.cr2 = {g.read(src)}")
        else:
            v = g.read(src)
            g.call_out(f"cpu.ops.set_cr(cpu, {n}, {v})")
        return
    if src.kind == "reg" and src.reg.startswith("cr"):
        g.require_cpl0()
        g.write(dst, f"cpu.{src.reg}")
        return
    if dst.kind == "reg" and dst.reg in SEGMENTS:
        if dst.reg == "cs":
            g.emit("raise GuestFault(6)")
            return
        load = "segments.load_ss(cpu, " if dst.reg == "ss" else f"segments.load_data_segment(cpu, '{dst.reg}', "
        g.emit(f"{load}{g.read(src, 2)})")
        return
    if src.kind == "reg" and src.reg in SEGMENTS:
        g.write(dst, f"cpu.{src.reg}")
        return
    g.write(dst, g.read(src, dst.size))


@handles("movzx")
def movzx(g):
    g.write(g.op(0), g.read(g.op(1)))


@handles("movsx", "movsxd")
def movsx(g):
    dst, src = g.op(0), g.op(1)
    v = g.read(src)
    if dst.size <= src.size:
        g.write(dst, v)
        return
    g.write(dst, f"sx({v}, {src.size * 8}) & {MASKS[dst.size]:#x}")


@handles("lea")
def lea(g):
    dst = g.op(0)
    g.write(dst, f"{g.addr(g.op(1), segment=False)} & {MASKS[dst.size]:#x}")


@handles("xchg")
def xchg(g):
    a, b = g.op(0), g.op(1)
    if b.kind == "mem":
        a, b = b, a
    va = g.value(g.read(a))
    vb = g.value(g.read(b))
    g.write(a, vb)      # a memory operand (if any) is written first
    g.write(b, va)


def _cc_of(mnemonic: str, prefix: str) -> str:
    cc = mnemonic[len(prefix):]
    cc = ALIASES.get(cc, cc)
    assert cc in CONDITIONS, mnemonic
    return cc


def _cmov(g):
    dst, src = g.op(0), g.op(1)
    v = g.value(g.read(src))
    cc = _cc_of(g.d.mnemonic, "cmov")
    if dst.size == 4:
        # A 32-bit CMOV zero-extends its destination even when the condition is false.
        old = g.reg_read(dst.reg)
        g.write(dst, f"({v} if {g.cond(cc)} else {old})")
    else:
        with g.block(f"if {g.cond(cc)}:"):
            g.write(dst, v)


def _setcc(g):
    cc = _cc_of(g.d.mnemonic, "set")
    g.write(g.op(0), f"(1 if {g.cond(cc)} else 0)")


for _cc in list(CONDITIONS) + list(ALIASES):
    handles("cmov" + _cc)(_cmov)
    handles("set" + _cc)(_setcc)


@handles("cbw", "cwde", "cdqe")
def cbw(g):
    bits = {"cbw": 8, "cwde": 16, "cdqe": 32}[g.d.mnemonic]
    dst = {"cbw": "ax", "cwde": "eax", "cdqe": "rax"}[g.d.mnemonic]
    g.reg_write(dst, f"sx(r[0], {bits}) & {MASKS[bits // 4]:#x}")


@handles("cwd", "cdq", "cqo")
def cwd(g):
    bits = {"cwd": 16, "cdq": 32, "cqo": 64}[g.d.mnemonic]
    dst = {"cwd": "dx", "cdq": "edx", "cqo": "rdx"}[g.d.mnemonic]
    m = MASKS[bits // 8]
    g.reg_write(dst, f"({m:#x} if r[0] >> {bits - 1} & 1 else 0)")


@handles("nop", "pause", "endbr64", "endbr32", "prefetchnta", "prefetcht0", "prefetcht1", "prefetcht2")
def nop(g):
    pass
