"""The MMU views: roots, SPTE paths and leaves, shadow pages, the hardware TLB, the MMU
context, and the SPTE half of `translate`. (The model's settings, counters and events are
in commands/kvm.py.)

Everything here reads the model's state; nothing steps the guest or changes SPTEs.
"""

from __future__ import annotations

from kvmdbg.bits import M64, PAGE_SHIFT
from kvmdbg.debug.engine import guest_walk
from kvmdbg.debug.commands.registry import check_range, usage_error
from kvmdbg.debug.engine.evaluate import evaluate_address
from kvmdbg.errors import CommandError
from kvmdbg.mmu import mmu_internal as R
from kvmdbg.mmu import spte as S
from kvmdbg.mmu.tdp_iter import for_each_tdp_pte, nonzero_entries, read_spte


# --- helpers ---

def roots_of(vm):
    """Every root page that still exists (TDP roots, or legacy roots in the hash)."""
    if vm.tdp_mmu_enabled:
        roots = list(vm.tdp_mmu.roots)
    else:
        roots = [sp for sp in vm.mmu_pages.pages.values() if sp.number and sp.parent is None]
    # invalid roots unlinked from the list but still held by a vCPU
    for v in vm.vcpus:
        mmu = getattr(v, "mmu", None)
        if mmu is None:
            continue
        for info in [mmu.root] + list(mmu.prev_roots):
            if info.sp is not None and info.sp not in roots and not info.sp.freed:
                roots.append(info.sp)
    return sorted(roots, key=lambda r: r.number)


def _root_by_number(vm, n: int):
    for r in roots_of(vm):
        if r.number == n:
            return r
    raise CommandError(f"No root #{n}. \"info roots\" lists them.")


def _users(vm, root) -> list:
    out = []
    for v in vm.vcpus:
        mmu = getattr(v, "mmu", None)
        if mmu is None:
            continue
        if mmu.root.sp is root:
            out.append(f"vcpu{v.index}")
        elif any(p.sp is root for p in mmu.prev_roots):
            out.append(f"vcpu{v.index}(prev)")
    return out


def _state(root) -> str:
    if root.freed:
        return "freed"
    if root.invalid:
        return "invalid"
    return "valid"


def _current_root(s, arg_root: str = ""):
    if arg_root:
        return _root_by_number(s.vm, parse_int(arg_root))
    v = s.vm.vcpus[s.current]
    root = getattr(v, "mmu", None) and v.mmu.root.sp
    if root is None:
        raise CommandError(f"vcpu {s.current} has no root loaded (it loads one on its next entry).")
    return root


def parse_int(text: str) -> int:
    try:
        return int(text.lstrip("#"), 0)
    except ValueError:
        raise CommandError(f"Invalid number \"{text}\".") from None


MAX_GFN = (1 << 40) - 1         # 52-bit guest-physical addresses


def parse_gfn(text: str) -> int:
    """The N of gfn:N, checked against the 52-bit guest-physical address space."""
    return check_range("gfn", parse_int(text), 0, MAX_GFN, f" ({MAX_GFN:#x})")


def parse_gfn_range(text: str) -> tuple[int, int]:
    """gfn:START[-END] (END included) -> (START, END + 1)."""
    start, dash, end = text.partition("-")
    if not start:
        raise CommandError(f"gfn:{text}: a gfn is not negative.")
    lo = parse_gfn(start)
    if not dash:
        return lo, lo + 1
    hi = parse_gfn(end)
    if hi < lo:
        raise CommandError(f"gfn:{text}: the end of the range is below its start.")
    return lo, hi + 1


def _gfn_of(s, text: str) -> int:
    """gfn:N, gpa:ADDR, or a guest-virtual address (walked in the guest tables)."""
    t = text.strip()
    if t.startswith("gfn:"):
        return parse_gfn(t[4:])
    addr, space = evaluate_address(s, t)
    if space == "gpa":
        return addr >> PAGE_SHIFT
    if space == "hpa":
        raise CommandError("info spte takes a gva, gpa: or gfn: address, not hpa:.")
    return guest_walk.gva_to_gpa(s.vm, s.cpu, addr & M64) >> PAGE_SHIFT


def is_shadow(vm) -> bool:
    return getattr(vm, "shadow", None) is not None


def _spte_str(vm, spte: int, level: int) -> str:
    return S.shadow_spte_str(spte, level) if is_shadow(vm) else S.spte_str(spte, level)


