"""One logical processor: registers, memory access through the TLB, instruction fetch.

Memory access has a fast path per access kind: dicts from guest page number to
host page, valid for the current mode only (CPL, CR0/CR3/CR4, EFER, AC, PKRU,
the EPT root). A miss goes to the TLB, then the page walker.

Every cache of the simulation, and the one place that invalidates it:

- fast_r / fast_w / fast_x / fast_implicit and the selected mode: ``flush_fast``, called
  by the mode-register setters below (set_cr0/cr3/cr4/efer/pkru/pdptes/hw_cr0_on), by
  the TLB after every invalidation of more than one page (Tlb.on_invalidate), by the vCPU when it loads another EPT root (Vcpu.load_mmu_pgd)
  and by KVM's emulator, which needs every access on its slow path (kvm/emulate.py).
  An invalidation of one page (INVLPG, INVPCID/INVVPID of an address, a #PF) goes to
  ``flush_fast_page`` (Tlb.on_invalidate_page): that page's copies and those of the
  large page holding it (_fast_large) go, the rest stays. A change of CPL or of RFLAGS.AC
  (set_cs, load_cs, set_rflags) goes to ``_flush_fast_explicit``, which keeps
  fast_implicit: the rights of a supervisor-mode implicit access depend on neither;
- icache / bcache (rip -> handler): a handler is used only while its code page is
  in fast_x, so each is re-validated after a flush; both are dropped when a code page
  comes back under another key (remapped, or the code size changed: _fetch_page) and
  when decoded code is written (DecodeCache.note_write);
- the walk memo (per mode in _modes): the decode cache's pt_generation (a write to
  a paging structure) and the shared gpa generation (kvmdbg/generation.py: an SPTE
  or a memslot changed), compared on each TLB miss;
- the decode cache (decoded instructions and block handlers per (gva, hpa)):
  DecodeCache.note_write, on a write to a page that holds decoded code;
- the hardware TLB: only the architectural flushes (SDM 4.10.4, INVEPT/INVVPID); its
  index of large-page pieces (Tlb.large) goes with the contexts it indexes;
- which block handlers hold a breakpoint (executor._holds_memo): a pure function of the
  handler and the breakpoint set, started afresh for another set;
- the guest walk memo under EPT (walker.GuestWalkMemo, the walk_fn KVM installs): the
  decode cache's pt_generation; a table found behind another host page walks again;
- outside cpu/: the EPT walk memo and its prefixes per 2 MiB (cpu/vmx.py EptHardware:
  the gpa generation), TdpMmu.last_tables (the pool's generation),
  Vm.host_page_of's gfn cache (the memslots' generation), the role memo of
  kvm_init_mmu (a pure function of its key: never invalidated).
"""

from __future__ import annotations

import struct as _struct

from kvmdbg.bits import M64, PACK_INTO as _PACK_INTO, UNPACK_FROM as _UNPACK_FROM, canonical
from kvmdbg.cpu import flags as _flags
from kvmdbg.cpu.decoder import Decoder
from kvmdbg.cpu.faults import (ACC_IMPLICIT, GP, PF, PFERR_FETCH, PFERR_USER, PFERR_WRITE, SS,
                               UD, GuestFault)
from kvmdbg.arch.cpufeatures import CPUID_FEATURES
from kvmdbg.cpu.regs import (AC, CR0_ET, CR0_PE, CR0_PG, CR4_PCIDE, CR4_PGE, CR4_SMAP, EFER_LMA,
                             RFLAGS_FIXED)
from kvmdbg.cpu.segments import NULL_SEGMENT, Segment, code_bits
from kvmdbg.cpu.tlb import GLOBAL, Tlb
from kvmdbg.cpu.translate import form_block, generate, make_handler
from kvmdbg.cpu.vmx import EXCEPTION_NMI, VmExit
from kvmdbg.cpu.system import set_features
from kvmdbg.cpu.walker import access_error, walk
from kvmdbg.errors import UnsupportedMode

_MAX_MEMO_MODES = 64          # modes (each with its walk memo) kept; a bound, not a policy

_materialize = _flags.materialize
_UNPACK_QWORDS = {n: _struct.Struct(f"<{n}Q").unpack_from for n in range(1, 7)}
_PACK_QWORDS = {n: _struct.Struct(f"<{n}Q").pack_into for n in range(1, 7)}


def _check_ss(va: int, size: int) -> None:
    """#SS(0) if the first or last byte of an access through SS is non-canonical."""
    if not canonical(va) or not canonical((va + size - 1) & M64):
        raise GuestFault(SS, 0)


