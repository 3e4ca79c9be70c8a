"""A debugger write into a guest page table that KVM shadows says that KVM does not see it.

What real KVM does: with shadow paging the hardware walks the tables KVM built from the
guest's. KVM keeps them in step by write-protecting the guest tables it shadows (upper
levels write-tracked: account_shadowed -> __kvm_write_track_add_gfn; last-level ones
write-protected through the rmap, or unsync) and emulating the guest's writes to them:
emulator_write_phys -> kvm_page_track_write -> kvm_mmu_pte_write (kvm_mmu_track_write
since v6.7), arch/x86/kvm/mmu/mmu.c, which zaps the SPTE built from the written gPTE and
counts mmu_pte_write. A debugger writes guest memory the way a VMM does, through its own
mapping of it (QEMU's gdbstub ends in a memcpy into the RAM block): no exit, no
emulation, so none of that runs and the old SPTEs stay until the page is resynced or
zapped. kvmdbg does the same and says so in one line after the write.

The program is programs/pt_edit.bin: after 50 instructions under --kvm shadow its tables
are shadowed (the PML4 at gpa 0x1000, the PT at 0x4000, ...) and it has made one
emulated page-table write (mmu_pte_write 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
PT_EDIT = str(ROOT / "programs" / "pt_edit.bin")
NOTE = ("gfn {:#x} is a shadowed page table: KVM does not see this write until the page is "
        "resynced or zapped")
WARM = ("-ex", "stepi 50")


def kvmdbg(kvm, *commands):
    args = ["-batch", "--kvm", kvm, *WARM]
    for c in commands:
        args += ["-ex", c]
    rc, out, err = run_cli(*args, PT_EDIT)
    assert rc == 0 and err == "", err
    return out.splitlines()


def pml4_hpa(kvm) -> int:
    """Where the host page behind gpa 0x1000 is, as `translate` says."""
    lines = kvmdbg(kvm, "translate 0x1000")
    got = [re.match(r"hpa (0x[0-9a-f]+) \(host pfn", line) for line in lines]
    return int(next(m for m in got if m).group(1), 16)


def addresses(kvm):
    """The PML4's first entry through each address space."""
    return {"gpa": "gpa:0x1000", "gva": "0x1000", "hpa": f"hpa:{pml4_hpa(kvm):#x}"}


def stat(lines, name) -> int:
    """A counter's total in the last `info stats` (absent means 0)."""
    found = [int(line.split()[1]) for line in lines if line.split()[:1] == [name]]
    return found[-1] if found else 0


def block(lines, start, end):
    """The lines between the markers `echo START` / `echo END` print."""
    i = lines.index(start)
    return lines[i + 1:lines.index(end, i)]


