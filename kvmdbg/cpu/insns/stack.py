"""Stack: push, pop, pushfq, popfq.

Stack accesses go through SS: a non-canonical stack address is #SS(0) (g.load/g.store
with ss=True), checked before RSP or anything else changes.
"""

from kvmdbg.bits import M64, MASKS
from kvmdbg.cpu.translate import handles

# RFLAGS bits POPF may change at CPL 0 in 64-bit mode (VM, VIF and VIP are kept, RF cleared).
POPF_MASK = 0x247FD5


@handles("push")
def push(g):
    src = g.op(0)
    size = 2 if (src.kind != "imm" and src.size == 2) or g.d.raw[:1] == b"\x66" else 8
    v = g.value(g.read(src, size))
    sp = g.value(f"(r[4] - {size}) & {M64:#x}")
    g.store(sp, size, v, ss=True)
    g.emit(f"r[4] = {sp}")


@handles("pop")
def pop(g):
    dst = g.op(0)
    size = dst.size
    v = g.load(g.value("r[4]"), size, ss=True)
    if dst.kind == "reg" and dst.reg in ("rsp", "sp"):
        # RSP is incremented before the value is written: POP SP keeps the new upper bits.
        g.emit(f"r[4] = (r[4] + {size}) & {M64:#x}")
        g.write(dst, v)
        return
    # A memory destination addressed through RSP sees the incremented RSP (SDM: POP).
    if dst.kind == "mem":
        a = g.addr(dst)
        if dst.base in ("rsp", "esp"):
            # Address from the incremented RSP, still written before RSP changes (precise faults).
            amask = M64 if g.d.addr_size == 8 else 0xFFFF_FFFF
            a = g.value(f"({g.addr(dst, segment=False)} + {size}) & {amask:#x}")
            if dst.segment:
                a = g.value(f"({a} + cpu.{dst.segment}_base) & {M64:#x}")
        g.store(a, size, v, g.uses_ss(dst))
        g.emit(f"r[4] = (r[4] + {size}) & {M64:#x}")
        return
    g.emit(f"r[4] = (r[4] + {size}) & {M64:#x}")
    g.write(dst, v)


@handles("pushfq", "pushf")
def pushfq(g):
    size = 8 if g.d.mnemonic == "pushfq" else 2
    sp = g.value(f"(r[4] - {size}) & {M64:#x}")
    g.store(sp, size, g.value(f"materialize(cpu) & 0xfcffff & {MASKS[size]:#x}"), ss=True)
    g.emit(f"r[4] = {sp}")


@handles("popfq", "popf")
def popfq(g):
    size = 8 if g.d.mnemonic == "popfq" else 2
    v = g.load(g.value("r[4]"), size, ss=True)
    old = g.value("materialize(cpu)")
    mask = g.value(f"{POPF_MASK:#x} & {MASKS[size]:#x} if cpu.cs & 3 == 0 else "
                   f"({POPF_MASK:#x} & ~0x3000 & ~(0x200 if cpu.cs & 3 > (({old}) >> 12 & 3) else 0)) & {MASKS[size]:#x}")
    new = g.value(f"({old} & ~{mask} & ~0x10000) | ({v} & {mask}) | 2")
    g.emit(f"r[4] = (r[4] + {size}) & {M64:#x}")
    g.emit(f"cpu.rflags = {new}")
    g.emit(f"if ({old} ^ {new}) & 0x40000: cpu.flush_fast()")
