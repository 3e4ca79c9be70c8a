"""Stops: break, tbreak, watch, rwatch, awatch, catch, tcatch, delete, clear, disable,
enable, condition, ignore, commands, info breakpoints. gdb's names and messages."""

from __future__ import annotations

from kvmdbg.debug.engine import catchpoints
from kvmdbg.debug.engine.breakpoints import Breakpoint, Catchpoint, Watchpoint, parse_numbers
from kvmdbg.debug.commands.registry import MAX_COUNT, check_range, no_arguments, usage_error
from kvmdbg.debug.engine.evaluate import Evaluator
from kvmdbg.debug.engine.expr import U64, Deref, Dollar, ExprError, Field, Space, parse, split_condition, walk
from kvmdbg.debug.engine.state import BlockReader, confirm
from kvmdbg.errors import CommandError


# --- break / tbreak ---

def _breakpoint_address(s, fn, text: str) -> int:
    if not text:
        return s.cpu.rip
    from kvmdbg.debug.commands import source
    if source.is_line_spec(s, text):            # LINE or FILE:LINE: the line's first address
        return source.line_location(s, *source.file_line(s, text))[0]
    expr = text[1:].strip() if text.startswith("*") else text
    if not expr:
        raise usage_error(fn, "Argument required (an address).")
    if not text.startswith("*"):                # FUNC: after its prologue, as gdb does
        from kvmdbg.debug.engine.prologue import function_breakpoint
        at = function_breakpoint(s, expr)
        if at is not None:
            return at
        import re
        if re.fullmatch(r"[A-Za-z_][\w.]*", expr) and expr not in s.symbols:
            raise CommandError(f'Function "{expr}" not defined.')
    v = Evaluator(s).value(parse(expr))
    if v.space and v.space != "gva":
        raise CommandError(f"Breakpoints are on guest-virtual addresses; {v.space}:{v.as_int():#x} "
                           "cannot be used (break on the gva that maps it).")
    if not isinstance(v.v, int):
        raise usage_error(fn, "Value can't be converted to integer.")
    return v.as_int() & ((1 << 64) - 1)


def _set_breakpoint(s, fn, arg: str, temporary: bool) -> None:
    where, cond = split_condition(arg)
    if cond == "":
        raise usage_error(fn, "Argument required (boolean expression after \"if\").")
    address = _breakpoint_address(s, fn, where)
    if cond:
        parse(cond)                    # a malformed condition is refused now, not at the hit
    others = [p.number for p in s.breakpoints.at(address)]
    if others:
        listed = " ".join(str(n) for n in others)
        s.message(f"Note: breakpoint{'s' if len(others) > 1 else ''} {listed} also set at pc "
                  f"{address:#x}.")
    bp = s.breakpoints.add_breakpoint(address, temporary, cond or "")
    s.message(bp.announce(s))


def break_(s, arg: str) -> None:
    """break [[*]ADDR|SYMBOL|FILE:LINE|LINE] [if EXPR]

    Stop when a vCPU is about to execute the instruction at ADDR (a guest-virtual
    address, an expression, or a symbol such as `flip`), or the first instruction of a
    source line (FILE:LINE, or LINE in the current file; a line without code means the
    next line with code, as in gdb); without ADDR, at the current instruction. With
    `if EXPR`, only when EXPR is non-zero then.
    Examples: break flip, break *0x100020, break smep_flip.S:45, break touch if $ecx == 3
    """
    _set_breakpoint(s, break_, arg, temporary=False)


def tbreak(s, arg: str) -> None:
    """tbreak [[*]ADDR|SYMBOL|FILE:LINE|LINE] [if EXPR]

    Like break, but the breakpoint is deleted when it first stops the program.
    """
    _set_breakpoint(s, tbreak, arg, temporary=True)


# --- watch / rwatch / awatch ---

