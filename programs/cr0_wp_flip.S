# cr0_wp_flip: toggle CR0.WP with MOV to CR0, touching a working set between toggles
# (scenario S3: the grsecurity/PaX KERNEXEC pattern behind "KVM: MMU: performance tweaks
# for heavy CR0.WP users").
#
# What it shows: up to v5.18 WP was in the TDP root role, so each toggle switched roots
# and (with one vCPU) freed the old one; v6.1 unloads on every toggle; 01b31714bd90 (v6.4)
# only re-inits the MMU, and fb509f76acc8 makes WP guest-owned: no exit at all.
#
# Parameter: --arg N (RDX) = number of toggles; 0 means DEFAULT_TOGGLES.

	.intel_syntax noprefix

	.set WORKING_SET_PAGES, 16
	.set DEFAULT_TOGGLES, 1000
	.set DATA, 0x200000
	.set PAGE, 4096
	.set CR0_WP, 1 << 16

	.text
	.globl start
start:
	test	rdx, rdx
	jnz	1f
	mov	edx, DEFAULT_TOGGLES
1:	mov	rbx, rdx
	imul	r8, rdi, WORKING_SET_PAGES * PAGE
	add	r8, DATA
	mov	rax, cr0
toggle:
	xor	rax, CR0_WP
	mov	cr0, rax
	mov	rsi, r8
	mov	ecx, WORKING_SET_PAGES
touch:
	mov	[rsi], rbx
	add	rsi, PAGE
	dec	ecx
	jnz	touch
	dec	rbx
	jnz	toggle
	hlt
