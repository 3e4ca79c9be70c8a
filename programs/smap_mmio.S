# smap_mmio: set CR4.SMAP, let KVM recompute its MMU role, clear SMAP, then write to
# MMIO through a user page from the kernel (the RFC patch's correctness bug, from Sean
# Christopherson's reply in the thread).
#
# What it shows: the MMIO write exits (EPT misconfiguration) and KVM emulates it using
# the permission tables cached in cpu_role. With kvm_post_set_cr4 skipped (profile
# rfc-skip-post-set-cr4) cpu_role still says SMAP=1, so KVM's emulator injects a #PF the
# hardware would never raise; the guest's #PF handler prints "spurious #PF" and halts.
# With a correct KVM (v6.12) the write reaches the device and the guest prints "ok".
#
# Parameter: --arg is unused. The MMIO page is guest-physical MMIO_GPA (no memslot
# there), mapped as a 2 MiB user page at the same virtual address.

	.intel_syntax noprefix

	.set MMIO_GPA, 0x20000000
	.set PD, 0x3000
	.set PML4, 0x1000
	.set PDPT, 0x2000
	.set IDT, 0x6f000
	.set CR4_SMAP, 1 << 21
	.set CR0_WP, 1 << 16
	.set CONSOLE, 0xe9

	.text
	.globl start
start:
	# A #PF handler: interrupt gate, selector 0x08, offset pf_handler.
	lea	rax, [rip + pf_handler]
	mov	rcx, rax
	and	ecx, 0xffff
	mov	rdx, rax
	shr	rdx, 16
	shl	rdx, 48
	or	rcx, rdx
	mov	rdx, 0x00008e0000080000		# P, DPL 0, type 0xE, selector 0x08
	or	rcx, rdx
	mov	[IDT + 14 * 16], rcx
	shr	rax, 32
	mov	[IDT + 14 * 16 + 8], rax
	lea	rax, [rip + idtr]
	lidt	[rax]

	# Map MMIO_GPA as a 2 MiB user page (U set in the PML4E and PDPTE on the way).
	or	qword ptr [PML4], 4
	or	qword ptr [PDPT], 4
	mov	rax, MMIO_GPA | 0x87		# P | RW | US | PS
	mov	[PD + (MMIO_GPA >> 21) * 8], rax

	# SMAP on; then a CR0.WP round trip, which on older KVMs re-inits the MMU roles.
	mov	rax, cr4
	or	rax, CR4_SMAP
	mov	cr4, rax
	mov	rax, cr0
	xor	rax, CR0_WP
	mov	cr0, rax
	xor	rax, CR0_WP
	mov	cr0, rax

	# SMAP off, then a supervisor write to the user page: architecturally fine.
	mov	rax, cr4
	and	rax, ~CR4_SMAP
	mov	cr4, rax
	mov	dword ptr [MMIO_GPA], 0x1234

	lea	rsi, [rip + ok_msg]
	mov	ecx, ok_end - ok_msg
	jmp	print

pf_handler:
	lea	rsi, [rip + pf_msg]
	mov	ecx, pf_end - pf_msg
print:
	mov	al, [rsi]
	out	CONSOLE, al
	inc	rsi
	dec	ecx
	jnz	print
	hlt

idtr:
	.word	256 * 16 - 1
	.quad	IDT
ok_msg:
	.ascii	"smap_mmio: ok\n"
ok_end:
pf_msg:
	.ascii	"smap_mmio: spurious #PF\n"
pf_end:
