"""Architecture and kernel-ABI constants, each defined once, at the bottom of the layers.

Named after the headers that define them: processor_flags (RFLAGS, CR0, CR4), msr_index
(EFER and the MSRs), pgtable_types (x86 paging-structure entries), vmx (EPT entries),
kvm_host (page-fault error codes, access bits, vCPU requests). Every layer imports them
from here; nothing in kvmdbg/arch imports anything but kvmdbg.bits.
"""
