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
_U64 = UNPACK_FROM[8]


class VmExit(Exception):
    """The processor leaves the guest in the middle of an instruction (nothing of it retired)."""

    __slots__ = ("reason", "qualification", "gpa", "error_code")

    def __init__(self, reason: int, qualification: int = 0, gpa: int = 0, error_code: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.qualification = qualification     # #PF exits: the faulting linear address
        self.gpa = gpa
        self.error_code = error_code           # VM-exit interruption error code (#PF)

    def __str__(self) -> str:
        return f"VM exit {EXIT_NAMES.get(self.reason, self.reason)} gpa {self.gpa:#x}"


class EptHardware:
    """Per logical processor: the EPTP in use and the guest-physical cache per EP4TA."""

    def __init__(self, host_pages: dict, ad_enabled: bool = True, generation=None):
        self.host_pages = host_pages          # pfn -> bytearray (the host's physical memory)
        # A walk's result depends only on the tables; while their writer's generation
        # (bumped on every SPTE change) stands still, a re-walk after INVEPT would read
        # the same entries and set no new A/D bit, so its answer is remembered.
        self.generation = generation          # a kvmdbg.generation.Generation, or None
        self.memo: dict = {}
        self.memo_gen = None
        self.ad_enabled = ad_enabled
        self.ep4ta = 0
        self.caches: dict[int, dict] = {}     # ep4ta -> {gfn: (page, hpa, w, x)}
        self.cache: dict = {}
        self.walks = 0
        # EP4TAs loaded since the debugger's history last looked (it clears the set): only
        # their caches can have changed, the others are as its snapshots stored them.
        self.loaded: set = set()

    def load_eptp(self, ep4ta: int) -> None:
        self.ep4ta = ep4ta
        self.cache = self.caches.setdefault(ep4ta, {})
        self.loaded.add(ep4ta)          # for the debugger's history: caches that may change

    def invept_single(self, ep4ta: int) -> None:
        if ep4ta == self.ep4ta:
            self.cache.clear()                  # the current EPTP's cache stays, emptied
            return
        c = self.caches.pop(ep4ta, None)
        if c is not None:
            c.clear()

    def invept_all(self) -> None:
        for c in self.caches.values():
            c.clear()
        self.caches.clear()
        self.cache = self.caches.setdefault(self.ep4ta, {})

    def drop_gpa(self, gfn: int) -> None:
        self.cache.pop(gfn, None)

    def translate(self, gpa: int, kind: int, walk: bool):
        """(host page, hpa, writable, executable) for gpa's 4 KiB page, or raise VmExit."""
        gfn = gpa >> 12
        hit = self.cache.get(gfn)
        if hit is not None and (kind == READ or (kind == WRITE and hit[2]) or (kind == FETCH and hit[3])):
            return hit
        return self._walk(gpa, kind, walk)

    def _walk(self, gpa: int, kind: int, walk: bool):
        self.walks += 1
        if self.generation is not None:
            gen = self.generation.value
            if gen != self.memo_gen:
                self.memo.clear()
                self.memo_gen = gen
            key = (self.ep4ta, gpa >> 12)
            got = self.memo.get(key)
            if got is not None and (kind == READ or (kind == WRITE and got[2]) or (kind == FETCH and got[3])):
                if kind != WRITE or got[4]:
                    self.cache[gpa >> 12] = got[:4]
                    return got[:4]
            got = self._real_walk(gpa, kind, walk)
            self.memo[key] = got + (kind == WRITE,)
            return got
        return self._real_walk(gpa, kind, walk)

    def _real_walk(self, gpa: int, kind: int, walk: bool):
        pages = self.host_pages
        pfn = self.ep4ta >> 12
        r = w = x = True
        used = []
        level = 4
        while True:
            table = pages[pfn]
            off = ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
            e = _U64(table, off)[0]
            perm = e & 7
            if perm == 0:
                self._violation(gpa, kind, walk, 0)
            if (e & 2 and not e & 1) or (e & 4 and not e & 1):
                raise VmExit(EPT_MISCONFIG, 0, gpa)
            leaf = level == 1 or (e & 0x80 and level in (2, 3))
            if leaf and ((e >> 3) & 7) in _BAD_MEMTYPES:
                raise VmExit(EPT_MISCONFIG, 0, gpa)
            r = r and bool(e & 1)
            w = w and bool(e & 2)
            x = x and bool(e & 4)
            used.append((table, off, e))
            if leaf:
                break
            pfn = (e >> 12) & ((1 << 40) - 1)
            level -= 1
        perms = (r, w, x)
        if not perms[kind]:
            self._violation(gpa, kind, walk, (r and EPT_QUAL_READABLE) | (w and EPT_QUAL_WRITABLE)
                            | (x and EPT_QUAL_EXECUTABLE))
        if self.ad_enabled:
            last = len(used) - 1
            for i, (table, off, e) in enumerate(used):
                new = e | 0x100
                if i == last and kind == WRITE:
                    new |= 0x200
                if new != e:
                    table[off:off + 8] = new.to_bytes(8, "little")
        size_shift = 12 + 9 * (level - 1)
        base_pfn = (e >> 12) & ((1 << 40) - 1) & ~((1 << (size_shift - 12)) - 1)
        leaf_pfn = base_pfn + ((gpa >> 12) & ((1 << (size_shift - 12)) - 1))
        got = (pages[leaf_pfn], leaf_pfn << 12, w, x)
        # Read-only or non-executable translations are cached too; translate() re-walks
        # (and so exits) when an access needs a right the cached entry lacks.
        self.cache[gpa >> 12] = got
        return got

    def _violation(self, gpa: int, kind: int, walk: bool, rights: int):
        qual = _KIND_QUAL[kind] | rights | EPT_QUAL_GLA_VALID | (0 if walk else EPT_QUAL_GLA_FINAL)
        # An EPT violation invalidates the guest-physical mappings of the faulting address.
        self.cache.pop(gpa >> 12, None)
        raise VmExit(EPT_VIOLATION, qual, gpa)
