"""translate GVA: the guest walk level by level, the gpa, the memslot, the host page.

The second half of the chain (the SPTE path from the current root) belongs to the
KVM model: it plugs in through TRANSLATE_SECTIONS hooks kept on the session state
(s.state.translate_sections: fn(session, gva, gpa) -> lines), so this module knows
nothing of roots or SPTEs.
"""

from __future__ import annotations

from kvmdbg.bits import M64, PAGE_SHIFT
from kvmdbg.debug.engine import guest_walk
from kvmdbg.debug.commands.registry import usage_error
from kvmdbg.debug.engine.evaluate import evaluate
from kvmdbg.errors import CommandError, KvmdbgError

PTE_FLAGS = (("P", 0), ("RW", 1), ("US", 2), ("PWT", 3), ("PCD", 4), ("A", 5), ("D", 6),
             ("PS", 7), ("G", 8), ("XD", 63))


def entry_flags(value: int, level: int) -> str:
    names = [n for n, b in PTE_FLAGS if value >> b & 1 and not (n == "PS" and level in (1, 4))]
    pkey = value >> 59 & 0xF
    if pkey:
        names.append(f"PKEY={pkey}")
    return " ".join(names)


def host_page(s, gpa: int):
    """(memslot, hpa or None) behind gpa, looked up without faulting a host page in."""
    vm = s.vm
    slot = vm.memslots.lookup(gpa >> PAGE_SHIFT)
    if slot is None:
        return None, None
    hva = slot.gfn_to_hva(gpa >> PAGE_SHIFT) | (gpa & 0xFFF)
    pfn = vm.host.lookup_pfn(hva)
    return slot, None if pfn is None else (pfn << PAGE_SHIFT) | (gpa & 0xFFF)


def translate(s, arg: str) -> None:
    """translate GVA

    Follow GVA through the selected vCPU's guest page tables (each level's entry and
    flags), then the gpa's memslot and the host page behind it. The KVM model adds the
    SPTE path from the current root.
    """
    if not arg:
        raise usage_error(translate, "Argument required (a guest-virtual address).")
    v = evaluate(s, arg)
    if v.space and v.space != "gva":
        raise CommandError(f"translate takes a guest-virtual address (got {v.space}:).")
    gva = v.as_int() & M64
    cpu = s.cpu
    w = guest_walk.walk(s.vm, cpu, gva)
    if cpu.cr0 >> 31 & 1:
        s.message(f"gva {gva:#x}: guest walk from cr3 {cpu.cr3:#x}")
    else:
        s.message(f"gva {gva:#x}: paging is off (CR0.PG=0), gpa = gva")
    for st in w.steps:
        name = f"{guest_walk.LEVEL_NAMES[st.level]}[{st.index}]"
        where = "(register)" if st.entry_gpa is None else f"at gpa {st.entry_gpa:#x}"
        s.message(f"  {name:<11} {where} = {st.entry:#018x}  {entry_flags(st.entry, st.level)}")
    if w.gpa is None:
        s.message(f"  no translation: {w.error}")
        return
    size = {4096: "4K", 2 << 20: "2M", 4 << 20: "4M", 1 << 30: "1G"}.get(w.page_size, str(w.page_size))
    s.message(f"gpa {w.gpa:#x} ({size} page, gfn {w.gpa >> PAGE_SHIFT:#x})")
    slot, hpa = host_page(s, w.gpa)
    if slot is None:
        s.message("  no memslot: MMIO (accesses exit to userspace)")
    else:
        s.message(f"  memslot {slot.id}: gfn {slot.base_gfn:#x}-{slot.end_gfn - 1:#x}, "
                  f"hva {slot.gfn_to_hva(w.gpa >> PAGE_SHIFT) | (w.gpa & 0xFFF):#x}")
        s.message(f"hpa {hpa:#x} (host pfn {hpa >> PAGE_SHIFT:#x})" if hpa is not None else
                  "hpa: no host page yet (the guest has not touched it)")
    for section in s.state.translate_sections:
        try:
            for line in section(s, gva, w.gpa) or ():
                s.message(line)
        except KvmdbgError as e:
            s.error(str(e))


def register(reg) -> None:
    reg.add("translate", translate, aliases=("gva2gpa",), category="mmu")