def spte_path(vm, root, gfn: int) -> list:
    """[(level, index, sptep hpa, spte)] from the root down to the leaf (or the hole).

    EPT/TDP tables are indexed by gfn; shadow tables by guest-virtual page number (pass
    gva >> 12 as `gfn`)."""
    out = []
    sp = root
    level = root.level
    while True:
        index = (gfn >> (9 * (level - 1))) & 511
        spte = read_spte(sp, index)
        out.append((level, index, sp.hpa + index * 8, spte))
        if not S.is_shadow_present_pte(spte) or S.is_last_spte(spte, level):
            return out
        sp = vm.mmu_pages.pages.get(S.spte_to_pfn(spte))
        if sp is None:
            return out
        level -= 1


def _path_lines(vm, root, gfn: int) -> list:
    lines = []
    shadow = is_shadow(vm)
    pages = vm.mmu_pages.pages
    for level, index, sptep, spte in spte_path(vm, root, gfn):
        sp = pages.get(sptep >> PAGE_SHIFT)
        what = ""
        if shadow and sp is not None:
            what = f" (shadows {'direct ' if sp.role & R.ROLE_DIRECT else ''}gfn {sp.gfn:#x}" \
                   f"{', unsync' if getattr(sp, 'unsync', False) else ''})"
        lines.append(f"  l{level} [{index:3}] at hpa {sptep:#x}{what}: {_spte_str(vm, spte, level)}")
    level, _i, _p, spte = spte_path(vm, root, gfn)[-1]
    if S.is_shadow_present_pte(spte) and S.is_last_spte(spte, level):
        span = 9 * (level - 1)
        hpa = ((S.spte_to_pfn(spte) + (gfn & ((1 << span) - 1))) << PAGE_SHIFT)
        lines.append(f"  -> hpa {hpa:#x}")
    elif shadow and S.is_shadow_mmio_spte(spte):
        lines.append("  -> MMIO SPTE: accesses take a #PF (RSVD) exit and are emulated")
    elif shadow:
        lines.append("  -> not mapped: an access takes a #PF exit to KVM")
    elif S.is_mmio_spte(spte):
        lines.append("  -> MMIO SPTE: accesses take an EPT misconfiguration exit")
    else:
        lines.append("  -> not mapped: an access takes an EPT violation exit")
    return lines


def spte_section(s, gva: int, gpa: int | None) -> list:
    """The SPTE half of `translate`."""
    v = s.vm.vcpus[s.current]
    root = getattr(v, "mmu", None) and v.mmu.root.sp
    if is_shadow(s.vm):
        if root is None:
            return ["Shadow SPTE path: no root loaded on this vCPU"]
        return [f"Shadow SPTE path from root #{root.number} (hpa {root.hpa:#x}, shadows gfn "
                f"{root.gfn:#x}) for gva {gva:#x}:", *_path_lines(s.vm, root, gva >> PAGE_SHIFT)]
    if gpa is None:
        return []
    if root is None:
        return ["SPTE path: no root loaded on this vCPU"]
    return [f"SPTE path from root #{root.number} (hpa {root.hpa:#x}) for gfn {gpa >> PAGE_SHIFT:#x}:",
            *_path_lines(s.vm, root, gpa >> PAGE_SHIFT)]


# --- info commands ---

def info_roots(s, arg: str) -> None:
    """info roots

    Every root KVM has built: number, hpa, role in the kernel's words, reference count,
    state (valid, invalid), leaf SPTEs and tables under it, the step it was created at,
    and which vCPUs hold it. `*` marks the current vCPU's root. Under shadow paging a root
    shadows the guest's top-level table: its gfn is shown too (a guest CR3 per root and role).
    """
    roots = roots_of(s.vm)
    if not roots:
        s.message("No roots.")
        return
    cur = getattr(s.vm.vcpus[s.current], "mmu", None)
    cur_root = cur.root.sp if cur else None
    shadow = is_shadow(s.vm)
    gfn_head = f"{'gfn':>8} " if shadow else ""
    s.message(f"  {'#':>3}  {'hpa':<12} {gfn_head}{'refs':>4}  {'state':<7} {'sptes':>6} {'tables':>6} "
              f"{'created':>8}  {'role':<32} users")
    for r in roots:
        leaves, tables = s.vm.tdp_mmu.count_sptes(r) if not r.freed else (0, 0)
        mark = "*" if r is cur_root else " "
        gfn = f"{r.gfn:>#8x} " if shadow else ""
        s.message(f"{mark} {r.number:>3}  {r.hpa:<#12x} {gfn}{r.root_count:>4}  {_state(r):<7} {leaves:>6} "
                  f"{tables:>6} {r.created_step:>8}  {R.role_str(r.role):<32} "
                  f"{' '.join(_users(s.vm, r)) or '-'}")


