# smep_flip: flip CR4.SMEP with MOV to CR4, touching a working set between flips.
#
# What it shows: the guest pattern of the LKML thread "[RFC] KVM: x86: Don't wipe
# TDP MMU when guest sets %cr4" (the Xen PV shim toggles SMEP on every guest/host
# transition). Each flip is a CR-access exit; on KVMs that free the root on unload
# (v5.10..v6.3 with one vCPU) every flip throws away the EPT, and the working set
# refaults after it.
#
# Parameter: --arg N (RDX). Bits 31:0 = number of flips (0 means DEFAULT_FLIPS);
# bits 63:32 = working-set pages (0 means WORKING_SET_PAGES), e.g. --arg 0x4000001000
# for 4096 flips over 64 pages. Each vCPU touches its own pages starting at
# DATA + vcpu_index * pages * 4096, then prints "done" on port 0xE9 and halts.

	.intel_syntax noprefix

	.set WORKING_SET_PAGES, 16
	.set DEFAULT_FLIPS, 100000
	.set DATA, 0x200000
	.set PAGE, 4096
	.set CR4_SMEP, 1 << 20
	.set CONSOLE, 0xe9

	.text
	.globl start
start:
	mov	r9, rdx
	shr	r9, 32				# working-set pages
	jnz	2f
	mov	r9d, WORKING_SET_PAGES
2:	mov	edx, edx			# flips: the low 32 bits
	test	rdx, rdx
	jnz	1f
	mov	edx, DEFAULT_FLIPS
1:	mov	rbx, rdx			# flips left
	mov	r8, r9
	shl	r8, 12
	imul	r8, rdi
	add	r8, DATA			# this vCPU's working set
	mov	rax, cr4

flip:
	xor	rax, CR4_SMEP
	mov	cr4, rax

	mov	rsi, r8
	mov	ecx, r9d
touch:
	mov	[rsi], rbx
	add	rsi, PAGE
	dec	ecx
	jnz	touch

	dec	rbx
	jnz	flip

done:
	lea	rsi, [rip + message]
	mov	ecx, message_end - message
print:
	mov	al, [rsi]
	out	CONSOLE, al
	inc	rsi
	dec	ecx
	jnz	print
	hlt
	jmp	done

message:
	.ascii	"smep_flip: done\n"
message_end:
