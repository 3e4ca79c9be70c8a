"""String stores and moves: stos and movs, with or without rep (DF picks the direction).

Each iteration commits RDI/RSI/RCX after its store, so a fault in the middle of a
rep leaves the registers where the SDM says and re-executing the instruction resumes.
With a 0x67 prefix (32-bit address size) the instruction uses EDI/ESI/ECX instead,
and writes them back zero-extended.
"""

from kvmdbg.bits import M64
from kvmdbg.cpu.translate import handles

_SIZES = {"b": 1, "w": 2, "d": 4, "q": 8}


def _size(g) -> int:
    return _SIZES[g.d.mnemonic[-1]]


_PREFIXES = frozenset((0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0, *range(0x40, 0x50)))


def _rep(g) -> bool:
    """REP or REPNE (both mean REP for STOS/MOVS). Read from the bytes too: capstone
    drops the F2 of 'F2 A5', taking it for the mandatory prefix of SSE's MOVSD."""
    for b in g.d.raw:
        if b in (0xF2, 0xF3):
            return True
        if b not in _PREFIXES:
            return False
    return bool(g.d.rep)


def _amask(g) -> str:
    return f"{M64 if g.d.addr_size == 8 else 0xFFFF_FFFF:#x}"


def _ptr(g, i: int) -> str:
    return f"r[{i}]" if g.d.addr_size == 8 else f"(r[{i}] & 0xffffffff)"


@handles("stosb", "stosw", "stosd", "stosq")
def stos(g):
    g.writes_memory()
    size = _size(g)
    am = _amask(g)
    val = g.reg_read({1: "al", 2: "ax", 4: "eax", 8: "rax"}[size])
    step = g.value(f"-{size} if cpu.rflags & 0x400 else {size}")
    if _rep(g):
        with g.block(f"while {_ptr(g, 1)}:"):
            g.emit(f"cpu.wr({_ptr(g, 7)}, {size}, {val})")
            g.emit(f"r[7] = (r[7] + {step}) & {am}")
            g.emit(f"r[1] = (r[1] - 1) & {am}")
    else:
        g.emit(f"cpu.wr({_ptr(g, 7)}, {size}, {val})")
        g.emit(f"r[7] = (r[7] + {step}) & {am}")


@handles("movsb", "movsw", "movsd", "movsq")
def movs(g):
    if len(g.d.operands) == 2 and g.op(0).kind == "reg":
        g.unsupported()       # 'movsd xmm, xmm' (SSE) shares the mnemonic
    size = _size(g)
    step = g.value(f"-{size} if cpu.rflags & 0x400 else {size}")
    if _rep(g):
        with g.block(f"while {_ptr(g, 1)}:"):
            _one_movs(g, size, step)
            g.emit(f"r[1] = (r[1] - 1) & {_amask(g)}")
    else:
        _one_movs(g, size, step)


def _one_movs(g, size, step):
    g.writes_memory()
    am = _amask(g)
    v = g.value(f"cpu.rd({_ptr(g, 6)}, {size})")
    g.emit(f"cpu.wr({_ptr(g, 7)}, {size}, {v})")
    g.emit(f"r[6] = (r[6] + {step}) & {am}")
    g.emit(f"r[7] = (r[7] + {step}) & {am}")
