"""The command set. Each family module exposes register(registry); this tuple is the list."""

from kvmdbg.debug.commands import info, running, support
from kvmdbg.debug.commands.registry import QuitRequest, Registry

FAMILIES = (running, info, support)


def build_registry() -> Registry:
    reg = Registry()
    for family in FAMILIES:
        family.register(reg)
    return reg


__all__ = ["build_registry", "QuitRequest", "Registry"]
