"""The VMM in userspace: what KVM_EXIT_IO and KVM_EXIT_MMIO reach (design section 3).

Port 0xE9 is the debug console. Ports 0x510-0x513 are the teaching interface:
overlay a page the way a VMM must (delete the slot, re-create the two halves and
a one-page slot between them), remove it again, record a marker, kick a vCPU.
"""

from __future__ import annotations

from kvmdbg.arch.kvm_host import KVM_REQ_SMI
from kvmdbg.kvm.vm import (PORT_APM_CNT, PORT_CONSOLE, PORT_KICK, PORT_MARKER, PORT_OVERLAY,
                           PORT_UNOVERLAY)
from kvmdbg.mem import Memslot


class Vmm:
    def __init__(self, kvm):
        self.kvm = kvm
        self.overlays: dict[int, tuple[Memslot, list[int]]] = {}   # gfn -> (original, new ids)
        self.port_devices: dict[int, object] = {}     # port -> device (the machine's)
        self.mmio_devices: list = []                  # devices with an MMIO range

    def attach(self, devices) -> None:
        """The machine's devices answer their ports and MMIO ranges from now on; on a machine
        with devices, kvmdbg's VMM ports that clash with them are theirs."""
        for dev in devices:
            for port in dev.ports:
                self.port_devices[port] = dev
            if dev.mmio is not None:
                self.mmio_devices.append(dev)

    # --- exits ---

    def handle_io(self, vcpu, port: int, size: int, value):
        kvm = self.kvm
        kvm.stats["io_exits"] += 1
        if not kvm.bare:
            kvm.charge(vcpu, "io_exit")
        kvm.trace("kvm_pio", vcpu.index, rw=0 if value is None else 1, port=port, size=size,
                  count=1, val=value if value is not None else 0)
        if self.port_devices:
            dev = self.port_devices.get(port)
            if dev is not None:
                if value is None:
                    return dev.io_read(vcpu, port, size)
                dev.io_write(vcpu, port, size, value)
                return None
            if port not in (PORT_CONSOLE, PORT_APM_CNT):
                kvm.unmodelled["read" if value is None else "write"].add(port)
                return (1 << (8 * size)) - 1 if value is None else None
        if value is None:
            return (1 << (8 * size)) - 1            # nothing answers reads
        if port == PORT_CONSOLE:
            kvm.console_write(value & 0xFF)
        elif port == PORT_OVERLAY:
            kvm.io_exits.append((vcpu.index, port, size, value))
            self.overlay(value)
        elif port == PORT_UNOVERLAY:
            kvm.io_exits.append((vcpu.index, port, size, value))
            self.unoverlay(value)
        elif port == PORT_MARKER:
            kvm.io_exits.append((vcpu.index, port, size, value))
            kvm.markers.append((vcpu.index, vcpu.cpu.steps, vcpu.cpu.cycles, value))
            kvm.trace("kvmdbg:marker", vcpu.index, value=value)
        elif port == PORT_APM_CNT:
            vcpu.make_request(KVM_REQ_SMI)      # the chipset raises an SMI (KVM_SMI)
        elif port == PORT_KICK:
            kvm.io_exits.append((vcpu.index, port, size, value))
            self.kick(value)
        return None

    def mmio_device(self, gpa: int):
        for dev in self.mmio_devices:
            base, length = dev.mmio
            if base <= gpa < base + length:
                return dev
        return None

    def mmio_read(self, vcpu, gpa: int, size: int) -> int:
        kvm = self.kvm
        kvm.stats["mmio_exits"] += 1
        kvm.charge(vcpu, "io_exit")
        dev = self.mmio_device(gpa) if self.mmio_devices else None
        if dev is not None:
            value = dev.read(vcpu, gpa - dev.mmio[0], size)
        else:
            value = (1 << (8 * size)) - 1
            if self.port_devices:
                kvm.unmodelled["mmio"].add(gpa & ~0xFFF)
        kvm.trace("kvm_mmio", vcpu.index, type="read", len=size, gpa=gpa, val=value)
        return value

    def mmio_write(self, vcpu, gpa: int, size: int, value: int) -> None:
        kvm = self.kvm
        kvm.stats["mmio_exits"] += 1
        kvm.charge(vcpu, "io_exit")
        kvm.mmio_writes.append((vcpu.index, gpa, size, value))
        kvm.trace("kvm_mmio", vcpu.index, type="write", len=size, gpa=gpa, val=value)
        dev = self.mmio_device(gpa) if self.mmio_devices else None
        if dev is not None:
            dev.write(vcpu, gpa - dev.mmio[0], size, value)
        elif self.port_devices:
            kvm.unmodelled["mmio"].add(gpa & ~0xFFF)

    def unmodelled_lines(self) -> list[str]:
        """Ports and MMIO pages the guest used that no device models, each named once."""
        kvm = self.kvm
        lines = []
        for kind, what in (("read", "ports read but not modelled"),
                           ("write", "ports written but not modelled"),
                           ("mmio", "MMIO pages used but not modelled")):
            new = sorted(x for x in kvm.unmodelled[kind]
                         if (kind, x) not in kvm.unmodelled_reported)
            if new:
                kvm.unmodelled_reported.update((kind, x) for x in new)
                lines.append(f"{what}: " + ", ".join(f"{x:#x}" for x in new))
        return lines

    # --- the teaching interface ---

    def overlay(self, gfn: int) -> None:
        kvm = self.kvm
        slot = kvm.memslots.lookup(gfn)
        if slot is None or gfn in self.overlays:
            kvm.trace("kvmdbg:vmm_error", kvm.current_vcpu_index(),
                      message=f"cannot overlay gfn {gfn:#x}")
            return
        kvm.set_memory_region("delete", slot)
        ids = []
        if gfn > slot.base_gfn:
            low = Memslot(kvm.memslots.next_id(), slot.base_gfn, gfn - slot.base_gfn,
                          slot.userspace_addr, slot.flags)
            kvm.set_memory_region("create", low)
            ids.append(low.id)
        page = Memslot(kvm.memslots.next_id(), gfn, 1, kvm.host.mmap(4096), slot.flags)
        kvm.set_memory_region("create", page)
        ids.append(page.id)
        if gfn + 1 < slot.end_gfn:
            high = Memslot(kvm.memslots.next_id(), gfn + 1, slot.end_gfn - gfn - 1,
                           slot.gfn_to_hva(gfn + 1), slot.flags)
            kvm.set_memory_region("create", high)
            ids.append(high.id)
        self.overlays[gfn] = (slot, ids)

    def unoverlay(self, gfn: int) -> None:
        kvm = self.kvm
        if gfn not in self.overlays:
            kvm.trace("kvmdbg:vmm_error", kvm.current_vcpu_index(),
                      message=f"no overlay at gfn {gfn:#x}")
            return
        original, ids = self.overlays.pop(gfn)
        for slot_id in ids:
            kvm.set_memory_region("delete", kvm.memslots.by_id(slot_id))
        kvm.set_memory_region("create", Memslot(original.id, original.base_gfn, original.npages,
                                                original.userspace_addr, original.flags))

    def kick(self, index: int) -> None:
        kvm = self.kvm
        if 0 <= index < len(kvm.vcpus):
            v = kvm.vcpus[index]
            if v.cpu.halted:
                v.cpu.halted = False
                # Time passed while it was halted: it wakes at the waker's "now".
                waker = kvm.current
                if waker is not None and waker.cpu.cycles > v.cpu.cycles:
                    v.cpu.extra_cycles += waker.cpu.cycles - v.cpu.cycles
                kvm.trace("kvmdbg:kick", kvm.current_vcpu_index(), target=index)
