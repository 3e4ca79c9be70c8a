"""Disassembly names branch targets and rip-relative addresses as gdb does (issue 13)."""

import re

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb_program, oracle_program, raw_program

__all__ = ["oracle_program"]

SOURCE = """start: lea rax, [rip + msg]; call flip; mov rax, qword ptr [rip + msg]; jmp done
flip: nop; ret
done: hlt
msg: nop"""


@needs_gdb_program
def test_calls_show_their_target_symbol_and_rip_relative_operands_their_address(oracle_program,
                                                                               tmp_path):
    # gdb (intel flavour): "call   0x40101c <flip>", "lea    rax,[rip+0xff9]        # 0x402000"
    theirs = gdb("set disassembly-flavor intel", "disassemble _start", program=oracle_program)
    assert re.search(r"\tcall   0x[0-9a-f]+ <flip>$", theirs[2])
    assert re.search(r"\tlea    rax,\[rip\+0x[0-9a-f]+\]        # 0x[0-9a-f]+$", theirs[1])
    rc, out, err = kvmdbg("disassemble start", "x/2i flip - 16", "stepi", "display/i $pc",
                          program=raw_program(tmp_path, SOURCE, "dis"))
    assert out[:6] == [
        "Dump of assembler code for function start:",
        "=> 0x100000 <+0>:\tlea rax, [rip + 0x11]        # 0x100018 <msg>",
        "   0x100007 <+7>:\tcall 0x100015 <flip>",
        "   0x10000c <+12>:\tmov rax, qword ptr [rip + 5]        # 0x100018 <msg>",
        "   0x100013 <+19>:\tjmp 0x100017 <done>",
        "End of assembler dump."]
    assert out[7] == "   0x100007 <start+7>:\tcall 0x100015 <flip>"               # x/i
    i = out.index("0x100007 <start+7>, vcpu 0, step 1")
    assert out[i + 1] == "=> 0x100007 <start+7>:\tcall 0x100015 <flip>"       # the stop line
    assert out[-1] == "=> 0x100007 <start+7>:\tcall 0x100015 <flip>"          # display/i
