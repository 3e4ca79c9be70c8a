"""kvmdbg: a gdb-style debugger for a simulated x86-64 guest on a simulated KVM MMU."""

from kvmdbg.version import __version__  # noqa: F401


def __getattr__(name):
    # Lazy so that `import kvmdbg.cpu` does not pull in the debugger engine.
    if name == "Session":
        from kvmdbg.debug.engine.session import Session
        return Session
    raise AttributeError(name)
