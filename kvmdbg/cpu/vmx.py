"""The VMX hardware the hypervisor programs: VM exits, the EPT walk, the EPT-tagged caches.

Only what a processor does lives here (SDM Vol. 3C chapters 27-29): exit reasons,
the 4-level EPT walk over tables in host memory (with accessed/dirty flags and
misconfiguration checks), and the cache of guest-physical translations tagged by
EP4TA that INVEPT invalidates. What KVM does about an exit lives in kvm/.
"""

from __future__ import annotations

from kvmdbg.bits import UNPACK_FROM

# Basic exit reasons (SDM Vol. 3D, Appendix C)
EXCEPTION_NMI, EXTERNAL_INTERRUPT, TRIPLE_FAULT = 0, 1, 2
CPUID, HLT, INVLPG, RDTSC, VMCALL = 10, 12, 14, 16, 18
CR_ACCESS, IO_INSTRUCTION, MSR_READ, MSR_WRITE = 28, 30, 31, 32
EPT_VIOLATION, EPT_MISCONFIG = 48, 49
INVPCID = 58

EXIT_NAMES = {EXCEPTION_NMI: "EXCEPTION_NMI", EXTERNAL_INTERRUPT: "EXTERNAL_INTERRUPT",
              TRIPLE_FAULT: "TRIPLE_FAULT", CPUID: "CPUID", HLT: "HLT", INVLPG: "INVLPG",
              RDTSC: "RDTSC", VMCALL: "VMCALL", CR_ACCESS: "CR_ACCESS",
              IO_INSTRUCTION: "IO_INSTRUCTION", MSR_READ: "MSR_READ", MSR_WRITE: "MSR_WRITE",
              EPT_VIOLATION: "EPT_VIOLATION", EPT_MISCONFIG: "EPT_MISCONFIG", INVPCID: "INVPCID"}

# EPT violation exit qualification bits (SDM Vol. 3C, Table 28-7)
EPT_QUAL_READ, EPT_QUAL_WRITE, EPT_QUAL_FETCH = 1 << 0, 1 << 1, 1 << 2
EPT_QUAL_READABLE, EPT_QUAL_WRITABLE, EPT_QUAL_EXECUTABLE = 1 << 3, 1 << 4, 1 << 5
EPT_QUAL_GLA_VALID, EPT_QUAL_GLA_FINAL = 1 << 7, 1 << 8

READ, WRITE, FETCH = 0, 1, 2       # access kinds, as cpu/walker.py passes them
_KIND_QUAL = (EPT_QUAL_READ, EPT_QUAL_WRITE, EPT_QUAL_FETCH)
_BAD_MEMTYPES = (2, 3, 7)
# By a leaf entry's bits 5:0 (X W R and the memory type): whether it is misconfigured.
_LEAF_MISCONFIG = tuple((e & 6 and not e & 1) or (e >> 3) in _BAD_MEMTYPES for e in range(64))
_U64 = UNPACK_FROM[8]
_PFN40 = (1 << 40) - 1
_SHIFTS = (39, 30, 21, 12)          # gpa bits that index each level's table, 4 to 1


class VmExit(Exception):
    """The processor leaves the guest in the middle of an instruction (nothing of it retired)."""

    __slots__ = ("reason", "qualification", "gpa", "error_code", "handled")

    def __init__(self, reason: int, qualification: int = 0, gpa: int = 0, error_code: int = 0,
                 handled=False):
        # No super().__init__: BaseException.__new__ already keeps the positional arguments
        # as args (raised once per EPT violation, so the call is worth leaving out).
        self.reason = reason
        self.qualification = qualification     # #PF exits: the faulting linear address
        self.gpa = gpa
        self.error_code = error_code           # VM-exit interruption error code (#PF)
        # False; or the hypervisor already handled the exit where it happened (CpuOps.
        # exit_in_place) and could not enter again: what its handling left to do.
        self.handled = handled

    def __str__(self) -> str:
        return f"VM exit {EXIT_NAMES.get(self.reason, self.reason)} gpa {self.gpa:#x}"


