"""kvm-unit-tests images run to completion under each profile, through the real command
line, as kvm-unit-tests' runner (x86/run) would run them under QEMU: the test's own
verdict lines on the serial port, and the exit status the runner reads (isa-debug-exit:
(code << 1) | 1, so 1 is PASS and 77 is SKIP; lib/report.c report_summary).

The oracles are the tests' own verdicts and the reference runs in ../shared/kut/README.md
(smap: 18 PASS lines under QEMU; pku: 7 tests; pcid: both of its tests pass on a faithful
model of PCID/INVPCID in every CPU configuration of x86/unittests.cfg), and, for what a
profile hides, KVM's source: without EPT, vmx.c's hardware setup clears X86_FEATURE_PKU
from the supported CPUID (kvm_cpu_cap_clear), so pku.c prints "PKU not enabled" and skips.
"""

from __future__ import annotations

import pytest

from tests.helpers import kut_image, run_cli

PROFILES = ("v6.12", "shadow", "v5.15")
PASS, SKIP = 1, 77

# [pcid-enabled], [pcid-disabled], [pcid-asymmetric] of x86/unittests.cfg
PCID_CPUS = {"enabled": "qemu64,+pcid,+invpcid", "disabled": "qemu64,-pcid,-invpcid",
             "asymmetric": "qemu64,-pcid,+invpcid"}
PCID_REPORTS = {"enabled": ["Test on PCID when enabled", "Test on INVPCID when enabled"],
                "disabled": ["Test on PCID when disabled", "Test on INVPCID when disabled"],
                "asymmetric": ["Test on PCID when disabled", "Test on INVPCID when enabled"]}


def run_image(name: str, kvm: str, *extra: str):
    rc, out, err = run_cli("--kvm", kvm, *extra, "-batch", "-ex", "continue",
                           str(kut_image(name)))
    assert "Traceback" not in err and "internal error" not in err, err
    return rc, out.splitlines()


def verdicts(lines, word: str) -> list[str]:
    return [line[len(word) + 2:] for line in lines if line.startswith(word + ": ")]


@pytest.mark.parametrize("kvm", PROFILES)
def test_smap(kvm):
    rc, lines = run_image("smap.flat", kvm)
    assert verdicts(lines, "FAIL") == []
    assert len(verdicts(lines, "PASS")) == 18
    assert "SUMMARY: 18 tests" in lines
    assert rc == PASS


@pytest.mark.parametrize("kvm", PROFILES)
def test_pku(kvm):
    rc, lines = run_image("pku.flat", kvm)
    assert verdicts(lines, "FAIL") == []
    if kvm == "shadow":
        assert "PKU not enabled" in lines and "SUMMARY: 0 tests" in lines
        assert rc == SKIP
    else:
        assert "SUMMARY: 7 tests" in lines
        assert rc == PASS


@pytest.mark.parametrize("config", PCID_CPUS)
@pytest.mark.parametrize("kvm", PROFILES)
def test_pcid(kvm, config):
    rc, lines = run_image("pcid.flat", kvm, "--cpu", PCID_CPUS[config])
    assert verdicts(lines, "FAIL") == []
    assert verdicts(lines, "PASS") == PCID_REPORTS[config]
    assert "SUMMARY: 2 tests" in lines
    assert rc == PASS


ACCESS_CASES = 20_000


@pytest.mark.parametrize("kvm", ("v6.12", "shadow"))
def test_access_test_slice(kvm):
    """x86/access.c's ac_test_run runs each case through ac_test_exec (inlined), which
    calls ac_test_do_access once, and prints "FAIL: ..." for a case whose outcome differs
    from its model of the SDM's rules. The slice: the first ACCESS_CASES cases (a
    breakpoint on ac_test_do_access ignored that many times, as gdb's `ignore` counts),
    none failing."""
    rc, out, err = run_cli("--kvm", kvm, "-batch", "-ex", "break ac_test_do_access",
                           "-ex", f"ignore 1 {ACCESS_CASES}", "-ex", "continue",
                           "-ex", "info breakpoints", str(kut_image("access_test.flat")))
    assert rc == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert any(line.startswith("Breakpoint 1, ") for line in lines), out[-2000:]
    assert f"\tbreakpoint already hit {ACCESS_CASES + 1} times" in lines
    assert [line for line in lines if "FAIL" in line] == []


def test_compare_of_smap_shows_the_root_lifetime_change():
    """`--compare v5.15,v6.12` of smap.flat: the image's role-bit writes (CR4.PAE, EFER.LME,
    CR0.PG in its entry code, CR4.SMAP and CR0.WP in the test) reset the MMU; on v5.15 the
    vCPU's put of the unloaded root is its last and zaps it (kvm_tdp_mmu_put_root,
    v5.10-v5.17), on v6.12 the TDP MMU keeps its own reference (edbdb43fc96b, v6.4) and the
    root is reused (kvm_mmu_find_shadow_page by role). Same guest, same instructions."""
    rc, out, err = run_cli("--compare", "v5.15,v6.12", str(kut_image("smap.flat")))
    assert rc == 0, err
    rows = {line[:29].strip(): line[29:].split() for line in out.splitlines()[1:] if line.strip()}
    v515, v612 = (int(x.replace(",", "")) for x in rows["SPTEs zapped"][:2])
    assert v515 > 0 and v612 == 0
    roots = [int(x.replace(",", "")) for x in rows["roots allocated"][:2]]
    assert roots[0] > 1 and roots[1] == 1
    assert rows["instructions"][0] == rows["instructions"][1]
