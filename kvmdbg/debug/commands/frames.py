"""Frames and variables: backtrace, frame, up, down, info frame, info locals, info args,
info scope, info address, ptype, whatis. gdb's formats; frames by DWARF CFI (stack.py)."""

from __future__ import annotations

from kvmdbg.debug.commands.registry import no_arguments, usage_error
from kvmdbg.debug.engine import dwarf_scope, dwarf_types, stack
from kvmdbg.debug.engine.evaluate import Value, evaluate
from kvmdbg.debug.engine.source import NO_SYMTAB
from kvmdbg.errors import CommandError

NO_STACK = "No stack."


def _say_note(s, st) -> None:
    """The heuristic note, once per session."""
    if st.note and not getattr(s, "_frames_note_shown", False):
        s._frames_note_shown = True
        s.message(st.note)


def _has_cfi(s) -> bool:
    di = stack.debug_info(s)
    return di is not None and bool(di.cfi)


def backtrace(s, arg: str) -> None:
    """backtrace [full] [N]

    The frames of the current vCPU, innermost first: unwound with the program's DWARF
    call-frame information (.eh_frame/.debug_frame) where it has some, each frame as gdb
    prints it (`#1  0x... in FUNC (ARGS) at FILE:LINE`); where there is none, return
    addresses found on the stack (words that follow a CALL instruction: a heuristic,
    said once). N shows the innermost N frames, -N the outermost N (gdb's rule); `full`
    adds each frame's local variables.
    """
    words = arg.split()
    full = any(w in ("full", "-full") for w in words)
    arg = " ".join(w for w in words if w not in ("full", "-full"))
    limit = 64
    if arg:
        try:
            limit = int(arg, 0)
        except ValueError:
            raise usage_error(backtrace, f"Invalid number \"{arg}\".") from None
        if abs(limit) >= 1 << 64:
            raise usage_error(backtrace, "Numeric constant too large.")
    outermost = limit < 0
    st = stack.stack(s, 256 if outermost else max(limit, 0) + 1)
    frames = st.frames[limit:] if outermost else st.frames[:limit]
    cfi = _has_cfi(s)
    for f in frames:
        s.message(stack.frame_line(s, f) if cfi else f"#{f.level:<3}{s.location(f.pc)}")
        if full:
            fn = stack.function_of(s, f)
            local = [v for v in fn.variables(f.lookup_pc, nested=True)
                     if not v.is_arg and not v.is_label] if fn is not None else []
            _show_variables(s, f, local, "No locals.", indent=" " * 8)
    if frames and cfi:
        _say_note(s, st)
    if cfi and not outermost and 0 < limit < len(st.frames) and not getattr(s, "batch", False):
        s.message("(More stack frames follow...)")     # gdb: only when typed (from_tty)


def _show_frame(s, frame) -> None:
    from kvmdbg.debug.present.report import show_source_text
    if _has_cfi(s):
        s.message(stack.frame_line(s, frame))
    else:
        s.message(f"#{frame.level:<3}{s.location(frame.pc)}")
    place = stack.frame_place(s, frame)
    if place is not None:
        show_source_text(s, *place)


def _select(s, level: int) -> None:
    frames = stack.stack(s, level + 1).frames
    if level >= len(frames):
        raise CommandError(f"No frame at level {level}.")
    stack.select(s, level)
    _show_frame(s, frames[level])


def frame(s, arg: str) -> None:
    """frame [N]

    Select frame N (0 is the innermost, as `backtrace` numbers them) and show it; without
    N, show the selected frame. `print`, `info locals`, `info args` and `info frame` then
    look at that frame. A stop selects frame 0 again.
    """
    text = arg.strip()
    if text.startswith("level "):
        text = text[6:].strip()
    if not text:
        _select(s, stack.selected_level(s))
        return
    if not text.isdigit():
        raise usage_error(frame, f"Invalid frame level \"{text}\".")
    _select(s, int(text))


def _count(fn, arg: str) -> int:
    text = arg.strip()
    if not text:
        return 1
    try:
        return int(text, 0)
    except ValueError:
        raise usage_error(fn, f"Invalid number \"{text}\".") from None


