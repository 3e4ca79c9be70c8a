"""Control transfer: jmp, jcc, call, ret, far jmp and ret, loop family, jrcxz."""

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
    t = g.value(g.read(o, g.word))
    _canonical_check(g, t)
    return t


@handles("jmp")
def jmp(g):
    if _far_form(g):
        _far_indirect(g)
        return
    if g.op(0).kind == "imm":
        g.direct_jump(g.op(0).imm & g.ip_mask)
    else:
        g.jump(_target(g))


def _jcc(g):
    cc = g.d.mnemonic[1:]
    g.conditional_jump(g.cond(cc), g.op(0).imm & g.ip_mask)


for _cc in list(CONDITIONS) + list(ALIASES):
    handles("j" + _cc)(_jcc)


@handles("call")
def call(g):
    if _far_form(g):
        _far_indirect(g)
        return
    t = _target(g)
    w = g.word
    sp = g.value(f"(r[4] - {w}) & {g.sp_mask:#x}")
    g.store(sp, w, str(g.next_rip), ss=True)      # through SS: #SS(0) if non-canonical
    g.emit(f"r[4] = {sp}")
    if g.op(0).kind == "imm":
        g.direct_jump(int(t))
    else:
        g.jump(t)


@handles("ret")
def ret(g):
    w = g.word
    t = g.load(g.value(g.sp()), w, ss=True)   # through SS: #SS(0) if non-canonical
    _canonical_check(g, t)
    extra = g.op(0).imm if g.d.operands else 0
    g.emit(f"r[4] = (r[4] + {w + extra}) & {g.sp_mask:#x}")
    g.jump(t)


@handles("ljmp", "lcall")
def ljmp(g):
    """JMP/CALL ptr16:32 (32-bit code; 64-bit mode has no direct far form), or capstone's
    name for a far one through memory (m16:64 with REX.W): a same-privilege far transfer
    to a code segment, which may change the code size (compatibility mode -> 64-bit mode
    is how a kernel finishes entering long mode)."""
    if g.d.operands and g.op(0).kind == "mem":
        _far_indirect(g)
        return
    if len(g.d.operands) != 2 or g.op(0).kind != "imm" or 0x66 in g.prefixes():
        g.unsupported()
    selector, offset = g.op(0).imm & 0xFFFF, g.op(1).imm & M32
    ret = g.next_rip if g.d.mnemonic == "lcall" else None
    g.emit(f"interrupts.far_transfer(cpu, {selector:#x}, {offset}, 4, {ret})")
    g.ends_block = True


def _far_indirect(g) -> None:
    """FF /3 or FF /5: the offset (8 bytes with REX.W, else 4), then the selector, at m16:xx.
    A 66h prefix (a 2-byte offset) is not modelled."""
    pre = g.prefixes()
    if 0x66 in pre:
        g.unsupported()
    word = 8 if g.d.bits == 64 and pre and pre[-1] & 0xF8 == 0x48 else 4
    o = g.op(0)
    a = g.addr(o)
    offset = g.load(a, word, g.uses_ss(o))
    selector = g.load(g.value(f"({a} + {word}) & {M64:#x}"), 2, g.uses_ss(o))
    call = g.d.raw[len(pre) + 1] >> 3 & 7 == 3
    ret = g.next_rip if call else None
    g.emit(f"interrupts.far_transfer(cpu, {selector}, {offset}, {word}, {ret})")
    g.ends_block = True


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


@handles("retf", "retfq")
def retf(g):
    """RET far (capstone: retfq with REX.W, 8-byte slots; retf, 4-byte slots), to the same
    or an outer privilege level (cpu/interrupts.py far_ret). A 66h prefix (2-byte slots)
    is not modelled."""
    if 0x66 in g.prefixes():
        g.unsupported()
    word = 8 if g.d.mnemonic == "retfq" else 4
    imm = g.op(0).imm & 0xFFFF if g.d.operands else 0
    g.emit(f"interrupts.far_ret(cpu, {word}, {imm})")
    g.ends_block = True
