"""Source: symbol-file, info line, list, info source, directory, show directories,
set/show substitute-path. gdb's messages; the line table comes from the program's ELF
(programs/NAME.elf beside NAME.bin, or `symbol-file FILE`)."""

from __future__ import annotations

import os
import re

from kvmdbg.debug.commands.registry import usage_error
from kvmdbg.debug.engine.source import NO_SYMTAB
from kvmdbg.debug.engine.state import confirm
from kvmdbg.errors import CommandError

LINES_TO_LIST = 10


class SourceState:
    """Where `list` continues and which file is current (gdb's current source line)."""

    def __init__(self):
        self.file = None            # the current source file (recorded name)
        self.line = 0               # the current line (a stop, `list` centre)
        self.first = 0              # the last listing: [first, last]
        self.last = 0
        self.listed = False         # a listing since the current line was set


def src(s) -> SourceState:
    st = getattr(s, "_source_state", None)
    if st is None:
        st = s._source_state = SourceState()
    return st


def set_current(s, file: str, line: int) -> None:
    """A stop at file:line (or `info line`): `list` centres there next."""
    st = src(s)
    st.file, st.line, st.listed = file, line, False


def _di(s):
    di = getattr(s, "debug_info", None)
    if di is None or not di.has_lines:
        raise CommandError(NO_SYMTAB)
    return di


def gdb_address(s, addr: int) -> str:
    """gdb's print_address: `0x100033 <flip>`; bare outside the ELF's sections."""
    di = getattr(s, "debug_info", None)
    sym = s.symbols.lookup(addr) if di is None or di.in_section(addr) else ""
    return f"{addr:#x} {sym}" if sym else f"{addr:#x}"


def default_file(s) -> str:
    di = _di(s)
    st = src(s)
    return st.file or di.first_file()


# --- linespecs: LINE, FILE:LINE, FUNC, *ADDR ---

_FILE_LINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+)$")


def is_line_spec(s, text: str) -> bool:
    """LINE or FILE:LINE (when there is a line table)."""
    di = getattr(s, "debug_info", None)
    if di is None or not di.has_lines:
        return False
    t = text.strip()
    return t.isdigit() or bool(_FILE_LINE.match(t))


def file_line(s, text: str):
    """(file, line, file_given) of `LINE` or `FILE:LINE`."""
    di = _di(s)
    t = text.strip()
    m = _FILE_LINE.match(t)
    if m:
        f = di.find_file(m.group("file"))
        if f is None:
            raise CommandError(f"No source file named {m.group('file')}.")
        return f, int(m.group("line")), True
    return default_file(s), int(t), False


def address_of(s, text: str) -> int:
    from kvmdbg.debug.engine.evaluate import evaluate_address
    t = text.strip()
    if t.startswith("*"):
        addr, space = evaluate_address(s, t[1:])
        if space != "gva":
            raise CommandError(f"Locations are guest-virtual addresses (got {space}:{addr:#x}).")
        return addr
    if t in s.symbols:
        return s.symbols[t]
    if re.match(r"^[A-Za-z_.$][\w.$]*$", t):
        raise CommandError(f'Function "{t}" not defined.')
    addr, _ = evaluate_address(s, t)
    return addr


def line_location(s, file: str, line: int, given: bool):
    """(address, line with code) for `break FILE:LINE`: the line, or the next with code."""
    di = _di(s)
    best = di.best_line(file, line)
    if best is None:
        if given:
            raise CommandError(f'No line {line} in file "{file}".')
        raise CommandError(f"No line {line} in the current file.")
    n, rows = best
    return min(r.address for r in rows), n


# --- info line ---

def info_line(s, arg: str) -> None:
    """info line [*ADDR|FILE:LINE|LINE|FUNC]

    Where the code of a source line starts and ends, from the line table of the program's
    ELF (gdb's message); for an address or a function, the line that holds it. Without an
    argument, the line last listed. The start becomes the default address for `x`.
    """
    di = getattr(s, "debug_info", None)
    text = arg.strip()
    st = src(s)
    if not text:
        if di is None or not di.has_lines or st.file is None:
            s.message("No line number information available.")
            return
        _info_line_at(s, di, st.file, st.first if st.listed else st.line)
        return
    if is_line_spec(s, text):
        f, line, _ = file_line(s, text)
        _info_line_at(s, di, f, line)
        return
    if di is None and not s.symbols.by_name:
        raise CommandError(NO_SYMTAB)
    addr = address_of(s, text)
    row = di.row_at(addr) if di is not None else None
    if row is None or (not text.startswith("*") and row.address < addr):
        s.message(f"No line number information available for address {gdb_address(s, addr)}")
        return
    _say_range(s, row.line, row.file, row.address, row.end)