def up(s, arg: str) -> None:
    """up [N]

    Select the frame N levels out (default 1: the caller) and show it.
    """
    n = _count(up, arg)
    level = stack.selected_level(s)
    frames = stack.stack(s, level + n + 1).frames
    if level == len(frames) - 1 and n > 0:
        raise CommandError("Initial frame selected; you cannot go up.")
    _select(s, max(min(level + n, len(frames) - 1), 0))


def down(s, arg: str) -> None:
    """down [N]

    Select the frame N levels in (default 1: the one this frame called) and show it.
    """
    n = _count(down, arg)
    level = stack.selected_level(s)
    if level == 0 and n > 0:
        raise CommandError("Bottom (innermost) frame selected; you cannot go down.")
    _select(s, max(level - n, 0))


def info_frame(s, arg: str) -> None:
    """info frame

    The selected frame as gdb describes it: its CFA (`frame at`), RIP and where it is, the
    saved RIP, the frames it calls and is called by, the language, where its arguments and
    locals are, and where its caller's registers are saved. From the CFI; a frame without
    it has only its RIP and where it is.
    """
    no_arguments(info_frame, arg)
    level = stack.selected_level(s)
    frames = stack.stack(s, level + 3).frames
    f = frames[min(level, len(frames) - 1)]
    outer = frames[f.level + 1] if f.level + 1 < len(frames) else None
    inner = frames[f.level - 1] if f.level > 0 else None
    inlined = outer is not None and outer.call_site is not None
    if inlined:                         # gdb: the saved RIP is the machine caller's
        caller = next((g for g in frames[f.level + 1:] if g.call_site is None), None)
    di = stack.debug_info(s)
    row = di.row_at(f.lookup_pc) if di is not None else None
    place = stack.frame_place(s, f)
    if f.cfa is None and not f.heuristic:
        try:
            stack.cfa_of(s, f)
        except dwarf_scope.LocationError:
            pass
    at = f" {f.cfa:#x}" if f.cfa is not None else ""
    s.message(f"Stack level {f.level}, frame at{at or ' ' + hex(f.regs.get('rsp', 0))}:")
    where = f" ({place[0]}:{place[1]})" if place is not None else ""
    ret = (caller.pc if caller is not None else None) if inlined else \
        outer.pc if outer is not None else None
    saved = f"; saved rip = {ret:#x}" if ret is not None else ""
    s.message(f" rip = {f.pc:#x} in {stack.function_name(s, f)}{where}{saved}")
    if inlined:
        s.message(f" inlined into frame {outer.level}")
    links = []
    if outer is not None and outer.cfa is not None and not inlined:
        links.append(f"called by frame at {outer.cfa:#x}")
    elif outer is None:
        s.message(" Outermost frame: no call-frame information for its caller")
    if inner is not None and inner.cfa is not None:
        links.append(f"caller of frame at {inner.cfa:#x}")
    if links:
        s.message(" " + ", ".join(links))
    if row is not None:
        s.message(f" source language {row.cu.language}.")
    if f.cfa is None:
        return
    base = f.cfa - 16                 # gdb's amd64 frame base: where RBP is pushed
    fn = stack.function_of(s, f)
    args = ", ".join(f"{v.name}={stack.frame_arg_text(s, f, v)}" for v in fn.arguments()) \
        if fn is not None else ""
    s.message(f" Arglist at {base:#x}, args: {args}")
    s.message(f" Locals at {base:#x}, Previous frame's sp is {f.cfa:#x}")
    if f.saved_at:
        order = [r for r in stack_order() if r in f.saved_at]
        s.message(" Saved registers:")
        s.message("  " + ", ".join(f"{r} at {f.saved_at[r]:#x}" for r in order))


def stack_order():
    """gdb's register order for `Saved registers:`."""
    return ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15", "rip")


# --- variables ---

def _frame_function(s):
    sc = stack.scope(s)
    if sc is None:
        raise CommandError(NO_SYMTAB if stack.debug_info(s) is None
                           else "No symbol table info available.")
    f = stack.selected_frame(s)
    fn = stack.function_of(s, f)
    if fn is None:
        raise CommandError("No symbol table info available.")
    return f, fn


