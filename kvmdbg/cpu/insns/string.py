"""String stores and moves: stos and movs, with or without rep (DF picks the direction).

Each iteration commits RDI/RSI/RCX after its store, so a fault in the middle of a
rep leaves the registers where the SDM says and re-executing the instruction resumes.
"""

from kvmdbg.bits import M64
from kvmdbg.cpu.translate import handles

_SIZES = {"b": 1, "w": 2, "d": 4, "q": 8}


def _size(g) -> int:
    return _SIZES[g.d.mnemonic[-1]]


@handles("stosb", "stosw", "stosd", "stosq")
def stos(g):
    size = _size(g)
    val = g.reg_read({1: "al", 2: "ax", 4: "eax", 8: "rax"}[size])
    step = g.value(f"-{size} if cpu.rflags & 0x400 else {size}")
    if g.d.rep:
        with g.block("while r[1]:"):
            g.emit(f"cpu.wr(r[7], {size}, {val})")
            g.emit(f"r[7] = (r[7] + {step}) & {M64:#x}")
            g.emit(f"r[1] = (r[1] - 1) & {M64:#x}")
    else:
        g.emit(f"cpu.wr(r[7], {size}, {val})")
        g.emit(f"r[7] = (r[7] + {step}) & {M64:#x}")


@handles("movsb", "movsw", "movsd", "movsq")
def movs(g):
    if len(g.d.operands) == 2 and g.op(0).kind == "reg":
        g.unsupported()       # 'movsd xmm, xmm' (SSE) shares the mnemonic
    size = _size(g)
    step = g.value(f"-{size} if cpu.rflags & 0x400 else {size}")
    if g.d.rep:
        with g.block("while r[1]:"):
            _one_movs(g, size, step)
            g.emit(f"r[1] = (r[1] - 1) & {M64:#x}")
    else:
        _one_movs(g, size, step)


def _one_movs(g, size, step):
    v = g.value(f"cpu.rd(r[6], {size})")
    g.emit(f"cpu.wr(r[7], {size}, {v})")
    g.emit(f"r[6] = (r[6] + {step}) & {M64:#x}")
    g.emit(f"r[7] = (r[7] + {step}) & {M64:#x}")
