"""info registers in gdb's order, info all-registers, and register groups (issue 13)."""

from tests.gdbparity.oracle import gdb, kvmdbg, needs_gdb_program, oracle_program

__all__ = ["oracle_program"]

# QEMU's gdb stub (x86-64 system mode) adds these after gs, in this order.
QEMU_SYSTEM = ["fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"]


def names(lines):
    return [ln.split()[0] for ln in lines if ln and not ln.startswith(("0x", "Program"))]


@needs_gdb_program
def test_info_registers_lists_them_in_gdbs_order(oracle_program):
    # gdb on x86-64: rax rbx rcx rdx rsi rdi rbp rsp r8..r15 rip eflags cs ss ds es fs gs
    # (then, on this host, the AVX-512 k0-k7 kvmdbg does not model).
    theirs = [n for n in names(gdb("starti", "info registers", program=oracle_program))
              if not (n[0] == "k" and n[1:].isdigit())]
    rc, out, err = kvmdbg("info registers")
    ours = names(out)
    assert ours[:24] == theirs[:24]
    assert ours == theirs[:24] + QEMU_SYSTEM
    rc, out, err = kvmdbg("stepi 12", "info registers")
    assert "changed: rbx=0x186a0 rdx=0x186a0 r9=0x10 eflags=0x46" in out   # the same order


@needs_gdb_program
def test_info_registers_takes_a_group_as_gdb_does(oracle_program):
    # gdb: `info registers general` is the general group; an unknown name is refused.
    theirs = gdb("starti", "info registers general", "info registers nosuch",
                 program=oracle_program)
    assert names(theirs)[:2] == ["rax", "rbx"] and theirs[-1] == "Invalid register `nosuch'"
    rc, out, err = kvmdbg("info registers general")
    assert names(out) == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"]
    rc, out, err = kvmdbg("info registers segment")
    assert names(out) == ["cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "k_gs_base",
                          "gdtr", "idtr"]
    rc, out, err = kvmdbg("info registers system", "info registers rip nosuch")
    assert names(out) == ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "pat", "tsc_aux", "pkru"]
    assert err == ["Invalid register `nosuch'"]


def test_info_all_registers_adds_what_the_cpu_model_holds():
    rc, out, err = kvmdbg("info all-registers", "info registers all", "p/x $pat",
                          "set $k_gs_base = 0x1234", "info registers k_gs_base")
    every = names(out[:38])
    assert every == names(kvmdbg("info registers")[1]) + ["gdtr", "idtr", "pat", "tsc_aux", "pkru"]
    assert out[33:38] == [
        "gdtr           0x500              {base = 0x500, limit = 0x37}",   # with a TSS
        "idtr           0x0                {base = 0x0, limit = 0x0}",
        "pat            0x7040600070406    [ PA0=WB PA1=WT PA2=UC- PA3=UC PA4=WB PA5=WT PA6=UC- "
        "PA7=UC ]",
        "tsc_aux        0x0                0",
        "pkru           0x0                0x0"]
    assert out[38:76] == out[:38]
    assert out[76:] == ["$1 = 0x7040600070406", "k_gs_base     *0x1234             4660"]
