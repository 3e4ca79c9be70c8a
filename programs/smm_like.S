# smm_like: raise an SMI through the APM control port (0xB2) in a loop, touching a working
# set between SMIs (scenario S7: Jeremi Piotrowski's Hyper-V/WSL report behind edbdb43fc96b).
#
# What it shows: entering and leaving SMM changes role.smm, so KVM resets the MMU context
# twice per SMI. Up to v6.3 a single vCPU frees its normal root on every SMI and its SMM
# root on every RSM, and both are rebuilt; from v6.4 both roots persist. The SMM handler
# itself is not guest code here: kvmdbg models it as a fixed cost (cost smm_transition).
#
# Parameter: --arg N (RDX) = number of SMIs; 0 means DEFAULT_SMIS.

	.intel_syntax noprefix

	.set WORKING_SET_PAGES, 16
	.set DEFAULT_SMIS, 100
	.set DATA, 0x200000
	.set PAGE, 4096
	.set APM_CNT, 0xb2

	.text
	.globl start
start:
	test	rdx, rdx
	jnz	1f
	mov	edx, DEFAULT_SMIS
1:	mov	rbx, rdx
smi:
	xor	eax, eax
	out	APM_CNT, al
	mov	rsi, DATA
	mov	ecx, WORKING_SET_PAGES
touch:
	mov	[rsi], rbx
	add	rsi, PAGE
	dec	ecx
	jnz	touch
	dec	rbx
	jnz	smi
	hlt