def _watch(s, fn, arg: str, access: str) -> None:
    text, cond = split_condition(arg)
    for flag in ("-location ", "-l "):
        if text.startswith(flag):
            text = text[len(flag):].strip()
    if not text:
        raise usage_error(fn, "Argument required (expression to watch).")
    if cond == "":
        raise usage_error(fn, "Argument required (boolean expression after \"if\").")
    ast = parse(text)
    if isinstance(ast, Space):              # `watch gpa:0x7000` watches the u64 there
        ast = Deref(ast, U64)
    ev = Evaluator(s)
    old = ev.value(ast)
    location = None
    if old.lval is not None and old.lval.kind == "mem":
        location = (old.lval.space, old.lval.address, old.lval.size)
        if access != "write" and location[0] == "hpa":
            raise CommandError("Read and access watchpoints take gva or gpa addresses, not hpa.")
    elif access != "write":
        raise CommandError("Expression cannot be implemented with read/access watchpoint.")
    elif not _depends_on_state(ast):
        raise CommandError(f"Cannot watch constant value `{text}'.")
    if cond:
        parse(cond)
    wp = s.breakpoints.add_watchpoint(text, ast, access, s.current, location, old, cond or "")
    s.message(wp.announce(s))


def _depends_on_state(node) -> bool:
    return any(isinstance(n, (Dollar, Deref, Field)) for n in walk(node))


def watch(s, arg: str) -> None:
    """watch EXPR [if EXPR]

    Stop when the value of EXPR changes: memory (`*(u64*)0x200000`, `gpa:0x7000` for the
    u64 at a guest-physical address) or registers (`$rax`, `$cr4.smep`). Checked after
    every instruction (the run single-steps while a watchpoint exists). Registers are
    those of the vCPU selected when the watchpoint is set.
    """
    _watch(s, watch, arg, "write")


def rwatch(s, arg: str) -> None:
    """rwatch EXPR [if EXPR]

    Stop when an instruction reads the memory of EXPR (e.g. `*(u32*)0x200000`).
    """
    _watch(s, rwatch, arg, "read")


def awatch(s, arg: str) -> None:
    """awatch EXPR [if EXPR]

    Stop when an instruction reads or writes the memory of EXPR, or its value changes.
    """
    _watch(s, awatch, arg, "access")


# --- catch / tcatch ---

def _catch(s, fn, arg: str, temporary: bool) -> None:
    text, cond = split_condition(arg)
    if not text:
        s.message(fn.__doc__.strip().splitlines()[0])
        s.message("Kinds:")
        for k in catchpoints.KINDS.values():
            s.message(f"  {(k.name + ' ' + k.arg_help).strip():<32} {k.summary}")
        return
    if cond == "":
        raise usage_error(fn, "Argument required (boolean expression after \"if\").")
    words = text.split()
    kind = catchpoints.lookup(words[0])
    if len(words) > 2:
        raise usage_error(fn, f"Too many arguments for catch {kind.name}.")
    argument = kind.check_arg(words[1] if len(words) > 1 else "")
    if cond:
        parse(cond)
    cp = s.breakpoints.add_catchpoint(kind, argument, temporary, cond or "")
    s.message(cp.announce(s))


def catch(s, arg: str) -> None:
    """catch KIND [ARG] [if EXPR]

    Stop after the instruction during which KVM does KIND: root-alloc, root-zap,
    root-put, spte-set, spte-zap, zap-all, mmu-reset, tlb-flush [local|remote],
    ept-violation, page-fault [guest|ept], vmexit [REASON], cr-write [cr0|cr3|cr4|cr8|efer],
    memslot, marker. The event is $_event in EXPR and after the stop ($_event.cr, ...).
    `catch` alone lists the kinds with the kernel tracepoints behind them.
    """
    _catch(s, catch, arg, temporary=False)


def tcatch(s, arg: str) -> None:
    """tcatch KIND [ARG] [if EXPR]

    Like catch, but the catchpoint is deleted when it first stops the program.
    """
    _catch(s, tcatch, arg, temporary=True)


# --- delete / clear / disable / enable ---

def _numbers(s, fn, text: str) -> list:
    nums = parse_numbers(text, fn)
    for n in nums:
        s.breakpoints.get(n)
    return nums


def delete(s, arg: str) -> None:
    """delete [N|M-N]...

    Delete breakpoints, watchpoints and catchpoints by number (all of them without
    arguments). `delete display N` deletes a display.
    """
    words = arg.split(None, 1)
    if words and "display".startswith(words[0]) and len(words[0]) >= 2:
        from kvmdbg.debug.commands.data import undisplay
        undisplay(s, words[1] if len(words) > 1 else "")
        return
    if words and "breakpoints".startswith(words[0]) and len(words[0]) >= 2:
        arg = words[1] if len(words) > 1 else ""
    if not arg:
        if len(s.breakpoints) and confirm(s, "Delete all breakpoints? "):
            s.breakpoints.delete_all()
        return
    for n in _numbers(s, delete, arg):
        s.breakpoints.delete(n)


