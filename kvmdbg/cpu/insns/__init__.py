"""Instruction families. Importing this package registers every emitter."""

from kvmdbg.cpu.insns import arith, bits, branch, data, muldiv, shift, stack, string, system  # noqa: F401
