"""The hardware page walker: 4-level paging with 4 KiB, 2 MiB and 1 GiB pages, PAE paging
(4 KiB, 2 MiB) and 32-bit paging (4 KiB, 4 MiB with CR4.PSE).

Applies SDM Vol. 3A 4.6 (access rights) and 4.7 (page-fault error codes) and
sets accessed/dirty flags (4.8) only for accesses that succeed. Every
paging-structure read and the final page go through ops.translate_gpa, so a
hypervisor can put its second-level tables (EPT) behind them.
"""

from __future__ import annotations

from kvmdbg.bits import UNPACK_FROM, mask
from kvmdbg.cpu.faults import (ACC_IMPLICIT, PF, PFERR_FETCH, PFERR_PK, PFERR_PRESENT,
                               PFERR_RSVD, PFERR_USER, PFERR_WRITE, GuestFault)
from kvmdbg.cpu.regs import (AC, CR0_PG, CR0_WP, CR4_PAE, CR4_PKE, CR4_PGE, CR4_PSE, CR4_SMAP,
                             CR4_SMEP, EFER_LMA, EFER_NXE, MAXPHYADDR)
from kvmdbg.cpu.tlb import TlbEntry
from kvmdbg.arch.pgtable_types import (PAGE_ACCESSED as A, PAGE_DIRTY as D, PAGE_GLOBAL as G,
                                       PAGE_NX as XD, PAGE_PRESENT as P, PAGE_PSE as PS,
                                       PAGE_RW as RW, PAGE_USER as US, PAE_PTE_RSVD,
                                       PT32_4M_ADDR_MASK, PT32_4M_RSVD, PT32_ADDR_MASK)

ADDR_MASK = mask(MAXPHYADDR - 1, 12)
RSVD_HIGH = mask(51, MAXPHYADDR)           # bits MAXPHYADDR..51 must be zero
RSVD_2M = mask(20, 13)                     # low address bits of a 2 MiB leaf
RSVD_1G = mask(29, 13)                     # low address bits of a 1 GiB leaf
_U64 = UNPACK_FROM[8]
_U32 = UNPACK_FROM[4]

# Access kinds handed to CpuOps.translate_gpa
READ, WRITE, FETCH = 0, 1, 2


def access_error(cpu, user: bool, writable: bool, nx: bool, pkey: int, acc: int) -> int:
    """0 if the access is allowed on a translation with these rights, else the #PF error code.

    acc holds PFERR_WRITE / PFERR_USER (a CPL-3, non-implicit access) / PFERR_FETCH and
    ACC_IMPLICIT. The rules are the table of SDM 4.6.1 (also kvm-mmu-spec 8.3). The PK
    bit is computed on its own (SDM 4.7): it is set whenever the page's key forbids a
    data access to a user-mode address, even if the access is also refused for another
    reason (KVM's permission_fault ORs it in the same way).
    """
    write = acc & PFERR_WRITE
    fetch = acc & PFERR_FETCH
    cr4 = cpu.cr4
    wp = (cpu.cr0 | cpu.hw_cr0_on) & CR0_WP
    if acc & PFERR_USER:
        bad = not user or (write and not writable) or (fetch and nx)
    elif fetch:
        bad = nx or (user and cr4 & CR4_SMEP)
    else:
        bad = ((user and cr4 & CR4_SMAP and (acc & ACC_IMPLICIT or not cpu.get_rflags() & AC))
               or (write and not writable and wp))
    pk = False
    if user and not fetch and cr4 & CR4_PKE and cpu.efer & EFER_LMA:
        rights = cpu.pkru >> (2 * pkey)
        # AD forbids reads and writes; WD forbids user writes, and supervisor writes with WP.
        pk = bool(rights & 1 or (rights & 2 and write and (acc & PFERR_USER or wp)))
    if not bad and not pk:
        return 0
    return PFERR_PRESENT | error_bits(cpu, acc) | (PFERR_PK if pk else 0)


def error_bits(cpu, acc: int) -> int:
    """W, U and I/D bits of a #PF error code for this access."""
    code = acc & (PFERR_WRITE | PFERR_USER)
    # I/D: SMEP, or EFER.NXE with CR4.PAE (PAE or 4-level paging; not 32-bit paging).
    cr4 = cpu.cr4
    if acc & PFERR_FETCH and (cpu.efer & EFER_NXE and cr4 & CR4_PAE or cr4 & CR4_SMEP):
        code |= PFERR_FETCH
    return code


