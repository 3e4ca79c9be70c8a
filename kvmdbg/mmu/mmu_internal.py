"""Roles, MMU pages and page-fault requests (mirrors mmu_internal.h and kvm_host.h).

A role is a plain int with KVM's bit layout (union kvm_mmu_page_role), so two
roles are equal exactly when KVM's ``role.word == wanted.word`` would be, and the
``invalid`` bit makes an invalidated root never match a lookup. cpu_role is
base | ext << 32 (union kvm_cpu_role).
"""

from __future__ import annotations

from enum import IntEnum

from kvmdbg.arch.kvm_host import ACC_ALL, ACC_EXEC, ACC_USER, ACC_WRITE  # noqa: F401

# union kvm_mmu_page_role (kvm-mmu-spec 3.1)
ROLE_LEVEL_MASK = 0xF
ROLE_HAS_4_BYTE_GPTE = 1 << 4
ROLE_QUADRANT_SHIFT = 5
ROLE_DIRECT = 1 << 7
ROLE_ACCESS_SHIFT = 8
ROLE_INVALID = 1 << 11
ROLE_EFER_NX = 1 << 12
ROLE_CR0_WP = 1 << 13
ROLE_SMEP_ANDNOT_WP = 1 << 14
ROLE_SMAP_ANDNOT_WP = 1 << 15
ROLE_AD_DISABLED = 1 << 16
ROLE_GUEST_MODE = 1 << 17
ROLE_PASSTHROUGH = 1 << 18
ROLE_SMM_SHIFT = 24

# union kvm_mmu_extended_role (3.2)
EXT_VALID = 1 << 0
EXT_EXECONLY = 1 << 1
EXT_CR4_PSE = 1 << 2
EXT_CR4_PKE = 1 << 3
EXT_CR4_SMAP = 1 << 4
EXT_CR4_SMEP = 1 << 5
EXT_CR4_LA57 = 1 << 6
EXT_EFER_LMA = 1 << 7


BASE_FIELDS = (
    ("has_4_byte_gpte", ROLE_HAS_4_BYTE_GPTE), ("direct", ROLE_DIRECT), ("invalid", ROLE_INVALID),
    ("efer_nx", ROLE_EFER_NX), ("cr0_wp", ROLE_CR0_WP), ("smep_andnot_wp", ROLE_SMEP_ANDNOT_WP),
    ("smap_andnot_wp", ROLE_SMAP_ANDNOT_WP), ("ad_disabled", ROLE_AD_DISABLED),
    ("guest_mode", ROLE_GUEST_MODE), ("passthrough", ROLE_PASSTHROUGH))
EXT_FIELDS = (
    ("valid", EXT_VALID), ("execonly", EXT_EXECONLY), ("cr4_pse", EXT_CR4_PSE),
    ("cr4_pke", EXT_CR4_PKE), ("cr4_smap", EXT_CR4_SMAP), ("cr4_smep", EXT_CR4_SMEP),
    ("cr4_la57", EXT_CR4_LA57), ("efer_lma", EXT_EFER_LMA))


def role_level(role: int) -> int:
    return role & ROLE_LEVEL_MASK


def role_access(role: int) -> int:
    return (role >> ROLE_ACCESS_SHIFT) & 7


def role_smm(role: int) -> int:
    return (role >> ROLE_SMM_SHIFT) & 0xFF


_ACCESS_STR = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")


def role_str(role: int) -> str:
    """The role in the words of kvm_mmu_get_page's TP_printk, plus the bits it leaves out
    (wp, smep&!wp, smap&!wp, guest, smm) that matter for telling roots apart."""
    parts = [f"l{role_level(role)}", "4-byte" if role & ROLE_HAS_4_BYTE_GPTE else "8-byte",
             f"q{(role >> ROLE_QUADRANT_SHIFT) & 3}"]
    if role & ROLE_DIRECT:
        parts.append("direct")
    parts.append(_ACCESS_STR[role_access(role)])
    if role & ROLE_INVALID:
        parts.append("invalid")
    parts.append("nxe" if role & ROLE_EFER_NX else "!nxe")
    parts.append("!ad" if role & ROLE_AD_DISABLED else "ad")
    if role & ROLE_CR0_WP:
        parts.append("wp")
    if role & ROLE_SMEP_ANDNOT_WP:
        parts.append("smep&!wp")
    if role & ROLE_SMAP_ANDNOT_WP:
        parts.append("smap&!wp")
    if role & ROLE_GUEST_MODE:
        parts.append("guest")
    if role_smm(role):
        parts.append("smm")
    return " ".join(parts)


