"""Symbols and source lines from an ELF (its symbol table and DWARF line table, read with
pyelftools), and finding the source files (gdb's source path and substitution rules).

The shipped programs are raw binaries; tools/build_programs.py keeps the linked ELF
beside each one (programs/NAME.elf), which the session reads when it is there. `symbol-file
FILE` and `--symbols FILE` read another. Addresses are the ELF's (the programs are linked
at their load address).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field

from kvmdbg.errors import CommandError

NO_SYMTAB = 'No symbol table is loaded.  Use the "file" command.'
LANGUAGES = {0x8001: "asm", 0x0001: "c", 0x000c: "c", 0x001d: "c", 0x0004: "c++",
             0x001c: "rust"}


@dataclass
class Row:
    """One line-table entry: [address, end) belongs to file:line."""
    address: int
    end: int
    file: str
    line: int
    cu: "Unit"


@dataclass
class Unit:
    """A compilation unit: its file name, directory and what produced it."""
    name: str
    comp_dir: str
    producer: str
    language: str
    version: int
    files: list = field(default_factory=list)


class DebugInfo:
    """What one ELF says: symbols (name -> address), sections, line rows, units."""

    def __init__(self, path: str, symbols: dict, sections: list, rows: list, units: list):
        self.path = path
        self.symbols = symbols
        self.sections = sections          # (start, end) of the allocated sections
        self.rows = sorted(rows, key=lambda r: r.address)
        self._starts = [r.address for r in self.rows]
        self.units = units
        self.data = b""                   # the ELF's bytes, for the CFI and .debug_info readers
        self._cfi = self._scope = None
        self.dwarf_error = ""             # why they could not be read (one line)

    def _elf(self):
        import io

        from elftools.elf.elffile import ELFFile
        return ELFFile(io.BytesIO(self.data))

    @property
    def cfi(self):
        """The call-frame information (frames.CallFrameInfo; empty if there is none or it
        cannot be read, dwarf_error saying why)."""
        if self._cfi is None:
            from kvmdbg.debug.engine.frames import CallFrameInfo, read_cfi
            try:
                self._cfi = read_cfi(self._elf())
            except Exception as e:            # noqa: BLE001 - corrupt CFI: one line, no frames
                self.dwarf_error = f"{os.path.basename(self.path)}: bad call-frame information ({e})"
                self._cfi = CallFrameInfo([])
        return self._cfi

    @property
    def scope(self):
        """The functions, variables and types of .debug_info (dwarf_scope.DwarfScope), or
        None when the ELF has none or it cannot be read (dwarf_error says why)."""
        if self._scope is None:
            from kvmdbg.debug.engine.dwarf_scope import DwarfScope
            try:
                elf = self._elf()
                self._scope = DwarfScope(elf) if elf.has_dwarf_info() and \
                    elf.get_section_by_name(".debug_info") is not None else False
                if self._scope:
                    self._scope.elf_symbols = self.symbols
            except Exception as e:            # noqa: BLE001 - corrupt DWARF: one line
                self.dwarf_error = f"{os.path.basename(self.path)}: bad DWARF ({e})"
                self._scope = False
        return self._scope or None

    def file_bytes(self, addr: int, n: int) -> bytes | None:
        """n bytes at addr as the ELF file holds them (gdb reads code there before the
        program runs), or None outside its PROGBITS sections."""
        for start, size, offset in getattr(self, "contents", ()):
            if start <= addr and addr + n <= start + size:
                at = offset + addr - start
                return self.data[at:at + n]
        return None

    def is_function(self, name: str) -> bool:
        """An STT_FUNC symbol (what gdb skips a prologue for; a label is broken at)."""
        return name in getattr(self, "functions", ())

    @property
    def has_lines(self) -> bool:
        return bool(self.rows)

    def in_section(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.sections)

    def row_at(self, pc: int) -> Row | None:
        """The line-table row whose range holds pc."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0:
            return None
        r = self.rows[i]
        return r if r.address <= pc < r.end else None

    def files(self) -> list:
        seen = []
        for u in self.units:
            for f in u.files:
                if f not in seen:
                    seen.append(f)
        return seen

    def find_file(self, name: str) -> str | None:
        """The recorded file name that `name` means (the same, or its trailing part)."""
        for f in self.files():
            if f == name or f.endswith("/" + name) or os.path.basename(f) == name:
                return f
        return None

    def unit_of(self, file: str) -> Unit | None:
        return next((u for u in self.units if file in u.files), self.units[0] if self.units else None)

    def line_rows(self, file: str) -> dict:
        """line -> its rows, for one file."""
        out: dict = {}
        for r in self.rows:
            if r.file == file:
                out.setdefault(r.line, []).append(r)
        return out

    def best_line(self, file: str, line: int):
        """(line, rows) of `line` if it has code, else of the next line that has (gdb's
        rule for breakpoints and `info line`); None past the last line with code."""
        by_line = self.line_rows(file)
        later = sorted(n for n in by_line if n >= line)
        if not later:
            return None
        return later[0], by_line[later[0]]

    def first_file(self) -> str | None:
        fs = self.files()
        return fs[0] if fs else None