def info_root(s, arg: str) -> None:
    """info root N

    One root in detail: its role word bit by bit, its reference count, who holds it,
    and its SPTE counts.
    """
    if not arg:
        raise usage_error(info_root, "Argument required (a root number).")
    r = _root_by_number(s.vm, parse_int(arg))
    leaves, tables = s.vm.tdp_mmu.count_sptes(r) if not r.freed else (0, 0)
    kind = ("TDP MMU" if r.tdp_mmu_page else
            f"shadow MMU (hashed by gfn and role), shadows gfn {r.gfn:#x}" if is_shadow(s.vm)
            else "legacy MMU (hashed)")
    s.message(f"root #{r.number}: hpa {r.hpa:#x}, {_state(r)}, refs {r.root_count}, "
              f"created at step {r.created_step}, {kind}")
    s.message(f"  role {r.role:#010x}: {R.role_str(r.role)}")
    for name, value in R.role_fields(r.role).items():
        s.message(f"    {name:<16} {value}")
    s.message(f"  {leaves} leaf SPTEs in {tables} tables; held by {' '.join(_users(s.vm, r)) or 'no vCPU'}")


def info_spte(s, arg: str) -> None:
    """info spte ADDR [ROOT]

    The SPTE path for ADDR (a gva, or gpa:ADDR, or gfn:N) from the current root (or root
    number ROOT): each level's index, where the SPTE sits and what it says. Under shadow
    paging the tables map guest-virtual addresses, so ADDR is a gva, and each level names
    the guest table that shadow page shadows.
    """
    if not arg:
        raise usage_error(info_spte, "Argument required (an address).")
    words = arg.split()
    if is_shadow(s.vm):
        if words[0].startswith(("gfn:", "gpa:", "hpa:")):
            raise CommandError("Shadow page tables translate guest-virtual addresses: "
                               "info spte takes a gva under shadow paging.")
        gva, _space = evaluate_address(s, words[0])
        root = _current_root(s, words[1] if len(words) > 1 else "")
        s.message(f"gva {gva & M64:#x} in root #{root.number} (hpa {root.hpa:#x}, shadows gfn "
                  f"{root.gfn:#x}):")
        for line in _path_lines(s.vm, root, (gva & M64) >> PAGE_SHIFT):
            s.message(line)
        return
    gfn = _gfn_of(s, words[0])
    root = _current_root(s, words[1] if len(words) > 1 else "")
    s.message(f"gfn {gfn:#x} in root #{root.number} (hpa {root.hpa:#x}):")
    for line in _path_lines(s.vm, root, gfn):
        s.message(line)


def info_sptes(s, arg: str) -> None:
    """info sptes [ROOT] [gfn:START[-END]]

    Every leaf SPTE under the current root (or root ROOT), in kvm_mmu_set_spte's shape:
    gfn, SPTE, rights, level. Under shadow paging: the guest-virtual page each leaf maps,
    its gfn, the rights and the shadow page (gfn, unsync) holding it.
    """
    words = arg.split()
    lo, hi = 0, 1 << 40
    root_arg = ""
    for w in words:
        if w.startswith("gfn:"):
            lo, hi = parse_gfn_range(w[4:])
        else:
            root_arg = w
    root = _current_root(s, root_arg)
    rows = []
    if is_shadow(s.vm):
        _collect_shadow_leaves(s.vm, root, 0, rows, lo, hi)
        if not rows:
            s.message(f"No leaf SPTEs in root #{root.number}.")
            return
        for va, gfn, spte, sp in rows:
            s.message(f"gva {va:#x} gfn {gfn:#x} spte {spte:#x} "
                      f"({S.shadow_spte_str(spte, 1).split('(')[1].split(')')[0]}) "
                      f"in {'unsync ' if getattr(sp, 'unsync', False) else ''}page of gfn {sp.gfn:#x} "
                      f"access {R.role_str(sp.role & ~R.ROLE_DIRECT).split()[3]}")
        s.message(f"{len(rows)} leaf SPTEs.")
        return
    _collect_leaves(s.vm, root, rows, lo, hi)
    if not rows:
        s.message(f"No leaf SPTEs in root #{root.number}.")
        return
    for gfn, spte, level in rows:
        s.message(f"gfn {gfn:#x} spte {spte:#x} ({S.spte_str(spte, level).split('(')[1].split(')')[0]}) "
                  f"level {level}")
    s.message(f"{len(rows)} leaf SPTEs.")


