"""KVM's own x86 ABI constants: page-fault error codes (PFERR_*, kvm_host.h, the #PF error
code of SDM Vol. 3A 4.7), the access bits of MMU roles and shadow pages (ACC_*, mmu.h),
and the vCPU requests (KVM_REQ_*, kvm_host.h; strings here, so traces name them)."""

PFERR_PRESENT = 1 << 0
PFERR_WRITE = 1 << 1
PFERR_USER = 1 << 2
PFERR_RSVD = 1 << 3
PFERR_FETCH = 1 << 4
PFERR_PK = 1 << 5

ACC_EXEC, ACC_WRITE, ACC_USER = 1, 2, 4
ACC_ALL = ACC_EXEC | ACC_WRITE | ACC_USER

KVM_REQ_TLB_FLUSH = "KVM_REQ_TLB_FLUSH"
KVM_REQ_TLB_FLUSH_CURRENT = "KVM_REQ_TLB_FLUSH_CURRENT"
KVM_REQ_TLB_FLUSH_GUEST = "KVM_REQ_TLB_FLUSH_GUEST"
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"
KVM_REQ_MMU_RELOAD = "KVM_REQ_MMU_RELOAD"
KVM_REQ_MMU_SYNC = "KVM_REQ_MMU_SYNC"
KVM_REQ_LOAD_MMU_PGD = "KVM_REQ_LOAD_MMU_PGD"
KVM_REQ_SMI = "KVM_REQ_SMI"

# Root levels of a guest's paging mode (mmu.h): 32-bit paging, PAE paging, 4-level paging.
PT32_ROOT_LEVEL = 2
PT32E_ROOT_LEVEL = 3
PT64_ROOT_4LEVEL = 4
