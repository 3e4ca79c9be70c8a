"""The debugger's per-session state that is not the machine: displays, `x` defaults,
settings, the log file, multi-line blocks being read, breakpoint commands waiting to
run, what an empty line repeats, and the register snapshots behind the `*` marks.

Kept apart from Session so the engine's core (VM, stepping, memory) stays small.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class Display:
    number: int
    expression: str
    fmt: str = ""                    # '' natural, a print letter, or an x-style 'NFU' with i/s
    enabled: bool = True

    @property
    def examines(self) -> bool:
        return any(c in self.fmt for c in "is")


@dataclass
class ExamineDefaults:
    """gdb's sticky `x` defaults and where the next `x` continues."""
    fmt: str = "x"
    size: str = "w"
    count: int = 1
    next_address: int | None = None
    space: str = "gva"


@dataclass
class Settings:
    confirm: bool = True
    pagination: bool = True
    style: bool = True               # colour allowed (the terminal decides whether it is used)
    height: int = 0
    width: int = 0
    logging_file: str = "kvmdbg.txt"
    logging_overwrite: bool = False
    logging_redirect: bool = False


class LogFile:
    """`set logging on`: a plain-text copy of the output (ANSI stripped) and the commands."""

    def __init__(self, path: str, overwrite: bool):
        self.path = path
        self._f = open(path, "w" if overwrite else "a", encoding="utf-8")

    def write(self, text: str, end: str = "\n") -> None:
        self._f.write(strip_ansi(text) + end)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class BlockReader:
    """Collects the lines of a `commands`/`define`/`document` body up to its `end`.

    Nested blocks (a `commands` inside a `define`) are counted so the right `end`
    closes this one."""

    OPENERS = ("commands", "define", "document", "while", "if", "python")

    def __init__(self, kind: str, on_end):
        self.kind = kind
        self.lines: list[str] = []
        self._depth = 0
        self._on_end = on_end

    def feed(self, line: str) -> bool:
        """Take one line; True when the block is complete (and on_end has run)."""
        text = line.strip()
        if text == "end":
            if self._depth == 0:
                self._on_end(self.lines)
                return True
            self._depth -= 1
        elif text.split()[:1] and text.split()[0] in self.OPENERS:
            self._depth += 1
        if text:
            self.lines.append(text)
        return False


@dataclass
class DebuggerState:
    displays: list = field(default_factory=list)
    next_display: int = 1
    examine: ExamineDefaults = field(default_factory=ExamineDefaults)
    disassemble_next: int | None = None
    settings: Settings = field(default_factory=Settings)
    log: LogFile | None = None
    block: BlockReader | None = None
    pending_commands: list = field(default_factory=list)
    repeat_line: str = ""            # what an empty line runs (interactive only)
    next_repeat: str | None = None   # set by a command to change what repeating it runs
    regs_last: dict = field(default_factory=dict)       # vcpu -> {reg: value} at its last stop
    regs_baseline: dict = field(default_factory=dict)   # vcpu -> {reg: value} at the stop before
    user_depth: int = 0
    partial: str = ""                # echo/printf text not yet ended by a newline
    step_hint_shown: bool = False
    stop_place: tuple | None = None  # (rip, file, line) the next stop report shows instead
    selected_frame: tuple = (None, 0)   # (stop key, level): gdb's selected frame
    in_breakpoint_commands: bool = False
    source_dirs: list = field(default_factory=list)
    sourcing: int = 0                # command files being read (source, -x, the init file)
    translate_sections: list = field(default_factory=list)   # fn(s, gva, gpa) -> lines


def confirm(session, question: str) -> bool:
    """gdb's query(): ask the person at the terminal; otherwise answer yes and say so.
    With `set confirm off` (and in -batch) nothing is asked or printed, nor for commands
    that no one typed: lines of a command file, of a user-defined command or of a
    breakpoint's command list (gdb runs them with from_tty 0, and its commands then do
    not query)."""
    st = session.state
    if not st.settings.confirm or st.sourcing or st.user_depth or st.in_breakpoint_commands:
        return True
    if session.ask is not None:
        return session.ask(question + "(y or n) ")
    for line in (question + "(y or n) [answered Y; input not from terminal]").splitlines():
        session.message(line)
    return True