def _show_variables(s, frame, variables, none: str, indent: str = "") -> None:
    if not variables:
        s.message(none)
        return
    for v in variables:
        try:
            val = stack.variable_value(s, frame, v)
            text = val.v if val.type.kind == "error" else stack.value_text(s, val, top=False)
        except CommandError as e:
            text = f"<error: {e}>"
        s.message(f"{indent}{v.name} = {text}")


def info_locals(s, arg: str) -> None:
    """info locals

    The local variables of the selected frame (its innermost block first), from DWARF:
    values gdb's way, `<optimized out>` where the location is not one kvmdbg evaluates.
    """
    no_arguments(info_locals, arg)
    f, fn = _frame_function(s)
    _show_variables(s, f, [v for v in fn.variables(f.lookup_pc, nested=True)
                           if not v.is_arg and not v.is_label],
                    "No locals.")


def info_args(s, arg: str) -> None:
    """info args

    The arguments of the selected frame's function, from DWARF.
    """
    no_arguments(info_args, arg)
    f, fn = _frame_function(s)
    _show_variables(s, f, fn.arguments(), "No arguments.")


def _function_named(s, text: str):
    sc = stack.scope(s)
    if sc is None:
        raise CommandError(NO_SYMTAB)
    fn = sc.by_name.get(text)
    if fn is None:
        from kvmdbg.debug.commands.source import address_of
        addr = address_of(s, text)
        fn = sc.function_at(addr)
        if fn is None and not text.startswith("*") and text in s.symbols:
            return None                 # a function without DWARF (assembly): no variables
        if fn is None:
            raise CommandError("No function contains specified address.")
    return fn


def _describe_location(var, level_indent: str = "") -> list:
    """info scope's words for where a variable is: one line, or several (a list)."""
    kind, loc = var.location(None)
    if kind == "none":
        return ["optimized out"]
    if kind == "extern":
        return [f"static storage at address {loc:#x}"]     # gdb's LOC_UNRESOLVED words
    if kind == "label":
        return [f"a label at address {loc:#x}"]
    if kind == "const":
        if isinstance(loc, int):
            return [f"a constant with value {loc} ({loc & ((1 << 64) - 1):#x})"]
        return ["constant bytes: " + "".join(f" {b:02x}" for b in loc)]
    if kind == "expr":
        d = dwarf_scope.describe(loc)
        return [d] if d else ["a complex DWARF expression:"] + dwarf_scope.disassemble(loc)
    lines = ["multi-location:"]
    for lo, hi, ops in loc:
        d = dwarf_scope.describe(ops, in_list=True)
        if d:
            lines.append(f"  Range {lo:#x}-{hi:#x}: {d}")
        else:
            lines.append(f"  Range {lo:#x}-{hi:#x}: a complex DWARF expression:")
            lines.extend(dwarf_scope.disassemble(ops))
            lines.append("")
    return lines


def info_scope(s, arg: str) -> None:
    """info scope FUNC|*ADDR|FILE:LINE

    The variables of the function at that place, and where each lives (a register, static
    storage, a location list by address range, a DWARF expression), gdb's words.
    """
    text = arg.strip()
    if not text:
        raise CommandError("requires an argument (an expression or variable): foo*(a + b)")
    from kvmdbg.debug.commands import source
    if source.is_line_spec(s, text):
        addr = source.line_location(s, *source.file_line(s, text))[0]
        sc = stack.scope(s)
        fn = sc.function_at(addr) if sc is not None else None
        if fn is None:
            raise CommandError("No function contains specified address.")
    else:
        fn = _function_named(s, text)
    variables = fn.variables(None) if fn is not None else []
    if not variables:
        s.message(f"Scope for {text} contains no locals or arguments.")
        return
    s.message(f"Scope for {text}:")
    for v in variables:
        words = _describe_location(v)
        size = 8 if v.is_label else v.type.byte_size
        if words == ["optimized out"]:
            s.message(f"Symbol {v.name} is optimized out.")
            continue
        if len(words) == 1:
            w = "in " + words[0] if words[0].startswith("static storage") and \
                v.location(None)[0] != "extern" else words[0]
            s.message(f"Symbol {v.name} is {w}, length {size}.")
            continue
        s.message(f"Symbol {v.name} is {words[0]}")
        for w in words[1:]:
            s.message(w)
        s.message(f", length {size}.")


