"""The machine options on the real command line: --machine list, info machine, --append,
--cpu, and the refusals (one line each, no traceback)."""

from __future__ import annotations

from tests.helpers import kut_image, run_cli


def test_machine_list():
    rc, out, err = run_cli("--machine", "list")
    assert rc == 0 and err == ""
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["raw", "pc"]
    assert "128M" in out.splitlines()[1]


def test_info_machine_on_a_multiboot_image():
    rc, out, err = run_cli("-batch", "-ex", "info machine", str(kut_image("smap.flat")))
    assert rc == 0, err
    assert out.startswith("Machine pc:")
    assert "RAM 128 MiB" in out
    for port, dev in (("0x3f8-0x3ff", "serial"), ("0xf4-0xf7", "isa-debug-exit"),
                      ("0x510-0x511", "fw_cfg"), ("mmio 0xfee00000-0xfee00fff", "lapic"),
                      ("0x8900", "shutdown")):
        assert any(l.startswith(port) and dev in l for l in out.splitlines()), (port, out)
    assert "overlay" not in out                       # fw_cfg has 0x510 on this machine


def test_info_machine_raw_keeps_the_vmm_ports():
    rc, out, err = run_cli("-batch", "-ex", "info machine", "programs/smep_flip.bin")
    assert rc == 0, err
    assert out.startswith("Machine raw:") and "RAM 16 MiB" in out
    assert any(l.startswith("0x510") and "overlay" in l for l in out.splitlines())


def test_append_reaches_the_multiboot_command_line():
    path = str(kut_image("pcid.flat"))
    rc, out, err = run_cli("-batch", "--append", "-t one two", "-ex", "x/s $rbx", "-ex",
                           "x/s *(unsigned int *)($rbx + 16)", path)
    assert rc == 0, err
    assert out.splitlines()[-1].endswith(f'"{path} -t one two"')


def test_elf_not_multiboot_refused():
    rc, out, err = run_cli("-batch", "/bin/true")
    assert rc == 1
    assert err.strip() == ("kvmdbg: /bin/true: an ELF file without a multiboot header (no "
                           "magic 0x1badb002 in its first 8 KiB): kvmdbg boots raw binaries "
                           "and multiboot images.")


def test_bad_cpu_and_machine_one_line():
    rc, out, err = run_cli("-batch", "--cpu", "qemu64,+warp", "programs/smep_flip.bin")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "unknown feature 'warp'" in err
    rc, out, err = run_cli("-batch", "--machine", "q35", "programs/smep_flip.bin")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "unknown machine 'q35'" in err


def test_cpu_option_reaches_cpuid():
    # raw program: cpuid leaf 7, then hlt; qemu64,+smep: EBX has SMEP (bit 7) only of ours
    import tempfile
    from pathlib import Path
    code = bytes.fromhex("b807000000" "31c9" "0fa2" "f4")    # mov eax,7; xor ecx,ecx; cpuid; hlt
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.bin"
        p.write_bytes(code)
        rc, out, err = run_cli("-batch", "--cpu", "qemu64,+smep", "-ex", "continue", "-ex",
                               "print/x $rbx", str(p))
    assert rc == 0, err
    assert out.splitlines()[-1].endswith("= 0x80")
