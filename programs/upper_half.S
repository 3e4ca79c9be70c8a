# upper_half: a guest that moves itself into the upper canonical half the way a 64-bit
# kernel does, then loads, stores, calls, returns, pushes, pops, faults and IRETQs there.
# It maps all of RAM twice more: at KBASE = 0xffffffff80000000 (PML4 index 511, PDPT index
# 510: a kernel's text mapping) and at DMAP = 0xffff800000000000 (PML4 index 256, the first
# canonical upper-half address: a direct map), jumps to its KBASE alias, moves its stack
# and descriptor tables there, and runs probes whose faults a handler logs.
#
# What it shows: upper-half addresses are canonical (SDM Vol. 1 3.3.7.1: bits 63:47 all
# equal), so they fault only as paging says (#PF with CR2 = the address), and only the
# addresses between the two halves give #GP(0); a jump there faults on the jump itself.
#
# Parameter: none (--arg is ignored). Only vCPU 0 works; other vCPUs halt.
# Results: LOG holds the fault count, then (vector, error code, CR2, RIP) per fault;
# RESULTS holds the value each probe read (or FAULTED). Prints "upper_half: done" on port
# 0xE9 and halts.

	.intel_syntax noprefix

	.set KBASE, 0xffffffff80000000
	.set DMAP, 0xffff800000000000
	.set PML4, 0x1000			# the boot contract's tables
	.set PDPT, 0x2000
	.set PD, 0x3000
	.set IDT, 0x400000
	.set DTR, 0x401000			# IDTR, then GDTR, images for LIDT/LGDT
	.set LOG, 0x402000			# count, then (vector, error, cr2, rip) quads
	.set RESUME, 0x403000			# where the handler returns to
	.set RESULTS, 0x403100			# one quadword per probe
	.set PDPT_HI, 0x404000			# the new PDPT behind PML4[511]
	.set DATA, 0x405000
	.set STACK, 0x408000			# top of the upper-half stack (KBASE alias)
	.set GDT, 0x500				# the boot contract's GDT: 3 entries
	.set P, 1
	.set RW, 2
	.set FAULTED, 0xfa
	.set VALUE, 0x5eed1234abcd
	.set CONSOLE, 0xe9

# arm: the handler's continuation is 9f (an upper-half address); a fault leaves FAULTED
# in rax. record N stores rax in RESULTS + 8 * N. rbx holds KBASE throughout.
	.macro	arm
	lea	rax, [rip + 9f]
	mov	[rbx + RESUME], rax
	mov	eax, FAULTED
	.endm

	.macro	record n
	mov	[rbx + RESULTS + 8 * \n], rax
	.endm

	.text
	.globl start
start:
	test	rdi, rdi
	jnz	park
	# The two upper-half mappings, built through the identity map.
	mov	qword ptr [PDPT_HI + 510 * 8], PD + P + RW
	mov	qword ptr [PML4 + 511 * 8], PDPT_HI + P + RW
	mov	qword ptr [PML4 + 256 * 8], PDPT + P + RW
	mov	rbx, KBASE
	lea	rax, [rip + high]
	add	rax, rbx
	jmp	rax				# into the KBASE alias of the next instruction
high:
	lea	rsp, [rbx + STACK]
	call	setup_tables
	mov	rax, VALUE
	mov	[rbx + DATA], rax

	# 0: a store through KBASE is seen through the identity map
	mov	rax, [DATA]
	record	0
	# 1: and through the direct map at the first upper-half address
	mov	rcx, DMAP
	mov	rax, [rcx + DATA]
	record	1
	# 2: CALL and RET with the stack in the upper half
	call	twice
	record	2
	# 3: PUSH and POP there, and the pushed value is in memory at the new RSP
	push	rax
	mov	rcx, [rsp]
	pop	rax
	cmp	rax, rcx
	sete	al
	movzx	eax, al
	record	3

	# 4: a read of an upper-half address that is not mapped (PDPT index 511): #PF, not
	# present, read; CR2 is the address
	arm
	mov	rcx, 0xffffffffc0000000
	mov	rax, [rcx]
