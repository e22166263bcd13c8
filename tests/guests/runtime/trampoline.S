/*
 * AP start-up trampoline: copied to RT_TRAMP_BASE by the BSP (from ring 3),
 * entered in real mode by SIPI with CS = RT_TRAMP_BASE >> 4, IP = 0. It
 * only switches modes; everything else happens in the 64-bit entry.
 */
#include "layout.h"

#define ABS(x) (RT_TRAMP_BASE + ((x) - rt_tramp_start))

	.section .rodata.tramp, "a"
	.globl rt_tramp_start, rt_tramp_end
	.code16
rt_tramp_start:
	cli
	cld
	xorw %ax, %ax
	movw %ax, %ds
	lgdtl ABS(tramp_gdt_ptr)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $SEL_KCODE32, $ABS(tramp32)

	.code32
tramp32:
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %cr4, %eax
	orl $0x20, %eax                 /* PAE */
	movl %eax, %cr4
	movl $rt_pml4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx          /* EFER.LME */
	rdmsr
	orl $0x100, %eax
	wrmsr
	movl %cr0, %eax
	orl $0x80000000, %eax
	movl %eax, %cr0
	ljmp $SEL_KCODE64, $rt_ap_entry64

	.p2align 3
tramp_gdt_ptr:                          /* a copy: real mode can only reach low memory */
	.word RT_GDT_ENTRIES * 8 - 1
	.long rt_gdt
rt_tramp_end:
