/*
 * Interrupt/exception entry stubs and the ring-0 call gate. Ring 3 cannot
 * make system calls on this project's host (INT n is not emulated), but
 * exceptions are delivered, so a UD2 at a known address serves as the gate.
 */
#include "layout.h"

	.section .text
	.code64

/* Vectors whose exceptions push an error code. */
#define HAS_ERR(n) ((n) == 8 || ((n) >= 10 && (n) <= 14) || (n) == 17 || \
		    (n) == 21 || (n) == 29 || (n) == 30)

	.p2align 4
	.globl rt_isr_stubs
rt_isr_stubs:
	vec = 0
	.rept 256
	.p2align 4
	.if !HAS_ERR(vec)
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	vec = vec + 1
	.endr

/* The frame layout must match struct rt_trap_frame in rt.h. */
isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	call rt_trap
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

/* uint64_t rt_ring0_call(uint64_t (*fn)(uint64_t), uint64_t arg), ring 3. */
	.globl rt_ring0_call, rt_ring0_gate
rt_ring0_call:
	movq %rdi, %rax
	movq %rsi, %rdi
rt_ring0_gate:
	ud2
	ret
