"""A vCPU: KVM's side of one guest processor (struct kvm_vcpu plus the VMX exit handlers).

It is the CpuOps of its Cpu: every control-register write, port access, HLT,
CPUID, VMCALL and guest-physical access the CPU makes lands here, as a VM exit
would land in vmx.c. Exits set `in_kvm`; the next time the scheduler picks the
vCPU, vcpu_enter_guest services requests in KVM's order and reloads the MMU.
"""

from __future__ import annotations

from kvmdbg.bits import M64
from kvmdbg.cpu import executor, system, walker
from kvmdbg.cpu import vmx as V
from kvmdbg.cpu.cpu import Cpu
from kvmdbg.cpu.faults import PF, GuestFault
from kvmdbg.cpu.regs import (CR0_TS, CR0_WP, CR4_DE, CR4_FSGSBASE, CR4_OSFXSR, CR4_OSXMMEXCPT,
                             CR4_PAE, CR4_PCE, CR4_PDPTR_BITS, CR4_PGE, CR4_PVI, CR4_SMEP,
                             CR4_TSD, EFER_LMA)
from kvmdbg.cpu.translate import generate
from kvmdbg.kvm import emulate, x86
from kvmdbg.errors import UnsupportedMode
from kvmdbg.kvm.cpuid import cpuid_features, guest_cpuid
from kvmdbg.mmu import mmu as M
from kvmdbg.mmu.mmu_internal import RetPF
from kvmdbg.stop_reason import HALTED, VMEXIT

KVM_ENOSYS = 1000
# guest MOV to CRn, exit or not
_CR_WRITE_STAT = {0: "kvmdbg_cr0_writes", 3: "kvmdbg_cr3_writes", 4: "kvmdbg_cr4_writes"}

# KVM_POSSIBLE_CR4_GUEST_BITS (6.x) and the bits that must stay intercepted without EPT.
POSSIBLE_CR4_GUEST_BITS = (CR4_PVI | CR4_DE | CR4_PCE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_PGE
                           | CR4_TSD | CR4_FSGSBASE)
CR4_TLBFLUSH_BITS = CR4_PGE | (1 << 17) | CR4_PAE | CR4_SMEP
_ABSENT = object()         # an exit information field the exit does not report (vmexit)
_EPT_VIOLATION, _EMULATE = V.EPT_VIOLATION, RetPF.EMULATE


