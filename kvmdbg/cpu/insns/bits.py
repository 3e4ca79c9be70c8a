"""Bit tests: bt bts btr btc (CF = the selected bit; ZF kept; OF SF AF PF undefined)."""

from kvmdbg.bits import MASKS
from kvmdbg.cpu.translate import handles

_UPDATE = {"bts": "{v} | (1 << {i})", "btr": "{v} & ~(1 << {i})", "btc": "{v} ^ (1 << {i})"}


@handles("bt", "bts", "btr", "btc")
def bt(g):
    dst, src = g.op(0), g.op(1)
    bits = dst.size * 8
    mn = g.d.mnemonic
    if src.kind == "imm":
        idx = str(src.imm & (bits - 1))
        v = g.value(g.read(dst))
        target = dst
    elif dst.kind == "reg":
        idx = g.value(f"{g.read(src)} & {bits - 1}")
        v = g.value(g.read(dst))
        target = dst
    else:
        # Register bit offset into a memory bit string: signed, may reach outside the operand.
        off = g.value(f"sx({g.read(src)}, {bits})")
        a = g.addr(dst)
        addr = g.value(f"({a} + ({off} >> {bits.bit_length() - 1}) * {dst.size}) & 0xffffffffffffffff")
        idx = g.value(f"{off} & {bits - 1}")
        v = g.load(addr, dst.size, g.uses_ss(dst))
        target = None
    bit = g.value(f"{v} >> {idx} & 1")
    if mn != "bt":
        new = g.value(_UPDATE[mn].format(v=v, i=idx) + f" & {MASKS[dst.size]:#x}")
        if target is None:
            g.store(addr, dst.size, new, g.uses_ss(dst))
        else:
            g.write(target, new)
    g.emit(f"cpu.rflags = (materialize(cpu) & ~1) | {bit}")
