"""The KVM model's views: normal output checked against the model's own state (which the
scenario tests check against the spec), and errors as one line."""

import re

from tests.debug.util import run, smep


def stopped(kvm="v6.12", arg=3, steps=None):
    s = smep(kvm=kvm, arg=arg)
    if steps:
        run(s, f"stepi {steps}")
    else:
        run(s, "continue")
    return s


def test_info_roots_and_root_describe_the_live_roots():
    s = stopped()
    rows = run(s, "info roots")
    assert rows[0].split()[:6] == ["#", "hpa", "refs", "state", "sptes", "tables"]
    root = s.vm.vcpus[0].mmu.root.sp
    leaves, tables = s.vm.tdp_mmu.count_sptes(root)
    assert rows[1].split()[:7] == ["*", "1", f"{root.hpa:#x}", "2", "valid", str(leaves), str(tables)]
    assert rows[1].rstrip().endswith("vcpu0")
    detail = run(s, "info root 1")
    assert detail[0].startswith(f"root #1: hpa {root.hpa:#x}, valid, refs 2")
    assert "    direct           1" in detail and "    cr0_wp           1" in detail
    assert run(s, "info root 9") == ['No root #9. "info roots" lists them.']
    assert run(s, "info root") == ["Argument required (a root number).  Usage: info root N"]


def test_freed_roots_are_gone_and_v5_15_allocates_one_per_flip():
    s = stopped(kvm="v5.15")
    rows = run(s, "info roots")
    assert len(rows) == 2 and rows[1].split()[1] == "4"          # 3 flips: root #4 is live


def test_info_spte_and_sptes_follow_the_tables():
    s = stopped()
    lines = run(s, "info spte 0x200000")
    assert lines[0].startswith("gfn 0x200 in root #1")
    assert [ln.split()[0] for ln in lines[1:5]] == ["l4", "l3", "l2", "l1"]
    assert "leaf" in lines[4] and lines[5].startswith("  -> hpa 0x")
    assert run(s, "info spte gfn:0x200") == lines
    assert run(s, "info spte gpa:0x200000") == lines
    assert run(s, "info spte gfn:0x7000")[-1] == "  -> not mapped: an access takes an EPT violation exit"
    rows = run(s, "info sptes gfn:0x200-0x20f")
    assert len(rows) == 17 and rows[-1] == "16 leaf SPTEs."
    assert all(re.match(r"gfn 0x2[0-9a-f]{2} spte 0x[0-9a-f]+ \(r w x\) level 1$", r) for r in rows[:-1])
    assert run(s, "info spte") == ["Argument required (an address).  Usage: info spte ADDR [ROOT]"]


def test_info_tlb_and_stale_entries():
    s = stopped(steps=40)
    tlb = run(s, "info tlb")
    assert any(" va 0x200000 -> gpa 0x200000 " in ln for ln in tlb)
    assert run(s, "info tlb --stale") == ["No stale TLB entries."]
    # Remap the guest page behind the TLB's back: the cached translation is now stale.
    s.execute("set *(u64*)gpa:0x5000 = 0x300063")
    assert any("guest now maps gpa 0x300000" in ln for ln in run(s, "info tlb --stale"))
    assert run(s, "info tlb --bogus") == ['Unknown option "--bogus".  Usage: info tlb [--stale]']


def test_info_mmu_memslots_kvm_costs():
    s = stopped()
    mmu = run(s, "info mmu")
    assert mmu[0].startswith("cpu_role  base 0x")
    assert "cr4_smep=1" in mmu[2]                                 # 3 flips: SMEP ends on
    assert mmu[3].startswith("root_role 0x") and "direct" in mmu[3]
    assert run(s, "info memslots")[2].split() == ["0", "0", "0x0", "4096", "0x7f0000000000", "-"]
    # info kvm (design section 6): the profile, then each knob with its value, one line
    # each. Which knobs a profile has is checked against the design in test_mmu_units.py.
    kvm = run(s, "info kvm")
    assert kvm[0] == f"profile v6.12: {s.vm.profile.summary}"
    shown = dict(line.split()[:2] for line in kvm[1:])
    assert len(shown) == len(kvm) - 1 and set(shown) == set(s.vm.profile.knobs())
    # Spec section 1: v6.12 is v6.6 (roots kept, edbdb43fc96b; invalidated roots zapped
    # synchronously, 0df9dab891ff) with the SLOT_ZAP_ALL quirk, on by default.
    assert {k: shown[k] for k in ("tdp_enabled", "tdp_mmu", "tdp_put_last_ref", "invalid_root_zap",
                                  "slot_zap_all", "rfc_skip_post_set_cr4")} == {
        "tdp_enabled": "1", "tdp_mmu": "1", "tdp_put_last_ref": "keep", "invalid_root_zap": "sync",
        "slot_zap_all": "1", "rfc_skip_post_set_cr4": "0"}
    costs = run(s, "info costs")
    assert costs[0].split()[:2] == ["insn", "1"] and any(c.startswith("vmexit") for c in costs)


def test_info_events_and_stats():
    s = stopped(kvm="v5.15")
    assert len(run(s, "info events")) == 20
    zaps = run(s, "info events -n 100 root-zap")
    assert len(zaps) == 3 and all("kvmdbg:root_zap" in z for z in zaps)
    assert run(s, "info events nosuchevent") == ["No nosuchevent events recorded."]
    stats = run(s, "info stats ^kvmdbg_roots")
    assert stats[1].split() == ["kvmdbg_roots_allocated", "4", "+4"]
    assert stats[2].split() == ["kvmdbg_roots_freed", "3", "+3"]
    assert run(s, "info stats (") [0].startswith('Invalid regular expression "("')


def test_set_kvm_and_set_cost():
    s = smep(kvm="v6.1", arg=3)
    assert run(s, "set kvm tdp_put_last_ref keep") == ["tdp_put_last_ref = keep"]
    run(s, "continue")
    assert s.vm.stats["kvmdbg_roots_allocated"] == 1              # kept from then on
    assert run(s, "set kvm tdp_mmu 0") == [
        "Knob 'tdp_mmu' shapes the VM as it is built; restart with --set tdp_mmu=0."]
    assert run(s, "set kvm nosuch 1")[0].startswith("unknown knob 'nosuch'")
    assert run(s, "set cost vmexit 2000") == ["cost vmexit = 2000"]
    assert s.vm.costs["vmexit"] == 2000
    assert run(s, "set cost nosuch 1") == ["No cost named 'nosuch'; \"info costs\" lists them."]


def test_set_profile_then_starti_rebuilds_under_it():
    s = smep(arg=3)
    run(s, "set profile v5.15", "starti", "continue")
    assert s.vm.profile.name == "v5.15" and s.vm.stats["kvmdbg_roots_allocated"] == 4
    assert run(s, "set profile nope")[0].startswith("unknown KVM profile 'nope'")


def test_compare_in_the_repl():
    s = smep(arg=5)
    table = run(s, "compare v5.15 v6.12")
    assert table[0].split() == ["v5.15", "v6.12", "v6.12/v5.15"]
    rows = {ln[:24].strip(): ln[24:].split() for ln in table[1:]}
    assert rows["roots allocated"][:2] == ["6", "1"] and rows["CR4 writes"][:2] == ["5", "5"]
    assert s.vm.vcpus[0].cpu.steps == 0                           # the session's VM untouched
    assert run(s, "compare v5.15") == ["Two profiles or more are needed.  Usage: "
                                       "compare PROFILE_A PROFILE_B [PROFILE...] [STEPS]"]
