"""Multiply and divide: mul, imul (1, 2 and 3 operands), div, idiv (#DE on zero or overflow)."""

from kvmdbg.bits import MASKS
from kvmdbg.cpu import flags as F
from kvmdbg.cpu.translate import handles

# (low-half register, high-half register) of the implicit operands, by size
_PAIR = {1: ("al", "ah"), 2: ("ax", "dx"), 4: ("eax", "edx"), 8: ("rax", "rdx")}


@handles("mul")
def mul(g):
    src = g.op(0)
    size = src.size
    bits = size * 8
    m = MASKS[size]
    lo_reg, hi_reg = _PAIR[size]
    b = g.value(g.read(src))
    p = g.value(f"{g.reg_read(lo_reg)} * {b}")
    lo = g.value(f"{p} & {m:#x}")
    hi = g.value(f"{p} >> {bits}")
    if size == 1:
        g.reg_write("ax", p)
    else:
        g.reg_write(lo_reg, lo)
        g.reg_write(hi_reg, hi)
    g.set_flags(F.MUL, "0", "0", lo, bits, f"1 if {hi} else 0")


@handles("imul")
def imul(g):
    ops = g.d.operands
    if len(ops) == 1:
        src = ops[0]
        size = src.size
        bits = size * 8
        m = MASKS[size]
        lo_reg, hi_reg = _PAIR[size]
        b = g.value(f"sx({g.read(src)}, {bits})")
        p = g.value(f"sx({g.reg_read(lo_reg)}, {bits}) * {b}")
        lo = g.value(f"{p} & {m:#x}")
        hi = g.value(f"({p} >> {bits}) & {m:#x}")
        if size == 1:
            g.reg_write("ax", f"{p} & 0xffff")
        else:
            g.reg_write(lo_reg, lo)
            g.reg_write(hi_reg, hi)
    else:
        dst = ops[0]
        size = dst.size
        bits = size * 8
        m = MASKS[size]
        if len(ops) == 2:
            x, y = g.read(dst), g.read(ops[1], size)
        else:
            x, y = g.read(ops[1]), g.read(ops[2], size)
        x = g.value(f"sx({x}, {bits})")
        y = g.value(f"sx({y}, {bits})")
        p = g.value(f"{x} * {y}")
        lo = g.value(f"{p} & {m:#x}")
        g.write(dst, lo)
    g.set_flags(F.MUL, "0", "0", lo, bits, f"0 if sx({lo}, {bits}) == {p} else 1")


@handles("div", "idiv")
def div(g):
    src = g.op(0)
    size = src.size
    bits = size * 8
    m = MASKS[size]
    lo_reg, hi_reg = _PAIR[size]
    signed = g.d.mnemonic == "idiv"
    d = g.value(g.read(src))
    if size == 1:
        n = g.value(g.reg_read("ax"))
    else:
        n = g.value(f"{g.reg_read(hi_reg)} << {bits} | {g.reg_read(lo_reg)}")
    g.emit(f"if {d} == 0: raise GuestFault(0)")
    if signed:
        n2 = g.value(f"sx({n}, {2 * bits})")
        d2 = g.value(f"sx({d}, {bits})")
        # Truncate toward zero; the remainder takes the dividend's sign.
        q = g.value(f"abs({n2}) // abs({d2}) * (1 if ({n2} < 0) == ({d2} < 0) else -1)")
        rem = g.value(f"{n2} - {q} * {d2}")
        g.emit(f"if not -{1 << (bits - 1)} <= {q} < {1 << (bits - 1)}: raise GuestFault(0)")
    else:
        q = g.value(f"{n} // {d}")
        rem = g.value(f"{n} % {d}")
        g.emit(f"if {q} > {m:#x}: raise GuestFault(0)")
    if size == 1:
        g.reg_write("ax", f"({rem} & 0xff) << 8 | ({q} & 0xff)")
    else:
        g.reg_write(lo_reg, f"{q} & {m:#x}")
        g.reg_write(hi_reg, f"{rem} & {m:#x}")
