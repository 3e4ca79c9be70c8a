"""Data: print, output, x, xp, display, undisplay, info display. gdb's formats and history."""

from __future__ import annotations

import struct

from kvmdbg.debug.commands.registry import no_arguments, usage_error
from kvmdbg.debug.engine.evaluate import Value, evaluate
from kvmdbg.debug.engine.expr import ExprError
from kvmdbg.debug.engine.state import Display, confirm
from kvmdbg.debug.present.values import PRINT_FORMATS, c_string, format_int, format_value
from kvmdbg.errors import CommandError, KvmdbgError

SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
X_FORMATS = "xduotacfsiz"
PER_LINE = {"b": 8, "h": 8, "w": 4, "g": 2}
MAX_STRING = 200
MAX_COUNT = 2**31 - 1          # gdb's x count is a C int


def split_format(fn, arg: str, letters: str, allow_size=True):
    """'/4gx rest' -> ('4gx', 'rest'); anything else -> ('', arg). A count may be negative
    ('/-4gx': x examines backward)."""
    if not arg.startswith("/"):
        return "", arg
    spec, _, rest = arg[1:].partition(" ")
    for i, ch in enumerate(spec):
        if not (ch.isdigit() or ch in letters or (allow_size and ch in SIZES) or
                (ch == "-" and i == 0 and allow_size)):
            raise usage_error(fn, f"Undefined output format \"{ch}\".")
    return spec, rest.strip()


# --- print / output ---

def _print_format(fn, arg: str):
    spec, rest = split_format(fn, arg, PRINT_FORMATS, allow_size=False)
    if any(c.isdigit() for c in spec):
        raise usage_error(fn, "Item count other than 1 is meaningless in \"print\" command.")
    if len(spec) > 1:
        raise usage_error(fn, f"Undefined output format \"{spec}\".")
    return spec, rest


def print_(s, arg: str) -> None:
    """print[/FMT] [EXPR]

    Evaluate EXPR and record it in the value history as $N. FMT is one of gdb's letters:
    x (hex), d, u, o, t (binary), c, a (address), z (zero-padded hex).
    Examples: print $rax, p/x $cr4, p $cr4.smep, p *(u64*)gpa:0x200000, p $_event.root
    """
    fmt, expr = _print_format(print_, arg)
    val = evaluate(s, expr) if expr else s.history.lookup("")
    text = format_value(s, val, fmt)
    n = s.history.add(val)
    s.message(f"${n} = {text}")


def output(s, arg: str) -> None:
    """output[/FMT] EXPR

    Print the value of EXPR and nothing else: no $N, no newline (for user commands).
    """
    fmt, expr = _print_format(output, arg)
    if not expr:
        raise usage_error(output, "Argument required (expression to compute).")
    s.write(format_value(s, evaluate(s, expr), fmt))


# --- x / xp ---

def examine(s, fn, arg: str, default_space: str, name: str) -> None:
    ex = s.state.examine
    spec, expr = split_format(fn, arg, X_FORMATS)
    digits = "".join(c for c in spec if c.isdigit())
    count = int(digits) if digits else 1
    backward = spec.startswith("-")
    fmt, size, size_given = ex.fmt, ex.size, False
    for ch in spec:
        if ch in SIZES:
            size, size_given = ch, True
        elif ch in X_FORMATS:
            fmt = ch
    if count < 1:
        raise usage_error(fn, "Count must be at least 1.")
    if count > MAX_COUNT:
        raise usage_error(fn, f"Item count {'-' if backward else ''}{count} out of range: 1 to "
                              f"{MAX_COUNT} units (-1 to -{MAX_COUNT} examine backward).")
    if backward and fmt == "i":
        raise CommandError("x/-Ni is not supported: without line information there is no "
                           "telling where the instructions before an address start.")
    if backward and fmt == "s":
        raise CommandError("x/-Ns is not supported: examine strings forward from their start.")
    if expr:
        val = evaluate(s, expr)
        if not isinstance(val.v, int):
            raise usage_error(fn, "Value can't be converted to integer.")
        addr, space = val.as_int() & ((1 << 64) - 1), val.space or default_space
    elif ex.next_address is not None:
        addr, space = ex.next_address, ex.space
    else:
        raise usage_error(fn, "Argument required (starting display address).")
    if fmt == "a":
        size = "g"
    elif fmt == "c" and not size_given:
        size = "b"
    if fmt == "s":
        last = _examine_strings(s, addr, space, count)
    elif fmt == "i":
        last = _examine_insns(s, addr, space, count)
    elif backward:                     # gdb: the N units before ADDR; x continues below them
        start = (addr - count * SIZES[size]) & ((1 << 64) - 1)
        _examine_units(s, start, space, count, fmt, size)
        last = start, space
        ex.size = size
    else:
        last = _examine_units(s, addr, space, count, fmt, size)
        ex.size = size
    ex.fmt = fmt
    ex.next_address, ex.space = last
    s.state.next_repeat = f"{name}/{'-' if backward else ''}{count}{fmt}" + \
        (size if fmt not in "si" else "")


