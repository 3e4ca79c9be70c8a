"""Every demo runs as the README says, and says what its narration claims."""

import re
from pathlib import Path
from tests.helpers import ept_sptes, run_cli


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


PAGE = 4096


def smep_flip_pages() -> tuple[set, set]:
    """The 4 KiB guest-physical pages (as gfns) smep_flip touches before its first flip,
    and in the whole run, from its source and the boot contract (design section 3).

    Code: the program's bytes from 0x100000 to `_end` (smep_flip.sym). Data: the working
    set, WORKING_SET_PAGES pages from DATA (smep_flip.S), touched only after the first
    flip. Stack: none, the program has no push, pop, call or ret. Guest page tables, which
    the hardware walker reads through the EPT: the PML4 (0x1000), PDPT (0x2000) and PD
    (0x3000), and for each 2 MiB of the first 128 MiB its page table, consecutive from
    0x4000. RAM is identity-mapped, so a guest-virtual page is its guest-physical page."""
    src = (ROOT / "programs" / "smep_flip.S").read_text()
    const = {m.group(1): int(m.group(2), 0)
             for m in re.finditer(r"^\s*\.set\s+(\w+),\s*(\w+)\s*$", src, re.M)}
    assert not re.search(r"^\s*(\w+:)?\s*(push|pop|call|ret)\b", re.sub(r"#.*", "", src), re.M)
    sym_file = (ROOT / "programs" / "smep_flip.sym").read_text()
    syms = {name: int(addr, 16) for addr, _, name in (ln.split() for ln in sym_file.splitlines())}
    code = {a // PAGE for a in range(syms["start"], syms["_end"])}
    data = {(const["DATA"] + i * PAGE) // PAGE for i in range(const["WORKING_SET_PAGES"])}

    def tables(gfns):
        assert all(g * PAGE < 128 << 20 for g in gfns)          # mapped with 4 KiB pages
        return {1, 2, 3} | {(0x4000 >> 12) + (g >> 9) for g in gfns}

    return code | tables(code), code | data | tables(code | data)


def test_smep_flip_demo():
    out = run_demo("smep_flip")
    demo = (ROOT / "demos" / "smep_flip.kvmdbg").read_text()
    flips = int(re.search(r"^set arg (\d+)$", demo, re.M).group(1))
    first, every = smep_flip_pages()
    # The same count by hand: the code page and PML4, PDPT, PD and the page table of 0-2 MiB
    # before the first flip; then also the 16 data pages at 2 MiB and their page table.
    assert (len(first), len(every)) == (1 + 4, 1 + 4 + 16 + 1)
    assert "Catchpoint 1 (root-zap root #1" in out
    assert counter(out, "kvmdbg_roots_allocated") == [21, 1]
    # Each page faults into an empty root once: an EPT violation (4 KiB leaves, huge pages
    # off). v6.6 keeps its one root (edbdb43fc96b): every page faults once. v5.15 frees the
    # root at every flip (kvm_tdp_mmu_put_root on the last put): the first root sees the
    # pages touched before the first flip, and each of the `flips` later roots all of them.
    v515_sptes = ept_sptes(first) + flips * ept_sptes(every)
    assert table_row(out, "EPT violations")[:2] == [f"{len(first) + flips * len(every):,}",
                                                    str(len(every))]
    assert table_row(out, "SPTEs created")[:2] == [f"{v515_sptes:,}", str(ept_sptes(every))]
    # v5.15 zaps every root but the last, which is still live when the guest halts.
    assert table_row(out, "SPTEs zapped")[:2] == [f"{v515_sptes - ept_sptes(every):,}", "0"]
    # The demo's own v6.6 run: one root holding a leaf per page, and as tables the PML4,
    # PDPT, PD and a page table per 2 MiB region.
    row = re.search(r"^\*\s+1\s+0x[0-9a-f]+\s+\d+\s+valid\s+(\d+)\s+(\d+)\s", out, re.M)
    assert (int(row.group(1)), int(row.group(2))) == (len(every), 3 + len({g >> 9 for g in every}))
    assert table_row(out, "roots allocated")[:2] == [str(flips + 1), "1"]
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
