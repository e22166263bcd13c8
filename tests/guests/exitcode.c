/* Exit-status plumbing: debug_exit(code) with code from "code=N". */
#include "rt.h"

int main(void)
{
	uint64_t code = 42;

	cmdline_u64("code", &code);
	kprintf("exitcode: debug_exit(%lu), expect VMM status %lu\n", code, (code << 1 | 1) & 0xff);
	debug_exit(code);
}