def clear(s, arg: str) -> None:
    """clear [ADDR]

    Delete the breakpoints at ADDR (default: the current instruction).
    """
    address = _breakpoint_address(s, clear, arg)
    found = [p.number for p in s.breakpoints if isinstance(p, Breakpoint) and p.address == address]
    if not found:
        raise CommandError(f"No breakpoint at {arg or s.location(address)}.")
    for n in found:
        s.breakpoints.delete(n)
    s.message(f"Deleted breakpoint{'s' if len(found) > 1 else ''} "
              f"{' '.join(str(n) for n in found)} ")


def disable(s, arg: str) -> None:
    """disable [N|M-N]...

    Disable breakpoints, watchpoints and catchpoints (all without arguments); they stay
    listed. `disable display N` disables a display.
    """
    words = arg.split(None, 1)
    if words and "display".startswith(words[0]) and len(words[0]) >= 2:
        from kvmdbg.debug.commands.data import enable_display
        enable_display(s, words[1] if len(words) > 1 else "", False)
        return
    points = [s.breakpoints.get(n) for n in _numbers(s, disable, arg)] if arg else list(s.breakpoints)
    for p in points:
        p.enabled = False
    s.breakpoints.sync_listener()


def enable(s, arg: str) -> None:
    """enable [once|count N|delete] [N|M-N]...

    Enable breakpoints (all without numbers). `once`: disable again after the next stop;
    `count N`: after N stops; `delete`: delete after the next stop. `enable display N`
    enables a display.
    """
    words = arg.split()
    disposition, count = None, 0
    if words and len(words[0]) >= 2 and "display".startswith(words[0]):
        from kvmdbg.debug.commands.data import enable_display
        enable_display(s, " ".join(words[1:]), True)
        return
    if words and words[0] in ("once", "delete"):
        disposition = "dis" if words[0] == "once" else "del"
        words = words[1:]
    elif words and words[0] == "count":
        if len(words) < 2:
            raise usage_error(enable, "Argument required (hit count).")
        try:
            count = int(words[1], 0)
        except ValueError:
            raise usage_error(enable, f"Invalid number \"{words[1]}\".") from None
        check_range("The hit count", count, 1, MAX_COUNT)
        disposition = "dis"
        words = words[2:]
    text = " ".join(words)
    points = [s.breakpoints.get(n) for n in _numbers(s, enable, text)] if text else list(s.breakpoints)
    for p in points:
        p.enabled = True
        if disposition is not None:
            p.disposition = disposition
            p.enable_count = count
    s.breakpoints.sync_listener()


# --- condition / ignore / commands ---

def condition(s, arg: str) -> None:
    """condition N [EXPR]

    Stop at breakpoint N only when EXPR is non-zero; without EXPR, always.
    """
    words = arg.split(None, 1)
    if not words:
        raise usage_error(condition, "Argument required (breakpoint number).")
    n = parse_numbers(words[0], condition)
    if len(n) != 1:
        raise usage_error(condition, f"Bad breakpoint argument: '{words[0]}'")
    p = s.breakpoints.get(n[0])
    text = words[1] if len(words) > 1 else ""
    try:
        p.set_condition(text)
    except ExprError as e:
        raise CommandError(str(e)) from None
    if not text:
        s.message(f"{p.noun.capitalize()} {p.number} now unconditional.")


def ignore(s, arg: str) -> None:
    """ignore N COUNT

    Do not stop at breakpoint N the next COUNT times it is reached.
    """
    words = arg.split()
    if len(words) != 2:
        raise usage_error(ignore, "Argument required (a breakpoint number and a count).")
    n = parse_numbers(words[0], ignore)
    try:
        count = int(words[1], 0)
    except ValueError:
        raise usage_error(ignore, f"Invalid number \"{words[1]}\".") from None
    if len(n) != 1 or count < 0:
        raise usage_error(ignore, f"Bad arguments \"{arg}\".")
    check_range("The ignore count", count, 0, MAX_COUNT)
    p = s.breakpoints.get(n[0])
    p.ignore_count = count
    if count == 0:
        s.message(f"Will stop next time {p.noun} {p.number} is reached.")
    elif count == 1:
        s.message(f"Will ignore next crossing of {p.noun} {p.number}.")
    else:
        s.message(f"Will ignore next {count} crossings of {p.noun} {p.number}.")


