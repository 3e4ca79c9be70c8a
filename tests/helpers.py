"""Shared test helpers: build a booted machine from assembly text or bytes."""

from __future__ import annotations

from functools import lru_cache

from kvmdbg.cpu.executor import run
from kvmdbg.kvm.boot import LOAD_ADDRESS, Program, boot
from kvmdbg.kvm.vm import Vm


@lru_cache(maxsize=None)
def _ks():
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    return Ks(KS_ARCH_X86, KS_MODE_64)


def asm(source: str, address: int = LOAD_ADDRESS) -> bytes:
    """Assemble Intel-syntax source with keystone."""
    code, _ = _ks().asm(source, address)
    return bytes(code or b"")


def patch_loop(passes: int) -> str:
    """A loop that rewrites, in each pass, the immediate of the `mov eax, imm32` right after
    its store (the same basic block), and keeps each pass's value in a hex digit of EDX:
    code that sees its stores at once ends with EDX = passes..1 (0x321 for 3), stale code
    one store behind (SDM Vol. 3A 11.6: a store to a prefetched instruction is seen)."""
    return f"""
        mov ecx, {passes}
    top:
        lea rbx, [rip + target + 1]
        mov dword ptr [rbx], ecx
    target:
        mov eax, 0
        shl edx, 4
        or edx, eax
        dec ecx
        jnz top
        hlt
    """


def machine(code, mem: int = 16 << 20, vcpus: int = 1, arg: int = 0, kvm=None, cpu=None):
    """A VM booted per the boot contract with `code` (asm text or bytes) at 0x100000.

    With kvm=None the CPU runs as bare hardware (architecture tests); with a profile
    name it runs under the KVM model. cpu: --cpu's text (None: the default CPUID)."""
    if isinstance(code, str):
        code = asm(code)
    if kvm is None:
        vm = Vm(mem, vcpus, bare=True)
    else:
        from kvmdbg.kvm.profiles import get_profile
        vm = Vm(mem, vcpus, profile=get_profile(kvm))
    if cpu is not None:
        from kvmdbg.kvm.cpuid import parse_cpu_option
        vm.cpu_features = parse_cpu_option(cpu)
    boot(vm, Program(code), arg)
    return vm, vm.vcpus[0].cpu


def run_until_halt(cpu, limit: int = 1_000_000) -> str:
    return run(cpu, limit)


def run_program(name: str, kvm: str = "v6.12", vcpus: int = 1, arg: int = 0, knobs=(),
                events: bool = False, max_steps: int = 10**9):
    """Boot programs/NAME.bin under a KVM profile and run it until every vCPU halts."""
    from pathlib import Path

    from kvmdbg.kvm.boot import load_program, make_vm
    from kvmdbg.kvm.scheduler import run_vm
    root = Path(__file__).resolve().parent.parent
    vm = make_vm(load_program(str(root / "programs" / f"{name}.bin")), kvm, knobs, vcpus,
                 16 << 20, arg, keep_events=10**7 if events else 0)
    vm.stop = run_vm(vm, max_steps)
    return vm


def run_cli(*args, stdin=None, env=None, encoding="utf-8"):
    """(status, stdout, stderr) of the real `python -m kvmdbg ARGS`, run from the repository
    with no init file, no colour and the given output encoding."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    e = dict(os.environ, XDG_CONFIG_HOME="/nonexistent-kvmdbg-test", NO_COLOR="1",
             PYTHONIOENCODING=encoding)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "kvmdbg", *args], capture_output=True,
                       input=None if stdin is None else stdin.encode(encoding), env=e,
                       cwd=Path(__file__).resolve().parent.parent, timeout=300)
    return p.returncode, p.stdout.decode(encoding), p.stderr.decode(encoding)


def ept_sptes(gfns) -> int:
    """SPTEs that map the guest frames gfns with 4 KiB leaves in a 4-level EPT: a leaf per
    frame plus the non-leaf entries that reach them, one per distinct PML4, PDPT and PD
    index (SDM 28.3.2, 2016 edition: gpa bits 47:39, 38:30 and 29:21, i.e. gfn >> 27,
    gfn >> 18 and gfn >> 9)."""
    gfns = set(gfns)
    return len(gfns) + sum(len({g >> shift for g in gfns}) for shift in (27, 18, 9))


KUT_ENV = "KVMDBG_KUT_DIR"


def kut_image(name: str):
    """Path of a kvm-unit-tests image: in $KVMDBG_KUT_DIR, else ../shared/kut/bin/ beside
    the project root. Missing: the test is skipped naming both places, or fails when CI is
    set (a CI run must have the images)."""
    import os
    from pathlib import Path

    import pytest
    root = Path(__file__).resolve().parent.parent
    env = os.environ.get(KUT_ENV)
    default = (root / ".." / "shared" / "kut" / "bin").resolve()
    where = Path(env) if env else default
    path = where / name
    if path.is_file():
        return path
    why = (f"kvm-unit-tests image {name} not found: looked in ${KUT_ENV} "
           f"({env or 'not set'}) and {default}")
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def vm_fingerprint(vm) -> tuple:
    """Everything a user or the guest can see of a VM, for comparing two runs that must not
    differ: registers, steps, cycles, walks, the TLB and the EPT cache, KVM's counters, every
    MMU page, memory and the console. (The counters by name: the order in which they were
    first made shows nowhere, `info stats` sorts them, and an EPT violation handled in
    place counts its exit after the fault it brought.)"""
    import hashlib

    from kvmdbg.cpu import flags
    out = []
    for v in vm.vcpus:
        c = v.cpu
        out.append((list(c.r), c.rip, flags.peek(c), c.cr0, c.cr2, c.cr3, c.cr4, c.efer,
                    c.steps, c.extra_cycles, c.walks, c.halted, c.shutdown, v.in_kvm,
                    sorted(v.requests)))
        out.append([(tag, e.vpn, e.hpa, e.gpa, e.user, e.writable, e.nx, e.dirty, e.glob,
                     e.pkey, e.size_shift, e.ept_w, e.ept_x) for tag, e in c.tlb.entries()])
        out.append((c.tlb.fills, c.tlb.flushes))
        if v.ept is not None:
            out.append((v.ept.walks, v.ept.ep4ta, sorted(v.ept.caches),
                        sorted((gfn, t[1], t[2], t[3]) for gfn, t in v.ept.cache.items())))
    out.append(sorted(vm.stats.items()))
    out.append(sorted(vm.exit_reasons.items()))
    out.append([(pfn, sp.role, sp.gfn, sp.number, sp.created_step, sp.root_count,
                 sp.parent.pfn if sp.parent is not None else None, sp.parent_index,
                 sp.mmu_valid_gen, sp.touched, hashlib.sha256(sp.spt).hexdigest())
                for pfn, sp in sorted(vm.mmu_pages.pages.items())])
    out.append(vm.mmu_pages.live_sptes)
    memory = hashlib.sha256()
    for pfn in sorted(vm.host.pages):
        memory.update(pfn.to_bytes(8, "little") + vm.host.pages[pfn])
    out.append(memory.hexdigest())
    out.append(bytes(vm.console))
    return tuple(out)
