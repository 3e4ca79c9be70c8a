"""Shifts and rotates: shl/sal shr sar rol ror rcl rcr shld shrd (SDM Vol. 2B, SAL/SAR/SHL/SHR,
RCL/RCR/ROL/ROR, SHLD, SHRD)."""

from contextlib import nullcontext

from kvmdbg.bits import MASKS
from kvmdbg.cpu import flags as F
from kvmdbg.cpu.translate import handles


def _zero_extend_only(g, dst) -> None:
    """A masked count of 0 changes nothing, but a 32-bit register is still written
    (its upper half cleared), as on hardware, Bochs and QEMU."""
    if dst.kind == "reg" and dst.size == 4:
        g.write(dst, g.read(dst))


def _count(g, dst) -> str:
    cmask = 0x3F if dst.size == 8 else 0x1F
    if len(g.d.operands) < 2:
        return "1"
    src = g.op(1)
    if src.kind == "imm":
        return str(src.imm & cmask)
    return g.value(f"{g.read(src)} & {cmask:#x}")


@handles("shl", "sal", "shr", "sar")
def shift(g):
    dst = g.op(0)
    bits = dst.size * 8
    m = MASKS[dst.size]
    c = _count(g, dst)
    if c == "0":
        _zero_extend_only(g, dst)
        return
    a = g.value(g.read(dst))
    mn = g.d.mnemonic
    if mn in ("shl", "sal"):
        res, kind = f"({a} << {c}) & {m:#x}", F.SHL
    elif mn == "shr":
        res, kind = f"{a} >> {c}", F.SHR
    else:
        res, kind = f"(sx({a}, {bits}) >> {c}) & {m:#x}", F.SAR
    with g.block(f"if {c}:"):
        t = g.value(res)
        g.write(dst, t)
        g.set_flags(kind, a, c, t, bits)
    if dst.kind == "reg" and dst.size == 4:
        with g.block("else:"):
            _zero_extend_only(g, dst)


@handles("rol", "ror", "rcl", "rcr")
def rotate(g):
    dst = g.op(0)
    bits = dst.size * 8
    top = bits - 1
    m = MASKS[dst.size]
    c = _count(g, dst)
    if c == "0":
        _zero_extend_only(g, dst)
        return
    a = g.value(g.read(dst))
    mn = g.d.mnemonic
    with g.block(f"if {c}:"):
        f = g.value("materialize(cpu)")
        if mn in ("rol", "ror"):
            n = g.value(f"{c} % {bits}")
            if mn == "rol":
                res = g.value(f"(({a} << {n}) | ({a} >> ({bits} - {n}))) & {m:#x}")
                cf = g.value(f"{res} & 1")
                of = f"({res} >> {top} & 1) ^ {cf}"
            else:
                res = g.value(f"(({a} >> {n}) | ({a} << ({bits} - {n}))) & {m:#x}")
                cf = g.value(f"{res} >> {top} & 1")
                of = f"({res} >> {top} ^ {res} >> {top - 1}) & 1"
        else:
            n = g.value(f"{c} % {bits + 1}")
            full = (1 << (bits + 1)) - 1
            w = g.value(f"({f} & 1) << {bits} | {a}")
            if mn == "rcl":
                rot = g.value(f"(({w} << {n}) | ({w} >> ({bits + 1} - {n}))) & {full:#x}")
                res = g.value(f"{rot} & {m:#x}")
                cf = g.value(f"{rot} >> {bits}")
                of = f"({res} >> {top} & 1) ^ {cf}"
            else:
                of = g.value(f"({a} >> {top} & 1) ^ ({f} & 1)")
                rot = g.value(f"(({w} >> {n}) | ({w} << ({bits + 1} - {n}))) & {full:#x}")
                res = g.value(f"{rot} & {m:#x}")
                cf = g.value(f"{rot} >> {bits}")
        g.write(dst, res)
        # OF is defined only for a count of 1; we give the count-1 formula for every count.
        g.emit(f"cpu.rflags = ({f} & ~0x801) | {cf} | ({of}) << 11")
    if dst.kind == "reg" and dst.size == 4:
        with g.block("else:"):
            _zero_extend_only(g, dst)


@handles("shld", "shrd")
def double_shift(g):
    """SHLD/SHRD DEST, SRC, count: DEST shifted with SRC's bits filling in.

    The count is masked to 5 bits (6 with REX.W); a masked count of 0 changes nothing
    (a 32-bit register is still zero-extended, as for the other shifts, and as unicorn
    does). A memory destination is read whatever the count, and written only for a
    nonzero one. For 16 bits with a count above 16 the SDM leaves result and flags
    undefined; we shift DEST:SRC:DEST as a 48-bit value, which is Intel's behaviour
    (Bochs and QEMU do the same), and every count of 1..16 gives the SDM's result from
    that same value. CF is the last bit shifted out, SF ZF PF follow the result, AF is
    0. OF is defined for a count of 1 only (the sign changed); we give that formula for
    every count: SHLD's OF = MSB(result) ^ CF, SHRD's = MSB(result) ^ MSB(DEST).
    """
    dst, src, cnt = g.op(0), g.op(1), g.op(2)
    bits = dst.size * 8
    top = bits - 1
    m = MASKS[dst.size]
    a = g.value(g.read(dst))
    cmask = 0x3F if bits == 64 else 0x1F
    c = str(cnt.imm & cmask) if cnt.kind == "imm" else g.value(f"{g.read(cnt)} & {cmask:#x}")
    if c == "0":
        _zero_extend_only(g, dst)
        return
    b = g.value(g.read(src))
    left = g.d.mnemonic == "shld"
    variable = cnt.kind != "imm"
    with g.block(f"if {c}:") if variable else nullcontext():
        if bits == 16:
            w = 48
            x = g.value(f"{a} << 32 | {b} << 16 | {a}")
        else:
            w = 2 * bits
            x = g.value(f"{a} << {bits} | {b}" if left else f"{b} << {bits} | {a}")
        if left:
            res = g.value(f"{x} >> ({w - bits} - {c}) & {m:#x}")
            cf = g.value(f"{x} >> ({w} - {c}) & 1")
            of = f"{res} >> {top} ^ {cf}"
        else:
            res = g.value(f"{x} >> {c} & {m:#x}")
            cf = g.value(f"{x} >> ({c} - 1) & 1")
            of = f"({res} ^ {a}) >> {top}"
        g.write(dst, res)
        g.set_flags(F.CFOF, cf, of, res, bits)
    if variable and dst.kind == "reg" and dst.size == 4:
        with g.block("else:"):
            _zero_extend_only(g, dst)
