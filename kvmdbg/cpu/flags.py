"""Lazy arithmetic flags.

Most flag results are never read, so an arithmetic instruction stores one tuple
``cpu.lf = (kind, a, b, res, bits, extra)`` and the six flags are computed only
when something reads them (Jcc, SETcc, PUSHF, ADC ...). ``res`` is already masked
to ``bits``, so ZF is always ``res == 0`` and SF its top bit, which lets the
common JZ/JNZ/JS paths skip materialisation. When ``cpu.lf is None`` the flags
live in ``cpu.rflags``.

``extra``: carry-in for ADC/SBB; for INC/DEC the source of the preserved CF (an
int, or the previous non-INC/DEC tuple); for MUL the CF=OF value.

CFOF tuples ``(CFOF, cf, of, res, bits, 0)`` carry CF and OF already worked out (SHLD,
SHRD, TZCNT, LZCNT); SF ZF PF come from ``res`` as for every kind, and AF is 0.
"""

ADD, ADC, SUB, SBB, LOGIC, INC, DEC, SHL, SHR, SAR, MUL, CFOF = range(12)

PARITY = tuple(1 - (bin(i).count("1") & 1) for i in range(256))   # 1 = even parity

ARITH = 0x8D5   # CF PF AF ZF SF OF


def carry(lf) -> int:
    """CF of a lazy tuple (or of a preserved-carry source)."""
    if type(lf) is int:
        return lf
    kind, a, b, res, bits, extra = lf
    if kind == ADD:
        return 1 if res < a else 0
    if kind == ADC:
        return 1 if a + b + extra >> bits else 0
    if kind == SUB:
        return 1 if a < b else 0
    if kind == SBB:
        return 1 if a < b + extra else 0
    if kind == LOGIC:
        return 0
    if kind == INC or kind == DEC:
        return carry(extra)
    if kind == SHL:
        return (a >> (bits - b)) & 1 if b <= bits else 0
    if kind == SHR:
        return (a >> (b - 1)) & 1 if b <= bits else 0
    if kind == SAR:
        sign = a >> (bits - 1)
        if b > bits:
            return sign
        return (a >> (b - 1)) & 1
    if kind == MUL:
        return extra
    if kind == CFOF:
        return a
    raise AssertionError(kind)


def compute(lf) -> int:
    """The six arithmetic flags of a lazy tuple, as RFLAGS bits."""
    kind, a, b, res, bits, extra = lf
    top = bits - 1
    f = PARITY[res & 0xFF] << 2
    if res == 0:
        f |= 0x40
    f |= (res >> top & 1) << 7
    cf = carry(lf)
    f |= cf
    if kind == ADD or kind == ADC or kind == INC:
        if kind == INC:
            b = 1
        f |= (((a ^ res) & (b ^ res)) >> top & 1) << 11
        f |= (a ^ b ^ res) & 0x10
    elif kind == SUB or kind == SBB or kind == DEC:
        if kind == DEC:
            b = 1
        f |= (((a ^ b) & (a ^ res)) >> top & 1) << 11
        f |= (a ^ b ^ res) & 0x10
    elif kind == SHL:
        f |= ((res >> top & 1) ^ cf) << 11
    elif kind == SHR:
        f |= (a >> top & 1) << 11          # OF defined for count 1: the original sign
    elif kind == MUL:
        f |= extra << 11
    elif kind == CFOF:
        f |= b << 11
    # LOGIC and SAR: OF = 0 (SAR's OF is 0 for count 1, undefined otherwise); AF = 0.
    return f


def materialize(cpu) -> int:
    """Fold cpu.lf into cpu.rflags and return it."""
    lf = cpu.lf
    if lf is not None:
        cpu.rflags = (cpu.rflags & ~ARITH) | compute(lf)
        cpu.lf = None
    return cpu.rflags