def _prefix(space: str) -> str:
    return "" if space == "gva" else f"{space}:"


def _label(s, space: str, addr: int) -> str:
    return s.location(addr) if space == "gva" else f"{space}:{addr:#x}"


def _examine_units(s, addr, space, count, fmt, size):
    n = SIZES[size]
    per_line = PER_LINE[size]
    done = 0
    last_val = None
    while done < count:
        if s.interrupt_requested:
            raise CommandError("Quit")
        k = min(per_line, count - done)
        data = s.read_memory(addr, n * k, space)
        items = []
        for i in range(k):
            raw = int.from_bytes(data[i * n:(i + 1) * n], "little")
            items.append(_unit(s, raw, fmt, n))
            last_val = raw
        s.message(f"{_label(s, space, addr)}:\t" + "\t".join(items))
        addr += n * k
        done += k
    _set_examined(s, addr - n, last_val, n, space)
    return addr, space


def _unit(s, raw: int, fmt: str, n: int) -> str:
    if fmt == "f" and n in (4, 8):
        v = struct.unpack("<f" if n == 4 else "<d", raw.to_bytes(n, "little"))[0]
        return repr(v)
    if fmt == "f":
        fmt = "d"
    return format_int(s, raw, fmt, n, pad=fmt in "xzt")


def _set_examined(s, addr: int, value, size: int, space: str) -> None:
    """gdb's $_ (the address of the last unit examined, a pointer to the unit's type) and
    $__ (its contents; void after x/s and x/i, whose units gdb does not fetch as values)."""
    from kvmdbg.debug.engine.evaluate import make_int
    from kvmdbg.debug.engine.expr import S8, S16, S32, S64
    t = {1: S8, 2: S16, 4: S32, 8: S64}[size]
    s.convenience["_"] = Value(addr, t.pointer(), space="" if space == "gva" else space)
    if value is None:
        s.convenience.pop("__", None)
    else:
        s.convenience["__"] = make_int(value, t)


def _examine_strings(s, addr, space, count):
    start = addr
    for _ in range(count):
        start = addr
        raw = bytearray()
        while len(raw) < MAX_STRING:
            b = s.read_memory(addr, 1, space)[0]
            addr += 1
            if b == 0:
                break
            raw.append(b)
        text = c_string(raw.decode("latin-1"))
        if len(raw) >= MAX_STRING:
            text += "..."
        s.message(f"{_label(s, space, start)}:\t{text}")
    _set_examined(s, start, None, 1, space)
    return addr, space


def _examine_insns(s, addr, space, count):
    from kvmdbg.debug.commands.code import insn_lines
    start = addr
    for line, nxt in insn_lines(s, addr, space, count):
        s.message(line, style="disasm")
        start, addr = addr, nxt
    _set_examined(s, start, None, 1, space)
    return addr, space


