"""Events printed the way the kernel's TP_printk prints them (trace-cmd report style).

Only pure formatting lives here, so every layer can use it; unknown events and the
kvmdbg: namespace print as key=value.
"""

from __future__ import annotations

_ACCESS = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")


def mmu_page_printk(f: dict) -> str:
    """KVM_MMU_PAGE_PRINTK of mmutrace.h."""
    role = f.get("role", 0)
    level = role & 0xF
    gpte = "4" if role >> 4 & 1 else "8"
    quadrant = (role >> 5) & 3
    direct = " direct" if role >> 7 & 1 else ""
    access = _ACCESS[(role >> 8) & 7]
    invalid = " invalid" if role >> 11 & 1 else ""
    nxe = "" if role >> 12 & 1 else "!"
    ad = "!" if role >> 16 & 1 else ""
    sync = "unsync" if f.get("unsync") else "sync"
    return (f"sp gen {f.get('mmu_valid_gen', 0)} gfn {f.get('gfn', 0):x} l{level} {gpte}-byte "
            f"q{quadrant}{direct} {access}{invalid} {nxe}nxe {ad}ad root {f.get('root_count', 0)} {sync}")


def _rwx(spte: int) -> str:
    return "".join(c if spte >> i & 1 else "-" for i, c in enumerate("rwx"))


def _kvm_exit(f):
    return (f"vcpu {f.get('vcpu', 0)} reason {f['exit_reason']} rip {f['guest_rip']:#x} "
            f"info1 0x{f.get('info1', 0):016x} info2 0x{f.get('info2', 0):016x} "
            f"intr_info 0x{0:08x} error_code 0x{0:08x}")


FORMATS = {
    "kvm_exit": _kvm_exit,
    "kvm_entry": lambda f: f"vcpu {f.get('vcpu', 0)}, rip {f['rip']:#x}",
    "kvm_cr": lambda f: f"cr_{'write' if f['rw'] else 'read'} {f['cr']:x} = {f['val']:#x}",
    "kvm_page_fault": lambda f: (f"vcpu {f.get('vcpu', 0)} rip {f['guest_rip']:#x} address "
                                 f"0x{f['fault_address']:016x} error_code {f['error_code']:#x}"),
    "kvm_pio": lambda f: (f"pio_{'write' if f['rw'] else 'read'} at {f['port']:#x} size {f['size']} "
                          f"count {f['count']} val {f['val']:#x}"),
    "kvm_mmio": lambda f: f"mmio {f['type']} len {f['len']} gpa {f['gpa']:#x} val {f['val']:#x}",
    "kvm_inj_exception": lambda f: f"#PF ({f['error_code']:#x})" if f["exception"] == 14
    else f"vector {f['exception']}",
    "kvm_mmu_get_page": lambda f: mmu_page_printk(f) + (" new" if f.get("created") else " existing"),
    "kvm_mmu_prepare_zap_page": mmu_page_printk,
    "kvm_mmu_sync_page": mmu_page_printk,
    "kvm_mmu_unsync_page": mmu_page_printk,
    "kvm_tdp_mmu_spte_changed": lambda f: (f"as id {f['as_id']} gfn {f['gfn']:x} level {f['level']} "
                                           f"old_spte {f['old_spte']:x} new_spte {f['new_spte']:x}"),
    "kvm_mmu_set_spte": lambda f: (f"gfn {f['gfn']:x} spte {f['spte']:x} ({_rwx(f['spte'])}) "
                                   f"level {f['level']}"),
    "kvm_mmu_spte_requested": lambda f: f"gfn {f['gfn']:x} pfn {f['pfn']:x} level {f['level']}",
    "kvm_mmu_zap_all_fast": lambda f: (f"kvm_mmu_valid_gen {f['mmu_valid_gen']} "
                                       f"used_pages {f['mmu_used_pages']:x}"),
    "mark_mmio_spte": lambda f: f"gfn {f['gfn']:x} access {f['access']:x} gen {f['gen']:x}",
    "handle_mmio_page_fault": lambda f: f"addr:{f['addr']:x} gfn {f['gfn']:x} access {f['access']:x}",
    "check_mmio_spte": lambda f: (f"spte {f['spte']:x} kvm_gen {f['kvm_gen']:x} "
                                  f"spte-gen {f['spte_gen']:x} valid {int(f['kvm_gen'] == f['spte_gen'])}"),
    "kvm_mmu_pagetable_walk": lambda f: f"addr {f['addr']:x} pferr {f['pferr']:x}",
    "kvm_mmu_paging_element": lambda f: f"pte {f['pte']:x} level {f['level']}",
}


_HEX_KEYS = frozenset({"hpa", "gpa", "gfn", "base_gfn", "eptp", "spte", "old_spte", "new_spte",
                       "role", "cpu_role", "root_role", "addr", "rip", "guest_rip", "val",
                       "value", "data", "ecx"})


def format_value(key: str, v) -> str:
    """One field's value: hex for addresses, SPTEs and roles, decimal for counts."""
    return _plain(key, v)


def _plain(key: str, v) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)
    return hex(v) if key in _HEX_KEYS else str(v)


def format_fields(name: str, vcpu: int, fields: dict) -> str:
    fmt = FORMATS.get(name)
    if fmt is not None:
        try:
            return fmt(dict(fields, vcpu=vcpu))
        except (KeyError, TypeError, ValueError):
            pass
    return " ".join(f"{k}={_plain(k, v)}" for k, v in fields.items())
