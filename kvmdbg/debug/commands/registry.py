"""Commands are registered with their metadata in one place; the docstring is the help.

The first docstring line is the usage line (shown by `help CMD` and by bad-argument
errors); the rest is the description. Lookup follows gdb: exact names, fixed
aliases, then any unique prefix, with gdb's messages for the other cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmdbg.errors import CommandError


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
    repeatable: bool = False
    subcommands: "Registry | None" = None

    @property
    def usage(self) -> str:
        doc = (self.fn.__doc__ or self.name).strip()
        return doc.splitlines()[0].strip()

    @property
    def help(self) -> str:
        doc = (self.fn.__doc__ or self.name).strip().splitlines()
        body = "\n".join(line.strip() if i == 0 else line[4:] if line.startswith("    ") else line
                         for i, line in enumerate(doc))
        return body


@dataclass
class Registry:
    prefix: str = ""                 # "info " for the info subcommands
    commands: dict = field(default_factory=dict)
    aliases: dict = field(default_factory=dict)

    def add(self, name, fn, aliases=(), category="support", repeatable=False, subcommands=None):
        cmd = Command(name, fn, tuple(aliases), category, repeatable, subcommands)
        self.commands[name] = cmd
        for a in aliases:
            self.aliases[a] = name
        return cmd

    def command(self, name, aliases=(), category="support", repeatable=False):
        """Decorator form of add()."""
        def register(fn):
            self.add(name, fn, aliases, category, repeatable)
            return fn
        return register

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

    def execute(self, session, line: str) -> None:
        line = line.strip()
        if not line or line.startswith("#"):
            return
        word, _, rest = _split_word(line)
        cmd = self.lookup(word)
        if cmd.subcommands is not None and rest:
            sub, _, subrest = _split_word(rest)
            cmd.subcommands.lookup(sub).fn(session, subrest.strip())
            return
        cmd.fn(session, rest.strip())


def _split_word(line: str):
    """'x/4gx $rsp' -> ('x', '/', '4gx $rsp'); 'stepi 5' -> ('stepi', ' ', '5')."""
    for i, ch in enumerate(line):
        if ch.isspace() or (ch == "/" and i > 0):
            if ch == "/":
                return line[:i], "/", line[i:]
            return line[:i], " ", line[i:].lstrip()
    return line, "", ""


def usage_error(cmd_fn, detail: str = "") -> CommandError:
    usage = (cmd_fn.__doc__ or "").strip().splitlines()[0]
    msg = f"{detail}  Usage: {usage}" if detail else f"Usage: {usage}"
    return CommandError(msg)