def _info_line_at(s, di, file: str, line: int) -> None:
    best = di.best_line(file, line)
    if best is None:
        s.message(f'Line number {line} is out of range for "{file}".')
        return
    n, rows = best
    first = min(rows, key=lambda r: r.address)
    if n != line:
        s.message(f'Line {line} of "{file}" is at address {gdb_address(s, first.address)} '
                  "but contains no code.")
        s.state.examine.next_address = first.address
        return
    _say_range(s, line, file, first.address, first.end)


def _say_range(s, line, file, start, end) -> None:
    s.message(f'Line {line} of "{file}" starts at address {gdb_address(s, start)} and ends at '
              f"{gdb_address(s, end)}.")
    s.state.examine.next_address = start


# --- list ---

def _unit_dir(s, file: str) -> str:
    u = s.debug_info.unit_of(file)
    return u.comp_dir if u else ""


def source_text(s, file: str):
    """The lines of a source file, or None when it cannot be found."""
    path = s.sources.find(file, _unit_dir(s, file))
    if path is None:
        return None
    try:
        return s.sources.lines(path)
    except OSError:
        return None


def print_lines(s, file: str, first: int, last: int) -> None:
    """Lines first..last (gdb's print_source_lines), or the one missing-file line."""
    st = src(s)
    st.file = file
    text = source_text(s, file)
    if text is None:
        missing_line(s, file, first)
        st.first, st.last, st.listed = first, first - 1, True
        return
    if first > len(text):
        raise CommandError(f"Line number {first} out of range; {file} has {len(text)} lines.")
    last = min(last, len(text))
    for n in range(first, last + 1):
        s.message(f"{n}\t{text[n - 1]}")
    st.first, st.last, st.listed = first, last, True


def missing_line(s, file: str, line: int) -> None:
    """gdb: `42\tsmep_flip.S: No such file or directory.` the first time, then `42\tin FILE`."""
    if file in s.sources.errored:
        s.message(f"{line}\tin {file}")
    else:
        s.sources.errored.add(file)
        s.error(f"{line}\t{file}: No such file or directory.")


