/*
 * PVH entry and the ring-0 part of boot. Everything here runs at CPL0,
 * which this project's host executes in KVM's instruction emulator, so it
 * is kept to plain integer instructions and as few of them as practical.
 */
#include "layout.h"

#define CR0_PE      0x00000001
#define CR0_PG      0x80000000
#define CR4_PAE     0x00000020
#define CR4_SSE     0x00000600      /* OSFXSR | OSXMMEXCPT */
#define MSR_EFER    0xc0000080
#define EFER_LME    0x00000100
#define PTE_RWU     0x007           /* present, writable, user */
#define PDE_2M      0x087           /* ... plus page size */
#define PTE_UC      0x018           /* PWT | PCD */

/* XEN_ELFNOTE_PHYS32_ENTRY. The descriptor is 8 bytes, like Linux's, since
 * QEMU 7.2 reads a size_t from ELF64 notes; later QEMUs read 4 bytes. */
	.section .note.pvh, "a", @note
	.p2align 2
	.long 4, 8, 18
	.asciz "Xen"
	.quad pvh_entry32

	.section .text.boot, "ax"
	.code32
	.globl pvh_entry32
pvh_entry32:
	cli
	cld
	movl %ebx, rt_start_info_pa

	/* %ebp = GiB to map: the highest RAM end, at least 4 (MMIO hole). */
	movl $4, %ebp
	cmpl $HVM_START_MAGIC, (%ebx)
	jne 3f
	cmpl $1, 4(%ebx)                /* memmap fields exist from version 1 */
	jb 3f
	movl 40(%ebx), %esi             /* memmap_paddr */
	movl 48(%ebx), %ecx             /* memmap_entries */
	testl %ecx, %ecx
	jz 3f
1:	cmpl $1, 16(%esi)               /* E820 RAM */
	jne 2f
	movl (%esi), %eax
	movl 4(%esi), %edx
	addl 8(%esi), %eax
	adcl 12(%esi), %edx
	addl $0x3fffffff, %eax          /* round up to 1 GiB */
	adcl $0, %edx
	cmpl $(RT_PT_MAX_GB / 4), %edx  /* >= 64 GiB: clamp below */
	jae 4f
	shrl $30, %eax
	shll $2, %edx
	orl %edx, %eax
	cmpl %ebp, %eax
	jbe 2f
	movl %eax, %ebp
2:	addl $24, %esi
	decl %ecx
	jnz 1b
	jmp 3f
4:	movl $RT_PT_MAX_GB, %ebp
3:	cmpl $RT_PT_MAX_GB, %ebp
	jbe 5f
	movl $RT_PT_MAX_GB, %ebp
5:	movl %ebp, rt_mapped_gb

	/* PML4 and PDPT: clear, then link. Every entry is written so the
	 * tables need no zeroed memory. */
	xorl %eax, %eax
	movl $rt_pml4, %edi
	movl $2048, %ecx                /* pml4 + pdpt are adjacent */
	rep stosl
	movl $(rt_pdpt + PTE_RWU), rt_pml4
	movl $rt_pdpt, %edi
	movl $(rt_pd + PTE_RWU), %eax
	movl %ebp, %ecx
6:	movl %eax, (%edi)
	addl $4096, %eax
	addl $8, %edi
	decl %ecx
	jnz 6b

	/* 2 MiB identity pages; the carry into %edx handles > 4 GiB. */
	movl $rt_pd, %edi
	movl $PDE_2M, %eax
	xorl %edx, %edx
	movl %ebp, %ecx
	shll $9, %ecx
7:	movl %eax, (%edi)
	movl %edx, 4(%edi)
	addl $0x200000, %eax
	adcl $0, %edx
	addl $8, %edi
	decl %ecx
	jnz 7b
	/* 3-4 GiB is the MMIO hole (LAPIC, IOAPIC, BARs): uncached. */
	movl $(rt_pd + 3 * 4096), %edi
	movl $512, %ecx
8:	orl $PTE_UC, (%edi)
	addl $8, %edi
	decl %ecx
	jnz 8b

	lgdt rt_gdt_ptr
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $rt_pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $SEL_KCODE64, $long_entry

	.code64
long_entry:
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	movq $(rt_bsp_kstack + RT_BSP_KSTACK_SIZE), %rsp
	movq %cr4, %rax
	orq $CR4_SSE, %rax
	movq %rax, %cr4
	call rt_ring0_init              /* IDT, BSP TSS, PIC */
	lidt rt_idt_ptr
	movl $SEL_TSS0, %eax
	ltr %ax
	movq $(rt_bsp_ustack + RT_BSP_USTACK_SIZE), %rcx
	movq $rt_user_start, %rdx
	jmp to_user

/* Shared tail: enter ring 3 at %rdx with stack %rcx (%rdi/%rsi pass through). */
to_user:
	pushq $SEL_UDATA
	pushq %rcx
	pushq $RT_USER_RFLAGS
	pushq $SEL_UCODE64
	pushq %rdx
	iretq

/* APs arrive here from the trampoline, already in long mode on the BSP's
 * page tables; their parameters sit at RT_TRAMP_PARAMS. */
	.globl rt_ap_entry64
rt_ap_entry64:
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	movq (RT_TRAMP_PARAMS + AP_P_KSTACK), %rsp
	movq %cr4, %rax
	orq $CR4_SSE, %rax
	movq %rax, %cr4
	lidt rt_idt_ptr
	movl (RT_TRAMP_PARAMS + AP_P_TSS_SEL), %eax
	ltr %ax
	movq (RT_TRAMP_PARAMS + AP_P_FN), %rdi
	movq (RT_TRAMP_PARAMS + AP_P_ARG), %rsi
	movq (RT_TRAMP_PARAMS + AP_P_USTACK), %rcx
	movq $rt_ap_user_start, %rdx
	jmp to_user

	.section .data
	.p2align 3
	.globl rt_start_info_pa, rt_mapped_gb
rt_start_info_pa:
	.quad 0
rt_mapped_gb:
	.quad 0

/* Ring-0 owned memory that nobody zeroes: every byte used is written first. */
	.section .bss.noinit, "aw", @nobits
	.p2align 12
	.globl rt_pml4, rt_pdpt, rt_pd, rt_bsp_kstack, rt_bsp_ustack
rt_pml4:
	.skip 4096
rt_pdpt:                                /* must follow rt_pml4: cleared together */
	.skip 4096
rt_pd:
	.skip 4096 * RT_PT_MAX_GB
rt_bsp_kstack:
	.skip RT_BSP_KSTACK_SIZE
rt_bsp_ustack:
	.skip RT_BSP_USTACK_SIZE
