"""The VM (struct kvm): memslots, vCPUs, the MMU pages, the profile, time, stats, events.

Also the host-side machinery a VM needs: the workqueue whose worker zaps roots in
simulated time of its own, kvm_flush_remote_tlbs, kvm_mmu_zap_all_fast and the
memslot updates (kvm_set_memory_region -> kvm_arch_flush_shadow_memslot).
"""

from __future__ import annotations

from dataclasses import replace

from kvmdbg.arch.kvm_host import KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_REQ_TLB_FLUSH
from kvmdbg.bits import PAGE_SHIFT
from kvmdbg.cpu.decode_cache import DecodeCache
from kvmdbg.cpu.regs import MAXPHYADDR
from kvmdbg.events import EventBus
from kvmdbg.generation import Generation
from kvmdbg.kvm import policies
from kvmdbg.kvm.costs import CostTable
from kvmdbg.kvm.profiles import DEFAULT, PROFILES, Profile
from kvmdbg.kvm.stats import Stats
from kvmdbg.mem import HostMemory, Memslot, Memslots
from kvmdbg.mmu.mmu_internal import ROLE_INVALID
from kvmdbg.mmu.mmu_pages import MmuPages
from kvmdbg.mmu.shadow_mmu import ShadowMmu
from kvmdbg.mmu.tdp_mmu import TdpMmu

# Ports of the VMM's userspace interface (design section 3).
MMIO_TAG = 1 << 62           # the "hpa" of a guest page with no memslot (no host page behind it)
PORT_CONSOLE = 0xE9
PORT_APM_CNT = 0xB2          # writes raise an SMI, as on a PC chipset
PORT_OVERLAY, PORT_UNOVERLAY, PORT_MARKER, PORT_KICK = 0x510, 0x511, 0x512, 0x513



class Worker:
    """The unbound workqueue kvm-tdp-mmu-zap: one worker with its own clock."""

    index = -1

    def __init__(self) -> None:
        self.clock = 0
        self.queue: list[tuple[int, object, str]] = []    # (enqueue time, fn, what)