9:	record	4
	# 5: the same for a write: #PF, not present, write
	arm
	mov	rcx, 0xffffffffc0000000
	mov	qword ptr [rcx + 8], 1
9:	record	5
	# 6: the first address above the lower half is not canonical: #GP(0), no CR2
	arm
	mov	rcx, 0x0000800000000000
	mov	rax, [rcx]
9:	record	6
	# 7: nor is the last address below the upper half
	arm
	mov	rcx, 0xffff7fffffffffff
	mov	rax, [rcx]
9:	record	7
	# 8: a read that starts in the lower half and ends past it: #GP(0)
	arm
	mov	rcx, 0x00007ffffffffffc
	mov	rax, [rcx]
9:	record	8
	# 9: a jump to a non-canonical address faults on the jump (RIP stays on it)
	arm
	mov	rcx, 0x0000800000000000
	jmp	rcx
9:	record	9
	# 10: a jump to an unmapped upper-half address faults on the fetch there (#PF,
	# instruction fetch; RIP and CR2 are the target)
	arm
	mov	rcx, 0xffffffffc0000000
	jmp	rcx
9:	record	10
	# 11: a stack in the direct map (the DMAP alias of STACK)
	mov	rcx, rsp
	mov	rsp, DMAP + STACK
	push	0x77
	mov	rax, [STACK - 8]
	mov	rsp, rcx
	record	11

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

twice:
	lea	rax, [rax + rax]
	ret

# setup_tables: a 64-bit interrupt gate to each handler stub for #SS, #GP and #PF, at
# their upper-half addresses, then LIDT and LGDT with upper-half bases.
setup_tables:
	lea	rax, [rip + ss_stub]
	mov	ecx, 12
	call	set_gate
	lea	rax, [rip + gp_stub]
	mov	ecx, 13
	call	set_gate
	lea	rax, [rip + pf_stub]
	mov	ecx, 14
	call	set_gate
	mov	word ptr [rbx + DTR], 256 * 16 - 1
	lea	rax, [rbx + IDT]
	mov	[rbx + DTR + 2], rax
	lidt	[rbx + DTR]
	mov	word ptr [rbx + DTR + 16], 3 * 8 - 1
	lea	rax, [rbx + GDT]
	mov	[rbx + DTR + 18], rax
	lgdt	[rbx + DTR + 16]
	ret

# set_gate: IDT entry rcx -> handler rax (selector 0x08, present, DPL 0, interrupt gate)
set_gate:
	shl	ecx, 4
	lea	rdi, [rbx + IDT + rcx]
	mov	rdx, rax
	and	edx, 0xffff			# offset 15:0
	or	rdx, 0x08 << 16			# selector
	mov	r8, 0x8e
	shl	r8, 40
	or	rdx, r8
	mov	r8, rax
	shr	r8, 16
	and	r8d, 0xffff			# offset 31:16
	shl	r8, 48
	or	rdx, r8
	mov	[rdi], rdx
	shr	rax, 32
	mov	[rdi + 8], rax
	ret

ss_stub:
	push	12
	jmp	handler
gp_stub:
	push	13
	jmp	handler
pf_stub:
	push	14
	jmp	handler

# handler: log (vector, error code, CR2, RIP), return to [RESUME] with rax = FAULTED.
# The frame: [rsp] vector, [rsp + 8] error code, [rsp + 16] RIP.
handler:
	push	rdx
	push	rcx
	mov	rdx, [rbx + LOG]
	shl	rdx, 5
	lea	rdx, [rbx + LOG + 8 + rdx]
	mov	rcx, [rsp + 16]
	mov	[rdx], rcx
	mov	rcx, [rsp + 24]
	mov	[rdx + 8], rcx
	mov	rcx, cr2
	mov	[rdx + 16], rcx
	mov	rcx, [rsp + 32]
	mov	[rdx + 24], rcx
	inc	qword ptr [rbx + LOG]
	mov	rcx, [rbx + RESUME]
	mov	[rsp + 32], rcx			# the saved RIP
	pop	rcx
	pop	rdx
	add	rsp, 16				# drop the vector and the error code
	mov	eax, FAULTED
	iretq

message:
	.ascii	"upper_half: done\n"
message_end:
