"""The x86-64 subset interpreter: the guest's CPU, including its page walker and TLB.

It knows nothing of KVM: control-register writes, port I/O, HLT, CPUID, VMCALL and
every guest-physical access go through a CpuOps object (cpu/ops.py) that the kvm
layer implements, as KVM's emulator reaches the vCPU through x86_emulate_ops.
"""