class EptHardware:
    """Per logical processor: the EPTP in use and the guest-physical cache per EP4TA."""

    MAX_EP4TAS = 16                 # EP4TAs with cached translations (the TLB's contexts)

    def __init__(self, host_pages: dict, ad_enabled: bool = True, generation=None):
        self.host_pages = host_pages          # pfn -> bytearray (the host's physical memory)
        # A walk's result depends only on the tables; while their writer's generation
        # (bumped on every SPTE change) stands still, a re-walk after INVEPT would read
        # the same entries and set no new A/D bit, so its answer is remembered.
        self.generation = generation          # a kvmdbg.generation.Generation, or None
        self.memo: dict = {}
        # ... and so is where a walk's first three levels lead, per 2 MiB of guest-physical
        # space: ep4ta << 31 | gpa >> 21 -> (last table's page, R/W/X and A so far). Only
        # present, non-leaf entries are remembered, and only a present entry's change
        # moves the generation; A flags only ever get set without it. (Without a
        # generation nothing is remembered, and it stays empty.)
        self.prefixes: dict = {}
        self.memo_gen = None
        self.ad_enabled = ad_enabled
        self.ep4ta = 0
        self.caches: dict[int, dict] = {}     # ep4ta -> {gfn: (page, hpa, w, x)}
        self.cache: dict = {}
        # Bumped whenever a cached translation may go or change (INVEPT, the flush an EPT
        # violation does, a walk that replaces an entry): while it stands still and
        # `cache` is the same dict, what a reader found in it is still there.
        self.evictions = 0
        self.walks = 0
        # The hypervisor's handler of an EPT violation where it happens, given its gpa and
        # exit qualification: True if it handled it and entered again without anyone able
        # to tell (kvm/vcpu.py), else what the raised exit's `handled` says. None: raise.
        self.exit_in_place = None
        # EP4TAs loaded since the debugger's history last looked (it clears the set): only
        # their caches can have changed, the others are as its snapshots stored them.
        self.loaded: set = set()

    def load_eptp(self, ep4ta: int) -> None:
        self.ep4ta = ep4ta
        cache = self.caches.get(ep4ta)
        if cache is None:
            if len(self.caches) >= self.MAX_EP4TAS:
                # A processor may drop cached translations at any time (SDM Vol. 3C 29.4.1):
                # the oldest EP4TA's go, as a real cache's capacity would see to. (Under
                # v5.15 every CR4 write loads a new root, whose EP4TA is never used again.)
                self.caches.pop(next(iter(self.caches))).clear()
                self.evictions += 1
            cache = self.caches[ep4ta] = {}
        self.cache = cache
        self.loaded.add(ep4ta)          # for the debugger's history: caches that may change

    def invept_single(self, ep4ta: int) -> None:
        self.evictions += 1
        if ep4ta == self.ep4ta:
            self.cache.clear()                  # the current EPTP's cache stays, emptied
            return
        c = self.caches.pop(ep4ta, None)
        if c is not None:
            c.clear()

    def invept_all(self) -> None:
        self.evictions += 1
        for c in self.caches.values():
            c.clear()
        self.caches.clear()
        self.cache = self.caches.setdefault(self.ep4ta, {})

    def translate(self, gpa: int, kind: int, walk: bool):
        """(host page, hpa, writable, executable) for gpa's 4 KiB page, or raise VmExit."""
        gfn = gpa >> 12
        hit = self.cache.get(gfn)
        if hit is not None:
            # READ (0) needs no right the entry records; WRITE (1) needs hit[2], FETCH (2) hit[3].
            if not kind or hit[kind + 1]:
                return hit
            self.evictions += 1             # the walk below replaces the entry
        while True:
            # A miss (twice per EPT violation): the walk, or the answer it gave while the
            # tables stood still.
            self.walks += 1
            generation = self.generation
            if generation is None:
                got = self._real_walk(gpa, kind, walk)
                if got is not None:
                    return got
                continue
            gen = generation.value
            if gen != self.memo_gen:
                self.memo.clear()
                self.prefixes.clear()
                self.memo_gen = gen
            # Keyed by one int, ep4ta << 40 | gfn (a gfn has at most 40 bits), not a tuple;
            # an entry is (the walk's answer, whether that walk was a write's).
            key = self.ep4ta << 40 | gfn
            m = self.memo.get(key)
            if m is not None:
                got = m[0]
                if (not kind or got[kind + 1]) and (kind != WRITE or m[1]):
                    self.cache[gfn] = got
                    return got
            walks = self.walks
            got = self._real_walk(gpa, kind, walk)
            if got is not None:
                # Not remembered right after a violation handled in place (the walk went on
                # from the leaf and counted itself): the next miss of this page remembers
                # it, if the tables still stand then (after a root's rebuild, they never do).
                if self.walks == walks:
                    self.memo[key] = (got, kind == WRITE)
                return got
            # None: the hypervisor handled an EPT violation in place (see _exit), and
            # the walk is made again, as the restarted instruction's would be.

    def _real_walk(self, gpa: int, kind: int, walk: bool):
        # Runs on every EPT TLB miss (twice per EPT violation): one pass of plain locals
        # that reads the entries and checks them, and a second pass (_set_ad) only when
        # an accessed or dirty flag is still clear, which KVM's presets make rare.
        pages = self.host_pages
        prefixes = self.prefixes            # see __init__ (empty without a generation)
        prefix_key = self.ep4ta << 31 | gpa >> 21          # (ep4ta, gpa >> 21) as one int
        pre = prefixes.get(prefix_key)
        if pre is None:
            pfn = self.ep4ta >> 12
            perms = 7              # R, W, X (bits 0-2) AND-ed over the walk
            accessed = 0x100       # A (bit 8) AND-ed over the walk
            for shift in _SHIFTS:  # levels 4, 3, 2, 1
                e = _U64(pages[pfn], ((gpa >> shift) & 511) << 3)[0]
                if not e & 7:
                    return self._exit(gpa, kind, walk, 0)
                perms &= e
                accessed &= e
                if shift == 12 or (e & 0x80 and shift != 39):   # a leaf (1 GiB / 2 MiB at 3 / 2)
                    if _LEAF_MISCONFIG[e & 0x3F]:           # W or X without R; memory type
                        raise VmExit(EPT_MISCONFIG, 0, gpa)
                    break
                if e & 6 and not e & 1:                     # W or X without R
                    raise VmExit(EPT_MISCONFIG, 0, gpa)
                pfn = (e >> 12) & _PFN40
                if shift == 21 and self.generation is not None:
                    prefixes[prefix_key] = (pages[pfn], perms, accessed)
        else:
            # The first three levels remembered: the loop's last pass, written out.
            table, perms, accessed = pre
            shift = 12
            off = ((gpa >> 12) & 511) << 3
            e = _U64(table, off)[0]
            while not e & 7:
                self._exit(gpa, kind, walk, 0)
                # Handled in place: the walk is made again (and counted, as translate
                # counts one). While no SPTE that was present changed, its first three
                # levels read as they just did, so it goes on from the leaf.
                if self.generation.value != self.memo_gen:
                    return None                         # translate walks from the top
                self.walks += 1
                e = _U64(table, off)[0]
            if _LEAF_MISCONFIG[e & 0x3F]:                   # W or X without R; memory type
                raise VmExit(EPT_MISCONFIG, 0, gpa)
            perms &= e
            accessed &= e
        if not perms >> kind & 1:                           # READ 0, WRITE 1, FETCH 2
            return self._exit(gpa, kind, walk, (perms & 7) << 3)   # readable/writable/executable
        if self.ad_enabled and (not accessed or (kind == WRITE and not e & 0x200)):
            self._set_ad(gpa, kind)
        if shift == 12:
            leaf_pfn = (e >> 12) & _PFN40
        else:
            span = shift - 12                               # pfn bits the leaf's offset spans
            leaf_pfn = ((e >> 12) & _PFN40 & ~((1 << span) - 1)) + ((gpa >> 12) & ((1 << span) - 1))
        got = (pages[leaf_pfn], leaf_pfn << 12, perms & 2 != 0, perms & 4 != 0)
        # Read-only or non-executable translations are cached too; translate() re-walks
        # (and so exits) when an access needs a right the cached entry lacks.
        self.cache[gpa >> 12] = got
        return got

    def _set_ad(self, gpa: int, kind: int) -> None:
        """A successful walk sets the accessed flag of every entry it used, and the dirty
        flag of the leaf for a write (SDM 29.3.5): the same path again, writing."""
        pages = self.host_pages
        pfn = self.ep4ta >> 12
        for shift in _SHIFTS:
            table = pages[pfn]
            off = ((gpa >> shift) & 511) << 3
            e = _U64(table, off)[0]
            leaf = shift == 12 or (e & 0x80 and shift != 39)
            new = e | 0x100
            if leaf and kind == WRITE:
                new |= 0x200
            if new != e:
                table[off:off + 8] = new.to_bytes(8, "little")
            if leaf:
                return
            pfn = (e >> 12) & _PFN40

    def _exit(self, gpa: int, kind: int, walk: bool, rights: int) -> None:
        """An EPT violation. The hypervisor may take it where it happens (exit_in_place:
        it handled it and entered again; None is returned and the walk is made again);
        otherwise it is raised, for the run loop to take."""
        qual = _KIND_QUAL[kind] | rights | EPT_QUAL_GLA_VALID | (0 if walk else EPT_QUAL_GLA_FINAL)
        # An EPT violation invalidates the guest-physical mappings of the faulting address.
        if self.cache.pop(gpa >> 12, None) is not None:
            self.evictions += 1
        in_place = self.exit_in_place
        handled = False if in_place is None else in_place(gpa, qual)
        if handled is True:
            return None
        # Raised as made: an exception held in a local of the frame it is raised in is a
        # reference cycle (the frame, its traceback, the exception), which lives on until
        # a collection (measured: a third more time a violation with two vCPUs).
        raise VmExit(EPT_VIOLATION, qual, gpa, 0, handled)
