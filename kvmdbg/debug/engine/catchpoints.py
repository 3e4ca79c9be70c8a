"""Catchpoint kinds: friendly names over the event bus (design section 7).

Each kind names the events that fire it (kernel tracepoint names as in
arch/x86/kvm/mmu/mmutrace.h and arch/x86/kvm/trace.h, spec section 7; events the
kernel has no tracepoint for are in the ``kvmdbg:`` namespace), an optional
argument (``vmexit CR_ACCESS``, ``cr-write cr4``), a predicate that looks at the
event's fields, and a one-line description for the hit message:

    Catchpoint 1 (root-zap root #1 hpa=0x10005000 role=l4 direct wux), vcpu 0, step 17

This table is the contract with the KVM model: it decides which events it emits
(and with which fields); this file says which of them each kind stops on. The
``kvmdbg:`` names below are the proposals of this table; when the model names an
event differently, change the ``events`` tuple and the predicate here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kvmdbg.errors import CommandError
from kvmdbg.events.format import format_value

SPTE_MMU_PRESENT = 1 << 11          # spte.h: "KVM considers this SPTE present" (spec 5.5)
MSR_EFER = 0xC000_0080

# VMX basic exit reasons (SDM Vol. 3D appendix C) that a guest of this simulator can cause.
EXIT_REASONS = {
    0: "EXCEPTION_NMI", 1: "EXTERNAL_INTERRUPT", 2: "TRIPLE_FAULT", 10: "CPUID", 12: "HLT",
    14: "INVLPG", 18: "VMCALL", 28: "CR_ACCESS", 30: "IO_INSTRUCTION", 31: "MSR_READ",
    32: "MSR_WRITE", 48: "EPT_VIOLATION", 49: "EPT_MISCONFIG", 50: "INVEPT", 58: "INVPCID",
}
EXIT_NUMBERS = {v: k for k, v in EXIT_REASONS.items()}
CR_ARGS = ("cr0", "cr3", "cr4", "cr8", "efer")


def _f(ev, name, default=None):
    return ev.fields.get(name, default)


def _hex(v) -> str:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def describe_fields(ev, skip=()) -> str:
    return " ".join(f"{k}={format_value(k, v)}" for k, v in ev.fields.items() if k not in skip)


@dataclass(frozen=True)
class CatchKind:
    name: str
    events: tuple                       # event names that may fire it
    summary: str                        # one line for help and completion
    family: str = "mmu event"           # shown when set: Catchpoint 1 (mmu event 'root-zap')
    args: tuple = ()                    # accepted argument words (lower case), () = none
    arg_help: str = ""                  # e.g. "[REASON]"
    matches: Callable = field(default=lambda ev, arg: True)          # (event, arg|'') -> bool
    describe: Callable = field(default=lambda ev: describe_fields(ev))   # details after the kind

    def check_arg(self, arg: str) -> str:
        """The normalised argument, or CommandError if this kind does not take it."""
        if not arg:
            return ""
        if self.name == "vmexit":
            return _exit_reason_arg(arg)
        if arg.lower() in self.args:
            return arg.lower()
        if not self.args:
            raise CommandError(f"catch {self.name} takes no argument (got \"{arg}\").")
        raise CommandError(f"Bad argument \"{arg}\" for catch {self.name}: "
                           f"expected one of {', '.join(self.args)}.")


def _exit_reason_arg(arg: str) -> str:
    a = arg.upper()
    if a.startswith("EXIT_REASON_"):
        a = a[len("EXIT_REASON_"):]
    if a in EXIT_NUMBERS:
        return a
    try:
        n = int(arg, 0)
    except ValueError:
        raise CommandError(f"Unknown exit reason \"{arg}\" (known: "
                           f"{', '.join(sorted(EXIT_NUMBERS))}, or a number).") from None
    return EXIT_REASONS.get(n, str(n))


def exit_reason_name(ev) -> str:
    r = _f(ev, "exit_reason", _f(ev, "reason", "?"))
    if isinstance(r, int):
        return EXIT_REASONS.get(r, str(r))
    return str(r).upper().removeprefix("EXIT_REASON_")


# --- predicates and descriptions per kind ---

def _root_alloc(ev, arg):
    if ev.name == "kvm_mmu_get_page":        # also traced for child tables: roots only
        return bool(_f(ev, "created")) and _f(ev, "root_count", 0) > 0
    return True


def _describe_root(ev) -> str:
    root = _f(ev, "root", _f(ev, "id"))
    parts = []
    if root is not None:
        parts.append(f"root #{root}")
    if _f(ev, "hpa") is not None:
        parts.append(f"hpa={_hex(_f(ev, 'hpa'))}")
    if _f(ev, "role") is not None:
        parts.append(f"role={_f(ev, 'role')}")
    rest = describe_fields(ev, skip=("root", "id", "hpa", "role"))
    return " ".join(parts + ([rest] if rest else []))


def _spte_zap(ev, arg):
    if ev.name == "kvm_tdp_mmu_spte_changed":
        return bool(_f(ev, "old_spte", 0) & SPTE_MMU_PRESENT) and \
            not _f(ev, "new_spte", 0) & SPTE_MMU_PRESENT
    return True


def _tlb_flush(ev, arg):
    remote = "remote" in ev.name or bool(_f(ev, "remote"))
    return not arg or (arg == "remote") == remote


def _ept_violation(ev, arg):
    if ev.name == "kvm_exit":
        return exit_reason_name(ev) == "EPT_VIOLATION"
    return True


def _page_fault(ev, arg):
    guest = ev.name == "kvm_inj_exception"
    if guest and _f(ev, "exception") != 14:
        return False
    return not arg or (arg == "guest") == guest


def _vmexit(ev, arg):
    return not arg or exit_reason_name(ev) == arg


def _describe_vmexit(ev) -> str:
    rip = _f(ev, "guest_rip", _f(ev, "rip"))
    return exit_reason_name(ev) + (f" rip {rip:#x}" if isinstance(rip, int) else "")


def _cr_write(ev, arg):
    if ev.name == "kvm_msr":
        return bool(_f(ev, "write", _f(ev, "rw", 0))) and _f(ev, "ecx", _f(ev, "msr")) == MSR_EFER \
            and arg in ("", "efer")
    if not _f(ev, "rw", 1):
        return False
    return not arg or arg == f"cr{_f(ev, 'cr')}"


def _describe_cr(ev) -> str:
    if ev.name == "kvm_msr":
        return f"efer = {_hex(_f(ev, 'data', _f(ev, 'val')))}"
    return f"cr{_f(ev, 'cr')} = {_hex(_f(ev, 'val'))}"


def _describe_marker(ev) -> str:
    return _hex(_f(ev, "val", _f(ev, "value")))


KINDS: dict[str, CatchKind] = {k.name: k for k in (
    CatchKind("root-alloc", ("kvm_mmu_get_page", "kvmdbg:root_alloc"),
              "a new root is allocated (kvm_mmu_get_page, created)",
              matches=_root_alloc, describe=_describe_root),
    CatchKind("root-zap", ("kvmdbg:root_invalidate", "kvmdbg:root_zap"),
              "a root is invalidated or its SPTEs zapped (kvm_tdp_mmu_invalidate_roots, "
              "tdp_mmu_zap_root)", describe=_describe_root),
    CatchKind("root-put", ("kvmdbg:root_put", "kvmdbg:root_free"),
              "a root's reference is dropped or it is freed (kvm_tdp_mmu_put_root)",
              describe=_describe_root),
    CatchKind("spte-set", ("kvm_mmu_set_spte",), "a leaf SPTE is installed (kvm_mmu_set_spte)"),
    CatchKind("spte-zap", ("kvm_tdp_mmu_spte_changed", "kvmdbg:spte_zap"),
              "a present SPTE becomes non-present (kvm_tdp_mmu_spte_changed)", matches=_spte_zap),
    CatchKind("zap-all", ("kvm_mmu_zap_all_fast",), "all roots are invalidated (kvm_mmu_zap_all_fast)"),
    CatchKind("mmu-reset", ("kvmdbg:mmu_reset_context", "kvmdbg:mmu_unload"),
              "kvm_mmu_reset_context / kvm_mmu_unload runs"),
    CatchKind("tlb-flush", ("kvmdbg:tlb_flush", "kvmdbg:remote_tlb_flush", "kvmdbg:invept",
                            "kvmdbg:invvpid"),
              "a hardware TLB flush is requested or done", args=("local", "remote"),
              arg_help="[local|remote]", matches=_tlb_flush),
    CatchKind("ept-violation", ("kvm_exit",), "an EPT violation exit (kvm_exit EPT_VIOLATION)",
              family="kvm event", matches=_ept_violation, describe=_describe_vmexit),
    CatchKind("page-fault", ("kvm_page_fault", "kvm_inj_exception"),
              "KVM handles a page fault (kvm_page_fault) or injects a #PF (guest)",
              args=("guest", "ept"), arg_help="[guest|ept]", matches=_page_fault),
    CatchKind("vmexit", ("kvm_exit",), "any VM exit, or one exit reason (kvm_exit)",
              family="kvm event", arg_help="[REASON]", matches=_vmexit, describe=_describe_vmexit),
    CatchKind("cr-write", ("kvm_cr", "kvm_msr"), "a guest write to a control register (kvm_cr)",
              family="kvm event", args=CR_ARGS, arg_help="[cr0|cr3|cr4|cr8|efer]",
              matches=_cr_write, describe=_describe_cr),
    CatchKind("memslot", ("kvmdbg:memslot",),
              "userspace changes a memslot (KVM_SET_USER_MEMORY_REGION)", family="kvm event"),
    CatchKind("marker", ("kvmdbg:marker",), "the guest writes the marker port 0x512",
              family="kvm event", describe=_describe_marker),
)}


def lookup(word: str) -> CatchKind:
    """A kind by exact name or unique prefix (gdb style)."""
    if word in KINDS:
        return KINDS[word]
    found = [k for k in KINDS if k.startswith(word)]
    if len(found) == 1:
        return KINDS[found[0]]
    if not found:
        raise CommandError(f"Unknown catch kind \"{word}\" (kinds: {', '.join(KINDS)}).")
    raise CommandError(f"Ambiguous catch kind \"{word}\": {', '.join(found)}.")


def event_names() -> set:
    """Every event name some kind listens to (the bus listener's first filter)."""
    return {name for k in KINDS.values() for name in k.events}