class Vm:
    def __init__(self, mem_size: int, nr_vcpus: int = 1, bus: EventBus | None = None,
                 profile: Profile | None = None, bare: bool = False):
        """bare=True: no hypervisor (the CPU as hardware alone), for architecture tests."""
        from kvmdbg.kvm.bare import BareVcpu
        from kvmdbg.kvm.userspace import Vmm
        from kvmdbg.kvm.vcpu import Vcpu
        self.profile = profile or PROFILES[DEFAULT]
        if not self.profile.tdp_enabled and self.profile.tdp_mmu and not bare:
            # The TDP MMU needs TDP; KVM turns tdp_mmu off with ept=0 (kvm_configure_mmu).
            self.profile = replace(self.profile, tdp_mmu=False)
        self.mem_size = mem_size
        self.host = HostMemory()
        # Moves on every SPTE or memslot change: the CPUs' walk memos watch it.
        self.gpa_generation = Generation()
        self.memslots = Memslots(self.gpa_generation)
        self._gfn_cache: dict[int, tuple] = {}      # see host_page_of
        self._gfn_cache_generation = -1
        self.bus = bus or EventBus()
        self.stats = Stats()
        self.exit_reasons: dict[int, int] = {}     # VMX basic exit reason -> count
        self.costs = CostTable()
        self.decode_cache = DecodeCache()
        self.tdp_mmu_enabled = self.profile.tdp_mmu       # KVM's tdp_mmu_enabled
        self.mmu_pages = MmuPages(self)                   # every MMU's page-table pages
        self.tdp_mmu = TdpMmu(self)
        self.mmu_valid_gen = 0
        # Without the TDP MMU every MMU page is a shadow page (mmu.c): shadow paging's, or
        # the legacy MMU's direct ones. `shadow` is set only for shadow paging (ept=0).
        self.shadow_mmu = (ShadowMmu(self, mem_size >> PAGE_SHIFT, MAXPHYADDR)
                           if not self.profile.tdp_mmu else None)
        self.shadow = self.shadow_mmu if not self.profile.tdp_enabled else None
        self.mmu_ops = policies.mmu_ops(self.profile, self)   # every vCPU's mmu.ops
        # Behaviour is chosen here, once (kvm/policies.py); nothing below reads the profile.
        policies.apply(self, self.profile)
        self.worker = Worker()
        huge = 0
        if self.huge_pages:
            huge = 30 if mem_size >= 1 << 30 else 21
        self.ram_hva = self.host.mmap(mem_size, huge)
        self.memslots.create(Memslot(0, 0, mem_size >> PAGE_SHIFT, self.ram_hva))
        self.console = bytearray()
        self.console_sink = None          # callable(str) for guest console output
        self.io_exits: list[tuple] = []   # (vcpu, port, size, value) of VMM-port writes
        self.mmio_writes: list[tuple] = []
        self.markers: list[tuple] = []
        self.current = None               # the vCPU whose thread is running (for events)
        from kvmdbg.kvm.machine import RAW
        self.machine = RAW                # kvm/machine.py: which devices answer (boot sets it)
        self.devices: list = []           # the machine's devices (kvm/devices.py)
        self.exit_status = None           # set when a device ended the run (isa-debug-exit)
        self.exit_value = None
        self._cpu_features = None         # the guest CPUID's features (kvm/cpuid.py); None: default
        self.unmodelled: dict[str, set] = {"read": set(), "write": set(), "mmio": set()}
        self.unmodelled_reported: set = set()
        self.vmm = Vmm(self)
        self.bare = bare
        self.recorder = None              # debug/engine/record.py logs runs here, if set
        # EPT violations handled where the walk raises them when nothing can tell
        # (Vcpu.exit_in_place): only with one vCPU (with more, the scheduler may run
        # another before this one enters again); False takes every exit through the run loop.
        self.exits_in_place = nr_vcpus == 1
        self.vcpus = [(BareVcpu if bare else Vcpu)(self, i) for i in range(nr_vcpus)]

    @property
    def cpu_features(self):
        """The --cpu features every vCPU's CPUID reports (None: the boot contract's)."""
        return self._cpu_features

    @cpu_features.setter
    def cpu_features(self, features) -> None:
        # KVM_SET_CPUID2 on each vCPU, which then obeys it (Vcpu.set_cpuid).
        self._cpu_features = features
        for v in self.vcpus:
            v.set_cpuid(features)

    def set_profile(self, profile: Profile) -> None:
        """A run-time knob changed (`set kvm`): choose the behaviour again."""
        policies.apply(self, profile)

    # --- time, stats, events ---

    def now_step(self) -> int:
        return self.current.cpu.steps if self.current is not None else 0

    def current_vcpu_index(self) -> int:
        return self.current.index if self.current is not None else -1

    def charge(self, who, cost: str, n: int = 1) -> None:
        """Add simulated time to a vCPU (its clock) or to the worker."""
        if who is None:
            who = self.current
        if who is None:
            return
        cycles = self.costs.values[cost] * n
        if who.__class__ is Worker:
            who.clock += cycles
            self.stats["kvmdbg_worker_cycles"] += cycles
        else:
            who.cpu.extra_cycles += cycles

    def trace(self, name: str, vcpu: int = -1, **fields) -> None:
        """Emit an event stamped with the emitting vCPU's step and clock (the worker's clock
        when no vCPU thread is running)."""
        bus = self.bus
        if bus.active:
            if 0 <= vcpu < len(self.vcpus):
                cpu = self.vcpus[vcpu].cpu
            else:
                cpu = self.current.cpu if self.current is not None else None
            if cpu is not None:
                bus.record(name, vcpu, cpu.steps, cpu.cycles, fields)
            else:
                bus.record(name, vcpu, 0, self.worker.clock, fields)

    # --- the workqueue (async root zaps, v5.18 - v6.5) ---

    def queue_work(self, fn, what: str) -> None:
        now = self.current.cpu.cycles if self.current is not None else self.worker.clock
        self.worker.queue.append((now, fn, what))
        self.trace("kvmdbg:work_queued", self.current_vcpu_index(), work=what)

    def run_worker_item(self) -> None:
        if self.recorder is not None:           # logged, for reverse execution
            self.recorder.worker(self)
        else:
            self._run_worker_item()

    def _run_worker_item(self) -> None:
        w = self.worker
        t, fn, what = w.queue.pop(0)
        w.clock = max(w.clock, t)
        saved = self.current
        self.current = None
        self.trace("kvmdbg:work_start", -1, work=what)
        fn(w)
        self.trace("kvmdbg:work_end", -1, work=what)
        self.current = saved

    def flush_workqueue(self, payer) -> None:
        """flush_workqueue: run every queued item; the caller waits for the worker."""
        while self.worker.queue:
            self.run_worker_item()
        if payer is not None and not isinstance(payer, Worker):
            c = payer.cpu
            if c.cycles < self.worker.clock:
                c.extra_cycles += self.worker.clock - c.cycles

    # --- requests and TLB flushes across vCPUs ---

    def make_all_cpus_request(self, req: str) -> bool:
        """kvm_make_all_cpus_request: set req on every vCPU and kick the ones in guest mode,
        except the vCPU whose thread asks (kvm_make_vcpu_request, kvm_request_needs_ipi).
        True if a vCPU had to be kicked (kvm_kick_many_cpus sent IPIs)."""
        kicked = False
        for v in self.vcpus:
            v.make_request(req)
            if v is not self.current:
                kicked |= v.kick()
        return kicked

    def flush_remote_tlbs(self) -> None:
        """kvm_flush_remote_tlbs: KVM_REQ_TLB_FLUSH on every vCPU (INVEPT at its next entry).
        Every call is a remote_tlb_flush_request; it is a remote_tlb_flush only if a vCPU
        was kicked out of guest mode (x86 without Hyper-V has no kvm_arch_flush_remote_tlbs)."""
        self.stats["remote_tlb_flush_requests"] += 1
        self.trace("kvmdbg:remote_tlb_flush", self.current_vcpu_index())
        if self.make_all_cpus_request(KVM_REQ_TLB_FLUSH):
            self.stats["remote_tlb_flush"] += 1

    # --- kvm_mmu_zap_all_fast and memslot changes (4.6) ---

    def kvm_mmu_zap_all_fast(self) -> None:
        self.trace("kvm_mmu_zap_all_fast", self.current_vcpu_index(),
                   mmu_valid_gen=self.mmu_valid_gen,
                   mmu_used_pages=self.shadow_mmu.n_used if self.shadow_mmu else len(self.mmu_pages.pages))
        self.mmu_valid_gen ^= 1
        if self.tdp_mmu_enabled:
            self.tdp_mmu.invalidate_all_roots()
        self.make_all_cpus_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
        self.kvm_zap_obsolete_pages()
        if self.tdp_mmu_enabled:
            self.tdp_mmu.zap_invalidated_roots(self.current)

    def kvm_zap_obsolete_pages(self) -> None:
        """Shadow MMU pages (shadow paging's or the legacy MMU's) of the old generation:
        each is zapped now; roots still in use become invalid and wait for their last put."""
        if self.shadow_mmu is not None:
            self.shadow_mmu.zap_obsolete_pages()

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        self.policies.flush_shadow_memslot(self, slot)

    def all_valid_roots(self):
        if self.tdp_mmu_enabled:
            return self.tdp_mmu.roots
        return [sp for sp in self.shadow_mmu.active if sp.number and not sp.role & ROLE_INVALID]

    def set_memory_region(self, op: str, slot: Memslot, new_base_gfn: int | None = None) -> None:
        """KVM_SET_USER_MEMORY_REGION: create, delete or move (KVM_MR_MOVE), as the VMM asks.
        DELETE and MOVE flush the old range's SPTEs (kvm_arch_flush_shadow_memslot)."""
        who = self.current
        self.charge(who, "memslot_ioctl")
        self.stats["kvmdbg_memslot_changes"] += 1
        if op == "delete":
            old = self.memslots.delete(slot.id)
            self.kvm_arch_flush_shadow_memslot(old)
        elif op == "move":
            old = self.memslots.delete(slot.id)
            self.kvm_arch_flush_shadow_memslot(old)
            slot = Memslot(old.id, new_base_gfn, old.npages, old.userspace_addr, old.flags, old.as_id)
            self.memslots.create(slot)
        else:
            self.memslots.create(slot)
        if self.bare:
            # No KVM to zap and flush (kvm_arch_flush_shadow_memslot ends in a remote TLB
            # flush), but the TLB entries hold the host page of each gpa: without this the
            # CPU read and fetched a deleted slot's page while writes, re-walked for their
            # dirty bit, reached the new one. A TLB may drop entries at any time.
            for v in self.vcpus:
                v.cpu.tlb.flush_all()
        self.trace("kvmdbg:memslot", self.current_vcpu_index(), op=op, slot=slot.id,
                   base_gfn=slot.base_gfn, npages=slot.npages, generation=self.memslots.generation)

    # --- guest-physical memory as the VMM sees it ---

    def gfn_to_page(self, gfn: int):
        """(host page, pfn) behind a gfn, faulting the host page in; None for MMIO."""
        slot = self.memslots.lookup(gfn)
        if slot is None:
            return None
        pfn = self.host.hva_to_pfn(slot.gfn_to_hva(gfn))
        return self.host.pages[pfn], pfn

    def host_page_of(self, gpa: int):
        """(host page or None for MMIO, hpa, writable, executable) behind a gpa, as the
        CpuOps translate_gpa answers without second-level tables. The answers are cached
        per gfn while the memslots stay as they are (their generation says so)."""
        gfn = gpa >> PAGE_SHIFT
        cache = self._gfn_cache
        if self._gfn_cache_generation != self.memslots.generation:
            cache.clear()
            self._gfn_cache_generation = self.memslots.generation
        hit = cache.get(gfn)
        if hit is not None:
            return hit
        got = self.gfn_to_page(gfn)
        if got is None:
            return None, MMIO_TAG | (gpa & ~0xFFF), True, True
        page, pfn = got
        hit = cache[gfn] = (page, pfn << PAGE_SHIFT, True, True)
        return hit

    def peek_gpa(self, gpa: int, n: int) -> bytes:
        """Read guest-physical memory without side effects: untouched RAM reads as zeros
        (as it would once faulted in) and MMIO as all ones, and no host page is created."""
        return self.read_gpa(gpa, n, fault_in=False)

    def read_gpa(self, gpa: int, n: int, fault_in: bool = True) -> bytes:
        """Read guest-physical memory as the VMM or KVM does (faulting host pages in)."""
        out = bytearray()
        while n:
            chunk = min(n, 4096 - (gpa & 0xFFF))
            off = gpa & 0xFFF
            slot = self.memslots.lookup(gpa >> PAGE_SHIFT)
            if slot is None:
                out += b"\xff" * chunk
            else:
                hva = slot.gfn_to_hva(gpa >> PAGE_SHIFT)
                pfn = self.host.hva_to_pfn(hva) if fault_in else self.host.lookup_pfn(hva)
                out += bytes(chunk) if pfn is None else self.host.pages[pfn][off:off + chunk]
            gpa += chunk
            n -= chunk
        return bytes(out)

    def write_gpa(self, gpa: int, data: bytes) -> None:
        """A VMM/debugger write: goes around the CPU, so it must tell the decode cache."""
        data = memoryview(bytes(data))      # slices without copying the rest each time
        pos, n = 0, len(data)
        while pos < n:
            chunk = min(n - pos, 4096 - (gpa & 0xFFF))
            got = self.gfn_to_page(gpa >> PAGE_SHIFT)
            if got is None:
                raise ValueError(f"no memory at guest-physical address {gpa:#x}")
            page, pfn = got
            off = gpa & 0xFFF
            page[off:off + chunk] = data[pos:pos + chunk]
            self.decode_cache.note_write(pfn)
            gpa += chunk
            pos += chunk

    # --- devices ---

    def console_write(self, byte: int) -> None:
        self.console.append(byte)
        if self.console_sink is not None:
            self.console_sink(chr(byte))
