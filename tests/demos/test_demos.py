"""Every demo runs as the README says, and says what its narration claims."""

import re
from pathlib import Path
from tests.helpers import run_cli


ROOT = Path(__file__).resolve().parents[2]
DEMOS = sorted(p.stem for p in (ROOT / "demos").glob("*.kvmdbg"))


def run_demo(name: str) -> str:
    rc, out, err = run_cli("-batch", "-x", f"demos/{name}.kvmdbg", f"programs/{name}.bin")
    assert rc == 0, err
    assert "Traceback" not in out + err
    return out


def counter(text: str, name: str) -> list:
    return [int(m) for m in re.findall(rf"^{name}\s+(\d+)\s", text, re.M)]


def table_row(text: str, label: str) -> list:
    line = next(line for line in text.splitlines() if line.startswith(label))
    return line[len(label):].split()


def test_every_program_with_a_demo_exists():
    assert set(DEMOS) >= {"smep_flip", "smep_flip_2vcpu", "cr0_wp_flip", "memslot_overlay",
                          "smap_mmio", "smm_like"}
    for d in DEMOS:
        assert (ROOT / "programs" / f"{d}.bin").exists()
        assert d in (ROOT / "demos" / "README.md").read_text()


def test_smep_flip_demo():
    out = run_demo("smep_flip")
    assert "Catchpoint 1 (root-zap root #1" in out
    assert counter(out, "kvmdbg_roots_allocated") == [21, 1]
    assert counter(out, "kvmdbg_ept_violations")[1] == 22
    assert table_row(out, "roots allocated")[:2] == ["21", "1"]
    v515, v66 = (float(x.replace(",", "")) for x in table_row(out, "cycles per CR4 write")[:2])
    assert v515 > 5 * v66


def test_smep_flip_2vcpu_demo():
    out = run_demo("smep_flip_2vcpu")
    before, after = out.split("Both flipping")
    assert "kvmdbg_roots_freed" not in before.split("Marker 2")[1]        # nothing freed yet
    assert counter(after, "kvmdbg_roots_freed")[0] >= 10
    assert table_row(out, "roots freed")[1] == "0"                 # v6.6


def test_cr0_wp_flip_demo():
    out = run_demo("cr0_wp_flip")
    allocs = re.findall(r"kvm_mmu_get_page: sp gen 0 gfn 0 (l4 .*) new", out)
    assert len(allocs) == 2
    assert table_row(out, "  CR_ACCESS")[:3] == ["100", "100", "0"]
    assert table_row(out, "roots allocated")[:3] == ["101", "101", "1"]


def test_memslot_overlay_demo():
    out = run_demo("memslot_overlay")
    assert "Catchpoint 1 (zap-all" in out
    assert re.search(r"^[* ]\s+1\s+0x[0-9a-f]+\s+\d+\s+invalid", out, re.M)
    assert re.search(r"worker kvmdbg:root_zap", out)
    assert re.search(r"vcpu0 kvmdbg:root_zap", out)
    assert counter(out, "kvmdbg_roots_allocated")[-1] == 1                # without the quirk


def test_smap_mmio_demo():
    out = run_demo("smap_mmio")
    assert out.index("smap_mmio: spurious #PF") < out.index("smap_mmio: ok")
    assert "cr4_smap=1" in out
    assert re.search(r"^cr4\s+0x620\s", out, re.M)


def test_smm_like_demo():
    out = run_demo("smm_like")
    assert table_row(out, "roots allocated")[:2] == ["21", "2"]
