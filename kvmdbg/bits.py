"""Pure bit helpers shared by every layer (imports nothing from kvmdbg)."""

import struct as _struct

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

M8 = 0xFF
M16 = 0xFFFF
M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF

MASKS = {1: M8, 2: M16, 4: M32, 8: M64}


def bit(n: int) -> int:
    return 1 << n


def mask(hi: int, lo: int) -> int:
    """Bits hi..lo inclusive, like the kernel's GENMASK_ULL(hi, lo)."""
    return ((1 << (hi - lo + 1)) - 1) << lo


def sign_extend(value: int, bits: int) -> int:
    """Interpret the low `bits` of value as two's complement."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def canonical(va: int) -> bool:
    """48-bit canonical address check (bits 63:47 all equal); va is a 64-bit value."""
    return not (va + 0x8000_0000_0000) >> 48 & 0xFFFF


# The same test as an expression over a 64-bit value `{}`, nonzero when it is not
# canonical: biasing by 2**47 maps both canonical halves onto 0 and 2**64 in bits 64:48,
# which the mask then drops (the interpreter's hot paths inline it instead of a call).
NONCANONICAL = "({} + 0x800000000000) >> 48 & 0xffff"


def parse_size(text: str) -> int:
    """'16M', '1G', '4096', '0x1000' -> bytes. Raises ValueError with a clear message."""
    t = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    elif t.endswith(("KB", "MB", "GB")):
        mult = units[t[-2]]
        t = t[:-2]
    try:
        return int(t, 0) * mult
    except ValueError:
        raise ValueError(f"invalid size '{text}' (use e.g. 16M, 1G)") from None


# Little-endian loads and stores of 2, 4 and 8 bytes at an offset in a bytearray.
# struct's unpack_from/pack_into are about 3x faster than slicing with
# int.from_bytes/to_bytes, and these run on every guest memory access.

UNPACK_FROM = {n: _struct.Struct("<" + c).unpack_from for n, c in ((2, "H"), (4, "I"), (8, "Q"))}
PACK_INTO = {n: _struct.Struct("<" + c).pack_into for n, c in ((2, "H"), (4, "I"), (8, "Q"))}
