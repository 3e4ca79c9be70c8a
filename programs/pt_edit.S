# pt_edit: a guest that edits its own page tables and records what it sees: it maps a new
# page (a new page table under an empty PDE), changes a PTE's frame, makes it read-only,
# sets and clears its U bit (visible at CPL 0 through SMAP and SMEP), clears its P bit,
# remaps a page through a last-level table that is already in use, builds a second
# page directory and rewrites one of its unused entries a few times in a row; INVLPG (or a CR3 reload) after each change that needs
# one, as the SDM requires. A #PF handler logs each fault (error code, CR2) and resumes
# at the probe's continuation.
#
# What it shows: the guest sees the same values and the same page faults whoever
# translates its addresses. On bare hardware and under EPT the CPU walks these tables;
# under shadow paging (--kvm shadow) KVM does: the upper-level tables are write-protected
# and every write to them is emulated (kvm_mmu_track_write zaps the shadow entry; the
# repeated writes to the second directory trip write-flooding detection), the last-level table goes unsync
# on the first write and INVLPG syncs the entry, and KVM's page-fault handler injects
# exactly the #PF the hardware would have raised (tests/kvm/test_shadow.py checks this
# instruction by instruction against v6.12).
#
# Parameter: none (--arg is ignored). Only vCPU 0 works; other vCPUs halt.
# Results: LOG holds the fault count, then (error code, CR2) pairs; RESULTS holds the
# value each probe read (or FAULTED). Prints "pt_edit: done" on port 0xE9 and halts.

	.intel_syntax noprefix

	.set PAGE, 4096
	.set IDT, 0x20000
	.set IDTR, 0x1fff0
	.set LOG, 0x21000			# count, then (error code, cr2) pairs
	.set RESUME, 0x22000			# where the #PF handler returns to
	.set RESULTS, 0x22100			# one quadword per probe
	.set PML4, 0x1000			# the boot contract's tables
	.set PDPT, 0x2000
	.set PD, 0x3000
	.set PT1, 0x5000			# maps 0x200000-0x3fffff
	.set DATA_A, 0x300000
	.set DATA_B, 0x301000
	.set PTE_DATA_B, PT1 + ((DATA_B - 0x200000) / PAGE) * 8
	.set NEW_PT, 0x500000			# a fresh page, made a page table below
	.set NEW_VA, 0x1200000			# PD index 9: not mapped at boot
	.set NEW_VA2, NEW_VA + PAGE
	.set NEW_PD, 0x501000
	.set NEW_PT2, 0x502000
	.set FAR_VA, 0x40000000			# PDPT index 1: not mapped at boot
	.set P, 1
	.set RW, 2
	.set US, 4
	.set CR4_SMEP, 1 << 20
	.set CR4_SMAP, 1 << 21
	.set RFLAGS_AC, 1 << 18
	.set FAULTED, 0xfa
	.set VALUE_A, 0x1111aaaa
	.set VALUE_B, 0x2222bbbb
	.set CONSOLE, 0xe9

# probe N, SETUP...: run the access after it with the handler's continuation at 9f; a
# fault leaves FAULTED in rax. The caller stores rax in RESULTS + 8 * N afterwards.
	.macro	arm
	lea	rax, [rip + 9f]
	mov	[RESUME], rax
	mov	eax, FAULTED
	.endm

	.macro	record n
	mov	[RESULTS + 8 * \n], rax
	.endm

	.text
	.globl start
start:
	test	rdi, rdi
	jnz	park
	call	setup_idt
	mov	qword ptr [DATA_A], VALUE_A
	mov	qword ptr [DATA_B], VALUE_B

	# 0: the new address is not mapped yet: #PF, not present, read
	arm
	mov	rax, [NEW_VA]
9:	record	0

	# 1: map it: a new page table (a plain data page until now) under an empty PDE
	mov	qword ptr [NEW_PT], DATA_B + P + RW
	mov	qword ptr [PD + 9 * 8], NEW_PT + P + RW
	arm
	mov	rax, [NEW_VA]
9:	record	1
	mov	qword ptr [NEW_VA], 0x33	# written through the new mapping ...
	mov	rax, [DATA_B]			# ... and seen through the identity map
	record	2

	# 3: point the PTE at another frame; INVLPG
	mov	qword ptr [NEW_PT], DATA_A + P + RW
	invlpg	[NEW_VA]
	arm
	mov	rax, [NEW_VA]
9:	record	3

	# 4: read-only: a write faults (present, write)
	mov	qword ptr [NEW_PT], DATA_A + P
	invlpg	[NEW_VA]
	arm
	mov	qword ptr [NEW_VA], 0x44
	mov	rax, [NEW_VA]
