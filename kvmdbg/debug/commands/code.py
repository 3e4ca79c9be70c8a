"""Code: disassemble (u), info symbol (backtrace is in frames.py)."""

from __future__ import annotations

from kvmdbg.bits import M64
from kvmdbg.debug.commands.registry import usage_error
from kvmdbg.debug.engine.evaluate import evaluate
from kvmdbg.debug.present.formats import insn_text
from kvmdbg.errors import CommandError, KvmdbgError

MAX_FUNCTION = 4096        # a "function" (symbol to next symbol) longer than this is cut
DEFAULT_RANGE = 32


def _read_code(s, addr: int, n: int, space: str = "gva") -> bytes:
    """As many bytes as are readable from addr, up to n."""
    try:
        return s.read_memory(addr, n, space)
    except KvmdbgError:
        out = b""
        while len(out) < n:
            try:
                out += s.read_memory(addr + len(out), 1, space)
            except KvmdbgError:
                break
        return out


def _decoded(s, addr: int, code: bytes, count: int = 0):
    return list(s.cpu.decoder.disasm(code, addr, count, s.cpu.code_bits))


def insn_lines(s, addr: int, space: str, count: int):
    """(line, next address) for `x/Ni`: gdb's `=>` marks the current vCPU's RIP."""
    rip = s.cpu.rip if space == "gva" else None
    for _ in range(count):
        code = _read_code(s, addr, 15, space)
        found = _decoded(s, addr, code, 1)
        label = s.location(addr) if space == "gva" else f"{space}:{addr:#x}"
        mark = "=> " if addr == rip else "   "
        if not found:
            if not code:
                raise CommandError(f"Cannot access memory at address {label.split()[0]}")
            yield f"{mark}{label}:\t(bad)", addr + 1
            addr += 1
            continue
        a, size, mnem, ops = found[0]
        yield f"{mark}{label}:\t{insn_text(s.symbols, a, size, mnem, ops)}", a + size
        addr = a + size


def _function_range(s, addr: int):
    """(name, start, end) of the symbol around addr, or None."""
    sym = s.symbols.lookup(addr)
    if not sym:
        return None
    name = sym[1:-1].split("+")[0]
    start = s.symbols[name]
    later = [a for a in s.symbols.by_name.values() if a > start]
    end = min(later) if later else start + MAX_FUNCTION
    return name, start, min(end, start + MAX_FUNCTION)


def _parse_range(s, text: str):
    if "," in text:
        a, b = text.split(",", 1)
        start = evaluate(s, a.strip()).as_int() & M64
        b = b.strip()
        if b.startswith("+"):
            end = start + evaluate(s, b[1:]).as_int()
        else:
            end = evaluate(s, b).as_int() & M64
        if end <= start:
            raise CommandError("Invalid range: the end is not after the start.")
        return None, start, end
    addr = evaluate(s, text).as_int() & M64
    fn = _function_range(s, addr)
    return fn if fn else (None, addr, addr + DEFAULT_RANGE)


def disassemble(s, arg: str) -> None:
    """disassemble[/r] [ADDR[,+LEN]|START,END]

    Disassemble the function (symbol) around ADDR, default the current instruction, or a
    range. `=>` marks the current vCPU's RIP, `b` an enabled breakpoint; /r adds the raw
    bytes. Repeating it (empty line) continues after the last range.
    """
    raw = False
    if arg.startswith("/"):
        mods, _, arg = arg[1:].partition(" ")
        for m in mods:
            if m == "r":
                raw = True
            elif m not in "ms":
                raise usage_error(disassemble, f"Invalid disassembly modifier \"{m}\".")
        arg = arg.strip()
    if arg:
        name, start, end = _parse_range(s, arg)
    else:
        rip = s.cpu.rip
        fn = _function_range(s, rip)
        name, start, end = fn if fn else (None, rip, rip + DEFAULT_RANGE)
    if end - start > 1 << 20:
        raise CommandError("Range too long (more than 1 MiB).")
    code = _read_code(s, start, end - start + 15)     # whole instructions that start in range
    if not code:
        raise CommandError(f"Cannot access memory at address {start:#x}")
    if name:
        s.message(f"Dump of assembler code for function {name}:")
    else:
        s.message(f"Dump of assembler code from {start:#x} to {end:#x}:")
    rip = s.cpu.rip
    bps = s.breakpoints.addresses()
    pos = start
    for a, size, mnem, ops in _decoded(s, start, code):
        if a >= end:
            break
        mark = "=> " if a == rip else "b  " if a in bps else "   "
        where = f"<+{a - start}>" if name else s.symbols.lookup(a)
        label = f"{a:#x} {where}".rstrip()
        rawtext = f"\t{' '.join(f'{b:02x}' for b in code[a - start:a - start + size])}" if raw else ""
        s.message(f"{mark}{label}:{rawtext}\t{insn_text(s.symbols, a, size, mnem, ops)}",
                  style="disasm")
        pos = a + size
    if pos < min(end, start + len(code)):
        s.message(f"   {pos:#x}:\t(bad)")
        pos += 1
    elif pos < end:
        s.message(f"   {pos:#x}:\t(cannot read memory)")
    s.message("End of assembler dump.")
    length = max(end - start, 1)
    s.state.next_repeat = f"disassemble{'/r' if raw else ''} {pos:#x},+{length}"


def stack_frames(s, limit: int = 64) -> list:
    """(address, stack slot) of the current RIP (slot None), then of each return address
    found on the stack (a word that follows a CALL instruction), innermost first."""
    from kvmdbg.debug.engine.stack import return_addresses
    cpu = s.cpu
    return ([(cpu.rip, None)] + return_addresses(s, cpu.r[4], limit - 1))[:limit]


def bochs_u(s, arg: str) -> None:
    """Bochs's `u /N [ADDR]`: N instructions (default 1) from ADDR (default the current one)."""
    spec, _, rest = arg[1:].partition(" ")
    if not spec.isdigit() or int(spec) < 1:
        raise CommandError(f"Bochs's u takes a count: u/N [ADDR] (got \"/{spec}\"); "
                           "disassemble has the other forms.")
    count = int(spec)
    if count > 1 << 20:
        raise CommandError(f"Count {count} out of range: 1 to {1 << 20} instructions.")
    addr = evaluate(s, rest).as_int() & M64 if rest.strip() else s.cpu.rip
    for line, _next in insn_lines(s, addr, "gva", count):
        s.message(line, style="disasm")


def info_symbol(s, arg: str) -> None:
    """info symbol ADDR

    The symbol ADDR is in, as `NAME + OFFSET`.
    """
    if not arg:
        raise usage_error(info_symbol, "Argument required (address).")
    addr = evaluate(s, arg).as_int() & M64
    sym = s.symbols.lookup(addr)
    if not sym:
        s.message(f"No symbol matches {arg}.")
        return
    name, _, off = sym[1:-1].partition("+")
    s.message(f"{name} + {off}" if off else name)


def register(reg) -> None:
    reg.add("disassemble", disassemble, category="data", repeatable=True)
    reg.sub("info").add("symbol", info_symbol, category="data")