class Cpu:
    def __init__(self, ops, decode_cache, index: int = 0, vpid: int = 1, translator=None):
        if translator is None:
            translator = generate
        self.ops = ops
        self.index = index
        self.vpid = vpid
        self.r = [0] * 16
        self.rip = 0
        self.rflags = RFLAGS_FIXED
        self.lf = None                 # lazy arithmetic flags (cpu/flags.py)
        self.cr0 = CR0_ET | CR0_PE
        self.cr2 = 0
        self.cr3 = 0
        self.cr4 = 0
        self.cr8 = 0
        self.efer = 0
        self.cs = 0x08
        self.ss = 0x10
        self.ds = self.es = self.fs = self.gs = 0x10
        # The hidden parts of the segment registers (cpu/segments.py), and the code size
        # CS and EFER.LMA give (64, 32 or 16): written only by load_cs / set_segment /
        # set_efer, which keep the selectors above in step.
        self.seg_cache = {name: NULL_SEGMENT for name in ("cs", "ss", "ds", "es", "fs", "gs")}
        # TR and LDTR (cpu/tss.py): selectors and hidden parts like the segment registers'.
        self.tr = self.ldtr = 0
        self.seg_cache["tr"] = self.seg_cache["ldtr"] = NULL_SEGMENT
        self.code_bits = 16
        self._code_tag = 0             # the code size's mark in decode-cache keys (_fetch_page)
        self._x_keys: dict[int, int] = {}   # vpn -> the key hpa its cached handlers were made for
        self.fs_base = self.gs_base = self.kernel_gs_base = 0
        self.gdtr = (0, 0)             # (base, limit)
        self.idtr = (0, 0)
        self.pkru = 0
        self.pdptes = (0, 0, 0, 0)     # the PDPTE registers of PAE paging (set_pdptes)
        self.pat = 0x0007040600070406
        self.tsc_aux = 0
        # What CPUID reports (cpu/system.py set_features): every feature the model has,
        # until whoever builds the CPU says otherwise.
        set_features(self, CPUID_FEATURES)
        self.steps = 0                 # instructions retired (and exceptions taken)
        self.extra_cycles = 0          # simulated cycles spent outside guest instructions
        self.walks = 0                 # TLB misses that walked the page tables
        self.walk_cost = 0             # cycles a walk costs (set by whoever models time)
        self.walk_pt_pages: list = []  # host pages the last walk read (walker.py sets it)
        # The page walk the hardware does: the guest's tables (possibly through EPT), or,
        # under shadow paging, the tables the hypervisor built (set by the kvm layer).
        self.walk_fn = walk
        # VMX controls a hypervisor may set (shadow paging sets all three): CR0 bits forced
        # on in the CR0 the hardware uses (the guest reads its own), the exception bitmap's
        # #PF bit (a #PF exits instead of being delivered) and INVLPG exiting.
        self.hw_cr0_on = 0
        self.pf_exiting = False
        self.invlpg_exiting = False
        self._mode = None              # see _select_mode
        self._modes: dict = {}         # registers -> mode, whose walk memo is
                                       # {vpn << 17 | acc: TlbEntry} (see translate)
        self._memo_pt_gen = self._memo_gpa_gen = None
        self._gpa_generation = ops.gpa_generation
        self.halted = False
        self.shutdown = ""             # non-empty once the guest triple-faulted
        self.pending = False           # set by anything that must end the run loop
        self.stop_reason = None
        self.delivering = None         # vector being delivered (double-fault rules)
        # A walk of translate() is under way / an event (exception, INT n) is being
        # delivered: what a hypervisor handling an exit in place needs to know.
        self.in_walk = False
        self.in_delivery = False
        self.vectoring = None          # an event whose delivery exited, to inject again
        self.tlb = Tlb()
        self.tlb.on_invalidate = self.flush_fast   # fast paths are copies of TLB entries
        self.tlb.on_invalidate_page = self.flush_fast_page
        # (log2 of 4 KiB pieces, large-page number) -> vpns in the fast paths made from a
        # 2 MiB / 4 MiB / 1 GiB translation, so a page flush can find every piece of its
        # large page (as the TLB drops them all) even if the TLB evicted some meanwhile.
        self._fast_large: dict = {}
        self.decode_cache = decode_cache
        self.translator = translator
        self.decoder = Decoder()
        self.icache: dict[int, object] = {}     # rip -> single handler, valid in this mode
        self.bcache: dict[int, object] = {}     # rip -> block handler, valid in this mode
        self.fast_x: dict[int, tuple] = {}      # vpn -> (page, key, gpa, hpa) for fetches
        self.smc = False                        # a write hit decoded code (see decode_cache)
        # One instruction per handler call, so a stop requested by anything an instruction
        # causes (a debugger catchpoint on an event) is taken right after it, not at the
        # end of its block.
        self.single_step = False
        self.step_end = 0              # the run loop's step budget; looping blocks honour it
        self.fast_r: dict[int, bytearray] = {}
        self.fast_w: dict[int, bytearray] = {}
        # vpn -> host page for supervisor-mode implicit reads (the IDT, GDT and TSS an
        # exception delivery reads): kept across CPL and AC changes (see flush_fast).
        self.fast_implicit: dict[int, bytearray] = {}
        decode_cache.attach(self)

    # --- registers ---

    @property
    def cpl(self) -> int:
        return self.cs & 3

    @property
    def long_mode(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def mode_name(self) -> str:
        """The processor mode as the SDM names it (Vol. 3A 2.2): "64-bit mode",
        "compatibility mode", "32-bit protected mode" (16-bit with a 16-bit CS), "real mode"."""
        if not self.cr0 & CR0_PE:
            return "real mode"
        if self.long_mode:
            return "64-bit mode" if self.code_bits == 64 else "compatibility mode"
        return f"{self.code_bits}-bit protected mode"

    @property
    def pcid(self) -> int:
        return self.cr3 & 0xFFF if self.cr4 & CR4_PCIDE else 0

    @property
    def cycles(self) -> int:
        return self.steps + self.extra_cycles

    def get_rflags(self) -> int:
        return _materialize(self)

    def set_rflags(self, value: int) -> None:
        self.lf = None
        if (value ^ self.rflags) & AC:            # AC is part of the mode (SMAP)
            self._flush_fast_explicit()
        self.rflags = value | RFLAGS_FIXED

    # Every write of a register the mode depends on goes through one of these (a test
    # checks that nothing else assigns them), so the fast paths never outlive their mode.

    def set_cr0(self, value: int) -> None:
        if value != self.cr0:
            self.cr0 = value
            self.flush_fast()

    def set_cr3(self, value: int) -> None:
        if value != self.cr3:
            self.cr3 = value
            self.flush_fast()

    def set_cr4(self, value: int) -> None:
        if value != self.cr4:
            self.cr4 = value
            self.flush_fast()

    def set_efer(self, value: int) -> None:
        if value != self.efer:
            self.efer = value
            self.flush_fast()
            self._update_code_bits()

    def set_pdptes(self, values: tuple) -> None:
        """The four PDPTE registers (SDM Vol. 3A 4.4.1); only cpu/system.py's PDPTE load
        and KVM's load_pdptrs (the VMCS fields a VM entry loads) call this."""
        if values != self.pdptes:
            self.pdptes = values
            self.flush_fast()

    def set_pkru(self, value: int) -> None:
        if value != self.pkru:
            self.pkru = value
            self.flush_fast()

    def set_cs(self, selector: int) -> None:
        """CS's selector alone (the descriptor cache stays; a debugger's `set $cs`); a
        change of CPL (its low bits) changes the mode."""
        self._set_cs_selector(selector)
        old = self.seg_cache["cs"]
        self.seg_cache["cs"] = Segment(selector, old.base, old.limit, old.attr)

    def load_cs(self, seg: Segment) -> None:
        """CS with its descriptor (far transfers, interrupts, IRET, boot): CPL and the
        code size may change."""
        self._set_cs_selector(seg.selector)
        self.seg_cache["cs"] = seg
        self._update_code_bits()

    def _set_cs_selector(self, selector: int) -> None:
        if (selector ^ self.cs) & 3:
            self._flush_fast_explicit()
        self.cs = selector

    def set_segment(self, name: str, seg: Segment) -> None:
        """A segment register (or TR, LDTR) with its descriptor; FS and GS load their bases
        too."""
        if name == "cs":
            self.load_cs(seg)
            return
        setattr(self, name, seg.selector)
        self.seg_cache[name] = seg
        if name == "fs":
            self.fs_base = seg.base
        elif name == "gs":
            self.gs_base = seg.base

    def _update_code_bits(self) -> None:
        bits = code_bits(self.seg_cache["cs"], self.long_mode)
        if bits != self.code_bits:
            self.code_bits = bits
            self._code_tag = 0 if bits == 64 else bits << 56
            self.flush_fast()

    def set_hw_cr0_on(self, bits: int) -> None:
        if bits != self.hw_cr0_on:
            self.hw_cr0_on = bits
            self.flush_fast()

    # --- run control, for the hypervisor and the debugger ---

    def request_stop(self, reason) -> None:
        """End the run loop after the current instruction, with this reason."""
        self.pending = True
        self.stop_reason = reason

    def withdraw_stop(self, reason) -> None:
        """Forget a stop requested with this reason that no run took."""
        if self.stop_reason == reason:
            self.pending = False
            self.stop_reason = None

    def set_single_step(self, on: bool) -> None:
        """One instruction per handler call, so a stop requested by an instruction's side
        effect is taken right after it, not at the end of its block."""
        self.single_step = on

    def stepping_singly(self) -> bool:
        """Whether set_single_step is on (the debugger's history records it per run)."""
        return self.single_step

    # --- fast paths ---

    def flush_fast(self) -> None:
        """Forget everything derived from the current mode (not the TLB itself).

        Handlers (icache, bcache) stay: the run loop uses one only while its page is in
        fast_x, so after this the first fetch from each page translates it again and finds
        the handler by (rip, hpa), or decodes anew if the page now maps elsewhere.

        Every fast-path entry comes from translate(), which selects a mode first, so
        while no mode is selected the explicit ones are empty already (a VM exit flushes 3
        times)."""
        if self._mode is not None or self.fast_implicit:
            self.fast_implicit.clear()
            self._fast_large.clear()
            self._flush_fast_explicit()

    def _flush_fast_explicit(self) -> None:
        """flush_fast for a change of CPL or RFLAGS.AC: the explicit accesses' rights
        changed, a supervisor-mode implicit access's did not (SDM 4.6.1: it is checked as
        supervisor whatever the CPL, and SMAP refuses it user pages whatever AC says), so
        fast_implicit stays, with the large-page pieces flush_fast_page must find in it."""
        if self._mode is not None:
            self.fast_r.clear()
            self.fast_w.clear()
            self.fast_x.clear()
            self._mode = None

    def flush_fast_page(self, vpn: int) -> None:
        """Forget the fast-path copies of one page's translation (INVLPG, INVPCID or
        INVVPID of an address, the flush a #PF does): the entries for vpn and for every
        piece of a large page containing it. Everything else stays valid: the mode did
        not change, and no other translation was invalidated."""
        implicit = self.fast_implicit
        if self._mode is None and not implicit:
            return                                  # the fast paths are empty
        fast_r, fast_w, fast_x = self.fast_r, self.fast_w, self.fast_x
        fast_r.pop(vpn, None)
        fast_w.pop(vpn, None)
        fast_x.pop(vpn, None)
        implicit.pop(vpn, None)
        large = self._fast_large
        if large:
            for pieces in (9, 10, 18):
                for v in large.pop((pieces, vpn >> pieces), ()):
                    fast_r.pop(v, None)
                    fast_w.pop(v, None)
                    fast_x.pop(v, None)
                    implicit.pop(v, None)

    def _note_large(self, e) -> None:
        """Called for every fast-path fill: remember the pieces of large pages."""
        if e.size_shift > 12:
            pieces = e.size_shift - 12
            self._fast_large.setdefault((pieces, e.vpn >> pieces), set()).add(e.vpn)

    def drop_fast_write(self) -> None:
        self.fast_w.clear()

    # --- translation ---

    def _acc(self, kind_bits: int) -> int:
        return kind_bits | PFERR_USER if self.cs & 3 == 3 else kind_bits

    def translate(self, va: int, acc: int):
        """The TLB entry for va, checked for this access; fills the TLB on a miss.

        The common cases (a hit; a miss whose walk answer is memoised) are written out
        inline: this runs on every slow-path access and after every flush."""
        if (va + 0x800000000000) >> 48 & 0xFFFF:          # bits.NONCANONICAL, inlined
            raise GuestFault(GP, 0)
        vpn = va >> 12
        mode = self._mode
        if mode is None:
            mode = self._select_mode()
        tlb = self.tlb
        ctx = tlb.contexts.get(mode[0])
        e = ctx.get(vpn) if ctx is not None else None
        if e is None and mode[1] is not None:
            g = tlb.contexts.get(mode[1])
            if g is not None:
                e = g.get(vpn)
        key = vpn << 17 | acc
        # A hit on the very entry this mode's walk memo holds for this access kind passed
        # these checks already (they depend only on the entry, the mode and the access).
        if e is not None and self.cr0 & CR0_PG and mode[2].get(key) is not e:
            code = access_error(self, e.user, e.writable, e.nx, e.pkey, acc)
            if code:
                self._fault_flush(vpn, mode[3])
                if self.pf_exiting:
                    raise VmExit(EXCEPTION_NMI, va, error_code=code)
                raise GuestFault(PF, code, va)
            if acc & PFERR_WRITE and not (e.dirty and e.ept_w):
                e = None
            elif acc & PFERR_FETCH and not e.ept_x:
                e = None
        if e is None:
            self.walks += 1
            self.extra_cycles += self.walk_cost
            # A walk's answer is memoised per mode and access kind while re-walking could
            # not differ: no write touched a paging structure or an SPTE since, so the walk
            # would read the same entries, set no accessed/dirty flag that is not already
            # set, and pass the same permission checks. Hardware re-walks after every
            # flush; this only saves the simulator's time.
            if (self.decode_cache.pt_generation != self._memo_pt_gen
                    or self._gpa_generation.value != self._memo_gpa_gen):
                mode = self._forget_walks()
            e = mode[2].get(key)
            if e is None:
                self.in_walk = True        # for an exit handled in place (CpuOps.translate_gpa)
                try:
                    e = self.walk_fn(self, va, acc)
                except GuestFault as f:
                    if f.vector == PF:
                        self._fault_flush(vpn, mode[3])
                        if self.pf_exiting:
                            raise VmExit(EXCEPTION_NMI, f.cr2, error_code=f.error_code) from None
                    raise
                finally:
                    self.in_walk = False
                mode[2][key] = e
                pts = self.walk_pt_pages
                dc = self.decode_cache
                if not dc.pt_pages.issuperset(pts):         # track_pt's test, inlined
                    dc.track_pt(pts)
            if not e.glob and e.size_shift == 12:
                # Tlb.fill's common cases: a 4 KiB non-global entry, no eviction. (The walk
                # changed no TLB context, so ctx is still the one the lookup found.)
                if ctx is not None and len(ctx) < tlb.capacity:
                    ctx[vpn] = e
                    tlb.fills += 1
                    return e
                if ctx is None and len(tlb.contexts) < tlb.max_contexts:
                    tlb.contexts[mode[0]] = {vpn: e}
                    tlb.fills += 1
                    return e
            tlb.fill(self.vpid, mode[3], mode[4], e)
        return e

    def _select_mode(self):
        """(TLB tag, global TLB tag or None, walk memo, pcid, ep4ta) of the current mode,
        computed once after each flush_fast (every mode change flushes the fast paths)."""
        # Everything a walk's result or its permission checks depend on, besides the
        # access kind (part of the memo's key) and the tables themselves (generations).
        key = (self.cr3, self.ops.ep4ta, self.cr0 | self.hw_cr0_on, self.cr4, self.efer,
               self.rflags & AC, self.pkru, self.pdptes)
        mode = self._modes.get(key)
        if mode is None:
            cr3, ep4ta, _cr0, cr4 = key[:4]
            pcid = cr3 & 0xFFF if cr4 & CR4_PCIDE else 0
            if len(self._modes) >= _MAX_MEMO_MODES:
                self._modes.clear()
            mode = self._modes[key] = ((self.vpid, pcid, ep4ta),
                                       (self.vpid, GLOBAL, ep4ta) if cr4 & CR4_PGE else None,
                                       {}, pcid, ep4ta)
        self._mode = mode
        return mode

    def _forget_walks(self):
        self._modes.clear()
        self._memo_pt_gen = self.decode_cache.pt_generation
        self._memo_gpa_gen = self._gpa_generation.value
        return self._select_mode()

    def _fault_flush(self, vpn: int, pcid: int) -> None:
        """A #PF invalidates the TLB entries for the faulting address (SDM 4.10.4.2)."""
        self.tlb.flush_page(self.vpid, pcid, vpn, True)

    # --- data access ---

    def rd(self, va: int, size: int) -> int:
        off = va & 0xFFF
        page = self.fast_r.get(va >> 12)
        if page is not None and off <= 4096 - size:
            return page[off] if size == 1 else _UNPACK_FROM[size](page, off)[0]
        return self.read_miss(va, size)

    def wr(self, va: int, size: int, value: int) -> None:
        off = va & 0xFFF
        page = self.fast_w.get(va >> 12)
        if page is not None and off <= 4096 - size:
            if size == 1:
                page[off] = value
            else:
                _PACK_INTO[size](page, off, value)
            return
        self.write_miss(va, size, value)

    def read_miss(self, va: int, size: int) -> int:
        """A read the fast path could not serve (generated code calls this directly)."""
        off = va & 0xFFF
        if off > 4096 - size:
            return self._read_slow(va, size, 0)
        e = self.translate(va, PFERR_USER if self.cs & 3 == 3 else 0)
        page = e.page
        if page is None:
            return self.ops.mmio_read(e.gpa | off, size)
        self.fast_r[e.vpn] = page
        if e.size_shift > 12:                           # _note_large's test, inlined
            self._note_large(e)
        return page[off] if size == 1 else _UNPACK_FROM[size](page, off)[0]

    def write_miss(self, va: int, size: int, value: int) -> None:
        """A write the fast path could not serve (generated code calls this directly)."""
        off = va & 0xFFF
        if off > 4096 - size:
            self._split_write(va, size, value)
            return
        acc = PFERR_WRITE | PFERR_USER if self.cs & 3 == 3 else PFERR_WRITE
        # translate()'s commonest case after a TLB flush, written out (a write to each page
        # of a working set after every INVEPT): the page is not in the TLB, this mode's
        # walk memo holds its 4 KiB non-global entry for this access, the context exists,
        # has room and there is no global one. The same effects as translate() (a walk
        # counted and charged, the TLB filled); anything else goes to translate().
        # tests/cpu/test_write_miss_fill.py pins the two together.
        # (No canonical check here: the TLB and the walk memo only ever hold canonical
        # pages, so a non-canonical va misses both and translate() raises its #GP.)
        # (The memo is asked first: after a flush of the walk memos it misses, and the
        # rest need not be looked at.)
        mode = self._mode
        e = None
        if mode is not None and mode[1] is None:
            vpn = va >> 12
            e = mode[2].get(vpn << 17 | acc)
            if e is not None:
                tlb = self.tlb
                ctx = tlb.contexts.get(mode[0])
                if (ctx is not None and vpn not in ctx and len(ctx) < tlb.capacity
                        and self.decode_cache.pt_generation == self._memo_pt_gen
                        and self._gpa_generation.value == self._memo_gpa_gen
                        and not e.glob and e.size_shift == 12):
                    self.walks += 1
                    self.extra_cycles += self.walk_cost
                    ctx[vpn] = e
                    tlb.fills += 1
                else:
                    e = None
        if e is None:
            e = self.translate(va, acc)
        page = e.page
        hpn = e.hpa >> 12
        dc = self.decode_cache
        if page is None or hpn in dc.code_pages or hpn in dc.pt_pages:
            self._store(e, off, value.to_bytes(size, "little"))
            return
        if size == 1:                                   # _store's plain-RAM case
            page[off] = value
        else:
            _PACK_INTO[size](page, off, value)
        vpn = e.vpn
        self.fast_w[vpn] = page
        self.fast_r[vpn] = page
        if e.size_shift > 12:                           # _note_large's test, inlined
            self._note_large(e)

    # Accesses through SS (pushes, pops, operands based on RSP or RBP) fault #SS(0), not
    # #GP(0), on a non-canonical address (SDM Vol. 3A 6.15, Interrupt 12). The fast paths
    # only ever hold pages translate() accepted, which are canonical, and an access they
    # serve lies within one page, so only a miss can be non-canonical: the check lives
    # here, and translate() keeps its #GP for everything else. An access is checked at its
    # first and last byte, as translate() checks each page of a split access.

    def read_miss_ss(self, va: int, size: int) -> int:
        """read_miss for an access through SS (generated code calls this directly)."""
        _check_ss(va, size)
        return self.read_miss(va, size)

    def write_miss_ss(self, va: int, size: int, value: int) -> None:
        """write_miss for an access through SS (generated code calls this directly)."""
        _check_ss(va, size)
        self.write_miss(va, size, value)

    def rd_ss(self, va: int, size: int) -> int:
        """rd for an access through SS."""
        _check_ss(va, size)
        return self.rd(va, size)

    def pop_qwords(self, va: int, n: int) -> tuple:
        """n 8-byte reads through SS from va upward (IRETQ's pops), as n rd_ss calls in
        that order would make them: one fast-path probe when they lie in one cached page
        (which is canonical, so no #SS check is due)."""
        off = va & 0xFFF
        if off <= 4096 - 8 * n:
            page = self.fast_r.get(va >> 12)
            if page is not None:
                return _UNPACK_QWORDS[n](page, off)
        return tuple(self.rd_ss((va + 8 * i) & M64, 8) for i in range(n))

    def push_qwords(self, va: int, words: list) -> None:
        """Store words as pushes would, the first at va - 8 and each next one below (an
        exception frame): one fast-path store when they lie in one cached page, else one
        write each in that order, so a fault is raised where the pushes would raise it."""
        n = len(words)
        low = (va - 8 * n) & M64
        off = low & 0xFFF
        if off <= 4096 - 8 * n:
            page = self.fast_w.get(low >> 12)
            if page is not None:
                _PACK_QWORDS[n](page, off, *reversed(words))
                return
        for value in words:
            va = (va - 8) & M64
            self.wr(va, 8, value)

    def write_check_ss(self, va: int, size: int) -> None:
        """Fault as a write of size bytes at va through SS would, without writing: ENTER
        checks its final stack pointer so (SDM Vol. 2A, ENTER, #PF). The walk sets the
        accessed and dirty flags as a write's would (Bochs models the check as a
        read-modify-write access)."""
        _check_ss(va, size)
        acc = self._acc(PFERR_WRITE)
        for a, _n in self._pieces(va, size):
            self.translate(a, acc)

    def rd_implicit(self, va: int, size: int) -> int:
        """A supervisor-mode implicit access (GDT/IDT/TSS), whatever the CPL: delivery reads
        the IDT, GDT and TSS on every exception. Its own fast path (fast_implicit) survives
        the CPL changes around each delivery and IRET."""
        off = va & 0xFFF
        if off <= 4096 - size:
            page = self.fast_implicit.get(va >> 12)
            if page is not None:
                return int.from_bytes(page[off:off + size], "little")
        return self._read_slow(va, size, ACC_IMPLICIT, implicit=True)

    def wr_implicit(self, va: int, size: int, value: int) -> None:
        """A supervisor-mode implicit write (a descriptor's accessed or busy bit)."""
        self._check_last_byte(va, size)
        data = value.to_bytes(size, "little")
        acc = PFERR_WRITE | ACC_IMPLICIT
        pieces = [(self.translate(a, acc), a, n) for a, n in self._pieces(va, size)]
        for e, a, n in pieces:
            self._store(e, a & 0xFFF, data[:n], explicit=False)
            data = data[n:]

    def _pieces(self, va: int, size: int):
        first = 4096 - (va & 0xFFF)
        if size <= first:
            return ((va, size),)
        return ((va, first), ((va + first) & M64, size - first))

    @staticmethod
    def _check_last_byte(va: int, size: int) -> None:
        """#GP(0) for an access whose first byte is canonical and whose last is not: the
        linear-address check comes before paging (SDM Vol. 3A 6.15, Interrupt 13; Bochs
        checks both ends too), so the first page's translation must not fault first."""
        if not canonical((va + size - 1) & M64):
            raise GuestFault(GP, 0)

    def _read_slow(self, va: int, size: int, extra: int, implicit: bool = False) -> int:
        self._check_last_byte(va, size)
        acc = extra if implicit else self._acc(extra)
        # Translate every piece before reading any: a split access faults as a whole.
        pieces = [(self.translate(a, acc), a, n) for a, n in self._pieces(va, size)]
        data = b""
        for e, a, n in pieces:
            off = a & 0xFFF
            if e.page is None:
                data += self.ops.mmio_read(e.gpa | off, n).to_bytes(n, "little")
            else:
                data += bytes(e.page[off:off + n])
                (self.fast_implicit if implicit else self.fast_r)[e.vpn] = e.page
                self._note_large(e)
        return int.from_bytes(data, "little")

    def _split_write(self, va: int, size: int, value: int) -> None:
        self._check_last_byte(va, size)
        acc = self._acc(PFERR_WRITE)
        data = value.to_bytes(size, "little")
        # Translate every piece before writing any: a split access faults as a whole.
        pieces = [(self.translate(a, acc), a, n) for a, n in self._pieces(va, size)]
        for e, a, n in pieces:
            self._store(e, a & 0xFFF, data[:n])
            data = data[n:]

    def _store(self, e, off: int, chunk: bytes, explicit: bool = True) -> None:
        """Write through a translation: MMIO to the device; RAM into the host page, telling
        the decode cache about code or paging structures, else (for an explicit access,
        whose rights the fast paths stand for) opening the fast path."""
        page = e.page
        if page is None:
            self.ops.mmio_write(e.gpa | off, len(chunk), int.from_bytes(chunk, "little"))
            return
        page[off:off + len(chunk)] = chunk
        hpn = e.hpa >> 12
        dc = self.decode_cache
        if hpn in dc.code_pages or hpn in dc.pt_pages:
            dc.note_write(hpn)
        elif explicit:
            self.fast_w[e.vpn] = page
            self.fast_r[e.vpn] = page
            self._note_large(e)

    def read_bytes(self, va: int, n: int) -> bytes:
        return b"".join(self.rd(a, 1).to_bytes(1, "little") for a in range(va, va + n))

    # --- instruction fetch ---

    def _fetch_page(self, va: int):
        """(host page, key, gpa, hpa) of the code page holding va, via the fetch fast path.

        key is the page's hpa marked with the code size (decoded code and handlers are
        keyed by it: the same bytes mean other instructions in 32-bit code). When a page
        comes back under another key (remapped, or the code size changed), the rip ->
        handler tables are dropped: the run loop trusts them while their page is in
        fast_x, and they were made for the old key."""
        vpn = va >> 12
        got = self.fast_x.get(vpn)
        if got is None:
            if self.code_bits == 16:
                raise UnsupportedMode(self.rip, "16-bit code (real mode or a 16-bit segment)")
            # _acc and _note_large's test, inlined: this runs after every flush (each
            # SMEP flip), so the two calls measured 3% of a v6.12 flip.
            e = self.translate(va, PFERR_FETCH | PFERR_USER if self.cs & 3 == 3 else PFERR_FETCH)
            key = e.hpa | self._code_tag
            if self._x_keys.setdefault(vpn, key) != key:
                self._x_keys[vpn] = key
                self.icache.clear()
                self.bcache.clear()
            got = self.fast_x[vpn] = (e.page, key, e.gpa, e.hpa)
            if e.size_shift > 12:
                self._note_large(e)
        return got

    def _insn_code(self, rip: int):
        """(key, InsnCode) for the instruction at rip; decodes and generates on a miss."""
        page, khpa, gpa, hpa = self._fetch_page(rip)
        off = rip & 0xFFF
        key = (rip, khpa | off)
        dc = self.decode_cache
        code = dc.codes.get(key)
        if code is not None:
            return key, code
        if key in dc.crossing:
            # It continues on the next page, which may map elsewhere now: that page's hpa
            # is part of the key (fetching it may fault, as the processor's fetch would).
            key += (self._fetch_page(((rip | 0xFFF) + 1) & M64)[1],)
            code = dc.codes.get(key)
            if code is not None:
                return key, code
            key = key[:2]
        if page is None:
            raw = self.ops.mmio_read(gpa | off, 1).to_bytes(1, "little")
        else:
            raw = bytes(page[off:off + 15])
        pages = [hpa >> 12]
        bits = self.code_bits
        d = self.decoder.decode(raw, rip, bits)
        if (d is None or d.length > len(raw)) and len(raw) < 15:
            # The instruction may continue on the next page: fetch that too (may fault).
            page2, khpa2, _gpa2, hpa2 = self._fetch_page((rip + len(raw)) & M64)
            if page2 is not None:
                raw += bytes(page2[:15 - len(raw)])
                d = self.decoder.decode(raw, rip, bits)
                if d is not None and d.length > 4096 - off:
                    pages.append(hpa2 >> 12)
                    dc.crossing.add(key)
                    key += (khpa2,)
        if d is None:
            raise GuestFault(UD)
        code = self.translator(d)
        code.pages = pages
        dc.codes[key] = code
        dc.decoded += 1
        dc.track(key, pages)
        return key, code

    def _known_handler(self, table: dict, rip: int):
        """Re-validate rip's code page (a fetch translation) and find a handler already
        compiled for it in `table`, or None."""
        self.smc = False
        got = self.fast_x.get(rip >> 12) or self._fetch_page(rip)
        return table.get((rip, got[1] | (rip & 0xFFF)))

    def fetch_handler(self, rip: int):
        """A single-instruction handler for rip (stepping, breakpoints)."""
        dc = self.decode_cache
        h = self._known_handler(dc.singles, rip)
        if h is not None:
            self.icache[rip] = h
            return h
        key, code = self._insn_code(rip)
        h = dc.singles.get(key)
        if h is None:
            h = dc.singles[key] = make_handler([code])
        if len(code.pages) == 1:        # the run loop re-validates only an icache entry's first page
            self.icache[rip] = h
        return h

    def fetch_block(self, rip: int):
        """The block handler starting at rip (translate.form_block says where it ends)."""
        dc = self.decode_cache
        # _known_handler, inlined: this runs after every flush. Calling it (together with
        # Tlb.flush_ep4ta going through _drop) measured 8% slower SMEP flips.
        self.smc = False
        got = self.fast_x.get(rip >> 12) or self._fetch_page(rip)
        h = dc.blocks.get((rip, got[1] | (rip & 0xFFF)))
        if h is not None:
            self.bcache[rip] = h
            return h
        key, code = self._insn_code(rip)
        h = dc.blocks.get(key)
        if h is None and len(code.pages) > 1:
            h = dc.blocks[key] = make_handler([code])    # crosses a page: alone, never in bcache
        elif h is None:
            # A block first stops at its first transfer; one that could run on through it
            # (translate.form_block) and runs HOT_RUNS times is compiled again, running on:
            # code that runs once is not compiled along paths it may never take.
            code_at = lambda a: self._insn_code(a)[1]                 # noqa: E731
            hot = key in dc.hot
            codes, more = form_block(code, code_at, run_on=hot)
            on_hot = None if hot or not more else (lambda cpu: dc.make_hot(key, rip))
            h = dc.blocks[key] = make_handler(codes, loop=True, on_hot=on_hot)
            dc.track(key, sorted({p for c in codes for p in c.pages}))
        if len(code.pages) == 1:        # the run loop re-validates only a bcache entry's first page
            self.bcache[rip] = h
        return h

    def decoded_at(self, rip: int):
        """The instruction at rip as the CPU would fetch it (fills the TLB; for tests and
        tools on bare hardware; the debugger reads through its own side-effect-free walk)."""
        code = b""
        for i in range(15):
            try:
                code += self.read_bytes(rip + i, 1)
            except GuestFault:
                break
        return self.decoder.decode(code, rip, self.code_bits) if code else None
