"""Lazy flags (cpu/flags.py) against hand-worked SDM cases at the carry/overflow edges.

Each case gives the six arithmetic flags the SDM defines for the instruction; the
test builds the lazy tuple the emitters build and checks compute() and materialize().
"""

from types import SimpleNamespace

import pytest

from kvmdbg.cpu import flags as F

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
WIDTHS = (8, 16, 32, 64)


def even(low_byte: int) -> int:
    """PF: set when the low byte of the result has an even number of 1 bits."""
    return PF if bin(low_byte & 0xFF).count("1") % 2 == 0 else 0


def cases(w: int):
    """(name, lazy tuple, expected flags) for width w."""
    M = (1 << w) - 1          # all ones (-1)
    S = 1 << (w - 1)          # most negative
    X = S - 1                 # most positive
    lo_S, lo_X = S & 0xFF, X & 0xFF       # 0x80/0x7f for 8 bits, 0x00/0xff wider
    return [
        # ADD: signed overflow at MAX+1, unsigned carry at M+1, both at MIN+MIN.
        ("add max+1", (F.ADD, X, 1, S, w, 0), OF | SF | AF | even(lo_S)),
        ("add -1+1", (F.ADD, M, 1, 0, w, 0), CF | ZF | AF | PF),
        ("add min+min", (F.ADD, S, S, 0, w, 0), CF | OF | ZF | PF),
        ("add 1+1", (F.ADD, 1, 1, 2, w, 0), 0),
        ("add 8+8", (F.ADD, 8, 8, 16, w, 0), AF),
        # SUB (and CMP): borrow below 0, overflow at MIN-1 and MAX-(-1).
        ("sub 0-1", (F.SUB, 0, 1, M, w, 0), CF | SF | AF | PF),
        ("sub min-1", (F.SUB, S, 1, X, w, 0), OF | AF | even(lo_X)),
        ("sub max-(-1)", (F.SUB, X, M, S, w, 0), CF | OF | SF | even(lo_S)),
        ("sub 5-5", (F.SUB, 5, 5, 0, w, 0), ZF | PF),
        ("sub 0x10-1", (F.SUB, 0x10, 1, 0xF, w, 0), AF | PF),
        # ADC: the carry-in is what crosses the boundary.
        ("adc -1+0+c", (F.ADC, M, 0, 0, w, 1), CF | ZF | AF | PF),
        ("adc max+0+c", (F.ADC, X, 0, S, w, 1), OF | SF | AF | even(lo_S)),
        ("adc -1+-1+c", (F.ADC, M, M, M, w, 1), CF | SF | AF | PF),
        ("adc max+0+0", (F.ADC, X, 0, X, w, 0), even(lo_X)),
        # SBB: borrow-in likewise.
        ("sbb 0-0-b", (F.SBB, 0, 0, M, w, 1), CF | SF | AF | PF),
        ("sbb min-0-b", (F.SBB, S, 0, X, w, 1), OF | AF | even(lo_X)),
        ("sbb 0-(-1)-b", (F.SBB, 0, M, 0, w, 1), CF | ZF | AF | PF),
        ("sbb max-max-0", (F.SBB, X, X, 0, w, 0), ZF | PF),
        # INC/DEC: OF at the signed edge, CF untouched (taken from the carry source).
        ("inc max cf0", (F.INC, X, 1, S, w, 0), OF | SF | AF | even(lo_S)),
        ("inc max cf1", (F.INC, X, 1, S, w, 1), CF | OF | SF | AF | even(lo_S)),
        ("inc -1 cf0", (F.INC, M, 1, 0, w, 0), ZF | AF | PF),
        ("dec min cf0", (F.DEC, S, 1, X, w, 0), OF | AF | even(lo_X)),
        ("dec 0 cf1", (F.DEC, 0, 1, M, w, 1), CF | SF | AF | PF),
        ("dec 1 cf0", (F.DEC, 1, 1, 0, w, 0), ZF | PF),
        # NEG is 0 - x: CF = (x != 0), OF only for the most negative value.
        ("neg 0", (F.SUB, 0, 0, 0, w, 0), ZF | PF),
        ("neg min", (F.SUB, 0, S, S, w, 0), CF | OF | SF | even(lo_S)),
        ("neg 1", (F.SUB, 0, 1, M, w, 0), CF | SF | AF | PF),
    ]


ALL = [(w, *c) for w in WIDTHS for c in cases(w)]


@pytest.mark.parametrize("w,name,lf,want", ALL, ids=[f"{c[1]}-{c[0]}" for c in ALL])
def test_compute(w, name, lf, want):
    got = F.compute(lf)
    assert got == want, f"{name} ({w}-bit): got {got:#x}, want {want:#x}"


def test_inc_takes_carry_from_a_lazy_tuple():
    """INC/DEC keep CF; when the previous writer is still lazy, CF comes from it."""
    add_carry = (F.ADD, 0xFF, 1, 0, 8, 0)                 # CF = 1
    sub_no_borrow = (F.SUB, 2, 1, 1, 32, 0)               # CF = 0
    assert F.compute((F.INC, 1, 1, 2, 16, add_carry)) & CF
    assert not F.compute((F.DEC, 1, 1, 0, 16, sub_no_borrow)) & CF


def test_materialize_folds_and_keeps_other_bits():
    cpu = SimpleNamespace(rflags=0x2 | 0x400 | 0x200 | CF | OF, lf=(F.SUB, 0, 1, 0xFF, 8, 0))
    value = F.materialize(cpu)
    assert value == 0x2 | 0x400 | 0x200 | CF | SF | AF | PF     # DF/IF kept, OF recomputed to 0
    assert cpu.lf is None and cpu.rflags == value
    assert F.materialize(cpu) == value                            # idempotent once folded


def test_inc_dec_carry_source_chain_stays_one_deep():
    cpu = SimpleNamespace(rflags=0x2, lf=(F.ADD, 0xFFFF, 1, 0, 16, 0))
    src = F.inc_dec_carry_source(cpu)
    assert src is cpu.lf
    cpu.lf = (F.INC, 0, 1, 1, 16, src)
    assert F.inc_dec_carry_source(cpu) is src                     # not the INC tuple itself
    assert F.carry_in(cpu) == 1
    cpu.lf = None
    cpu.rflags = 0x3
    assert F.inc_dec_carry_source(cpu) == 1 and F.carry_in(cpu) == 1


def test_peek_does_not_fold():
    lf = (F.ADD, 0x7F, 1, 0x80, 8, 0)
    cpu = SimpleNamespace(rflags=0x402, lf=lf)
    assert F.peek(cpu) == 0x402 | OF | SF | AF
    assert cpu.lf is lf and cpu.rflags == 0x402
    assert F.peek(cpu) == F.materialize(cpu)
