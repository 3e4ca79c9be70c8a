"""Support: help, echo, quit."""

from __future__ import annotations

from kvmdbg.debug.commands.registry import QuitRequest
from kvmdbg.errors import CommandError


def help_(s, arg: str) -> None:
    """help [COMMAND]

    List the commands, or show one command's usage and description.
    """
    reg = s.commands
    if not arg:
        s.message("List of commands:")
        s.message("")
        for name, cmd in sorted(reg.commands.items()):
            s.message(f"{name} -- {cmd.usage}")
        s.message("")
        s.message('Type "help" followed by a command name for full documentation.')
        return
    words = arg.split()
    cmd = reg.lookup(words[0])
    if len(words) > 1 and cmd.subcommands is not None:
        cmd = cmd.subcommands.lookup(words[1])
    s.message(cmd.help)


def echo(s, arg: str) -> None:
    """echo TEXT

    Print TEXT (C escapes such as \\n are understood).
    """
    try:
        text = arg.encode().decode("unicode_escape")
    except UnicodeDecodeError:
        raise CommandError(f"Bad escape in \"{arg}\".") from None
    s.message(text.rstrip("\n") if text.endswith("\n") else text)


def quit_(s, arg: str) -> None:
    """quit [EXITCODE]

    Leave kvmdbg.
    """
    code = 0
    if arg:
        try:
            code = int(arg, 0)
        except ValueError:
            raise CommandError(f"Invalid exit code \"{arg}\".") from None
    raise QuitRequest(code)


def register(reg) -> None:
    reg.add("help", help_, aliases=("h",))
    reg.add("echo", echo)
    reg.add("quit", quit_, aliases=("q", "exit"))