def read_elf(path: str) -> DebugInfo:
    """Read an ELF's symbols and line table; CommandError (one line, gdb's words) if the
    file is missing or not an ELF."""
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
    except ImportError:
        raise CommandError("Reading ELF symbols needs pyelftools (pip install pyelftools).") \
            from None
    if not os.path.exists(path):
        raise CommandError(f"{path}: No such file or directory.")
    if os.path.isdir(path):
        raise CommandError(f"{path}: Is a directory.")
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            di = _read(path, elf)
            f.seek(0)
            di.data = f.read()
            return di
    except (ELFError, ValueError, KeyError, IndexError) as e:
        if isinstance(e, ELFError) and "Magic number" in str(e):
            raise CommandError(f"`{os.path.abspath(path)}': can't read symbols: "
                               "file format not recognized.") from None
        raise CommandError(f"`{os.path.abspath(path)}': can't read symbols: bad DWARF or ELF "
                           f"({e}).") from None
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}.") from None


def _read(path: str, elf) -> DebugInfo:
    symbols: dict = {}
    functions: set = set()
    sections = []
    contents = []
    for sec in elf.iter_sections():
        if sec["sh_flags"] & 2 and sec["sh_size"]:          # SHF_ALLOC
            sections.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]))
            if sec["sh_type"] == "SHT_PROGBITS":
                contents.append((sec["sh_addr"], sec["sh_size"], sec["sh_offset"]))
    symtab = elf.get_section_by_name(".symtab")
    if symtab is not None:
        for sym in symtab.iter_symbols():
            kind = sym["st_info"]["type"]
            if not sym.name or sym.name.startswith(".") or \
                    kind not in ("STT_NOTYPE", "STT_FUNC", "STT_OBJECT") or \
                    sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
                continue
            symbols[sym.name] = sym["st_value"]
            if kind == "STT_FUNC":
                functions.add(sym.name)
    rows, units = [], []
    if elf.has_dwarf_info():
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            attrs = top.attributes

            def text(name):
                a = attrs.get(name)
                v = a.value if a is not None else b""
                return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            lang = attrs.get("DW_AT_language")
            unit = Unit(text("DW_AT_name"), text("DW_AT_comp_dir"), text("DW_AT_producer"),
                        LANGUAGES.get(lang.value if lang else -1, "unknown"), cu.header.version)
            lp = dwarf.line_program_for_CU(cu)
            if lp is None:
                units.append(unit)
                continue
            names = _file_names(lp)
            unit.files = [n for n in names.values()]
            units.append(unit)
            prev = None
            for entry in lp.get_entries():
                st = entry.state
                if st is None:
                    continue
                if prev is not None and st.address > prev.address:
                    rows.append(Row(prev.address, st.address, names.get(prev.file, "??"),
                                    prev.line, unit))
                if st.end_sequence:
                    prev = None
                elif prev is not None and st.address == prev.address and prev.is_stmt \
                        and not st.is_stmt:
                    continue        # gdb: at one address, the last is-statement entry
                else:
                    prev = _copy(st)
    di = DebugInfo(path, symbols, sections, rows, units)
    di.functions = functions
    di.contents = contents
    return di