9:	record	4

	# 5-7: a user page (U in every level; a CR3 reload flushes the upper levels' change)
	or	qword ptr [PML4], US
	or	qword ptr [PDPT], US
	or	qword ptr [PD + 9 * 8], US
	mov	qword ptr [NEW_PT], DATA_A + P + RW + US
	mov	rax, cr3
	mov	cr3, rax
	mov	rax, cr4
	or	rax, CR4_SMAP
	mov	cr4, rax
	arm
	mov	rax, [NEW_VA]			# SMAP, AC clear: present, read
9:	record	5
	pushfq
	or	qword ptr [rsp], RFLAGS_AC
	popfq
	arm
	mov	rax, [NEW_VA]			# AC set: allowed
9:	record	6
	pushfq
	and	qword ptr [rsp], ~RFLAGS_AC
	popfq
	mov	qword ptr [NEW_PT], DATA_A + P + RW	# U cleared again
	invlpg	[NEW_VA]
	arm
	mov	rax, [NEW_VA]			# a supervisor page: allowed
9:	record	7

	# 8-9: SMEP: a user page holding code (mov eax, 0x1234; jmp rcx)
	mov	rax, 0xe1ff00001234b8
	mov	[DATA_B], rax
	mov	qword ptr [NEW_PT + 8], DATA_B + P + RW + US
	mov	rax, cr4
	or	rax, CR4_SMEP
	mov	cr4, rax
	lea	rcx, [rip + 8f]
	mov	edx, NEW_VA2
	arm
	jmp	rdx				# a supervisor fetch from a user page
8:
9:	record	8
	mov	qword ptr [NEW_PT + 8], DATA_B + P + RW
	invlpg	[NEW_VA2]
	lea	rcx, [rip + 8f]
	mov	edx, NEW_VA2
	arm
	jmp	rdx				# now a supervisor page: runs, comes back
8:
9:	record	9

	# 10: P cleared: not present again
	mov	qword ptr [NEW_PT], 0
	invlpg	[NEW_VA]
	arm
	mov	rax, [NEW_VA]
9:	record	10

	# 11: remap a page through a last-level table in use since boot
	mov	rax, [DATA_B]			# the translation is in use
	mov	qword ptr [PTE_DATA_B], DATA_A + P + RW
	invlpg	[DATA_B]
	mov	rax, [DATA_B]			# now DATA_A's contents
	record	11
	mov	qword ptr [PTE_DATA_B], DATA_B + P + RW
	invlpg	[DATA_B]
	mov	rax, [DATA_B]
	record	12

	# 13: a second page directory: PDPT[1] -> NEW_PD -> NEW_PT2 -> DATA_A at FAR_VA
	mov	qword ptr [NEW_PT2], DATA_A + P + RW
	mov	qword ptr [NEW_PD], NEW_PT2 + P + RW
	mov	qword ptr [PDPT + 8], NEW_PD + P + RW
	mov	rax, [FAR_VA]
	record	13

	# 14: an unused entry of that directory rewritten several times in a row (write
	# flooding: the directory is not used in between), then FAR_VA again
	mov	ecx, 4
1:	mov	qword ptr [NEW_PD + 5 * 8], NEW_PT2 + P + RW
	mov	qword ptr [NEW_PD + 5 * 8], 0
	dec	ecx
	jnz	1b
	mov	rax, [FAR_VA]
	record	14

	mov	rbx, [LOG]			# the fault count, for the register trace
	lea	rsi, [rip + message]
	mov	ecx, message_end - message
print:
	mov	al, [rsi]
	out	CONSOLE, al
	inc	rsi
	dec	ecx
	jnz	print
park:
	hlt
	jmp	park

# setup_idt: a 64-bit interrupt gate for #PF (vector 14) to pf_handler, and LIDT.
setup_idt:
	lea	rax, [rip + pf_handler]
	mov	rdx, rax
	and	edx, 0xffff			# offset 15:0
	or	rdx, 0x08 << 16			# selector
	mov	r8, 0x8e			# present, DPL 0, interrupt gate
	shl	r8, 40
	or	rdx, r8
	mov	r8, rax
	shr	r8, 16
	and	r8d, 0xffff			# offset 31:16
	shl	r8, 48
	or	rdx, r8
	mov	[IDT + 14 * 16], rdx
	shr	rax, 32
	mov	[IDT + 14 * 16 + 8], rax
	mov	word ptr [IDTR], 256 * 16 - 1
	mov	qword ptr [IDTR + 2], IDT
	lidt	[IDTR]
	ret

# pf_handler: log (error code, CR2), return to [RESUME] with rax = FAULTED.
pf_handler:
	push	rbx
	mov	rbx, [LOG]
	shl	rbx, 4
	mov	rax, [rsp + 8]			# the error code
	mov	[LOG + 8 + rbx], rax
	mov	rax, cr2
	mov	[LOG + 16 + rbx], rax
	inc	qword ptr [LOG]
	mov	rax, [RESUME]
	mov	[rsp + 16], rax			# the saved RIP
	mov	eax, FAULTED
	pop	rbx
	add	rsp, 8				# drop the error code
	iretq

message:
	.ascii	"pt_edit: done\n"
message_end:
