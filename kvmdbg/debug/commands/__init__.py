"""The command set. Each family module exposes register(registry); this tuple is the list.

`info` comes first: the other families add their `info` subcommands to it. A new family
(the KVM model's views, say) is one module with register(reg) and one entry here.
"""

from kvmdbg.debug.commands import (breakpoints, code, compare, data, frames, info, kvm, mmu, pictures,
                                   reverse, running, scripting, setshow, source, support, translate)
from kvmdbg.debug.commands.registry import QuitRequest, Registry

FAMILIES = (info, setshow, running, breakpoints, data, code, frames, source, translate, mmu, kvm, compare,
            pictures, scripting, support, reverse)


def attach(session) -> None:
    """Let each family hook into a new session (event recording, context lines, ...)."""
    for family in FAMILIES:
        hook = getattr(family, "attach", None)
        if hook is not None:
            hook(session)


def build_registry() -> Registry:
    reg = Registry()
    for family in FAMILIES:
        family.register(reg)
    return reg


__all__ = ["build_registry", "attach", "QuitRequest", "Registry", "FAMILIES"]