class Vcpu:
    def __init__(self, vm, index: int):
        self.vm = self.kvm = vm
        self.index = index
        p = vm.profile
        self.mmu = M.KvmMmu()
        self.mmu.ops = vm.mmu_ops          # the MMU this vCPU runs on, picked by the VM
        # vmx_vcpu_load_vmcs: the first load on a pCPU (KVM_CREATE_VCPU's vcpu_load) asks
        # for a flush of every context, served at the first entry.
        self.requests: set[str] = {x86.KVM_REQ_TLB_FLUSH}
        self.in_kvm = True                 # outside guest mode: the next run enters first
        self.smm = False
        self.ep4ta = 0
        self.gpa_generation = vm.gpa_generation    # CpuOps: moves when translate_gpa may change
        self.ept = (V.EptHardware(vm.host.pages, generation=vm.gpa_generation)
                    if p.tdp_enabled else None)
        if self.ept is not None:
            # CpuOps.translate_gpa is the EPT translation itself: the page walker calls it
            # for every paging-structure read, so skip the method in between.
            self.translate_gpa = self.ept.translate
            self.ept.exit_in_place = self.exit_in_place
        # vmx_l1_guest_owned_cr0_bits / set_cr4_guest_host_mask (kvm-mmu-spec 2.2)
        self.cr0_guest_owned = CR0_TS | (CR0_WP if p.tdp_enabled and p.cr0_wp_guest_owned else 0)
        cr4 = POSSIBLE_CR4_GUEST_BITS
        if not p.tdp_enabled:
            cr4 &= ~(CR4_TLBFLUSH_BITS | CR4_PDPTR_BITS)
        elif p.cr4_smep_guest_owned:
            cr4 |= CR4_SMEP
        self.cr4_possible_guest_owned = cr4
        self.guest_pku = p.tdp_enabled      # KVM hides PKU from the guest without TDP
        self.cpu = Cpu(self, vm.decode_cache, index=index, vpid=index + 1, translator=generate)
        x86.kvm_vcpu_reset_msrs(self)
        self.set_cpuid(vm.cpu_features)
        self.cpu.walk_cost = vm.costs["tlb_miss"]
        self.host_pages = vm.host.pages
        if self.ept is not None:
            # Under EPT every violation restarts the guest's walk from CR3; what the guest's
            # own tables said is remembered (cpu/walker.py: GuestWalkMemo, its owner).
            self.cpu.walk_fn = walker.GuestWalkMemo(self.ept).walk
        if not p.tdp_enabled:
            # Shadow paging (vmx.c with enable_ept=0): the hardware walks KVM's tables, runs
            # with CR0.WP forced on, and #PF and INVLPG exit.
            self.cpu.walk_fn = walker.walk_shadow
            self.cpu.set_hw_cr0_on(CR0_WP)
            self.cpu.pf_exiting = True
            self.cpu.invlpg_exiting = True

    # --- bookkeeping ---

    def set_cpuid(self, features) -> None:
        """KVM_SET_CPUID2 with the --cpu features (None: the boot contract's), then
        kvm_vcpu_after_set_cpuid: the CPU obeys what the guest's CPUID says, after KVM
        hid what it hides (PKU without TDP), and CR4 bits reserved for the guest are never
        guest-owned (vmx_set_cr4_guest_host_mask), so writing them exits and faults."""
        cpu = self.cpu
        system.set_features(cpu, cpuid_features(
            lambda leaf, sub: guest_cpuid(leaf, sub, cpu, pku=self.guest_pku, features=features)))
        self.cr4_guest_owned = self.cr4_possible_guest_owned & ~cpu.cr4_reserved_bits
        self.mmu.guest_gbpages = "pdpe1gb" in cpu.features

    def make_request(self, req: str) -> None:
        if req not in self.requests:
            self.requests.add(req)
            if self.kvm.bus.active:
                self.kvm.trace("kvmdbg:request", self.index, request=req)

    def vmexit(self, reason: int, info1=_ABSENT, info2=_ABSENT, intr_info=_ABSENT,
               error_code=_ABSENT) -> None:
        """Leave guest mode: count, charge and trace the exit; stop the run loop. The exit
        information fields a caller gives go into the kvm_exit event, in this order (named
        parameters rather than **info: no dict is built for an exit nobody traces)."""
        kvm = self.kvm
        cpu = self.cpu
        kvm.stats["exits"] += 1
        reasons = kvm.exit_reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        cpu.extra_cycles += kvm.costs.values["vmexit"]
        if kvm.bus.active:
            info = {"exit_reason": V.EXIT_NAMES.get(reason, str(reason)), "guest_rip": cpu.rip, "isa": 1}
            if info1 is not _ABSENT:
                info["info1"] = info1
            if info2 is not _ABSENT:
                info["info2"] = info2
            if intr_info is not _ABSENT:
                info["intr_info"] = intr_info
            if error_code is not _ABSENT:
                info["error_code"] = error_code
            kvm.trace("kvm_exit", self.index, **info)
        self.in_kvm = True
        cpu.pending = True
        if not cpu.stop_reason:
            cpu.stop_reason = VMEXIT

    def kick(self) -> bool:
        """kvm_vcpu_kick: an IPI takes a vCPU in guest mode out of it (True if it was)."""
        if self.in_kvm or self.cpu.halted:
            return False
        self.kvm.stats["irq_exits"] += 1
        self.kvm.charge(self, "kick")
        self.vmexit(V.EXTERNAL_INTERRUPT)
        return True

    def after_set_sregs(self) -> None:
        """KVM_SET_SREGS: userspace set CR0/CR3/CR4/EFER; reset the MMU context (and, for
        a PAE guest, load its PDPTEs, as __set_sregs does)."""
        if x86.is_pae_paging(self):
            x86.load_pdptrs(self, self.cpu.cr3)
        M.kvm_mmu_reset_context(self)

    # --- entry (vcpu_enter_guest) ---

    def enter_guest(self) -> None:
        kvm = self.kvm
        reqs = self.requests
        if reqs:
            if x86.KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in reqs:
                reqs.discard(x86.KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
                M.kvm_mmu_free_obsolete_roots(self)
            if x86.KVM_REQ_MMU_SYNC in reqs:
                reqs.discard(x86.KVM_REQ_MMU_SYNC)
                M.kvm_mmu_sync_roots(self)
            if x86.KVM_REQ_LOAD_MMU_PGD in reqs:
                reqs.discard(x86.KVM_REQ_LOAD_MMU_PGD)
                M.kvm_mmu_load_pgd(self)
            if x86.KVM_REQ_TLB_FLUSH in reqs:
                reqs.discard(x86.KVM_REQ_TLB_FLUSH)
                x86.kvm_vcpu_flush_tlb_all(self)
            if x86.KVM_REQ_TLB_FLUSH_CURRENT in reqs or x86.KVM_REQ_TLB_FLUSH_GUEST in reqs:
                x86.kvm_service_local_tlb_flush_requests(self)
            if x86.KVM_REQ_SMI in reqs:
                reqs.discard(x86.KVM_REQ_SMI)
                self.process_smi()
        M.kvm_mmu_reload(self)
        self.in_kvm = False
        if kvm.bus.active:
            kvm.trace("kvm_entry", self.index, rip=self.cpu.rip)

    def process_smi(self) -> None:
        """enter_smm ... RSM. role.smm flips twice, so the MMU context is reset twice; the SMM
        handler is not guest code here, only its cost (and the SMM root it runs on)."""
        kvm = self.kvm
        kvm.trace("kvmdbg:smm", self.index, transition="enter")
        self.smm = True
        M.kvm_mmu_reset_context(self)
        M.kvm_mmu_reload(self)
        kvm.charge(self, "smm_transition")
        kvm.trace("kvmdbg:smm", self.index, transition="rsm")
        self.smm = False
        M.kvm_mmu_reset_context(self)

    def run(self, max_steps: int, breakpoints=None, skip_first: bool = True) -> str:
        """Enter (if outside guest mode) and run guest code. Returns executor reasons or VMEXIT.
        With a recorder (debug/engine/record.py) the call is logged, for reverse execution."""
        rec = self.kvm.recorder
        if rec is not None:
            return rec.run(self, max_steps, breakpoints, skip_first)
        return self._run(max_steps, breakpoints, skip_first)

    def _run(self, max_steps: int, breakpoints=None, skip_first: bool = True) -> str:
        cpu = self.cpu
        self.kvm.current = self
        reason = self.take_stop()                # a catchpoint fired while we were not running
        if reason:
            return reason
        if self.in_kvm:
            if cpu.halted:
                return executor.HALTED
            self.enter_guest()
            reason = self.take_stop()            # ... or during the entry
            if reason:
                return reason
        return executor.run(cpu, max_steps, breakpoints, skip_first)

    def reenter(self) -> bool:
        """Called by the run loop right after an exit: with one vCPU and no queued work
        nothing else could run between this exit and the next entry, so enter at once
        instead of going back through the scheduler. False: return to the scheduler."""
        kvm = self.kvm
        cpu = self.cpu
        if len(kvm.vcpus) != 1 or kvm.worker.queue or cpu.halted or cpu.shutdown:
            return False
        cpu.pending = False
        cpu.stop_reason = None
        self.enter_guest()
        return not cpu.pending            # a catchpoint during the entry stops here

    def take_stop(self) -> str:
        """A pending stop request other than a plain VM exit, consumed; '' if none."""
        cpu = self.cpu
        if not cpu.pending:
            return ""
        reason = cpu.stop_reason or VMEXIT
        cpu.pending = False
        cpu.stop_reason = None
        return "" if reason == VMEXIT else reason

    # --- VMX TLB operations (vmx_flush_tlb_*) and the EPT pointer ---

    def load_mmu_pgd(self, root) -> None:
        """vmx_load_mmu_pgd: EPTP = the root's hpa. The CPU's fast paths hold translations
        made through the EPTP in use, so they go when it changes (reloading the same root,
        as every v6.4+ SMEP flip does, leaves every translation as it was)."""
        hpa = root.hpa
        changed = hpa != self.ep4ta
        self.ep4ta = hpa
        if self.ept is not None:
            self.ept.load_eptp(hpa)
        if changed:
            self.cpu.flush_fast()

    def flush_tlb_current(self) -> None:
        root = self.mmu.root.sp
        if root is None:
            return                              # vmx_flush_tlb_current: no valid root, nothing
        if self.ept is None:
            self._invvpid("single-context")     # shadow paging: INVVPID for the VPID
            return
        self._invept_single(root.hpa)

    def _invvpid(self, kind: str, gva: int = 0) -> None:
        kvm = self.kvm
        cpu = self.cpu
        kvm.stats["kvmdbg_invvpid"] += 1
        cpu.extra_cycles += kvm.costs.values["invvpid"]
        if kvm.bus.active:
            kvm.trace("kvmdbg:invvpid", self.index, type=kind, vpid=cpu.vpid)
        if kind == "individual-address":
            cpu.tlb.flush_addr(cpu.vpid, gva >> 12)
        elif kind == "all-context":
            cpu.tlb.flush_all()
        else:
            cpu.tlb.flush_vpid(cpu.vpid)

    def flush_tlb_gva(self, gva: int) -> None:
        """vmx_flush_tlb_gva: INVVPID individual-address."""
        self._invvpid("individual-address", gva)

    def _invept_single(self, ep4ta: int) -> None:
        kvm = self.kvm
        kvm.stats["kvmdbg_invept"] += 1
        self.cpu.extra_cycles += kvm.costs.values["invept"]
        if kvm.bus.active:
            kvm.trace("kvmdbg:invept", self.index, type="single-context", eptp=ep4ta)
        if self.ept is not None:
            self.ept.invept_single(ep4ta)
        self.cpu.tlb.flush_ep4ta(ep4ta)

    def flush_tlb_all(self) -> None:
        if self.ept is None:
            self._invvpid("all-context")        # vmx_flush_tlb_all without EPT
            return
        kvm = self.kvm
        kvm.stats["kvmdbg_invept"] += 1
        kvm.charge(self, "invept")
        kvm.trace("kvmdbg:invept", self.index, type="all-context", eptp=0)
        if self.ept is not None:
            self.ept.invept_all()
        self.cpu.tlb.flush_all()

    def flush_tlb_guest(self) -> None:
        kvm = self.kvm
        kvm.stats["kvmdbg_invvpid"] += 1
        kvm.charge(self, "invvpid")
        kvm.trace("kvmdbg:invvpid", self.index, type="single-context", vpid=self.cpu.vpid)
        self.cpu.tlb.flush_vpid(self.cpu.vpid)

    def inject_page_fault(self, error_code: int, address: int):
        """kvm_inject_page_fault: the guest takes #PF(error_code) at address (KVM's own
        walker said so, for its emulator or for shadow paging)."""
        kvm = self.kvm
        kvm.stats["pf_guest"] += 1
        if kvm.bus.active:
            kvm.trace("kvm_inj_exception", self.index, exception=PF, has_error=True,
                      error_code=error_code)
        raise GuestFault(PF, error_code, address) from None

    # --- CpuOps: memory ---

    def translate_gpa(self, gpa: int, kind: int, walk: bool):
        if self.ept is not None:
            return self.ept.translate(gpa, kind, walk)
        return self.vm.host_page_of(gpa)

    def hpa_to_gpa(self, hpa: int) -> int:
        """The guest-physical address behind a host page the shadow tables map (bookkeeping
        for TLB entries; the hardware itself never knows it)."""
        gfn = self.kvm.shadow.gfn_of_pfn.get(hpa >> 12)
        return gfn << 12 if gfn is not None else hpa

    def mmio_read(self, gpa: int, size: int) -> int:
        return self.kvm.vmm.mmio_read(self, gpa, size)

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        self.kvm.vmm.mmio_write(self, gpa, size, value)

    def handle_exit(self, cpu, exit_: V.VmExit) -> None:
        """Exits raised in the middle of an instruction (EPT violation / misconfig, and the
        #PF intercept of shadow paging)."""
        done = exit_.handled
        if done is not False:
            # exit_in_place handled it and could not enter again: what it left to do.
            if isinstance(done, GuestFault):
                raise done                         # the exception KVM injected
            if done == _EMULATE:
                emulate.emulate_instruction(self)
            return
        kvm = self.kvm
        reason = exit_.reason
        if reason == _EPT_VIOLATION:               # the common exit first
            if self.handle_ept_violation(cpu, exit_.gpa, exit_.qualification) == _EMULATE:
                emulate.emulate_instruction(self)
            return
        gpa = exit_.gpa
        if reason == V.EXCEPTION_NMI:
            # handle_exception_nmi -> kvm_handle_page_fault: a #PF on KVM's shadow tables.
            addr, code = exit_.qualification, exit_.error_code
            self.vmexit(V.EXCEPTION_NMI, info1=addr, intr_info=0x80000B0E, error_code=code)
            kvm.stats["kvmdbg_pf_exits"] += 1
            kvm.charge(self, "pf_intercept")
            if kvm.bus.active:
                kvm.trace("kvm_page_fault", self.index, guest_rip=cpu.rip, fault_address=addr,
                          error_code=code)
            ret = M.kvm_mmu_page_fault(self, addr, code)
            if ret == RetPF.EMULATE:
                emulate.emulate_instruction(self)
            return
        self.vmexit(V.EPT_MISCONFIG, info2=gpa)
        kvm.stats["kvmdbg_ept_misconfigs"] += 1
        ret = emulate.handle_mmio_page_fault(self, gpa)
        if ret == RetPF.EMULATE:
            emulate.emulate_instruction(self)

    def handle_ept_violation(self, cpu, gpa: int, qual: int) -> RetPF:
        """handle_ept_violation: the exit, counted and charged, then KVM's page fault
        (the instruction's emulation, if that asks for it, is the caller's)."""
        kvm = self.kvm
        self.vmexit(_EPT_VIOLATION, qual, gpa)
        kvm.stats["kvmdbg_ept_violations"] += 1
        cpu.extra_cycles += kvm.costs.values["ept_violation"]       # kvm.charge, written out
        if kvm.bus.active:
            kvm.trace("kvm_page_fault", self.index, guest_rip=cpu.rip, fault_address=gpa,
                      error_code=qual)
        return M.kvm_mmu_page_fault(self, gpa, M.ept_violation_error_code(qual))

    def exit_in_place(self, gpa: int, qual: int):
        """EptHardware's hook: handle an EPT violation where the walk meets it, and enter
        again, when nothing could tell that from the exit that unwinds to the run loop
        (which is most of a violation's cost: the unwinding, the run loop, the instruction's
        start and its walk again; a v5.15 SMEP flip takes 22 violations). True: the walk is
        then made again, as after the entry. False: raise it; if it was handled already,
        what is left (emulation, an injected exception) for the run loop, with RIP and the
        step count exact by then: the raised exit's `handled`.

        Nothing can tell when: nobody records events (they carry RIP and the step count,
        which a block makes exact only when it unwinds) or the run (reverse execution); the
        vCPU runs alone (kvm.exits_in_place is set only then) with no queued work (the run
        loop would enter at once too, Vcpu.reenter); no event is being delivered (its
        restart is a re-injection); and the handling reads neither (KVM's page fault does
        not: it allocates tables, which only roots stamp with a step) and changed nothing
        the instruction already used: no TLB flush, no present SPTE changed (the
        generation), no request for the entry, no stop asked for, the root in place. The
        restarted instruction would walk this access once more; that walk is counted and
        charged here. tests/kvm/test_exit_in_place.py runs the programs and kvm-unit-tests
        both ways (kvm.exits_in_place) and compares."""
        kvm = self.kvm
        cpu = self.cpu
        if (not cpu.in_walk or cpu.in_delivery or cpu.pending or self.in_kvm
                or not kvm.exits_in_place or kvm.bus.active or kvm.recorder is not None
                or kvm.worker.queue):
            return False
        if (self.mmu.ops.tdp_mmu_faults and not self.requests and not cpu.stop_reason
                and kvm.tdp_mmu.fast_leaf_fault(self, gpa >> 12) is not None):
            # The commonest violations (TdpMmu.fast_leaf_fault's cases) written out: what
            # vmexit, handle_ept_violation and the entry count and charge around the fault,
            # which changes nothing the checks below look at. (Counted after the fault's
            # counters, not before: only the order in which the counters were first made
            # could tell, which nothing shows.)
            stats = kvm.stats
            stats["exits"] += 1
            reasons = kvm.exit_reasons
            reasons[_EPT_VIOLATION] = reasons.get(_EPT_VIOLATION, 0) + 1
            stats["kvmdbg_ept_violations"] += 1
            costs = kvm.costs.values
            cpu.extra_cycles += costs["vmexit"] + costs["ept_violation"] + cpu.walk_cost
            cpu.walks += 1
            return True
        tlb = cpu.tlb
        flushes = tlb.flushes
        generation = self.gpa_generation
        before = generation.value
        try:
            ret = self.handle_ept_violation(cpu, gpa, qual)
        except GuestFault as fault:
            return fault
        if (ret == _EMULATE or cpu.stop_reason != VMEXIT or cpu.shutdown or cpu.halted
                or self.requests or self.mmu.root.sp is None or kvm.worker.queue
                or generation.value != before or tlb.flushes != flushes):
            return ret
        cpu.pending = False
        cpu.stop_reason = None
        self.enter_guest()
        cpu.walks += 1
        cpu.extra_cycles += cpu.walk_cost
        return True

    # --- CpuOps: control registers ---

    def set_cr(self, cpu, n: int, value: int) -> None:
        self.kvm.stats[_CR_WRITE_STAT.get(n, "kvmdbg_cr_writes")] += 1
        if n == 0:
            if not (value ^ cpu.cr0) & ~self.cr0_guest_owned & M64:
                system.arch_set_cr(cpu, 0, value)        # guest-owned bits only: no exit
                return
            self._cr_exit(0, value)
            x86.kvm_set_cr0(self, value)
        elif n == 4:
            if not (value ^ cpu.cr4) & ~self.cr4_guest_owned & M64:
                system.arch_set_cr(cpu, 4, value)
                return
            self._cr_exit(4, value)
            x86.kvm_set_cr4(self, value)
        elif n == 3 and self.ept is None:
            # Shadow paging intercepts MOV to CR3 (kvm-mmu-spec 2.1, 2.5).
            self._cr_exit(3, value)
            x86.kvm_set_cr3(self, value)
        else:
            # CR3 is not intercepted with EPT (unrestricted guest); CR8 is TPR-shadowed.
            system.arch_set_cr(cpu, n, value)

    def _cr_exit(self, n: int, value: int) -> None:
        kvm = self.kvm
        qual = n | (0 << 4)          # access type 0 = MOV to CR; the GPR field is not modelled
        self.vmexit(V.CR_ACCESS, info1=qual)
        kvm.stats["kvmdbg_cr_exits"] += 1
        self.cpu.extra_cycles += kvm.costs.values["cr_access"]
        if kvm.bus.active:
            kvm.trace("kvm_cr", self.index, rw=1, cr=n, val=value)

    def write_cr0(self, value: int) -> None:
        """vmx_set_cr0: GUEST_CR0 and the read shadow (a VMWRITE flushes nothing), and
        enter_lmode / exit_lmode when PG changes with EFER.LME set."""
        cpu = self.cpu
        old = cpu.cr0
        cpu.set_cr0(value | 0x10)
        cpu.set_efer(system.efer_after_cr0(cpu, old, cpu.cr0))

    def write_cr4(self, value: int) -> None:
        self.cpu.set_cr4(value)

    def set_efer(self, cpu, value: int) -> None:
        self.vmexit(V.MSR_WRITE, info1=0xC0000080)
        self.kvm.trace("kvm_msr", self.index, write=1, ecx=0xC0000080, data=value)
        x86.kvm_set_efer(self, value)

    # --- CpuOps: other exits ---

    def pio_in(self, cpu, port: int, size: int) -> int:
        self.vmexit(V.IO_INSTRUCTION, info1=port << 16 | 8)
        return self.kvm.vmm.handle_io(self, port, size, None)

    def pio_out(self, cpu, port: int, size: int, value: int) -> None:
        self.vmexit(V.IO_INSTRUCTION, info1=port << 16)
        self.kvm.vmm.handle_io(self, port, size, value)

    def cpuid(self, cpu, leaf: int, subleaf: int):
        self.vmexit(V.CPUID)
        return guest_cpuid(leaf, subleaf, cpu, pku=self.guest_pku, features=self.kvm.cpu_features)

    def rdmsr(self, cpu, index: int):
        """RDMSR of an MSR the processor does not hold exits (handle_rdmsr); None: #GP."""
        self.vmexit(V.MSR_READ, info1=index)
        value = x86.kvm_get_msr_common(self, index)
        self.kvm.trace("kvm_msr", self.index, write=0, ecx=index, data=value or 0,
                       exception=value is None)
        return value

    def wrmsr(self, cpu, index: int, value: int) -> bool:
        """WRMSR of an MSR the processor does not hold exits (handle_wrmsr); False: #GP."""
        self.vmexit(V.MSR_WRITE, info1=index)
        ok = x86.kvm_set_msr_common(self, index, value)
        self.kvm.trace("kvm_msr", self.index, write=1, ecx=index, data=value, exception=not ok)
        return ok

    def invlpg(self, cpu, va: int) -> None:
        """INVLPG exiting (shadow paging): handle_invlpg -> kvm_mmu_invlpg."""
        self.vmexit(V.INVLPG, info1=va)
        M.kvm_mmu_invlpg(self, va)

    def invpcid(self, cpu, kind: int, desc_lo: int, desc_hi: int) -> None:
        """INVPCID exiting (shadow paging): handle_invpcid -> kvm_handle_invpcid."""
        self.vmexit(V.INVPCID, info1=kind)
        x86.kvm_handle_invpcid(self, kind, desc_lo, desc_hi)

    def hlt(self, cpu) -> None:
        self.vmexit(V.HLT)
        self.kvm.stats["halt_exits"] += 1
        cpu.halted = True
        cpu.stop_reason = HALTED if cpu.stop_reason == VMEXIT else cpu.stop_reason

    def vmcall(self, cpu) -> None:
        self.vmexit(V.VMCALL)
        self.kvm.stats["hypercalls"] += 1
        cpu.r[0] = -KVM_ENOSYS & M64
