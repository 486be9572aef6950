/*
 * PVH entry (Xen PVH boot ABI as implemented by linux-loader and QEMU).
 *
 * Entry state: 32-bit protected mode, paging off, flat 32-bit CS/DS/ES/SS,
 * interrupts off, EBX = physical address of struct hvm_start_info.
 *
 * The stub zeroes .bss (which holds the page tables and the stack), builds
 * identity page tables for 0..4 GiB with 2 MiB pages, loads its own GDT,
 * enables PAE + EFER.LME + paging, far-jumps to 64-bit code and calls
 * guest_main(PROTO_PVH, start_info).
 */
#include "guest.h"

#define X86_CR0_PE	0x00000001
#define X86_CR0_PG	0x80000000
#define X86_CR4_PAE	0x00000020
#define MSR_EFER	0xC0000080
#define EFER_LME	0x00000100
#define PTE_P_RW	0x003
#define PDE_P_RW_PS	0x083

	/* ELF note read by the VMM: name "Xen", type 18, desc = 32-bit entry. */
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 4				/* namesz ("Xen\0") */
	.long 4				/* descsz */
	.long 18			/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start32
	.popsection

	.pushsection .text.pvh, "ax", @progbits
	.code32
	.globl pvh_start32
	.type pvh_start32, @function
pvh_start32:
	cli
	cld
	/* EBX (start_info) is preserved by everything below. */

	/* Zero .bss: page tables, stack and C globals. */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl

	movl $guest_stack_top, %esp

	/* PML4[0] -> PDPT */
	movl $pvh_pdpt, %eax
	orl $PTE_P_RW, %eax
	movl %eax, pvh_pml4

	/* PDPT[0..3] -> PD0..PD3 (consecutive pages) */
	movl $pvh_pd, %eax
	orl $PTE_P_RW, %eax
	xorl %ecx, %ecx
1:	movl %eax, pvh_pdpt(,%ecx,8)
	addl $0x1000, %eax
	incl %ecx
	cmpl $4, %ecx
	jb 1b

	/* 2048 PDEs of 2 MiB each: entry i maps i << 21 (high dwords stay 0). */
	movl $PDE_P_RW_PS, %eax
	xorl %ecx, %ecx
2:	movl %eax, pvh_pd(,%ecx,8)
	addl $0x200000, %eax
	incl %ecx
	cmpl $2048, %ecx
	jb 2b

	lgdt pvh_gdt_desc

	movl %cr4, %eax
	orl $X86_CR4_PAE, %eax
	movl %eax, %cr4

	movl $pvh_pml4, %eax
	movl %eax, %cr3

	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr

	movl %cr0, %eax
	orl $(X86_CR0_PG | X86_CR0_PE), %eax
	movl %eax, %cr0

	ljmp $GDT_CODE64, $pvh_start64
	.size pvh_start32, . - pvh_start32

	.code64
	.type pvh_start64, @function
pvh_start64:
	movl $GDT_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl $guest_stack_top, %esp
	xorl %ebp, %ebp
	movl $PROTO_PVH, %edi
	movl %ebx, %esi			/* zero-extends into RSI */
	call guest_main
3:	cli
	hlt
	jmp 3b
	.size pvh_start64, . - pvh_start64
	.popsection

	.pushsection .rodata.pvh, "a", @progbits
	.balign 8
pvh_gdt:
	.quad 0				/* null */
	.quad 0x00AF9A000000FFFF	/* 0x08: 64-bit code, DPL0 */
	.quad 0x00CF92000000FFFF	/* 0x10: flat data, 4 GiB */
pvh_gdt_end:
	.balign 2
pvh_gdt_desc:
	.word pvh_gdt_end - pvh_gdt - 1
	.long pvh_gdt
	.popsection

	/* Page tables: PML4, PDPT and 4 page directories (4 KiB aligned). */
	.pushsection .bss.pagetables, "aw", @nobits
	.balign 4096
pvh_pml4:
	.skip 4096
pvh_pdpt:
	.skip 4096
pvh_pd:
	.skip 4 * 4096
	.popsection

	.section .note.GNU-stack, "", @progbits