def peek(cpu) -> int:
    """RFLAGS as materialize() would give it, without folding (the lazy state stays)."""
    lf = cpu.lf
    if lf is None:
        return cpu.rflags
    return (cpu.rflags & ~ARITH) | compute(lf)


def carry_in(cpu) -> int:
    lf = cpu.lf
    if lf is None:
        return cpu.rflags & 1
    return carry(lf)


def inc_dec_carry_source(cpu):
    """What an INC/DEC keeps as its CF source (keeps the chain one deep)."""
    lf = cpu.lf
    if lf is None:
        return cpu.rflags & 1
    if lf[0] == INC or lf[0] == DEC:
        return lf[5]
    return lf


# Condition codes: name -> function of materialised RFLAGS.
CONDITIONS = {
    "o": lambda f: f >> 11 & 1,
    "no": lambda f: not f >> 11 & 1,
    "b": lambda f: f & 1,
    "ae": lambda f: not f & 1,
    "e": lambda f: f >> 6 & 1,
    "ne": lambda f: not f >> 6 & 1,
    "be": lambda f: (f | f >> 6) & 1,
    "a": lambda f: not (f | f >> 6) & 1,
    "s": lambda f: f >> 7 & 1,
    "ns": lambda f: not f >> 7 & 1,
    "p": lambda f: f >> 2 & 1,
    "np": lambda f: not f >> 2 & 1,
    "l": lambda f: (f >> 7 ^ f >> 11) & 1,
    "ge": lambda f: not (f >> 7 ^ f >> 11) & 1,
    "le": lambda f: ((f >> 7 ^ f >> 11) | f >> 6) & 1,
    "g": lambda f: not ((f >> 7 ^ f >> 11) | f >> 6) & 1,
}
# capstone's alternative spellings
ALIASES = {"c": "b", "nae": "b", "nc": "ae", "nb": "ae", "z": "e", "nz": "ne", "na": "be",
           "nbe": "a", "pe": "p", "po": "np", "nge": "l", "nl": "ge", "ng": "le", "nle": "g"}


def cond_expr(cc: str) -> str:
    """Python source for 'condition cc holds' in generated handlers (locals: cpu).

    ZF and SF come straight from the lazy result; CMP-style conditions compare the
    lazy operands directly; everything else materialises.
    """
    cc = ALIASES.get(cc, cc)
    if cc in ("e", "ne"):
        op = "==" if cc == "e" else "!="
        return f"((_lf[3] {op} 0) if (_lf := cpu.lf) is not None else {'' if cc == 'e' else 'not '}(cpu.rflags >> 6 & 1))"
    if cc in ("s", "ns"):
        neg = "" if cc == "s" else "not "
        return f"({neg}(_lf[3] >> (_lf[4] - 1) & 1) if (_lf := cpu.lf) is not None else {neg}(cpu.rflags >> 7 & 1))"
    if cc in ("b", "ae", "be", "a", "l", "ge", "le", "g"):
        fast = {
            "b": "_lf[1] < _lf[2]",
            "ae": "_lf[1] >= _lf[2]",
            "be": "_lf[1] <= _lf[2]",
            "a": "_lf[1] > _lf[2]",
            "l": "(_lf[1] ^ (1 << (_lf[4] - 1))) < (_lf[2] ^ (1 << (_lf[4] - 1)))",
            "ge": "(_lf[1] ^ (1 << (_lf[4] - 1))) >= (_lf[2] ^ (1 << (_lf[4] - 1)))",
            "le": "(_lf[1] ^ (1 << (_lf[4] - 1))) <= (_lf[2] ^ (1 << (_lf[4] - 1)))",
            "g": "(_lf[1] ^ (1 << (_lf[4] - 1))) > (_lf[2] ^ (1 << (_lf[4] - 1)))",
        }[cc]
        return (f"(({fast}) if (_lf := cpu.lf) is not None and _lf[0] == {SUB} "
                f"else COND[{cc!r}](materialize(cpu)))")
    return f"COND[{cc!r}](materialize(cpu))"
