# smep_flip_2vcpu: vCPU 1 halts while vCPU 0 flips CR4.SMEP; after half its flips vCPU 0
# kicks vCPU 1 and both flip (scenario S2 of kvm-mmu-spec, the "until Linux brings up its
# second vCPU" moment of the thread).
#
# What it shows: on KVMs that free a root at its last put (v5.10..v6.3) a halted vCPU
# that still holds the root keeps it alive, so vCPU 0's flips are cheap ("two vCPUs suck
# less"); once both flip, the root dies whenever both are between unload and reload.
# From v6.4 (edbdb43fc96b) one and two vCPUs behave the same.
#
# Parameter: --arg N (RDX) = flips per vCPU; 0 means DEFAULT_FLIPS. Run with --vcpus 2.
# Markers (port 0x512): 1 when vCPU 0 starts alone, 2 when it kicks vCPU 1.

	.intel_syntax noprefix

	.set WORKING_SET_PAGES, 16
	.set DEFAULT_FLIPS, 1000
	.set DATA, 0x200000
	.set PAGE, 4096
	.set CR4_SMEP, 1 << 20
	.set PORT_MARKER, 0x512
	.set PORT_KICK, 0x513

	.text
	.globl start
start:
	test	rdx, rdx
	jnz	1f
	mov	edx, DEFAULT_FLIPS
1:	mov	r12, rdx			# flips for this vCPU
	imul	r8, rdi, WORKING_SET_PAGES * PAGE
	add	r8, DATA			# this vCPU's working set
	test	rdi, rdi
	jnz	second

first:
	mov	eax, 1
	mov	dx, PORT_MARKER
	out	dx, eax
	mov	rbx, r12
	shr	rbx, 1				# the first half alone
	call	flips
	mov	eax, 2
	mov	dx, PORT_MARKER
	out	dx, eax
	mov	eax, 1
	mov	dx, PORT_KICK
	out	dx, eax				# wake vCPU 1
	mov	rbx, r12
	shr	rbx, 1
	call	flips				# the second half together
	hlt

second:
	hlt					# until vCPU 0 kicks us
	mov	rbx, r12
	shr	rbx, 1
	call	flips
	hlt

# flips: RBX times, flip CR4.SMEP and touch this vCPU's working set.
flips:
	test	rbx, rbx
	jz	3f
	mov	rax, cr4
flip:
	xor	rax, CR4_SMEP
	mov	cr4, rax
	mov	rsi, r8
	mov	ecx, WORKING_SET_PAGES
touch:
	mov	[rsi], rbx
	add	rsi, PAGE
	dec	ecx
	jnz	touch
	dec	rbx
	jnz	flip
3:	ret