def _collect_leaves(vm, sp, out, lo, hi) -> None:
    """(gfn, spte, level) of every leaf and MMIO SPTE under a TDP root in [lo, hi)."""
    for it in for_each_tdp_pte(vm.mmu_pages.pages, sp, lo, hi):
        spte = it.old_spte
        if spte and spte != S.REMOVED_SPTE and (S.is_last_spte(spte, it.level)
                                                or not S.is_shadow_present_pte(spte)):
            out.append((it.gfn, spte, it.level))


def _collect_shadow_leaves(vm, sp, va_base: int, out, lo, hi) -> None:
    """(gva, gfn, spte, page) of every leaf under a shadow page, in address order."""
    level = sp.level
    span = 12 + 9 * (level - 1)
    shadowed = getattr(sp, "shadowed", {})
    for i, spte in nonzero_entries(sp):
        va = va_base | (i << span)
        if i & 256 and level == 4:
            va |= ~((1 << 48) - 1) & M64          # canonical upper half
        if S.is_last_spte(spte, level) or not S.is_shadow_present_pte(spte):
            gfn = shadowed.get(i, (S.shadow_mmio_gfn(spte),))[0]
            if lo <= gfn < hi:
                out.append((va, gfn, spte, sp))
            continue
        child = vm.mmu_pages.pages.get(S.spte_to_pfn(spte))
        if child is not None:
            _collect_shadow_leaves(vm, child, va, out, lo, hi)


def info_shadow(s, arg: str) -> None:
    """info shadow [gfn:N]

    Every shadow page KVM keeps in its hash (shadow paging only): the guest table's gfn,
    the role in the kernel's words, root_count, unsync, how many parent SPTEs link it,
    and whether the gfn is write-tracked; then the page budget (n_used / n_max).
    """
    sh = getattr(s.vm, "shadow", None)
    if sh is None:
        raise CommandError("No shadow MMU: this VM runs with EPT (the profile's tdp_enabled is 1).")
    want = None
    if arg.strip():
        if not arg.strip().startswith("gfn:"):
            raise usage_error(info_shadow, f"Unknown argument \"{arg.strip()}\".")
        want = parse_gfn(arg.strip()[4:])
    rows = [sp for gfn in sorted(sh.hash) for sp in sh.hash[gfn] if want is None or gfn == want]
    if not rows:
        s.message("No shadow pages.")
    else:
        s.message(f"{'gfn':>8}  {'hpa':<12} {'refs':>4} {'parents':>7}  {'flags':<18} role")
        for sp in rows:
            flags = []
            if sp.invalid:
                flags.append("invalid")
            elif sh.is_obsolete(sp):
                flags.append("obsolete")
            if sp.unsync:
                flags.append("unsync")
            if sp.unsync_children:
                flags.append(f"uchild={sp.unsync_children}")
            if sh.is_write_tracked(sp.gfn):
                flags.append("wrprot")
            s.message(f"{sp.gfn:>#8x}  {sp.hpa:<#12x} {sp.root_count:>4} {len(sp.parent_ptes):>7}  "
                      f"{' '.join(flags) or '-':<18} {R.role_str(sp.role)}")
    s.message(f"{sh.n_used} of {sh.n_max} shadow pages in use; {len(sh.write_track)} write-tracked "
              f"gfns; mmu_valid_gen {s.vm.mmu_valid_gen}")


