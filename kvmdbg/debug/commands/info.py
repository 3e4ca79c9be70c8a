"""info: registers (for now)."""

from __future__ import annotations

from kvmdbg.debug.commands.registry import Registry
from kvmdbg.debug.formats import format_register_row, register_rows
from kvmdbg.errors import CommandError


def info(s, arg: str) -> None:
    """info SUBCOMMAND

    Show things about the guest and the KVM model. "info" alone lists the subcommands.
    """
    for name, cmd in sorted(s.commands.lookup("info").subcommands.commands.items()):
        s.message(f"info {name:<12} -- {cmd.usage}")


def info_registers(s, arg: str) -> None:
    """info registers [REG...]

    Registers of the current vCPU in gdb's three columns: name, hex value, natural
    value (flag words decoded in brackets).
    """
    rows = register_rows(s.cpu, s.symbols)
    wanted = [w.lstrip("$") for w in arg.split()]
    if wanted:
        by_name = {r[0]: r for r in rows}
        for w in wanted:
            key = "eflags" if w == "rflags" else w
            if key not in by_name:
                raise CommandError(f"Invalid register `{w}'")
            s.message(format_register_row(*by_name[key]))
        return
    for row in rows:
        s.message(format_register_row(*row))


def register(reg) -> None:
    sub = Registry(prefix="info ")
    sub.add("registers", info_registers, aliases=("r",))
    reg.add("info", info, aliases=("i",), category="status", subcommands=sub)
