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


class UnsupportedMode(UnsupportedInstruction):
    """The guest needs a processor feature or mode the interpreter does not model (16-bit
    code, an LDT, call gates, delivery through a 32-bit IDT, non-flat 32-bit segments)."""

    def __init__(self, rip: int, what: str):
        KvmdbgError.__init__(self, f"{what} is not supported yet: the vCPU is stopped at "
                                   f"{rip:#x} before the instruction that needs it.")
        self.rip = rip
        self.text = what


class UnsupportedPaging(UnsupportedInstruction):
    """The guest's paging mode is one the chosen MMU does not model (KVM's shadow paging of
    a PAE or 32-bit guest): the run stops instead of building wrong shadow tables."""

    def __init__(self, rip: int, mode: str):
        KvmdbgError.__init__(self, f"shadow paging of a {mode} guest is not modelled yet "
                                   f"(the vCPU is stopped at {rip:#x}; an EPT profile runs it)")
        self.rip = rip
        self.text = mode
