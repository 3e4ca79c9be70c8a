"""Whatever capstone decodes either runs or is refused as `unsupported instruction`.

Random byte strings (a fixed seed) are decoded by capstone; each decodable instruction,
with random register values, is executed on a booted machine. The only outcomes allowed
are the architectural ones (it retires, faults into the guest, or triple-faults with no
IDT) and UnsupportedInstruction: anything else would reach a user as `internal error`.
The same through the real CLI for the encodings the issue was found with.
"""

from __future__ import annotations

import random

import pytest

from kvmdbg.cpu.decoder import Decoder
from kvmdbg.cpu.executor import run
from kvmdbg.errors import UnsupportedInstruction
from tests.helpers import asm, machine, run_cli

SEED = 0x72697A
COUNT = 1200


def _instructions():
    rng = random.Random(SEED)
    dec = Decoder()
    out = []
    while len(out) < COUNT:
        raw = rng.randbytes(15)
        d = dec.decode(raw, 0x100000)
        if d is not None:
            out.append(raw[:d.length])
    return out


def test_every_decodable_instruction_runs_or_is_unsupported():
    rng = random.Random(SEED + 1)
    values = (0, 0x200000, 0x7F000, 0x1000, 1 << 63, 0xFFFF_FFFF_FFFF_FFFF, 0x80)
    bad = []
    for raw in _instructions():
        vm, cpu = machine(raw + b"\xf4")
        for i in range(16):
            if i != 4:
                cpu.r[i] = rng.choice(values) if rng.random() < 0.7 else rng.getrandbits(64)
        try:
            run(cpu, 2)
        except UnsupportedInstruction:
            pass
        except Exception as e:            # noqa: BLE001 - exactly what must never happen
            bad.append(f"{raw.hex()}: {type(e).__name__}: {e}")
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("source,target", [
    # the SIB index field 100b without REX.X is "no index" whatever the scale (SDM Vol. 2A
    # Table 2-3): the byte lands at RSP itself
    ("add byte ptr [rsp + riz*8], al", "$rsp"),
    ("add byte ptr [rbx + riz*2 + 1], al", "$rbx + 1"),
])
def test_sib_without_index_through_the_cli(tmp_path, source, target):
    prog = tmp_path / "riz.bin"
    prog.write_bytes(asm(source) + b"\xf4")
    rc, out, err = run_cli("-batch", "-ex", "set $rax = 5", "-ex", "set $rbx = 0x200000",
                           "-ex", "set *(unsigned char *)($rsp) = 3",
                           "-ex", "set *(unsigned char *)($rbx + 1) = 3",
                           "-ex", "stepi", "-ex", f"x/1bx {target}",
                           str(prog))
    assert rc == 0, out + err
    assert "internal error" not in out + err and "riz" not in err
    assert out.strip().splitlines()[-1].split(":")[1].strip() == "0x08"      # 3 + 5
