"""KVM's MMU, mirroring arch/x86/kvm/mmu/: roles, SPTEs, the TDP MMU, roots, page faults.

It sees a vCPU only through the fields the kvm layer gives it (duck typing), and
never imports the CPU model: the CPU and KVM meet in kvm/.
"""