def _copy(st):
    class S:
        pass
    c = S()
    c.address, c.file, c.line, c.is_stmt = st.address, st.file, st.line, st.is_stmt
    return c


def _file_names(lp) -> dict:
    """file index -> name as gdb shows it (with its include directory when not the unit's)."""
    out = {}
    dirs = [d.decode(errors="replace") if isinstance(d, bytes) else d
            for d in lp.header.include_directory]
    base = 1 if lp.header.version < 5 else 0
    for i, fe in enumerate(lp.header.file_entry):
        name = fe.name.decode(errors="replace") if isinstance(fe.name, bytes) else fe.name
        d = fe.dir_index
        if lp.header.version < 5 and d > 0 and d - 1 < len(dirs):
            name = os.path.join(dirs[d - 1], name)
        elif lp.header.version >= 5 and 0 < d < len(dirs):     # 0 is the unit's directory
            name = os.path.join(dirs[d], name)
        out[i + base] = name
    return out


# --- finding the source files ---

class SourceFinder:
    """gdb's source path (`directory`, default $cdir:$cwd) and substitute-path rules."""

    def __init__(self):
        self.directories: list = []        # added by `directory`, searched first
        self.substitutions: list = []      # (from, to)
        self._cache: dict = {}
        self.errored: set = set()          # files already reported missing (gdb says it once)

    def path_text(self) -> str:
        return ":".join(self.directories + ["$cdir", "$cwd"])

    def reset(self) -> None:
        self.directories = []
        self._cache.clear()

    def add(self, d: str) -> None:
        full = os.path.abspath(os.path.expanduser(d))
        if full in self.directories:
            self.directories.remove(full)
        self.directories.insert(0, full)
        self._cache.clear()

    def substitute(self, frm: str, to: str) -> None:
        self.substitutions = [(f, t) for f, t in self.substitutions if f != frm]
        self.substitutions.append((frm, to))
        self._cache.clear()

    def rewrite(self, path: str) -> str:
        for frm, to in self.substitutions:
            if path == frm or path.startswith(frm.rstrip("/") + "/"):
                return to + path[len(frm):]
        return path

    def find(self, file: str, comp_dir: str) -> str | None:
        """The full path of a source file, or None."""
        key = (file, comp_dir)
        if key not in self._cache:
            self._cache[key] = self._find(file, comp_dir)
        return self._cache[key]

    def _find(self, file: str, comp_dir: str) -> str | None:
        cdir = self.rewrite(comp_dir) if comp_dir else ""
        name = self.rewrite(file)
        if os.path.isabs(name):
            if os.path.isfile(name):
                return os.path.realpath(name)
        dirs = []
        for d in self.directories + ["$cdir", "$cwd"]:
            if d == "$cdir":
                if cdir:
                    dirs.append(cdir)
            elif d == "$cwd":
                dirs.append(os.getcwd())
            else:
                dirs.append(d)
        # gdb's rule: a relative name is first taken under DWARF's (relative) compilation
        # directory, so `directory /work/shared/kut` finds kvm-unit-tests/x86/access.c.
        cands = [os.path.join(cdir, name)] if cdir and not os.path.isabs(cdir) else []
        for cand in cands + [name, os.path.basename(name)]:
            for d in dirs:
                p = os.path.join(d, cand)
                if os.path.isfile(p):
                    return os.path.realpath(p)
        return None

    def lines(self, path: str) -> list:
        key = ("text", path)
        if key not in self._cache:
            with open(path, encoding="utf-8", errors="replace") as f:
                self._cache[key] = f.read().splitlines()
        return self._cache[key]
