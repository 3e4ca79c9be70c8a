"""Support: help, apropos, complete, quit."""

from __future__ import annotations

import re

from kvmdbg.debug.commands.registry import CLASSES, QuitRequest, usage_error
from kvmdbg.errors import CommandError

MMU_CONCEPTS = """\
The KVM MMU in four words:
  root   the top page of a set of shadow/TDP page tables (a kvm_mmu_page with
         root_count > 0); a vCPU runs on one root, chosen by its role.
  SPTE   an entry of those tables: maps a gfn to a host pfn with r/w/x bits;
         created on EPT violations (kvm_tdp_mmu_map), removed by zaps.
  role   kvm_mmu_page_role: the CPU state a root is valid for (level, CR0.WP,
         CR4.SMEP/SMAP, EFER.NX, ...); a role change means another root.
  zap    removing SPTEs or whole roots (kvm_mmu_prepare_zap_page, zap-all);
         the guest then refaults what it touches again.
Stop on them with `catch root-zap`, `catch spte-set`, ...; see `catch` for the kinds."""


def _listing(s, names_cmds) -> None:
    for name, cmd in names_cmds:
        s.message(f"{name} -- {cmd.summary}")


def _commands_in(s, cls: str):
    out = []
    for name, cmd in s.commands.walk():
        if cmd.category == cls:
            out.append((name, cmd))
    return out


def help_(s, arg: str) -> None:
    """help [COMMAND|CLASS|all]

    Without argument, the classes of commands. With a class (running, breakpoints, data,
    mmu, scripting, status, support), its commands. With a command, its usage and
    description.
    """
    reg = s.commands
    if not arg:
        s.message("List of classes of commands:")
        s.message("")
        for cls, text in CLASSES.items():
            if cls == "user-defined" and not _commands_in(s, cls):
                continue
            s.message(f"{cls} -- {text}")
        s.message("")
        s.message('Type "help" followed by a class name for a list of commands in that class.')
        s.message('Type "help all" for the list of all commands.')
        s.message('Type "help" followed by command name for full documentation.')
        s.message('Type "apropos word" to search for commands related to "word".')
        s.message("Command name abbreviations are allowed if unambiguous.")
        return
    if arg == "all":
        for cls in CLASSES:
            cmds = _commands_in(s, cls)
            if not cmds:
                continue
            s.message("")
            s.message(f"Command class: {cls}")
            s.message("")
            _listing(s, cmds)
        return
    if arg in CLASSES:
        s.message(CLASSES[arg])
        if arg == "mmu":
            s.message("")
            s.message(MMU_CONCEPTS)
        s.message("")
        s.message("List of commands:")
        s.message("")
        _listing(s, _commands_in(s, arg))
        s.message("")
        s.message('Type "help" followed by command name for full documentation.')
        return
    cmd, _rest = reg.resolve(arg)
    s.message(cmd.help)
    if cmd.subcommands is not None:
        s.message("")
        s.message(f"List of {cmd.name} subcommands:")
        s.message("")
        _listing(s, cmd.subcommands.walk())


def apropos(s, arg: str) -> None:
    """apropos REGEX

    Commands whose name or help matches REGEX (case-insensitive).
    """
    if not arg:
        raise usage_error(apropos, "Argument required (regular expression to search for).")
    try:
        pattern = re.compile(arg, re.I)
    except re.error as e:
        raise CommandError(f"Invalid regular expression \"{arg}\": {e}.") from None
    found = [(n, c) for n, c in s.commands.walk() if pattern.search(n) or pattern.search(c.help)]
    if not found:
        s.message(f"No commands match \"{arg}\".")
        return
    _listing(s, found)


def complete(s, arg: str) -> None:
    """complete TEXT

    What TAB would offer after TEXT, one whole line per candidate.
    """
    from kvmdbg.debug.present.suggest import complete_lines
    for line in complete_lines(s, arg):
        s.message(line)


def quit_(s, arg: str) -> None:
    """quit [EXITCODE]

    Leave kvmdbg, with exit status EXITCODE (an expression, default 0).
    """
    code = 0
    if arg:
        try:
            code = int(arg, 0)
        except ValueError:
            from kvmdbg.debug.engine.evaluate import evaluate
            try:
                code = evaluate(s, arg).as_int()
            except CommandError:
                raise usage_error(quit_, f"Invalid exit code \"{arg}\".") from None
    raise QuitRequest(code & 0xFF)


def register(reg) -> None:
    reg.add("help", help_, aliases=("h",))
    reg.add("apropos", apropos)
    reg.add("complete", complete, raw=True)
    reg.add("quit", quit_, aliases=("q", "exit"))