def info_address(s, arg: str) -> None:
    """info address SYMBOL

    Where SYMBOL is: a function's address, a variable's static storage, register or
    location list (in the selected frame's scope, then the globals), or a plain ELF symbol.
    """
    name = arg.strip()
    if not name:
        raise usage_error(info_address, "Argument required.")
    sc = stack.scope(s)
    if sc is not None:
        frame = stack.selected_frame(s)
        fn = stack.function_of(s, frame)
        var = next((v for v in fn.variables(frame.lookup_pc, nested=True) if v.name == name),
                   None) if fn is not None else None
        var = var or sc.globals.get(name)
        if var is not None:
            words = _describe_location(var)
            if len(words) == 1:
                s.message(f'Symbol "{name}" is {words[0]}.')
            else:
                s.message(f'Symbol "{name}" is {words[0]}')
                for w in words[1:]:
                    s.message(w)
                s.message(".")
            return
        f = sc.by_name.get(name)
        if f is not None:
            s.message(f'Symbol "{name}" is a function at address {f.low:#x}.')
            return
    if name in s.symbols:
        s.message(f'Symbol "{name}" is at {s.symbols[name]:#x} in a file compiled without '
                  "debugging.")
        return
    raise CommandError(f'No symbol "{name}" in current context.')


# --- types ---

def _type_of(s, text: str):
    """(DType, is_expression) for a type name or an expression of a DWARF type."""
    sc = stack.scope(s)
    t = text.strip()
    if sc is not None:
        base = t.rstrip("* ")
        found = sc.type_named(base)
        if found is not None:
            n = t.count("*")
            for _ in range(n):
                found = dwarf_types.DType("ptr", "", 8, _target=found)
            return found, False
        f = sc.by_name.get(t)
        if f is not None:
            return sc.function_type(f), True
    words = t.split()
    if len(words) == 2 and words[0] in ("struct", "union", "enum"):
        raise CommandError(f"No {words[0]} type named {words[1]}.")
    from kvmdbg.debug.engine.expr import TYPE_NAMES
    if t in TYPE_NAMES:                 # kvmdbg's own type names (u64, int, ...)
        return None, Value(0, TYPE_NAMES[t])
    v = evaluate(s, t)
    if v.type.dtype is not None:
        return v.type.dtype, True
    return None, v


def _type_argument(s, fn, arg: str):
    """(DType, is_expression) for whatis/ptype; None after printing the type of a value
    that has no DWARF type (a register, a number)."""
    if not arg.strip():
        raise usage_error(fn, "Argument required (one or more choices).")
    t, expr = _type_of(s, arg)
    if t is None:
        s.message(f"type = {expr.type.name}")
        return None
    return t, expr


def whatis(s, arg: str) -> None:
    """whatis EXPR|TYPE

    The type of EXPR (a variable, `*at`, `at->flags`) or, for a type name, the name one
    typedef level down, as gdb prints it.
    """
    found = _type_argument(s, whatis, arg)
    if found is None:
        return
    t, expr = found
    if expr is False and t.kind == "typedef" and t.target is not None:
        t = t.target
    s.message(f"type = {dwarf_types.name(t)}")


def ptype(s, arg: str) -> None:
    """ptype EXPR|TYPE

    The type of EXPR or TYPE with typedefs resolved and structs, unions and enums
    expanded (members one a line), as gdb prints it.
    """
    found = _type_argument(s, ptype, arg)
    if found is None:
        return
    lines = dwarf_types.ptype_lines(found[0])
    s.message("type = " + lines[0])
    for ln in lines[1:]:
        s.message(ln)


def register(reg) -> None:
    reg.add("backtrace", backtrace, aliases=("bt", "where"), category="status")
    reg.add("frame", frame, aliases=("f",), category="status")
    reg.add("up", up, category="status")
    reg.add("down", down, aliases=("do",), category="status")
    reg.add("ptype", ptype, category="data")
    reg.add("whatis", whatis, category="data")
    info = reg.sub("info")
    info.add("frame", info_frame, aliases=("f",), category="status")
    info.add("locals", info_locals, category="status")
    info.add("args", info_args, category="status")
    info.add("scope", info_scope, category="status")
    info.add("address", info_address, category="status")
