"""Machine kinds: which devices answer which ports, and the default RAM.

- raw: the boot contract of design section 3 (kvm/boot.py), unchanged: the debug console
  at 0xE9, the APM port, and kvmdbg's VMM ports 0x510-0x513 (overlay, unoverlay, marker,
  kick).
- pc: a PC in the spirit of QEMU's `-M pc` for multiboot images (kvm/multiboot.py): COM1,
  isa-debug-exit, fw_cfg, the PIC masks, the local APIC page and the Bochs shutdown port.
  QEMU's fw_cfg owns 0x510-0x511, so the VMM ports are not there; the debug console stays.

A multiboot image chooses pc, anything else raw; `--machine NAME` chooses explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmdbg.errors import ConfigError


@dataclass(frozen=True)
class MachineKind:
    name: str
    summary: str
    default_mem: str


RAW = MachineKind("raw", "kvmdbg's boot contract: long mode, identity-mapped, the VMM ports "
                  "0x510-0x513", "16M")
PC = MachineKind("pc", "a PC like QEMU's -M pc for multiboot images: COM1, isa-debug-exit, "
                 "fw_cfg, PIC, local APIC", "128M")      # QEMU's default RAM
MACHINES = {m.name: m for m in (RAW, PC)}

# The raw machine's ports, for `info machine` (the handlers are in kvm/userspace.py).
RAW_PORTS = (("0xe9", "console", "debug console (Bochs/QEMU convention)"),
             ("0xb2", "apm", "APM control: a write raises an SMI"),
             ("0x510", "overlay", "overlay a fresh page at the gfn written"),
             ("0x511", "unoverlay", "remove that overlay"),
             ("0x512", "marker", "record a marker event"),
             ("0x513", "kick", "wake the vCPU written if it is halted"))
PC_SHARED_PORTS = RAW_PORTS[:2]


def get_machine(name: str) -> MachineKind:
    m = MACHINES.get(name)
    if m is None:
        raise ConfigError(f"unknown machine '{name}' (try --machine list: "
                          f"{', '.join(MACHINES)}).")
    return m


def pc_devices(vm, cmdline: str = ""):
    from kvmdbg.kvm import devices as d
    n = len(vm.vcpus)
    return [d.Serial16550(vm), d.DebugExit(vm), d.FwCfg(vm, n, vm.mem_size, cmdline),
            d.Pic(vm), d.LocalApic(vm, n), d.ShutdownPort(vm)]


def describe(vm) -> list[str]:
    """`info machine`: the kind, RAM, and each device with its ports."""
    kind = getattr(vm, "machine", RAW)
    lines = [f"Machine {kind.name}: {kind.summary}",
             f"RAM {vm.mem_size >> 20} MiB at 0x0, {len(vm.vcpus)} vCPU(s)"]
    rows = list(RAW_PORTS if kind is RAW else PC_SHARED_PORTS)
    for dev in vm.devices:
        rows.append((dev.port_text(), dev.name, dev.summary))
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    lines.append(f"{'ports':{w1}}  {'device':{w2}}  what")
    lines += [f"{a:{w1}}  {b:{w2}}  {c}" for a, b, c in rows]
    return lines
