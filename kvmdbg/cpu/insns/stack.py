"""Stack: push, pop, pushfq, popfq, enter, leave.

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
    size = 2 if (src.kind != "imm" and src.size == 2) or g.d.raw[:1] == b"\x66" else g.word
    v = g.value(g.read(src, size))
    sp = g.value(f"(r[4] - {size}) & {g.sp_mask:#x}")
    g.store(sp, size, v, ss=True)
    g.emit(f"r[4] = {sp}")


@handles("pop")
def pop(g):
    dst = g.op(0)
    size = dst.size
    m = g.sp_mask
    v = g.load(g.value(g.sp()), size, ss=True)
    if dst.kind == "reg" and dst.reg in ("rsp", "esp", "sp"):
        # RSP is incremented before the value is written: POP SP keeps the new upper bits.
        g.emit(f"r[4] = (r[4] + {size}) & {m:#x}")
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
        g.emit(f"r[4] = (r[4] + {size}) & {m:#x}")
        return
    g.emit(f"r[4] = (r[4] + {size}) & {m:#x}")
    g.write(dst, v)


# pushfq/popfq in 64-bit code, pushfd/popfd in 32-bit code, pushf/popf with a 66h prefix.
_FLAGS_SIZE = {"pushfq": 8, "popfq": 8, "pushfd": 4, "popfd": 4, "pushf": 2, "popf": 2}


@handles("pushfq", "pushfd", "pushf")
def pushfq(g):
    size = _FLAGS_SIZE[g.d.mnemonic]
    sp = g.value(f"(r[4] - {size}) & {g.sp_mask:#x}")
    g.store(sp, size, g.value(f"materialize(cpu) & 0xfcffff & {MASKS[size]:#x}"), ss=True)
    g.emit(f"r[4] = {sp}")


@handles("popfq", "popfd", "popf", stops=True)
def popfq(g):
    size = _FLAGS_SIZE[g.d.mnemonic]
    v = g.load(g.value(g.sp()), size, ss=True)
    old = g.value("materialize(cpu)")
    mask = g.value(f"{POPF_MASK:#x} & {MASKS[size]:#x} if cpu.cs & 3 == 0 else "
                   f"({POPF_MASK:#x} & ~0x3000 & ~(0x200 if cpu.cs & 3 > (({old}) >> 12 & 3) else 0)) & {MASKS[size]:#x}")
    new = g.value(f"({old} & ~{mask} & ~0x10000) | ({v} & {mask}) | 2")
    g.emit(f"r[4] = (r[4] + {size}) & {g.sp_mask:#x}")
    g.emit(f"cpu.set_rflags({new})")


def _operand_size_16(g, opcode_bytes: int) -> bool:
    """A 66h prefix and no REX.W before the last opcode_bytes bytes (opcode, immediates)."""
    pre = g.d.raw[:g.d.length - opcode_bytes]
    return 0x66 in pre and not (pre and pre[-1] & 0xF8 == 0x48)


@handles("leave")
def leave(g):
    """RSP = RBP, then pop RBP (BP with a 66h prefix; RSP still takes all of RBP) (SDM
    Vol. 2A, LEAVE). The pop reads through SS before either register changes."""
    size = 2 if _operand_size_16(g, 1) else g.word
    m = g.sp_mask
    v = g.load(g.value("r[5]" if g.word == 8 else "(r[5] & 0xffffffff)"), size, ss=True)
    g.emit(f"r[4] = (r[5] + {size}) & {m:#x}")
    g.reg_write({8: "rbp", 4: "ebp", 2: "bp"}[size], v)


@handles("enter")
def enter(g):
    """ENTER alloc, level (SDM Vol. 2A, ENTER, 64-bit operand size): push RBP; FrameTemp =
    RSP; copy level - 1 frame pointers from [RBP - 8], [RBP - 16] ... and push FrameTemp
    (level = imm8 mod 32, unrolled: it is an immediate); RBP = FrameTemp, RSP -= alloc.

    Every access goes through SS, and all of them, with the check the SDM's #PF list
    names ("a write using the final value of the stack pointer"), come before RBP and
    RSP change, so a fault leaves both as they were (pushes already stored stay, below
    RSP). The 16-bit form (66h) stays unsupported: with a 64-bit stack the SDM's
    pseudo-code is unclear for it (its nesting loop has no 64-bit-stack case for 16-bit
    operands; RBP or only BP takes FrameTemp?), and emulators disagree on what it writes.
    """
    if _operand_size_16(g, 4) or g.d.bits != 64:
        g.unsupported()
    alloc = g.op(0).imm & 0xFFFF
    level = g.op(1).imm & 31
    bp = g.value("r[5]")
    frame = g.value(f"(r[4] - 8) & {M64:#x}")
    g.store(frame, 8, bp, ss=True)
    sp = frame
    if level:
        for i in range(1, level):
            v = g.load(g.value(f"({bp} - {8 * i}) & {M64:#x}"), 8, ss=True)
            sp = g.value(f"({frame} - {8 * i}) & {M64:#x}")
            g.store(sp, 8, v, ss=True)
        sp = g.value(f"({frame} - {8 * level}) & {M64:#x}")
        g.store(sp, 8, frame, ss=True)
    if alloc:
        sp = g.value(f"({sp} - {alloc}) & {M64:#x}")
        p = g.tmp()
        g.emit(f"{p} = cpu.fast_w.get({sp} >> 12)")
        g.emit(f"if {p} is None or {sp} & 0xfff > 4088: cpu.write_check_ss({sp}, 8)")
    g.emit(f"r[5] = {frame}")
    g.emit(f"r[4] = {sp}")
