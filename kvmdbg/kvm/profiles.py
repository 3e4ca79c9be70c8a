"""KVM behaviour profiles: frozen knob sets, one per kernel era (design section 6).

Each knob is one upstream change (kvm-mmu-spec section 1). Behaviour is chosen
from the profile once, when a VM is built (KVM's own ops-table idea), never by
version checks on hot paths.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from kvmdbg.errors import ConfigError

PUT_SYNC_ZAP, PUT_ASYNC_ZAP, PUT_KEEP = "sync_zap", "async_zap", "keep"
ZAP_WORKQUEUE, ZAP_SYNC = "workqueue", "sync"


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    tdp_enabled: bool = True
    tdp_mmu: bool = True
    # TDP root role carries guest CR0.WP and EFER.NX (before the 2022 cpu_role/root_role split).
    tdp_root_role_has_guest_bits: bool = False
    # What the last vCPU put of a TDP root does (4.5).
    tdp_put_last_ref: str = PUT_KEEP
    # How roots invalidated by kvm_mmu_zap_all_fast are zapped (4.5, 0df9dab891ff).
    invalid_root_zap: str = ZAP_SYNC
    # Zapping invalidated roots flushes remote TLBs once per top-level SPTE it zaps
    # (tdp_mmu_zap_spte_atomic, v5.13-v5.17); dropped in v5.18 (Sean Christopherson's
    # "KVM: x86/mmu: Document that zapping invalidated roots doesn't need to flush" series).
    invalid_root_zap_flush: bool = False
    # kvm_post_set_cr4 requests TLB flushes separately from the MMU reset (f4bc051fc91a);
    # off: PGE is an MMU role bit and PGE/PCIDE changes reset the MMU (pre-Lai, <= v5.15).
    cr4_flush_split: bool = True
    # A WP-only CR0 change with TDP only re-inits the MMU, no unload (01b31714bd90).
    cr0_wp_no_unload: bool = True
    # CR0.WP is guest-owned with EPT: no exit, lazy cpu_role refresh (fb509f76acc8, cf9f4c0eb169).
    cr0_wp_guest_owned: bool = True
    # Hypothetical: CR4.SMEP guest-owned with EPT (suggested in the thread, never merged).
    cr4_smep_guest_owned: bool = False
    # KVM_X86_QUIRK_SLOT_ZAP_ALL: memslot DELETE/MOVE zaps every root (on), or only the slot (off).
    slot_zap_all: bool = True
    # The RFC patch of the thread: skip kvm_post_set_cr4 when the TDP MMU is on (fast, wrong).
    rfc_skip_post_set_cr4: bool = False
    # Huge pages in the TDP MMU (off by default so SPTE counts stay easy to reason about).
    huge_pages: bool = False

    def knobs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "summary")}


KNOB_HELP = {
    "tdp_enabled": "EPT on (module param ept); off = shadow paging",
    "tdp_mmu": "TDP MMU (module param tdp_mmu); off = legacy direct MMU, roots kept in a hash",
    "tdp_root_role_has_guest_bits": "TDP root role includes CR0.WP and EFER.NX (<= v5.18)",
    "tdp_put_last_ref": "last vCPU put of a TDP root: sync_zap | async_zap | keep (edbdb43fc96b)",
    "invalid_root_zap": "invalidated roots zapped by: workqueue | sync (0df9dab891ff)",
    "invalid_root_zap_flush": "zapping invalidated roots flushes remote TLBs (<= v5.17)",
    "cr4_flush_split": "kvm_post_set_cr4 flushes separately from the MMU reset (f4bc051fc91a)",
    "cr0_wp_no_unload": "WP-only CR0 change: kvm_init_mmu only, no unload (01b31714bd90)",
    "cr0_wp_guest_owned": "CR0.WP guest-owned with EPT, lazy refresh (fb509f76acc8, cf9f4c0eb169)",
    "cr4_smep_guest_owned": "hypothetical: CR4.SMEP guest-owned with EPT (never merged)",
    "slot_zap_all": "KVM_X86_QUIRK_SLOT_ZAP_ALL: memslot delete/move zaps all roots",
    "rfc_skip_post_set_cr4": "the RFC patch: skip kvm_post_set_cr4 with the TDP MMU (wrong)",
    "huge_pages": "allow 2 MiB / 1 GiB TDP leaves when the memslot and host mapping allow",
}

V5_10 = Profile(
    "v5.10", "TDP MMU (opt-in then); WP/NX in the TDP role; vCPU zaps freed roots; PGE a role bit",
    tdp_mmu=True, tdp_root_role_has_guest_bits=True, tdp_put_last_ref=PUT_SYNC_ZAP,
    invalid_root_zap=ZAP_SYNC, invalid_root_zap_flush=True, cr4_flush_split=False,
    cr0_wp_no_unload=False, cr0_wp_guest_owned=False, slot_zap_all=True)
V5_15 = replace(
    V5_10, name="v5.15",
    summary="TDP MMU on by default (v5.14); roots freed and zapped by the vCPU on last put")
V6_1 = replace(
    V5_15, name="v6.1", tdp_root_role_has_guest_bits=False, tdp_put_last_ref=PUT_ASYNC_ZAP,
    invalid_root_zap=ZAP_WORKQUEUE, invalid_root_zap_flush=False, cr4_flush_split=True,
    summary="cpu_role/root_role split; async zap on a workqueue (22b94c4b63eb); flush split (f4bc051fc91a)")
V6_4 = replace(
    V6_1, name="v6.4", tdp_put_last_ref=PUT_KEEP, cr0_wp_no_unload=True, cr0_wp_guest_owned=True,
    summary="roots kept until invalidated (edbdb43fc96b); CR0.WP no unload / guest-owned (01b31714bd90, fb509f76acc8)")
V6_6 = replace(
    V6_4, name="v6.6", invalid_root_zap=ZAP_SYNC,
    summary="v6.4 + invalidated roots zapped synchronously by the memslot update (0df9dab891ff)")
V6_12 = replace(
    V6_6, name="v6.12",
    summary="v6.6 + KVM_X86_QUIRK_SLOT_ZAP_ALL (on by default; off zaps only the slot's leaves)")
RFC = replace(
    V5_15, name="rfc-skip-post-set-cr4", rfc_skip_post_set_cr4=True,
    summary="v5.15 + the RFC patch: kvm_post_set_cr4 skipped under the TDP MMU (fast and wrong)")
SMEP_OWNED = replace(
    V6_6, name="smep-guest-owned", cr4_smep_guest_owned=True,
    summary="hypothetical: v6.6 with CR4.SMEP guest-owned under EPT (no exit on SMEP flips)")
LEGACY = replace(
    V6_12, name="legacy-mmu", tdp_mmu=False,
    summary="v6.12 with tdp_mmu=0: legacy direct MMU, roots live in the hash and survive unload")
SHADOW = replace(
    V6_12, name="shadow", tdp_enabled=False, tdp_mmu=False, cr0_wp_guest_owned=False,
    summary="v6.12 with ept=0: shadow paging; shadow pages by (gfn, role), write tracking, unsync")

PROFILES = {p.name: p for p in (V5_10, V5_15, V6_1, V6_4, V6_6, V6_12, RFC, SMEP_OWNED, LEGACY, SHADOW)}
DEFAULT = "v6.12"

_CHOICES = {"tdp_put_last_ref": (PUT_SYNC_ZAP, PUT_ASYNC_ZAP, PUT_KEEP),
            "invalid_root_zap": (ZAP_WORKQUEUE, ZAP_SYNC)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown KVM profile '{name}'; valid: {', '.join(PROFILES)}") from None


def with_knob(profile: Profile, assignment: str) -> Profile:
    """profile with one 'KNOB=VALUE' applied (the --set option)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KNOB=VALUE, got '{assignment}'")
    knob, value = (x.strip() for x in assignment.split("=", 1))
    knobs = profile.knobs()
    if knob not in knobs:
        raise ConfigError(f"unknown knob '{knob}'; valid: {', '.join(knobs)}")
    current = knobs[knob]
    if isinstance(current, bool):
        v = value.lower()
        if v in ("1", "true", "on", "yes", "y"):
            new = True
        elif v in ("0", "false", "off", "no", "n"):
            new = False
        else:
            raise ConfigError(f"knob '{knob}' takes 0 or 1, got '{value}'")
    else:
        if value not in _CHOICES[knob]:
            raise ConfigError(f"knob '{knob}' takes one of {', '.join(_CHOICES[knob])}, got '{value}'")
        new = value
    return replace(profile, **{knob: new}, name=f"{profile.name}+{knob}={value}")
