"""Exception types the whole stack shares. Each carries a one-line message for the user."""


class KvmdbgError(Exception):
    """Base: str(e) is the one line shown to the user."""


class ConfigError(KvmdbgError):
    """Bad command-line option, profile, knob or program file."""


class CommandError(KvmdbgError):
    """A debugger command was malformed or cannot be carried out."""


class UnsupportedInstruction(KvmdbgError):
    """The decoder knows the instruction but the interpreter does not implement it."""

    def __init__(self, rip: int, text: str):
        super().__init__(f"unsupported instruction at {rip:#x}: {text}")
        self.rip = rip
        self.text = text
