"""Bit tests, scans and counts: bt bts btr btc, bsf bsr, tzcnt lzcnt, popcnt, bswap.

Flags (SDM Vol. 2A/2B "Flags Affected"; where the SDM says undefined, the choice made):

- bt/bts/btr/btc: CF = the selected bit; ZF kept; OF SF AF PF undefined.
- bsf/bsr: ZF = (source == 0); CF OF SF AF PF undefined. Given as QEMU/unicorn give
  them, the logic flags of the source: CF = OF = AF = 0, SF and PF of the source.
  A zero source leaves the destination unmodified, as the SDM now says and AMD
  documents; for a 32-bit destination that includes its upper half (some Intel parts
  and QEMU clear it; the differential test zero-extends first so it never compares this).
- tzcnt/lzcnt: CF = (source == 0), ZF = (result == 0); OF SF AF PF undefined: we give
  OF = AF = 0 and SF PF of the result (QEMU gives PF = 0).
- popcnt: ZF = (source == 0); OF SF AF CF PF cleared.
- bswap: no flags. With a 16-bit operand the SDM leaves the result undefined; we clear
  the low 16 bits, as Intel and AMD hardware, Bochs and QEMU do.
"""

from kvmdbg.bits import MASKS
from kvmdbg.cpu import flags as F
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


@handles("bsf", "bsr")
def bit_scan(g):
    dst, src = g.op(0), g.op(1)
    v = g.value(g.read(src))
    index = f"({v} & -{v}).bit_length() - 1" if g.d.mnemonic == "bsf" else f"{v}.bit_length() - 1"
    with g.block(f"if {v}:"):
        g.write(dst, f"({index})")
    g.set_flags(F.LOGIC, "0", "0", v, dst.size * 8)


@handles("tzcnt", "lzcnt")
def count_zeros(g):
    dst, src = g.op(0), g.op(1)
    bits = dst.size * 8
    v = g.value(g.read(src))
    if g.d.mnemonic == "tzcnt":
        n = g.value(f"({v} & -{v}).bit_length() - 1 if {v} else {bits}")
    else:
        n = g.value(f"{bits} - {v}.bit_length()")
    g.write(dst, n)
    g.set_flags(F.CFOF, f"(0 if {v} else 1)", "0", n, bits)


@handles("popcnt")
def popcnt(g):
    dst, src = g.op(0), g.op(1)
    v = g.value(g.read(src))
    g.write(dst, f"{v}.bit_count()")
    # Every arithmetic flag is written, so the lazy ones need not be materialised first.
    g.emit("cpu.lf = None")
    g.emit(f"cpu.rflags = cpu.rflags & ~{F.ARITH:#x} | (0 if {v} else 0x40)")


@handles("bswap")
def bswap(g):
    dst = g.op(0)
    if dst.size == 2:
        g.write(dst, "0")
        return
    g.write(dst, f"int.from_bytes({g.read(dst)}.to_bytes({dst.size}, 'little'), 'big')")