def role_fields(role: int) -> dict:
    d = {"level": role_level(role), "quadrant": (role >> ROLE_QUADRANT_SHIFT) & 3,
         "access": role_access(role), "smm": role_smm(role)}
    for name, bit in BASE_FIELDS:
        d[name] = int(bool(role & bit))
    return d


def ext_fields(ext: int) -> dict:
    return {name: int(bool(ext & bit)) for name, bit in EXT_FIELDS}


class KvmBug(AssertionError):
    """What KVM_BUG_ON / BUG() / WARN_ON_ONCE would report: the model broke an invariant
    the kernel checks (a bug in kvmdbg, never in the guest)."""


def kvm_bug(message: str):
    raise KvmBug(f"KVM bug: {message}")


class RetPF(IntEnum):
    """Outcomes of a page fault (RET_PF_*, mmu_internal.h)."""
    CONTINUE = 0
    RETRY = 1
    EMULATE = 2
    INVALID = 3
    FIXED = 4
    SPURIOUS = 5


class MmuPage:
    """struct kvm_mmu_page: one page-table page KVM built (a root or a child table)."""

    __slots__ = ("role", "gfn", "pfn", "hpa", "spt", "tdp_mmu_page", "root_count", "parent",
                 "parent_index", "tdp_mmu_scheduled_root_to_zap", "mmu_valid_gen",
                 "created_step", "number", "freed", "root_info", "touched")

    def __init__(self, role: int, gfn: int, pfn: int, spt: bytearray, tdp_mmu_page: bool):
        self.role = role
        self.gfn = gfn
        self.pfn = pfn
        self.hpa = pfn << 12             # fixed for the page's life; read on every VM entry
        self.spt = spt                   # the 512 SPTEs, as the hardware reads them
        self.tdp_mmu_page = tdp_mmu_page
        self.root_count = 0              # tdp_mmu_root_count (TDP) or root_count (shadow)
        self.parent = None               # the MmuPage whose SPTE points here
        self.parent_index = 0
        self.tdp_mmu_scheduled_root_to_zap = False
        self.mmu_valid_gen = 0
        self.created_step = 0
        self.number = 0                  # root number shown to users (#1, #2, ...)
        self.freed = False
        # The TDP MMU's RootInfo(0, self) for this root, made once (RootInfo is never
        # changed in place, so every load of the root can share it: TdpMmuOps.alloc_root).
        self.root_info = None
        # Bit i set for every entry i that may be non-zero (each SPTE writer sets it), or
        # -1: unknown (a page made over a table of any contents, or written from outside
        # KVM, by the debugger). A zap then reads the few entries a table ever had instead
        # of scanning its 4 KiB (tdp_iter.scan_page). MmuPages.alloc_page's pages start at 0.
        self.touched = -1

    @property
    def level(self) -> int:
        return self.role & ROLE_LEVEL_MASK

    @property
    def invalid(self) -> bool:
        return bool(self.role & ROLE_INVALID)


class PageFault:
    """struct kvm_page_fault, grouped by where each field comes from. The fields derived
    from the error code are read from it when asked (properties): one is made per EPT
    violation and the fault path reads none of them."""

    __slots__ = ("addr", "error_code", "prefetch", "gfn", "is_tdp", "max_level", "req_level",
                 "goal_level", "slot", "pfn", "map_writable")

    def __init__(self, addr: int, error_code: int, is_tdp: bool = True):
        # --- inputs (from the exit) ---
        self.addr = addr
        self.error_code = error_code
        self.prefetch = False
        self.is_tdp = is_tdp
        # --- derived from addr (and, below, from error_code) ---
        self.gfn = addr >> 12
        # --- set by kvm_mmu_hugepage_adjust / faultin ---
        self.max_level = 1
        self.req_level = 1
        self.goal_level = 1
        self.slot = None
        self.pfn = 0
        self.map_writable = True

    @property
    def present(self) -> bool:
        return bool(self.error_code & 1)

    @property
    def write(self) -> bool:
        return bool(self.error_code & 2)

    @property
    def user(self) -> bool:
        return bool(self.error_code & 4)

    @property
    def rsvd(self) -> bool:
        return bool(self.error_code & 8)

    @property
    def exec(self) -> bool:
        return bool(self.error_code & 16)