def _read_entry(ops, gpa: int, pt_pages: list, size: int = 8, unpack=_U64):
    page, hpa, _w, _x = ops.translate_gpa(gpa, READ, True)
    off = gpa & 0xFFF
    if page is None:
        return ops.mmio_read(gpa, size), None, off
    pt_pages.append(hpa >> 12)
    return unpack(page, off)[0], page, off


def walk(cpu, va: int, acc: int, memo=None, key=None) -> TlbEntry:
    """Translate va for an access, or raise #PF. Returns a TLB entry for va's 4 KiB page.
    With a GuestWalkMemo (and its key for this walk), a 4-level walk that succeeds without
    an accessed/dirty update is remembered there."""
    ops = cpu.ops
    vpn = va >> 12
    if not cpu.cr0 & CR0_PG:
        gpa = va & ~0xFFF
        kind = FETCH if acc & PFERR_FETCH else WRITE if acc & PFERR_WRITE else READ
        page, hpa, ew, ex = ops.translate_gpa(gpa, kind, False)
        return TlbEntry(vpn, page, hpa, gpa, True, True, False, True, False, 0, 12, ew, ex)

    efer = cpu.efer
    if efer & EFER_LMA:
        base = cpu.cr3 & ADDR_MASK
        level = 4
        rsvd_high = RSVD_HIGH
    elif cpu.cr4 & CR4_PAE:
        # PAE paging (SDM 4.4.2): bits 31:30 pick a PDPTE register (loaded on CR writes by
        # cpu/system.py, not read here; no R/W, U/S, XD or A bits), then a page directory
        # and page table as 4-level paging's last two levels, with bits 62:MAXPHYADDR
        # reserved too.
        pdpte = cpu.pdptes[(va >> 30) & 3]
        if not pdpte & P:
            _fault(cpu, va, error_bits(cpu, acc))
        base = pdpte & ADDR_MASK
        level = 2
        rsvd_high = PAE_PTE_RSVD
    else:
        level = 0                  # 32-bit paging: 4-byte entries, walked by _walk_32
    if not level:
        used, pte, page_gpa, size_shift, user, writable, nx = _walk_32(cpu, va, acc)
        pkey = 0
        size = 4
    else:
        # Hot (every TLB miss): the entries' reads are written out (not _read_entry), the
        # rights are AND-ed / OR-ed as bit masks, and only the entries whose accessed or
        # dirty flag this walk must set are kept for the update below.
        nxe = efer & EFER_NXE
        translate_gpa = ops.translate_gpa
        pt_pages = cpu.walk_pt_pages = []     # host pages of the paging structures read
        anded = US | RW            # U/S and R/W AND-ed over the walk
        ored = 0                   # XD OR-ed over the walk
        write = acc & PFERR_WRITE
        used = []                  # (offset, new value, gpa) of every entry to update
        gpas = []                  # the entries' guest-physical addresses (for a memo)
        while True:
            shift = 12 + 9 * (level - 1)
            gpa = base | ((va >> shift) & 511) << 3
            page, hpa, _w, _x = translate_gpa(gpa, READ, True)
            if page is None:
                pte = ops.mmio_read(gpa, 8)
                memo = None        # a table in MMIO: nothing to remember
            else:
                pt_pages.append(hpa >> 12)
                gpas.append(gpa)
                pte = _U64(page, gpa & 0xFFF)[0]
            if not pte & P:
                _fault(cpu, va, error_bits(cpu, acc))
            rsvd = pte & rsvd_high or (pte & XD and not nxe)
            leaf = level == 1
            if pte & PS and not leaf:
                leaf = True
                if level == 4:
                    rsvd = True
                elif level == 3 and (pte & RSVD_1G or "pdpe1gb" not in cpu.features):
                    rsvd = True    # PS is reserved in a PDPTE without 1 GiB pages (SDM 4.5.4)
                elif level == 2 and pte & RSVD_2M:
                    rsvd = True
            if rsvd:
                _fault(cpu, va, PFERR_PRESENT | PFERR_RSVD | error_bits(cpu, acc))
            anded &= pte
            ored |= pte
            new = pte | A | (D if leaf and write else 0)
            if new != pte:
                used.append((gpa & 0xFFF, new, gpa))
            if leaf:
                break
            base = pte & ADDR_MASK
            level -= 1
        user = bool(anded & US)
        writable = bool(anded & RW)
        nx = bool(nxe and ored & XD)

        size_shift = 12 + 9 * (level - 1)
        if level == 1:
            page_gpa = pte & ADDR_MASK
        else:
            page_gpa = ((pte & ADDR_MASK & ~((1 << size_shift) - 1))
                        | (va & ((1 << size_shift) - 1) & ~0xFFF))
        pkey = (pte >> 59) & 0xF
        size = 8
        if memo is not None and not used and level != 3 and efer & EFER_LMA:
            # Nothing to write and no 1 GiB leaf (whose check reads the CPUID features):
            # the same tables answer the same, whatever the EPT translations do.
            e = _finish(cpu, va, acc, [], size, page_gpa, user, writable, nx, pkey, pte,
                        size_shift)
            memo.remember(key, (tuple(zip(gpas, [hpn << 12 for hpn in pt_pages])),
                                tuple(pt_pages), page_gpa, user, writable, nx, pkey,
                                bool(pte & G), size_shift))
            return e
    return _finish(cpu, va, acc, used, size, page_gpa, user, writable, nx, pkey, pte, size_shift)


