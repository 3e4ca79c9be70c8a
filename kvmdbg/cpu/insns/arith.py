"""Integer arithmetic and logic: add adc sub sbb cmp and or xor test neg not inc dec."""

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