def info_tlb(s, arg: str) -> None:
    """info tlb [--stale]

    The current vCPU's hardware TLB: tag (VPID, PCID or G, EP4TA), page, host page and
    rights. --stale lists only entries that no longer match the guest page tables and
    the SPTEs (what a missing flush would let the guest use).
    """
    stale_only = "--stale" in arg.split()
    if arg and arg.strip() != "--stale":
        raise usage_error(info_tlb, f"Unknown option \"{arg}\".")
    cpu = s.cpu
    n = 0
    for (vpid, pcid, ep4ta), e in cpu.tlb.entries():
        stale = _is_stale(s, e, ep4ta)
        if stale_only and not stale:
            continue
        n += 1
        rights = ("u" if e.user else "s") + ("w" if e.writable else "r") + ("-" if e.nx else "x")
        tag = f"vpid {vpid} {'G' if pcid == -1 else f'pcid {pcid}'} ep4ta {ep4ta:#x}"
        s.message(f"{tag}: va {e.vpn << 12:#x} -> gpa {e.gpa:#x} hpa {e.hpa:#x} {rights}"
                  f"{' (' + stale + ')' if stale else ''}")
    if n == 0:
        s.message("No stale TLB entries." if stale_only else "The TLB is empty.")


def _is_stale(s, e, ep4ta: int) -> str:
    """'' if the entry agrees with the tables now, else why it does not."""
    w = guest_walk.walk(s.vm, s.cpu, e.vpn << 12)
    if w.gpa is None:
        return f"guest: {w.error}"
    if w.gpa & ~0xFFF != e.gpa:
        return f"guest now maps gpa {w.gpa & ~0xFFF:#x}"
    root = s.vm.mmu_pages.pages.get(ep4ta >> PAGE_SHIFT)
    if root is None:
        return "its shadow root is gone" if is_shadow(s.vm) else "its EPT root is gone"
    key = e.vpn if is_shadow(s.vm) else e.gpa >> PAGE_SHIFT
    level, _i, _p, spte = spte_path(s.vm, root, key)[-1]
    if not S.is_shadow_present_pte(spte):
        return "SPTE zapped"
    return ""


def info_mmu(s, arg: str) -> None:
    """info mmu

    The current vCPU's MMU context: cpu_role (the guest's paging mode, behind KVM's
    software walker and permission tables) and root_role (the key for root lookup),
    decoded field by field, the current root and the prev_roots cache.
    """
    v = s.vm.vcpus[s.current]
    mmu = getattr(v, "mmu", None)
    if mmu is None:
        raise CommandError("This vCPU runs without a hypervisor (no KVM MMU).")
    base, ext = mmu.cpu_role & 0xFFFF_FFFF, mmu.cpu_role >> 32
    s.message(f"cpu_role  base {base:#010x} ext {ext:#04x}")
    s.message("  base: " + " ".join(f"{k}={v}" for k, v in R.role_fields(base).items()))
    s.message("  ext:  " + " ".join(f"{k}={v}" for k, v in R.ext_fields(ext).items()))
    s.message(f"root_role {mmu.root_role:#010x}: {R.role_str(mmu.root_role)}")
    root = mmu.root.sp
    s.message(f"root      {'#%d hpa %#x' % (root.number, root.hpa) if root else 'invalid (INVALID_PAGE)'}")
    if root and is_shadow(s.vm):
        s.message(f"          pgd {mmu.root.pgd:#x} (the guest CR3 it shadows)")
    for i, p in enumerate(mmu.prev_roots):
        s.message(f"prev[{i}]   {'#%d pgd %#x' % (p.sp.number, p.pgd) if p.sp else 'invalid'}")
    s.message(f"requests  {', '.join(sorted(v.requests)) or 'none'}")
    sh = getattr(s.vm, "shadow", None)
    if sh is not None:
        unsync = sum(1 for b in sh.hash.values() for sp in b if sp.unsync)
        s.message(f"shadow    {sh.n_used} of {sh.n_max} pages, {unsync} unsync, "
                  f"{len(sh.write_track)} write-tracked gfns, mmu_valid_gen {s.vm.mmu_valid_gen} "
                  f"(\"info shadow\" lists them)")


def attach(s) -> None:
    """`translate` shows the SPTE path too."""
    s.state.translate_sections.append(spte_section)


def register(reg) -> None:
    info = reg.sub("info")
    info.add("roots", info_roots, category="mmu")
    info.add("root", info_root, category="mmu")
    info.add("spte", info_spte, category="mmu")
    info.add("sptes", info_sptes, category="mmu")
    info.add("shadow", info_shadow, category="mmu")
    info.add("tlb", info_tlb, category="mmu")
    info.add("mmu", info_mmu, category="mmu")