def _finish(cpu, va: int, acc: int, used: list, size: int, page_gpa: int, user: bool,
            writable: bool, nx: bool, pkey: int, pte: int, size_shift: int) -> TlbEntry:
    """The end of every walk: the rights check, the accessed/dirty updates (only after the
    check passed), the final page's translation and the TLB entry."""
    code = access_error(cpu, user, writable, nx, pkey, acc)
    if code:
        _fault(cpu, va, code)

    # Accessed flags on every entry used, dirty on the leaf for a write (SDM 4.8).
    translate_gpa = cpu.ops.translate_gpa
    for off, new, gpa in used:
        wpage = translate_gpa(gpa, WRITE, True)[0]
        if wpage is not None:
            wpage[off:off + size] = new.to_bytes(size, "little")
    write = acc & PFERR_WRITE
    dirty = bool(write) or bool(pte & D)
    glob = bool(pte & G) and bool(cpu.cr4 & CR4_PGE)

    kind = FETCH if acc & PFERR_FETCH else WRITE if write else READ
    page, hpa, ew, ex = translate_gpa(page_gpa, kind, False)
    return TlbEntry(va >> 12, page, hpa, page_gpa, user, writable, nx, dirty, glob, pkey,
                    size_shift, ew, ex)


_NO_CACHE: dict = {}


