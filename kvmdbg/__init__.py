"""kvmdbg: a gdb-style debugger for a simulated x86-64 guest on a simulated KVM MMU."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import kvmdbg.cpu` does not pull in the debugger engine.
    if name == "Session":
        from kvmdbg.debug.session import Session
        return Session
    raise AttributeError(name)
