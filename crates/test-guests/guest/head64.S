/*
 * 64-bit entry shared by all three images (Linux 64-bit boot protocol).
 *
 * The image is linked at 0x100000. Offset 0 holds a hlt loop, offset 0x200
 * holds the 64-bit entry point: for a bzImage the 64-bit boot protocol jumps
 * to load address + 0x200, and the ELF images use the same address as
 * e_entry so that all three images share one layout.
 *
 * Entry state: long mode, identity paging (VMM tables), flat segments,
 * interrupts off, RSI = physical address of struct boot_params. The VMM's
 * RSP is not trusted: we zero .bss (the loaders only copy file bytes) and
 * switch to our own stack in .bss.
 */
#include "guest.h"

	.section .head.text, "ax", @progbits
	.code64

	.globl _head
_head:
	cli
	hlt
	jmp _head

	.org GUEST_ENTRY64_OFFSET
	.globl startup_64
	.type startup_64, @function
startup_64:
	cli
	cld
	movq %rsi, %r12			/* boot_params; callee-saved, untouched by rep stos */

	/* Zero .bss (8-byte granular; the linker script aligns both ends). */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $3, %ecx
	xorl %eax, %eax
	rep stosq

	movl $guest_stack_top, %esp
	xorl %ebp, %ebp
	movl $PROTO_LINUX64, %edi
	movq %r12, %rsi
	call guest_main
1:	cli
	hlt
	jmp 1b
	.size startup_64, . - startup_64

	/* The boot stack; 16-byte aligned top for the SysV ABI. */
	.section .bss.stack, "aw", @nobits
	.balign 16
	.globl guest_stack_bottom
guest_stack_bottom:
	.skip GUEST_STACK_SIZE
	.globl guest_stack_top
guest_stack_top:

	.section .note.GNU-stack, "", @progbits