class GuestWalkMemo:
    """What the guest's own tables said in a vCPU's successful 4-level walks, so that the
    walk after each EPT violation (the hardware restarts it from CR3) need not check every
    entry again. kvm/vcpu.py makes one per vCPU under EPT and makes its `walk` the CPU's
    walk_fn.

    An entry holds the entries' gpas and the host pages they were read from, and what the
    walk derived from them (rights, leaf, final gpa); only walks that set no accessed or
    dirty flag and end below 1 GiB are kept. Replaying one does everything the walk does
    with the EPT (each table's translation, in order, then the final page's) and
    everything that depends on the mode (the rights check, G with CR4.PGE); it falls back
    to the full walk when a table's translation names another host page.

    Owner and invalidation: this object. Emptied when the decode cache's pt_generation
    moves (a write to a page the CPU walked: DecodeCache.note_write, which every guest,
    KVM and debugger write reaches); keyed by (page, access, CR3, EFER) and bounded; set
    A/D flags never undo an entry. Pickles empty (snapshots rebuild the decode cache)."""

    __slots__ = ("entries", "paths", "pt_generation", "ept")

    MAX_ENTRIES = 4096             # a bound, not a policy

    def __init__(self, ept=None) -> None:
        self.entries: dict = {}
        self.paths: dict = {}          # ((gfn, hpa) of each table page) -> its TablePath
        self.pt_generation = None
        # The vCPU's EptHardware, whose cache of guest-physical translations answers a
        # table's READ as its translate() would on a hit (no side effect): probed here
        # directly, a call saved per table per replay. None: always translate().
        self.ept = ept

    def __reduce__(self):
        return (GuestWalkMemo, (self.ept,))

    def remember(self, key, entry) -> None:
        if len(self.entries) >= self.MAX_ENTRIES:
            self.entries.clear()
            self.paths.clear()
        # The walk's fields, a TablePath shared by every entry whose walk read the same
        # table pages, then the TLB entry a replay made last (see walk).
        pages = tuple((gpa >> 12, hpa) for gpa, hpa in entry[0])
        path = self.paths.get(pages)
        if path is None:
            path = self.paths[pages] = TablePath()
        self.entries[key] = [*entry, path, None]

    def walk(self, cpu, va: int, acc: int) -> TlbEntry:
        """walk(), replayed from memory when the guest's tables cannot have changed."""
        efer = cpu.efer
        if not (efer & EFER_LMA and cpu.cr0 & CR0_PG):
            return walk(cpu, va, acc)
        gen = cpu.decode_cache.pt_generation
        if gen != self.pt_generation:
            self.entries.clear()
            self.paths.clear()
            self.pt_generation = gen
        key = (va >> 12, acc, cpu.cr3, efer)
        m = self.entries.get(key)
        if m is None:
            return walk(cpu, va, acc, self, key)
        tables, hpns, page_gpa, user, writable, nx, pkey, pte_global, size_shift, path, made = m
        # Hot (after every EPT violation): the tables' translations, as the walk makes them.
        # (walk_pt_pages is read only after a walk that returned.)
        translate_gpa = cpu.ops.translate_gpa
        ept = self.ept
        if ept is not None and path.cache is ept.cache and path.evictions == ept.evictions:
            # Every table was found in the EPT's cache when the path was last replayed and
            # nothing has left it since: the translations are cache hits (no side effect).
            leaf_table = path.leaf_table
        else:
            cache = ept.cache if ept is not None else _NO_CACHE
            for gpa, hpa in tables:
                got = cache.get(gpa >> 12) or translate_gpa(gpa, READ, True)
                if got[1] != hpa:
                    # Another host page behind a table: walk it. The translations made so
                    # far are made again; the EPT answers them from its cache as it just did.
                    del self.entries[key]
                    return walk(cpu, va, acc, self, key)
            leaf_table = got[0]
            if ept is not None:
                # Each translation just made is in the cache now (a miss fills it).
                path.cache, path.evictions, path.leaf_table = ept.cache, ept.evictions, leaf_table
        cpu.walk_pt_pages = hpns
        # The leaf's dirty flag is read now, as the walk reads it: a walk for a write may
        # have set it since this entry was remembered (the walker's own accessed/dirty
        # writes do not move pt_generation). The leaf is the last table's entry.
        dirty = acc & PFERR_WRITE != 0 or _U64(leaf_table, tables[-1][0] & 0xFFF)[0] & D != 0
        # _finish, written out for a walk with no accessed/dirty flag to set: the rights
        # check, the final page's translation and the TLB entry. (A supervisor-mode data
        # access to a supervisor-mode page that is writable, or a read of one, is always
        # allowed, whatever WP, SMEP, SMAP and PKRU say (SDM Vol. 3A 4.6.1; protection keys
        # apply to user-mode pages only): the kernel's commonest case, without the call.)
        if user or acc & (PFERR_USER | PFERR_FETCH) or (acc & PFERR_WRITE and not writable):
            code = access_error(cpu, user, writable, nx, pkey, acc)
            if code:
                _fault(cpu, va, code)
        write = acc & PFERR_WRITE
        page, hpa, ew, ex = translate_gpa(page_gpa, FETCH if acc & PFERR_FETCH else WRITE if write else READ,
                                          False)
        glob = pte_global and cpu.cr4 & CR4_PGE != 0
        # A TLB entry is never changed once made, so the replay hands out the one it made
        # last when all of its fields would be the same (the key fixes the page and the
        # access, the memo the walk's fields; the rest are compared here).
        if (made is not None and made.hpa == hpa and made.page is page and made.ept_w == ew
                and made.ept_x == ex and made.glob == glob and made.dirty == dirty):
            return made
        e = m[10] = TlbEntry(va >> 12, page, hpa, page_gpa, user, writable, nx, dirty, glob, pkey,
                            size_shift, ew, ex)
        return e


class TablePath:
    """Where the table pages of remembered walks (the same pages, in order, at the same
    host pages) were last all found in the EPT's guest-physical cache: that cache, its
    evictions count then, and the last table's host page. GuestWalkMemo.walk skips
    looking them up again while that cache has lost nothing."""

    __slots__ = ("cache", "evictions", "leaf_table")

    def __init__(self) -> None:
        self.cache = None
        self.evictions = -1
        self.leaf_table = None


def _fault(cpu, va: int, code: int):
    raise GuestFault(PF, code, va)


