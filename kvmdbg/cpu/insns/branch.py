"""Control transfer: jmp, jcc, call, ret, loop family, jrcxz."""

from kvmdbg.bits import M32, M64, NONCANONICAL
from kvmdbg.cpu.flags import ALIASES, CONDITIONS
from kvmdbg.cpu.translate import handles


def _canonical_check(g, t: str) -> None:
    # A jump to a non-canonical address faults on the jump itself (RIP stays on it); 32-bit
    # code cannot name one.
    if g.d.bits == 64:
        g.emit(f"if {NONCANONICAL.format(t)}: raise GuestFault(13, 0)")


def _far_form(g) -> bool:
    """FF /3 (CALL m16:xx) or FF /5 (JMP m16:xx): capstone names some of them like the near
    forms, so the ModRM byte after the prefixes decides."""
    raw = g.d.raw
    i = len(g.prefixes())
    return i + 1 < len(raw) and raw[i] == 0xFF and (raw[i + 1] >> 3 & 7) in (3, 5)


def _target(g) -> str:
    o = g.op(0)
    if o.kind == "imm":
        return str(o.imm & g.ip_mask)
    if _far_form(g):
        g.unsupported()          # far through memory: not modelled yet (see ljmp)
    t = g.value(g.read(o, g.word))
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
    w = g.word
    sp = g.value(f"(r[4] - {w}) & {g.sp_mask:#x}")
    g.store(sp, w, str(g.next_rip), ss=True)      # through SS: #SS(0) if non-canonical
    g.emit(f"r[4] = {sp}")
    g.jump(t)


@handles("ret")
def ret(g):
    w = g.word
    t = g.load(g.value(g.sp()), w, ss=True)   # through SS: #SS(0) if non-canonical
    _canonical_check(g, t)
    extra = g.op(0).imm if g.d.operands else 0
    g.emit(f"r[4] = (r[4] + {w + extra}) & {g.sp_mask:#x}")
    g.jump(t)


@handles("ljmp", stops=True)
def ljmp(g):
    """JMP ptr16:32 (32-bit code only; 64-bit mode has no direct far jump): a same-privilege
    far jump to a code segment, which may change the code size (compatibility mode ->
    64-bit mode is how a kernel finishes entering long mode)."""
    if len(g.d.operands) != 2 or g.op(0).kind != "imm":
        g.unsupported()
    selector, offset = g.op(0).imm & 0xFFFF, g.op(1).imm & M32
    g.emit(f"seg = segments.far_code_segment(cpu, {selector:#x})")
    g.emit("cpu.load_cs(seg)")
    g.jump(str(offset))


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
