"""Control transfer: jmp, jcc, call, ret, loop family, jrcxz."""

from kvmdbg.bits import M64, NONCANONICAL
from kvmdbg.cpu.flags import ALIASES, CONDITIONS
from kvmdbg.cpu.translate import handles


def _canonical_check(g, t: str) -> None:
    # A jump to a non-canonical address faults on the jump itself (RIP stays on it).
    g.emit(f"if {NONCANONICAL.format(t)}: raise GuestFault(13, 0)")


def _target(g) -> str:
    o = g.op(0)
    if o.kind == "imm":
        return str(o.imm & M64)
    t = g.value(g.read(o, 8))
    _canonical_check(g, t)
    return t


@handles("jmp")
def jmp(g):
    g.jump(_target(g))


def _jcc(g):
    cc = g.d.mnemonic[1:]
    g.jump(f"{_target(g)} if {g.cond(cc)} else {g.next_rip}")


for _cc in list(CONDITIONS) + list(ALIASES):
    handles("j" + _cc)(_jcc)


@handles("call")
def call(g):
    t = _target(g)
    sp = g.value(f"(r[4] - 8) & {M64:#x}")
    g.store(sp, 8, str(g.next_rip), ss=True)      # through SS: #SS(0) if non-canonical
    g.emit(f"r[4] = {sp}")
    g.jump(t)


@handles("ret")
def ret(g):
    t = g.load(g.value("r[4]"), 8, ss=True)        # through SS: #SS(0) if non-canonical
    _canonical_check(g, t)
    extra = g.op(0).imm if g.d.operands else 0
    g.emit(f"r[4] = (r[4] + {8 + extra}) & {M64:#x}")
    g.jump(t)


@handles("loop", "loope", "loopne")
def loop(g):
    # The address size picks the counter: RCX, or ECX (written back zero-extended) with 0x67.
    count = g.value(f"(r[1] - 1) & {M64 if g.d.addr_size == 8 else 0xFFFF_FFFF:#x}")
    g.emit(f"r[1] = {count}")
    cond = f"{count} != 0"
    if g.d.mnemonic == "loope":
        cond += f" and {g.cond('e')}"
    elif g.d.mnemonic == "loopne":
        cond += f" and {g.cond('ne')}"
    g.jump(f"{_target(g)} if {cond} else {g.next_rip}")


@handles("jrcxz", "jecxz")
def jrcxz(g):
    reg = "r[1]" if g.d.mnemonic == "jrcxz" else "(r[1] & 0xffffffff)"
    g.jump(f"{_target(g)} if {reg} == 0 else {g.next_rip}")
