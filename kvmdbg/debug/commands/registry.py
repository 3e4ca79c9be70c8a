"""Commands are registered with their metadata in one place; the docstring is the help.

The first docstring line is the usage line (shown by `help CMD`, by bad-argument
errors, by completion and in the README's command table); the rest is the
description. Lookup follows gdb: exact names, fixed aliases, then any unique
prefix, with gdb's messages for the other cases.

Prefix commands (`info`, `set`, `show`) carry a Registry of their own, so another
module adds a subcommand with one call:

    def register(reg):
        reg.sub("info").add("roots", info_roots, category="mmu")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmdbg.errors import CommandError

# gdb's command classes, in `help` order, with its one-line descriptions where it has one.
CLASSES = {
    "breakpoints": "Making program stop at certain points.",
    "data": "Examining data.",
    "files": "Specifying and examining files.",
    "mmu": "The KVM MMU: roots, SPTEs, the hardware TLB, memslots, events, counters.",
    "running": "Running the program.",
    "scripting": "Command files, user-defined commands, logging, the shell.",
    "status": "Status inquiries.",
    "support": "Support facilities.",
    "user-defined": "User-defined commands.",
}


class QuitRequest(Exception):
    def __init__(self, code: int = 0):
        super().__init__(code)
        self.code = code


@dataclass
class Command:
    name: str
    fn: object
    aliases: tuple = ()
    category: str = "support"
    repeatable: bool = False          # an empty line (interactive) runs it again
    subcommands: "Registry | None" = None
    resumes: bool = False             # it runs the guest (ends a breakpoint command list)
    complete: object = None           # fn(session, word) -> [(candidate, description)]
    dispatch: bool = True             # look the first argument up in subcommands
    doc: str | None = None            # help text when not the function's docstring
    raw: bool = False                 # gets its argument with trailing blanks kept

    @property
    def _doc(self) -> str:
        return (self.doc if self.doc is not None else self.fn.__doc__ or self.name).strip()

    @property
    def usage(self) -> str:
        return self._doc.splitlines()[0].strip()

    @property
    def summary(self) -> str:
        """The first sentence of the description (for `help CLASS` and `apropos`)."""
        lines = self._doc.splitlines()[1:]
        text = " ".join(line.strip() for line in lines if line.strip())
        if not text:
            return self.usage
        end = re.search(r"\.\s+(?=[A-Z])", text)
        return text if end is None else text[:end.start() + 1]

    @property
    def help(self) -> str:
        doc = self._doc.splitlines()
        return "\n".join(line.strip() if i == 0 else line[4:] if line.startswith("    ") else line
                         for i, line in enumerate(doc))


@dataclass
class Registry:
    prefix: str = ""                 # "info " for the info subcommands
    commands: dict = field(default_factory=dict)
    aliases: dict = field(default_factory=dict)

    def add(self, name, fn, aliases=(), category="support", repeatable=False, subcommands=None,
            resumes=False, complete=None, dispatch=True, doc=None, raw=False):
        cmd = Command(name, fn, tuple(aliases), category, repeatable, subcommands, resumes,
                      complete, dispatch, doc, raw)
        self.commands[name] = cmd
        for a in aliases:
            self.aliases[a] = name
        return cmd

    def remove(self, name: str) -> None:
        cmd = self.commands.pop(name)
        for a in cmd.aliases:
            self.aliases.pop(a, None)

    def command(self, name, aliases=(), category="support", repeatable=False, **kw):
        """Decorator form of add()."""
        def register(fn):
            self.add(name, fn, aliases, category, repeatable, **kw)
            return fn
        return register

    def sub(self, name: str) -> "Registry":
        """The subcommand registry of a prefix command (`info`, `set`, `show`)."""
        cmd = self.commands[name]
        if cmd.subcommands is None:
            cmd.subcommands = Registry(prefix=f"{self.prefix}{name} ")
        return cmd.subcommands

    def find(self, word: str) -> Command | None:
        """Like lookup() but None instead of an error."""
        try:
            return self.lookup(word)
        except CommandError:
            return None

    def lookup(self, word: str) -> Command:
        if word in self.commands:
            return self.commands[word]
        if word in self.aliases:
            return self.commands[self.aliases[word]]
        matches = sorted(n for n in self.commands if n.startswith(word))
        if len(matches) == 1:
            return self.commands[matches[0]]
        if not matches:
            if self.prefix:
                raise CommandError(f'Undefined {self.prefix.strip()} command: "{word}".  '
                                   f'Try "help {self.prefix.strip()}".')
            raise CommandError(f'Undefined command: "{word}".  Try "help".')
        raise CommandError(f'Ambiguous {self.prefix}command "{word}": {", ".join(matches)}.')

    def resolve(self, line: str):
        """(Command, argument text) for a command line, following subcommands."""
        word, _, rest = split_word(line.strip())
        cmd = self.lookup(word)
        rest = rest.strip()
        while cmd.subcommands is not None and cmd.dispatch and rest:
            sub, _, subrest = split_word(rest)
            cmd, rest = cmd.subcommands.lookup(sub), subrest.strip()
        return cmd, rest

    def execute(self, session, line: str) -> None:
        text = line.lstrip()
        line = line.strip()
        if not line or line.startswith("#"):
            return
        if line.startswith("!"):
            line = "shell " + line[1:]
        cmd, rest = self.resolve(line)
        if cmd.raw:
            rest = split_word(text)[2]
        cmd.fn(session, rest)

    def walk(self):
        """(full name, Command) for every command and subcommand, sorted."""
        for name, cmd in sorted(self.commands.items()):
            yield self.prefix + name, cmd
            if cmd.subcommands is not None:
                yield from cmd.subcommands.walk()


def split_word(line: str):
    """'x/4gx $rsp' -> ('x', '/', '/4gx $rsp'); 'stepi 5' -> ('stepi', ' ', '5')."""
    for i, ch in enumerate(line):
        if ch.isspace() or (ch == "/" and i > 0):
            if ch == "/":
                return line[:i], "/", line[i:]
            return line[:i], " ", line[i:].lstrip()
    return line, "", ""


_split_word = split_word


def list_subcommands(s, prefix: str, what: str) -> None:
    """What a prefix command says when given no subcommand (gdb's words), e.g.
    '"info" must be followed by the name of an info command.' and the list."""
    s.message(f'"{prefix}" must be followed by the name of {what}.')
    s.message(f"List of {prefix} subcommands:")
    s.message("")
    for name, cmd in sorted(s.commands.lookup(prefix).subcommands.commands.items()):
        s.message(f"{prefix} {name} -- {cmd.summary}")


def no_arguments(cmd_fn, arg: str) -> None:
    """For commands that take none: an argument is an error that shows the usage."""
    if arg.strip():
        raise usage_error(cmd_fn, f"Unexpected argument \"{arg.strip()}\".")


MAX_COUNT = 2**31 - 1          # counts (stepi N, x/N, ignore N C, ...) are gdb's C ints
ARG_MIN, ARG_MAX = -(1 << 63), (1 << 64) - 1      # --arg / set arg: a 64-bit RDX, either sign


def check_range(what: str, value: int, lo: int, hi: int, extra: str = "") -> int:
    """value, or the one-line error naming the field and its range (the --vcpus wording)."""
    if not lo <= value <= hi:
        raise CommandError(f"{what} must be between {lo} and {hi}{extra} (got {value}).")
    return value


def usage_error(cmd_fn, detail: str = "") -> CommandError:
    usage = (cmd_fn.__doc__ or "").strip().splitlines()[0]
    msg = f"{detail}  Usage: {usage}" if detail else f"Usage: {usage}"
    return CommandError(msg)