def _walk_32(cpu, va: int, acc: int) -> tuple:
    """32-bit paging (SDM 4.3) to the leaf, for walk(): a page directory at CR3[31:12] and
    page tables of 4-byte entries, 4 MiB pages when CR4.PSE and the PDE's PS are set. No XD
    and no reserved bits, except bits 21:13 of a 4 MiB PDE (the model reports no PSE-36).
    `used` lists (offset, new value, gpa) of the entries whose A (or the leaf's D, for a
    write) the walk must set, as walk() does for the other modes."""
    ops = cpu.ops
    pt_pages = cpu.walk_pt_pages = []
    d_if_write = D if acc & PFERR_WRITE else 0
    pde_gpa = (cpu.cr3 & PT32_ADDR_MASK) | ((va >> 22) & 1023) << 2
    pde, _page, off = _read_entry(ops, pde_gpa, pt_pages, 4, _U32)
    if not pde & P:
        _fault(cpu, va, error_bits(cpu, acc))
    if pde & PS and cpu.cr4 & CR4_PSE:
        if pde & PT32_4M_RSVD:
            _fault(cpu, va, PFERR_PRESENT | PFERR_RSVD | error_bits(cpu, acc))
        new = pde | A | d_if_write
        used = [(off, new, pde_gpa)] if new != pde else []
        return (used, pde, (pde & PT32_4M_ADDR_MASK) | (va & 0x3FF000), 22, bool(pde & US),
                bool(pde & RW), False)
    used = [(off, pde | A, pde_gpa)] if not pde & A else []
    pte_gpa = (pde & PT32_ADDR_MASK) | ((va >> 12) & 1023) << 2
    pte, _page, off = _read_entry(ops, pte_gpa, pt_pages, 4, _U32)
    if not pte & P:
        _fault(cpu, va, error_bits(cpu, acc))
    new = pte | A | d_if_write
    if new != pte:
        used.append((off, new, pte_gpa))
    return (used, pte, pte & PT32_ADDR_MASK, 12, bool(pde & pte & US), bool(pde & pte & RW),
            False)


def walk_shadow(cpu, va: int, acc: int) -> TlbEntry:
    """The walk the processor does when a hypervisor shadows the guest's tables (VMX with
    EPT off): its CR3 is the hypervisor's root (ops.ep4ta, the root's host-physical
    address), the tables and the final page are host-physical, in the same 4-level format.

    Rights follow SDM 4.6 with the CR0 the hardware uses (the hypervisor forces WP on) and
    the guest's CR4/EFLAGS, with EFER.NXE forced on (KVM runs shadowed guests so). A #PF
    here normally exits (exception bitmap) for the hypervisor to fix its tables or inject
    the guest's own fault; the error code is the hardware's, with I/D set for fetches.
    """
    ops = cpu.ops
    pages = ops.host_pages
    cpu.walk_pt_pages = []                 # the guest never writes these tables
    pfn = ops.ep4ta >> 12
    kind_bits = acc & (PFERR_WRITE | PFERR_USER | PFERR_FETCH)
    user = writable = True
    nx = False
    used = []
    level = 4
    while True:
        table = pages[pfn]
        off = ((va >> (12 + 9 * (level - 1))) & 511) << 3
        e = int.from_bytes(table[off:off + 8], "little")
        if not e & P:
            _fault(cpu, va, kind_bits)
        leaf = level == 1 or (e & PS and level < 4)
        if (e & RSVD_HIGH or (level == 4 and e & PS) or (leaf and level == 3 and e & RSVD_1G)
                or (leaf and level == 2 and e & RSVD_2M)):
            _fault(cpu, va, PFERR_PRESENT | PFERR_RSVD | kind_bits)
        used.append((table, off, e))
        user = user and bool(e & US)
        writable = writable and bool(e & RW)
        if e & XD:
            nx = True
        if leaf:
            break
        pfn = (e & ADDR_MASK) >> 12
        level -= 1
    if access_error(cpu, user, writable, nx, 0, acc):
        _fault(cpu, va, PFERR_PRESENT | kind_bits)
    write = bool(acc & PFERR_WRITE)
    last = len(used) - 1
    for i, (table, off, val) in enumerate(used):
        new = val | A
        if i == last and write:
            new |= D
        if new != val:
            table[off:off + 8] = new.to_bytes(8, "little")
    size_shift = 12 + 9 * (level - 1)
    leaf_pfn = ((e & ADDR_MASK) >> 12) + ((va >> 12) & ((1 << (size_shift - 12)) - 1))
    hpa = leaf_pfn << 12
    return TlbEntry(va >> 12, pages[leaf_pfn], hpa, ops.hpa_to_gpa(hpa), user, writable, nx,
                    write or bool(e & D), False, 0, 12)
