/* A triple fault must end the VM as a failure, never hang or reboot. */
#include "rt.h"

static uint64_t triple_fault(uint64_t unused)
{
	static const struct { uint16_t limit; uint64_t base; } __attribute__((packed)) empty = { 0, 0 };

	(void)unused;
	/* #UD cannot be delivered through a 1-byte IDT, nor the #GP that
	 * follows, nor the #DF: shutdown. */
	__asm__ volatile("lidt %0; ud2" :: "m"(empty));
	return 0;
}

int main(void)
{
	kprintf("triplefault: loading an empty IDT and executing ud2 in ring 0\n");
	rt_ring0_call(triple_fault, 0);
	kprintf("triplefault: FAIL: survived\n");
	return 1;
}
