# memslot_overlay: overlay a page through the VMM and remove it again, touching memory in
# between (scenario S5: Xen shared-info / grant-table overlays done the way a VMM must:
# delete the slot, re-create the two halves and a one-page slot between them).
#
# What it shows: each memslot DELETE runs kvm_arch_flush_shadow_memslot. With the
# KVM_X86_QUIRK_SLOT_ZAP_ALL quirk (all versions up to v6.11, default after) that is
# kvm_mmu_zap_all_fast: every root is invalidated and the whole working set refaults;
# the zap runs on a workqueue (v5.18..v6.5) or in the ioctl (0df9dab891ff, v6.6+).
# With the quirk off (--set slot_zap_all=0) only the slot's leaf SPTEs go.
#
# Parameter: --arg N (RDX) = number of overlay/remove rounds; 0 means DEFAULT_ROUNDS.
# Markers (port 0x512): 1 after the overlay, 2 after its removal.

	.intel_syntax noprefix

	.set WORKING_SET_PAGES, 16
	.set DEFAULT_ROUNDS, 20
	.set DATA, 0x200000
	.set OVERLAY_GFN, 0x300
	.set PAGE, 4096
	.set PORT_OVERLAY, 0x510
	.set PORT_UNOVERLAY, 0x511
	.set PORT_MARKER, 0x512

	.text
	.globl start
start:
	test	rdx, rdx
	jnz	1f
	mov	edx, DEFAULT_ROUNDS
1:	mov	rbx, rdx
round:
	call	touch_all
	mov	eax, OVERLAY_GFN
	mov	dx, PORT_OVERLAY
	out	dx, eax
	mov	eax, 1
	mov	dx, PORT_MARKER
	out	dx, eax
	mov	qword ptr [OVERLAY_GFN * PAGE], rbx	# write the overlay page
	call	touch_all
	mov	eax, OVERLAY_GFN
	mov	dx, PORT_UNOVERLAY
	out	dx, eax
	mov	eax, 2
	mov	dx, PORT_MARKER
	out	dx, eax
	dec	rbx
	jnz	round
	hlt

touch_all:
	mov	rsi, DATA
	mov	ecx, WORKING_SET_PAGES
2:	mov	[rsi], rbx
	add	rsi, PAGE
	dec	ecx
	jnz	2b
	ret
