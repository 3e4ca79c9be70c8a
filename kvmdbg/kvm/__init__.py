"""The KVM side: the VM and its vCPUs (the CpuOps the CPU talks to), the boot contract."""
