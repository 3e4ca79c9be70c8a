# pvshim: two contexts with page tables of their own, switching CR3 and CR4.SMEP on every
# transition and touching a working set in each (the Xen PV shim pattern of the LKML thread
# "[RFC] KVM: x86: Don't wipe TDP MMU when guest sets %cr4": the shim runs with SMEP on and
# its own tables, the PV guest kernel it hosts with SMEP off and the guest's tables).
#
# What it shows: under EPT a MOV to CR3 takes no exit (KVM does not intercept it), so only
# the SMEP flips reach KVM; on KVMs that free the root at its last put (v5.10..v6.3 with one
# vCPU) each transition throws the EPT away and both working sets and both sets of guest
# page tables refault; from v6.4 (edbdb43fc96b) one root serves the whole run and nothing
# faults after the first round trip. Under shadow paging every CR3 write would exit too.
#
# Under shadow paging (--kvm shadow) MOV to CR3 exits as well: a switch back to the other
# context hits KVM's prev_roots cache (fast_pgd_switch) until a SMEP flip unloads the MMU
# and empties it; with CR0.WP set a flip keeps the shadow root role, with CR0.WP clear
# (bit 32 below) smep_andnot_wp changes it, so the first flip into each role builds a
# second tree (kvm-mmu-spec S6).
#
# Parameter: --arg N (RDX): bits 0-31 = number of round trips guest -> shim -> guest (two
# transitions each), 0 means DEFAULT_ROUNDS; bit 32 = clear CR0.WP first; bits 40-55 = how
# many leading round trips switch CR3 only, leaving SMEP alone. Needs --mem 8M or more
# (the default is 16M). Only vCPU 0 works; other vCPUs halt. Markers (port 0x512): the
# round number at the start of each round trip, counting from 1.
#
# Layout: the guest context uses the boot tables (CR3 = 0x1000) and the working set at
# GUEST_DATA; the shim builds a second PML4/PDPT/PD/PT set at SHIM_TABLES that
# identity-maps the first SHIM_MAPPED_PAGES pages with 4 KiB pages, and touches SHIM_DATA.

	.intel_syntax noprefix

	.set WORKING_SET_PAGES, 16
	.set DEFAULT_ROUNDS, 1000
	.set GUEST_DATA, 0x200000
	.set SHIM_DATA, 0x300000
	.set PAGE, 4096
	.set PTE_P_RW, 3			# present, writable, supervisor
	.set GUEST_PML4, 0x1000			# the boot contract's tables
	.set SHIM_TABLES, 0x400000
	.set SHIM_PML4, SHIM_TABLES
	.set SHIM_PDPT, SHIM_TABLES + PAGE
	.set SHIM_PD, SHIM_TABLES + 2 * PAGE
	.set SHIM_PT0, SHIM_TABLES + 3 * PAGE
	.set SHIM_MAPPED_PAGES, 2048		# 8 MiB: code, stacks, data and these tables
	.set SHIM_PTS, SHIM_MAPPED_PAGES / 512
	.set CR4_SMEP, 1 << 20
	.set CR0_WP_BIT, 16
	.set OPT_CLEAR_WP_BIT, 32
	.set OPT_CR3_ONLY_SHIFT, 40
	.set PORT_MARKER, 0x512
	.set CONSOLE, 0xe9

	.text
	.globl start
start:
	test	rdi, rdi
	jnz	park				# one worker: vCPU 0
	mov	r15, rdx			# the options
	mov	ebx, edx			# round trips left
	test	ebx, ebx
	jnz	1f
	mov	ebx, DEFAULT_ROUNDS
1:	mov	r11, r15
	shr	r11, OPT_CR3_ONLY_SHIFT
	and	r11d, 0xffff			# leading rounds without SMEP flips
	bt	r15, OPT_CLEAR_WP_BIT
	jnc	2f
	mov	rax, cr0
	btr	rax, CR0_WP_BIT
	mov	cr0, rax
2:	xor	r12d, r12d			# round number (the marker)
	call	build_shim_tables
	mov	r13d, SHIM_PML4
	mov	r14d, GUEST_PML4

round:
	inc	r12d
	mov	eax, r12d
	mov	dx, PORT_MARKER
	out	dx, eax
	mov	rax, cr4

	# guest -> shim: the shim's tables, SMEP on
	mov	cr3, r13
	cmp	r12, r11
	jbe	3f
	or	rax, CR4_SMEP
	mov	cr4, rax
3:	mov	esi, SHIM_DATA
	call	touch

	# shim -> guest: the guest's tables, SMEP off
	mov	cr3, r14
	cmp	r12, r11
	jbe	4f
	and	rax, ~CR4_SMEP
	mov	cr4, rax
4:	mov	esi, GUEST_DATA
	call	touch

	dec	rbx
	jnz	round

done:
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

# touch: write one quadword in each of WORKING_SET_PAGES pages from RSI.
touch:
	mov	ecx, WORKING_SET_PAGES
5:	mov	[rsi], rbx
	add	rsi, PAGE
	dec	ecx
	jnz	5b
	ret

# build_shim_tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD[0..SHIM_PTS) -> PTs, and PTs that
# identity-map SHIM_MAPPED_PAGES pages. Fresh guest memory reads as zero, so nothing else
# needs clearing.
build_shim_tables:
	mov	qword ptr [SHIM_PML4], SHIM_PDPT + PTE_P_RW
	mov	qword ptr [SHIM_PDPT], SHIM_PD + PTE_P_RW
	mov	edi, SHIM_PD
	mov	eax, SHIM_PT0 + PTE_P_RW
	mov	ecx, SHIM_PTS
3:	mov	[rdi], rax
	add	rdi, 8
	add	rax, PAGE
	dec	ecx
	jnz	3b
	mov	edi, SHIM_PT0
	mov	eax, PTE_P_RW
	mov	ecx, SHIM_MAPPED_PAGES
4:	mov	[rdi], rax
	add	rdi, 8
	add	rax, PAGE
	dec	ecx
	jnz	4b
	ret

message:
	.ascii	"pvshim: done\n"
message_end:
