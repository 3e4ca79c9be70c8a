"""Scripting: source, define, document, echo, printf, shell (and `!CMD`)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from kvmdbg.debug.engine import script
from kvmdbg.debug.commands.registry import split_word, usage_error
from kvmdbg.debug.engine.evaluate import evaluate
from kvmdbg.debug.engine.expr import S64, ExprError, unescape
from kvmdbg.debug.engine.state import BlockReader, confirm
from kvmdbg.errors import CommandError

MAX_USER_DEPTH = 64
MAX_SOURCE_DEPTH = 32


# --- source ---

def source(s, arg: str) -> None:
    """source [-v] FILE

    Run the commands in FILE, one per line (`#` comments and blank lines are skipped).
    The first error stops the file: FILE:LINE: Error in sourced command file:
    """
    verbose = False
    if arg.startswith("-v "):
        verbose, arg = True, arg[3:].strip()
    if not arg:
        raise usage_error(source, "Argument required (file name).")
    path = os.path.expanduser(arg)
    dirs = s.state.source_dirs
    if not os.path.isabs(path) and dirs and not os.path.exists(path):
        candidate = os.path.join(dirs[-1], path)
        if os.path.exists(candidate):
            path = candidate
    if len(dirs) >= MAX_SOURCE_DEPTH:
        raise CommandError(f"{arg}: source nested too deeply (more than {MAX_SOURCE_DEPTH}).")
    if not os.path.isfile(path):
        raise CommandError(f"{arg}: No such file or directory." if not os.path.exists(path)
                           else f"{arg}: not a regular file.")
    dirs.append(os.path.dirname(os.path.abspath(path)))
    try:
        if not script.source_file(s, path, verbose=verbose):
            raise CommandError("")        # already reported as FILE:LINE: ...
    finally:
        dirs.pop()


# --- define / document ---

def _substitute(line: str, args: list) -> str:
    def one(m):
        name = m.group(1)
        if name == "c":
            return str(len(args))
        i = int(name)
        if i >= len(args):
            raise CommandError(f"Missing argument {i} in user function.")
        return args[i]
    return re.sub(r"\$arg(c|\d+)\b", one, line)


def _user_command(name: str, body: list):
    def run_user(s, arg: str) -> None:
        try:
            args = shlex.split(arg, posix=False) if arg else []
        except ValueError:
            args = arg.split()
        st = s.state
        if st.user_depth >= MAX_USER_DEPTH:
            raise CommandError("Max user call depth exceeded -- command aborted.")
        st.user_depth += 1
        try:
            for line in body:
                if st.block is not None:
                    if st.block.feed(line):
                        st.block = None
                    continue
                s.commands.execute(s, _substitute(line, args))
        finally:
            st.user_depth -= 1
    run_user.__doc__ = f"{name}\n\n    User-defined."
    return run_user


def define(s, arg: str) -> None:
    """define NAME

    Define a command NAME from the lines that follow, up to `end`. In them $arg0, $arg1,
    ... are the words given to NAME and $argc their number.
    """
    name = arg.strip()
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise usage_error(define, f"Bad command name \"{name}\".")
    existing = s.commands.commands.get(name)
    if existing is not None and existing.category != "user-defined":
        raise CommandError(f"\"{name}\" is a built-in command; choose another name.")
    if existing is not None and not confirm(s, f"Redefine command \"{name}\"? "):
        raise CommandError("Command not redefined.")
    if s.interactive:
        s.message(f"Type commands for definition of \"{name}\".")
        s.message('End with a line saying just "end".')

    def done(lines):
        old = s.commands.commands.get(name)
        doc = old.doc if old is not None else None
        s.commands.add(name, _user_command(name, list(lines)), category="user-defined", doc=doc)

    s.state.block = BlockReader("define", done)


def document(s, arg: str) -> None:
    """document NAME

    Write the help of user-defined command NAME: the lines that follow, up to `end`
    (the first line is the usage line).
    """
    name = arg.strip()
    cmd = s.commands.commands.get(name)
    if cmd is None or cmd.category != "user-defined":
        raise CommandError(f"Undefined user command \"{name}\"." if cmd is None else
                           f"\"{name}\" is a built-in command: it is documented already.")
    if s.interactive:
        s.message(f"Type documentation for \"{name}\".")
        s.message('End with a line saying just "end".')

    def done(lines):
        cmd.doc = "\n".join(lines) if lines else None

    s.state.block = BlockReader("document", done)


# --- echo / printf / shell ---

def echo(s, arg: str) -> None:
    """echo TEXT

    Print TEXT; C escapes such as \\n are understood. No newline is added, as in gdb:
    end TEXT with \\n (`echo b` then `echo c\\n` print "bc"). Blanks around TEXT are
    dropped; a \\ at its very end stands for nothing, so `echo a \\` prints "a ".
    """
    if (len(arg) - len(arg.rstrip("\\"))) % 2:
        arg = arg[:-1]
    s.write(unescape(arg))


_CONVERSION = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\d+))?(hh|h|ll|l|z|j|t)?([diouxXcsp%])")


def _split_args(text: str) -> list:
    """Split at top-level commas (not inside quotes or parentheses)."""
    out, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            cur += ch
            if ch == quote and not cur.endswith("\\" + quote):
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def format_printf(s, fmt: str, args: list) -> str:
    out = []
    pos = 0
    i = 0

    def next_value():
        nonlocal i
        if i >= len(args):
            raise CommandError("Wrong number of arguments for specified format-string")
        i += 1
        return evaluate(s, args[i - 1])

    for m in _CONVERSION.finditer(fmt):
        stray = fmt[pos:m.start()]
        if "%" in stray:
            bad = stray[stray.index("%") + 1:stray.index("%") + 2] or "%"
            raise CommandError(f"Unrecognized format specifier '{bad}' in printf")
        out.append(stray)
        pos = m.end()
        flags, width, prec, length, conv = m.groups()
        if conv == "%":
            if flags or width or prec is not None or length:
                raise CommandError("Unrecognized format specifier '%' in printf")
            out.append("%")
            continue
        if width == "*":
            width = str(next_value().as_int())
        val = next_value()
        spec = "%" + flags + (width or "") + (f".{prec}" if prec is not None else "")
        if conv == "s":
            text = val.v if isinstance(val.v, str) else _c_string_at(s, val.as_int())
            out.append((spec + "s") % text)
        elif conv == "c":
            out.append((spec + "c") % chr(val.as_int() & 0xFF))
        elif conv == "p":
            p = val.as_int() & ((1 << 64) - 1)
            out.append((spec.replace("#", "") + "s") % (f"{p:#x}" if p else "(nil)"))   # glibc's
        else:
            n = val.as_int()
            n &= (1 << 64) - 1            # the 64-bit pattern, unsigned or signed (C's %ld)
            if conv in "di" and n >> 63:
                n -= 1 << 64
            out.append(c_integer(flags, int(width) if width else 0,
                                 int(prec) if prec is not None else None, conv, n))
    tail = fmt[pos:]
    if "%" in tail:
        bad = tail[tail.index("%") + 1:tail.index("%") + 2] or "%"
        raise CommandError(f"Unrecognized format specifier '{bad}' in printf")
    out.append(tail)
    if i != len(args):
        raise CommandError("Wrong number of arguments for specified format-string")
    return "".join(out)


def c_integer(flags: str, width: int, prec: int | None, conv: str, n: int) -> str:
    """One integer conversion as C's printf does it (Python's % differs: `%#x` of 0 is 0,
    not 0x0; `%#o` of 8 is 010, not 0o10; `%.0d` of 0 is empty)."""
    if width < 0:                       # a negative `*` width is the `-` flag (C)
        flags, width = flags + "-", -width
    digits = {"d": str, "i": str, "u": str, "o": lambda v: f"{v:o}", "x": lambda v: f"{v:x}",
              "X": lambda v: f"{v:X}"}[conv](abs(n))
    if prec is not None:
        digits = "" if prec == 0 and n == 0 else digits.rjust(prec, "0")
    if conv == "o" and "#" in flags and not digits.startswith("0"):
        digits = "0" + digits
    sign = "-" if n < 0 else "+" if "+" in flags and conv in "di" else \
        " " if " " in flags and conv in "di" else ""
    if conv in "xX" and "#" in flags and n:
        sign += "0" + conv
    pad = width - len(sign) - len(digits)
    if pad <= 0:
        return sign + digits
    if "-" in flags:
        return sign + digits + " " * pad
    if "0" in flags and prec is None:
        return sign + "0" * pad + digits
    return " " * pad + sign + digits


def _c_string_at(s, addr: int) -> str:
    raw = bytearray()
    while len(raw) < 4096:
        b = s.read_memory(addr + len(raw), 1)[0]
        if b == 0:
            break
        raw.append(b)
    return raw.decode("latin-1")


def printf(s, arg: str) -> None:
    """printf "FORMAT", ARG...

    Print ARGs (expressions) with a C format: %d %i %u %x %X %o %c %s (a string, or the
    address of one in guest memory) %p %%, with flags, width and precision. No newline
    is added: end the format with \\n.
    """
    parts = _split_args(arg)
    if not parts or not (parts[0].startswith('"') and parts[0].endswith('"') and len(parts[0]) > 1):
        raise usage_error(printf, "Bad format string (it must be in double quotes).")
    try:
        fmt = unescape(parts[0][1:-1])
    except ExprError as e:
        raise CommandError(str(e)) from None
    s.write(format_printf(s, fmt, parts[1:]))


def shell(s, arg: str) -> None:
    """shell COMMAND

    Run COMMAND with /bin/sh and show its output (also `!COMMAND`). Its exit status is
    in $_shell_exitcode.
    """
    if not arg:
        raise usage_error(shell, "Argument required (a shell command).")
    from kvmdbg.debug.engine.evaluate import Value
    try:
        p = subprocess.run(arg, shell=True, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
    except subprocess.TimeoutExpired:
        raise CommandError("The shell command took more than 10 minutes; stopped.") from None
    for line in p.stdout.splitlines():
        s.message(line)
    for line in p.stderr.splitlines():
        s.error(line)
    s.convenience["_shell_exitcode"] = Value(p.returncode, S64)


def register(reg) -> None:
    reg.add("source", source, category="scripting")
    reg.add("define", define, category="scripting")
    reg.add("document", document, category="scripting")
    reg.add("echo", echo, category="scripting")
    reg.add("printf", printf, category="scripting")
    reg.add("shell", shell, category="scripting")


__all__ = ["register", "split_word"]