def _centred(s, file: str, line: int) -> None:
    first = max(line - LINES_TO_LIST // 2, 1)
    print_lines(s, file, first, first + LINES_TO_LIST - 1)


def list_(s, arg: str) -> None:
    """list [LINE|FILE:LINE|FUNC|*ADDR|-|FIRST,LAST]

    Show source lines (10, centred on the place given) from the program's source
    files; `list` again, or an empty line, goes on with the next 10, `list -` shows the
    10 before. Sources are found through DWARF's compilation directory and the
    `directory` path.
    """
    di = _di(s)
    st = src(s)
    text = arg.strip()
    s.state.next_repeat = "list -" if text == "-" else "list"
    if not text:
        if st.listed and st.file is not None:
            print_lines(s, st.file, st.last + 1, st.last + LINES_TO_LIST)
        elif st.file is not None and st.line:
            _centred(s, st.file, st.line)
        else:
            print_lines(s, default_file(s), 1, LINES_TO_LIST)
        return
    if text == "-":
        if st.file is None or not st.listed:
            raise CommandError("No default source file; use \"list FILE:LINE\" first.")
        if st.first <= 1:
            raise CommandError(f'Already at the start of {st.file}.')
        first = max(st.first - LINES_TO_LIST, 1)
        print_lines(s, st.file, first, st.first - 1)
        return
    if "," in text:
        a, b = (x.strip() for x in text.split(",", 1))
        if a:
            f, la = _list_place(s, di, a)
            lb = file_line(s, b)[1] if b else la + LINES_TO_LIST - 1
        else:
            f, lb = _list_place(s, di, b)
            la = max(lb - LINES_TO_LIST + 1, 1)
        print_lines(s, f, la, lb)
        return
    f, line = _list_place(s, di, text)
    _centred(s, f, line)


def _list_place(s, di, text: str):
    if is_line_spec(s, text):
        f, line, _ = file_line(s, text)
        return f, line
    addr = address_of(s, text)
    row = di.row_at(addr)
    if row is None:
        raise CommandError(f"No line number information available for address "
                           f"{gdb_address(s, addr)}")
    if text.startswith("*"):
        s.message(f"{addr:#x} is at {row.file}:{row.line}.")
    return row.file, row.line


# --- info source ---

def info_source(s, arg: str) -> None:
    """info source

    The current source file (the one last listed or stopped in): its compilation
    directory, where it was found and how many lines it has, the language and producer.
    """
    st = src(s)
    di = getattr(s, "debug_info", None)
    if di is None or st.file is None:
        s.message("No current source file.")
        return
    u = di.unit_of(st.file)
    s.message(f"Current source file is {st.file}")
    if u and u.comp_dir:
        s.message(f"Compilation directory is {u.comp_dir}")
    path = s.sources.find(st.file, u.comp_dir if u else "")
    if path is not None:
        s.message(f"Located in {path}")
        text = source_text(s, st.file)
        if text is not None:
            s.message(f"Contains {len(text)} lines.")
    if u:
        s.message(f"Source language is {u.language}.")
        if u.producer:
            s.message(f"Producer is {u.producer}.")
        s.message(f"Compiled with DWARF {u.version} debugging format.")
    s.message("Does not include preprocessor macro info.")


# --- directory, substitute-path ---

def directory(s, arg: str) -> None:
    """directory [DIR...]

    Add directories to the front of the source path (searched before $cdir, DWARF's
    compilation directory, and $cwd). Without DIR, reset the path to $cdir:$cwd.
    """
    finder = s.sources
    if not arg.strip():
        if confirm(s, "Reinitialize source path to empty? "):
            finder.reset()
    else:
        dirs = [d for part in arg.split() for d in part.split(":") if d]
        for d in reversed(dirs):
            if d in ("$cdir", "$cwd"):
                continue
            full = os.path.abspath(os.path.expanduser(d))
            if not os.path.exists(full):
                s.message(f"Warning: {full}: No such file or directory.")
            finder.add(full)
    if not getattr(s, "batch", False):
        s.message(f"Source directories searched: {finder.path_text()}")


def show_directories(s, arg: str) -> None:
    """show directories

    The source path: directories added with `directory`, then $cdir:$cwd.
    """
    s.message(f"Source directories searched: {s.sources.path_text()}")


def set_substitute_path(s, arg: str) -> None:
    """set substitute-path FROM TO

    Find source files recorded under FROM (a directory prefix in DWARF's compilation
    directory or file names) under TO instead.
    """
    words = arg.split()
    if len(words) < 2:
        raise CommandError("Incorrect usage, too few arguments in command")
    if len(words) > 2:
        raise CommandError("Incorrect usage, too many arguments in command")
    s.sources.substitute(words[0], words[1])


def show_substitute_path(s, arg: str) -> None:
    """show substitute-path

    The source path substitution rules (set substitute-path FROM TO).
    """
    s.message("List of all source path substitution rules:")
    for frm, to in s.sources.substitutions:
        s.message(f"  `{frm}' -> `{to}'.")


# --- symbol-file ---

def symbol_file(s, arg: str) -> None:
    """symbol-file [FILE]

    Read symbols and the DWARF line table from the ELF FILE (they replace the program's).
    PROGRAM.elf beside PROGRAM.bin is read at start. Without FILE, discard them.
    """
    path = arg.strip()
    if not path:
        di = getattr(s, "debug_info", None)
        if di is not None or len(s.symbols.by_name):
            where = f" from `{os.path.abspath(di.path)}'" if di is not None else ""
            if not confirm(s, f"Discard symbol table{where}? "):
                raise CommandError("Not confirmed.")
        s.unload_symbols()
        s.message("No symbol file now.")
        return
    s.load_symbol_file(path, announce=True)


def register(reg) -> None:
    reg.add("list", list_, aliases=("l",), category="files", repeatable=True)
    reg.add("directory", directory, aliases=("dir",), category="files")
    reg.add("symbol-file", symbol_file, category="files")
    reg.sub("info").add("line", info_line, category="files")
    reg.sub("info").add("source", info_source, category="files")
    reg.sub("show").add("directories", show_directories, category="files")
    reg.sub("set").add("substitute-path", set_substitute_path, category="files")
    reg.sub("show").add("substitute-path", show_substitute_path, category="files")