def commands(s, arg: str) -> None:
    """commands [N|M-N]...

    Give breakpoints a list of commands to run when they stop the program, one per
    line, ended by `end`. A first line `silent` hides the stop report; `continue`
    resumes (and ends the list).
    """
    if arg:
        nums = _numbers(s, commands, arg)
    elif s.breakpoints.last_created is not None and s.breakpoints.last_created in \
            {p.number for p in s.breakpoints}:
        nums = [s.breakpoints.last_created]
    else:
        raise CommandError("No breakpoints specified.")
    if s.interactive:
        s.message(f"Type commands for breakpoint(s) {', '.join(map(str, nums))}, one per line.")
        s.message('End with a line saying just "end".')

    def done(lines):
        for n in nums:
            p = s.breakpoints._points.get(n)
            if p is not None:
                p.commands = list(lines)

    s.state.block = BlockReader("commands", done)


# --- info breakpoints ---

def info_breakpoints(s, arg: str) -> None:
    """info breakpoints [N...]

    The breakpoints, watchpoints and catchpoints in gdb's columns (Num Type Disp Enb
    Address What) with conditions, hit counts, ignore counts and command lists.
    """
    points = list(s.breakpoints)
    if arg:
        wanted = set(parse_numbers(arg, info_breakpoints))
        points = [p for p in points if p.number in wanted]
    if not points:
        s.message("No breakpoints or watchpoints." if not arg else
                  f"No breakpoint or watchpoint matching '{arg}'.")
        return
    s.message(f"{'Num':<7} {'Type':<14} {'Disp':<4} {'Enb':<3} {'Address':<18} What")
    for p in points:
        addr = f"{p.address:#018x}" if isinstance(p, Breakpoint) else ""
        s.message(f"{p.number:<7} {p.type_name:<14} {p.disposition:<4} "
                  f"{'y' if p.enabled else 'n':<3} {addr:<18} {p.what(s)}".rstrip())
        if p.condition:
            s.message(f"\tstop only if {p.condition}")
        if p.hits:
            noun = "catchpoint" if isinstance(p, Catchpoint) else "breakpoint"
            s.message(f"\t{noun} already hit {p.hits} time{'s' if p.hits != 1 else ''}")
        if p.ignore_count:
            s.message(f"\tignore next {p.ignore_count} hits")
        if p.enable_count:
            s.message(f"\tdisable after {p.enable_count} more hit{'s' if p.enable_count != 1 else ''}")
        for line in p.commands:
            s.message(f"        {line}")


def info_watchpoints(s, arg: str) -> None:
    """info watchpoints

    The watchpoints only, in the same columns as info breakpoints.
    """
    no_arguments(info_watchpoints, arg)
    nums = [p.number for p in s.breakpoints if isinstance(p, Watchpoint)]
    if not nums:
        s.message("No watchpoints.")
        return
    info_breakpoints(s, " ".join(map(str, nums)))


def register(reg) -> None:
    reg.add("break", break_, aliases=("b", "br", "bre", "brea", "bp"), category="breakpoints")
    reg.add("tbreak", tbreak, aliases=("tb",), category="breakpoints")
    reg.add("watch", watch, category="breakpoints")
    reg.add("rwatch", rwatch, category="breakpoints")
    reg.add("awatch", awatch, category="breakpoints")
    reg.add("catch", catch, category="breakpoints")
    reg.add("tcatch", tcatch, category="breakpoints")
    reg.add("delete", delete, aliases=("d",), category="breakpoints")
    reg.add("clear", clear, category="breakpoints")
    reg.add("disable", disable, aliases=("dis", "disa", "bpd"), category="breakpoints")
    reg.add("enable", enable, aliases=("en", "bpe"), category="breakpoints")
    reg.add("condition", condition, category="breakpoints")
    reg.add("ignore", ignore, category="breakpoints")
    reg.add("commands", commands, category="breakpoints")
    info = reg.sub("info")
    info.add("breakpoints", info_breakpoints, aliases=("b", "break"), category="breakpoints")
    info.add("watchpoints", info_watchpoints, category="breakpoints")