def x(s, arg: str) -> None:
    """x[/NFU] [ADDR]

    Examine memory: N units (default 1) of size U (b h w g) in format F (x d u o t a c f
    s i z), at ADDR: a guest-virtual address unless written gpa:ADDR or hpa:ADDR.
    Format and size are remembered; without ADDR, x continues after the last one. A
    negative N shows the N units below ADDR (x/-4gx $rsp), and x then continues below them.
    $_ is the address of the last unit shown and $__ its contents (void after s and i).
    Examples: x/4gx $rsp, x/8xb gpa:0x1000, x/3i $pc, x/s message
    """
    examine(s, x, arg, "gva", "x")


def xp(s, arg: str) -> None:
    """xp[/NFU] [ADDR]

    x on guest-physical addresses (the Bochs and QEMU monitor command).
    """
    examine(s, xp, arg, "gpa", "xp")


# --- display ---

def _display_value(s, d: Display):
    fmt = d.fmt
    return format_value(s, evaluate(s, d.expression), fmt)


def show_display(s, d: Display) -> None:
    try:
        if d.examines:
            s.message(f"{d.number}: x/{d.fmt} {d.expression}")
            saved = s.state.next_repeat, s.state.examine.next_address, s.state.examine.space
            examine(s, x, f"/{d.fmt} {d.expression}", "gva", "x")
            # A display is not an `x` the user typed: what x continues from stays put.
            s.state.next_repeat, s.state.examine.next_address, s.state.examine.space = saved
        else:
            shown = f"/{d.fmt} " if d.fmt else ""
            s.message(f"{d.number}: {shown}{d.expression} = {_display_value(s, d)}")
    except KvmdbgError as e:
        s.message(f"{d.number}: {d.expression} = <error: {e}>")


def display(s, arg: str) -> None:
    """display[/FMT] [EXPR]

    Show EXPR now and after every stop (FMT as for print, or x's i/s with a count, e.g.
    display/3i $pc). Without EXPR, show every display now.
    """
    spec, expr = split_format(display, arg, X_FORMATS)
    if spec.startswith("-"):
        raise usage_error(display, "A negative count is for x only (display shows forward).")
    if not expr:
        for d in s.state.displays:
            if d.enabled:
                show_display(s, d)
        return
    evaluate(s, expr) if not any(c in spec for c in "is") else None   # refuse bad ones now
    d = Display(s.state.next_display, expr, spec)
    s.state.next_display += 1
    s.state.displays.append(d)
    show_display(s, d)


def _display_numbers(s, fn, text: str):
    from kvmdbg.debug.engine.breakpoints import parse_numbers
    nums = parse_numbers(text, fn, noun="display")
    known = {d.number for d in s.state.displays}
    for n in nums:
        if n not in known:
            raise CommandError(f"No display number {n}.")
    return nums


def undisplay(s, arg: str) -> None:
    """undisplay [N|M-N]...

    Stop showing displays (all of them without arguments).
    """
    if not arg:
        if s.state.displays and confirm(s, "Delete all auto-display expressions? "):
            s.state.displays.clear()
        return
    nums = set(_display_numbers(s, undisplay, arg))
    s.state.displays = [d for d in s.state.displays if d.number not in nums]


def enable_display(s, arg: str, on: bool) -> None:
    nums = set(_display_numbers(s, undisplay, arg)) if arg else {d.number for d in s.state.displays}
    for d in s.state.displays:
        if d.number in nums:
            d.enabled = on


def info_display(s, arg: str) -> None:
    """info display

    The display expressions, with their numbers and whether they are enabled.
    """
    no_arguments(info_display, arg)
    if not s.state.displays:
        s.message("There are no auto-display expressions now.")
        return
    s.message("Auto-display expressions now in effect:")
    s.message("Num Enb Expression")
    for d in s.state.displays:
        shown = f"/{d.fmt} " if d.fmt else ""
        s.message(f"{d.number}:   {'y' if d.enabled else 'n'}  {shown}{d.expression}")


def register(reg) -> None:
    reg.add("print", print_, aliases=("p", "inspect"), category="data")
    reg.add("output", output, category="data")
    reg.add("x", x, category="data", repeatable=True)
    reg.add("xp", xp, category="data", repeatable=True)
    reg.add("display", display, category="data")
    reg.add("undisplay", undisplay, category="data")
    reg.sub("info").add("display", info_display, category="data")


__all__ = ["ExprError", "register"]
