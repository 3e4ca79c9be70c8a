"""Integer arithmetic and logic: add adc sub sbb cmp and or xor test neg not inc dec xadd cmpxchg."""

from kvmdbg.bits import MASKS
from kvmdbg.cpu import flags as F
from kvmdbg.cpu.translate import handles

_BINOPS = {
    # mnemonic: (lazy kind, result expression, writes destination)
    "add": (F.ADD, "({a} + {b}) & {m}", True),
    "adc": (F.ADC, "({a} + {b} + {c}) & {m}", True),
    "sub": (F.SUB, "({a} - {b}) & {m}", True),
    "sbb": (F.SBB, "({a} - {b} - {c}) & {m}", True),
    "cmp": (F.SUB, "({a} - {b}) & {m}", False),
    "and": (F.LOGIC, "{a} & {b}", True),
    "or": (F.LOGIC, "{a} | {b}", True),
    "xor": (F.LOGIC, "{a} ^ {b}", True),
    "test": (F.LOGIC, "{a} & {b}", False),
}


@handles(*_BINOPS)
def binop(g):
    kind, expr, writes = _BINOPS[g.d.mnemonic]
    dst, src = g.op(0), g.op(1)
    size = dst.size
    m = f"{MASKS[size]:#x}"
    same_reg = dst.kind == "reg" and src.kind == "reg" and dst.reg == src.reg
    a = g.value(g.read(dst))
    b = a if same_reg else g.value(g.read(src, size))
    c = "0"
    if kind in (F.ADC, F.SBB):
        c = g.value("carry_in(cpu)")
    res = g.value(expr.format(a=a, b=b, c=c, m=m))
    if writes:
        g.write(dst, res)
    g.set_flags(kind, a, b, res, size * 8, c)


@handles("neg")
def neg(g):
    dst = g.op(0)
    m = MASKS[dst.size]
    v = g.value(g.read(dst))
    res = g.value(f"-{v} & {m:#x}")
    g.write(dst, res)
    g.set_flags(F.SUB, "0", v, res, dst.size * 8)


@handles("not")
def not_(g):
    dst = g.op(0)
    g.write(dst, f"{g.read(dst)} ^ {MASKS[dst.size]:#x}")


@handles("inc", "dec")
def incdec(g):
    dst = g.op(0)
    m = MASKS[dst.size]
    a = g.value(g.read(dst))
    op = "+" if g.d.mnemonic == "inc" else "-"
    res = g.value(f"({a} {op} 1) & {m:#x}")
    src = g.value("inc_dec_src(cpu)")
    g.write(dst, res)
    g.set_flags(F.INC if op == "+" else F.DEC, a, "1", res, dst.size * 8, src)


@handles("xadd")
def xadd(g):
    """TEMP = SRC + DEST; SRC = DEST; DEST = TEMP; flags as ADD (SDM Vol. 2B, XADD).
    A memory destination is stored before the register changes (precise faults); with
    two registers the destination is written last, so XADD of a register with itself
    leaves the sum."""
    dst, src = g.op(0), g.op(1)
    size = dst.size
    a = g.value(g.read(dst))
    b = g.value(g.read(src))
    res = g.value(f"({a} + {b}) & {MASKS[size]:#x}")
    if dst.kind == "mem":
        g.write(dst, res)
        g.write(src, a)
    else:
        g.write(src, a)
        g.write(dst, res)
    g.set_flags(F.ADD, a, b, res, size * 8)


_ACCUMULATOR = {1: "al", 2: "ax", 4: "eax", 8: "rax"}


@handles("cmpxchg")
def cmpxchg(g):
    """Compare the accumulator with DEST (flags as CMP accumulator, DEST); equal: DEST =
    SRC, else accumulator = DEST (SDM Vol. 2A, CMPXCHG). A memory destination is written
    in both cases (the old value back when they differ), so a read-only page faults
    either way, before any register changes. Only the register the outcome names is
    written: a 32-bit CMPXCHG leaves RAX's upper half alone when the values are equal,
    and a register destination's when they differ, as hardware does (the QEMU in
    unicorn 2.1 zero-extends both; the differential test avoids the difference)."""
    dst, src = g.op(0), g.op(1)
    size = dst.size
    acc = _ACCUMULATOR[size]
    old = g.value(g.read(dst))
    a = g.value(g.reg_read(acc))
    new = g.value(g.read(src))
    if dst.kind == "mem":
        g.write(dst, g.value(f"{new} if {a} == {old} else {old}"))
        with g.block(f"if {a} != {old}:"):
            g.reg_write(acc, old)
    else:
        with g.block(f"if {a} == {old}:"):
            g.write(dst, new)
        with g.block("else:"):
            g.reg_write(acc, old)
    g.set_flags(F.SUB, a, old, g.value(f"({a} - {old}) & {MASKS[size]:#x}"), size * 8)
