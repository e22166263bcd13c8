/* Asks for a reset with method=cf9 (default: the FADT reset register's
 * port), kbd (i8042 command 0xFE) or triple (triple fault is not a reset
 * request). The VMM reboots the VM, or exits 0 with --no-reboot. */
#include "rt.h"

int main(void)
{
	const char *c = cmdline();
	bool kbd = false;
	for (const char *p = c; *p; p++)
		if (!strncmp(p, "method=kbd", 10))
			kbd = true;
	kprintf("reset: boot, asking for a reset via %s\n", kbd ? "i8042" : "0xcf9");
	if (kbd)
		outb(0x64, 0xfe);
	else
		outb(0xcf9, 0x06);
	udelay(100000);
	kprintf("reset: still running\n");
	return 1;
}