@pytest.mark.parametrize("space", ("gpa", "gva", "hpa"))
def test_write_to_a_shadowed_pml4_says_kvm_does_not_see_it(space):
    """PML4E[0] cleared: had KVM seen it, kvm_mmu_pte_write would have zapped the shadow
    root's entry 0 and counted mmu_pte_write. Both stay as they were, and after restoring
    the entry the guest runs to its end having noticed nothing."""
    addr = addresses("shadow")[space]
    lines = kvmdbg(
        "shadow",
        "echo STATS-BEFORE\\n", "info stats", "echo SHADOW-BEFORE\\n", "info shadow",
        "echo SPTE-BEFORE\\n", "info spte 0x100000", "echo WRITE\\n",
        "set $old = *(u64*)gpa:0x1000",
        f"set *(u64*){addr} = 0",
        "echo STATS-AFTER\\n", "info stats", "echo SHADOW-AFTER\\n", "info shadow",
        "echo SPTE-AFTER\\n", "info spte 0x100000", "echo GUEST\\n", "x/gx gpa:0x1000",
        "echo RESTORE\\n",
        "set *(u64*)gpa:0x1000 = $old",
        "echo END\\n", "continue", "info stats")
    # The note: one line, right after the write, naming gfn 0x1; and again for the restore.
    assert block(lines, "WRITE", "STATS-AFTER") == [NOTE.format(0x1)]
    assert block(lines, "RESTORE", "END") == [NOTE.format(0x1)]
    assert sum(line.startswith("gfn ") for line in lines) == 2
    # The guest's table did change ...
    assert block(lines, "GUEST", "RESTORE") == ["gpa:0x1000:\t0x0000000000000000"]
    # ... and KVM did not see it: same counters, same shadow pages, root entry 0 present.
    before = block(lines, "STATS-BEFORE", "SHADOW-BEFORE")
    after = block(lines, "STATS-AFTER", "SHADOW-AFTER")
    assert stat(before, "mmu_pte_write") == stat(after, "mmu_pte_write") == 1
    assert before == after
    assert block(lines, "SHADOW-BEFORE", "SPTE-BEFORE") == block(lines, "SHADOW-AFTER", "SPTE-AFTER")
    spte = block(lines, "SPTE-AFTER", "GUEST")
    assert spte == block(lines, "SPTE-BEFORE", "WRITE")
    assert re.match(r"  l4 \[  0\] at hpa 0x[0-9a-f]+ \(shadows gfn 0x1\): 0x[0-9a-f]+ \(p ", spte[1])
    # The guest finishes; mmu_pte_write counted its own 7 later emulated table writes (the
    # control: the counter is live), none of the debugger's.
    assert any("[all vCPUs halted]" in line for line in lines)
    assert stat(lines, "mmu_pte_write") == stat(kvmdbg("shadow", "continue", "info stats"),
                                                 "mmu_pte_write") == 8


@pytest.mark.parametrize("command, gfn", (
    ("set *(u64*)gpa:0x4800 = *(u64*)gpa:0x4800", 0x4),         # the last-level table PT0
    ("set var {u8}0x4800 = {u8}0x4800", 0x4),                   # set var, {type}, a gva
    ("print *(u32*)gpa:0x3000 = *(u32*)gpa:0x3000", 0x3),       # print, the page directory
))
def test_every_write_command_says_it_for_any_shadowed_table(command, gfn):
    lines = kvmdbg("shadow", "echo WRITE\\n", command, "echo END\\n")
    said = block(lines, "WRITE", "END")
    assert said[0] == NOTE.format(gfn)
    assert all(not line.startswith("gfn") for line in said[1:])      # print's $1 = ... after it


def test_once_per_write_command():
    lines = kvmdbg(
        "shadow", "echo TWO-WRITES-ONE-PAGE\\n",
        "print (*(u64*)gpa:0x1ff0 = 0) + (*(u64*)gpa:0x1ff8 = 0)",
        "echo ACROSS-TWO-PAGES\\n",
        "set *(u64*)gpa:0x1ffc = *(u64*)gpa:0x1ffc", "echo END\\n")
    assert block(lines, "TWO-WRITES-ONE-PAGE", "ACROSS-TWO-PAGES") == [NOTE.format(0x1), "$1 = 0"]
    assert block(lines, "ACROSS-TWO-PAGES", "END") == [
        "gfns 0x1 and 0x2 are shadowed page tables: KVM does not see this write until the "
        "pages are resynced or zapped"]


def test_no_note_for_ordinary_pages():
    """Data, code and stack pages are no page tables (their writes need no emulation)."""
    lines = kvmdbg("shadow", "echo WRITE\\n", "set *(u64*)gpa:0x200000 = 5",
                   "set *(u8*)0x100000 = *(u8*)0x100000", "set *(u64*)($rsp - 64) = 1",
                   "echo END\\n", "x/gx gpa:0x200000")
    assert block(lines, "WRITE", "END") == []
    assert lines[-1] == "gpa:0x200000:\t0x0000000000000005"


@pytest.mark.parametrize("kvm", ("v6.12", "v5.15", "legacy-mmu"))
def test_no_note_with_ept(kvm):
    """With EPT the CPU walks the guest's own tables: nothing shadows them."""
    where = addresses(kvm)
    lines = kvmdbg(kvm, "echo WRITE\\n", *(f"set *(u64*){a} = *(u64*)gpa:0x1000"
                                          for a in where.values()), "echo END\\n")
    assert block(lines, "WRITE", "END") == []
