/* The qcow2 scribbler (tests/qcow2/scribbler.c) with fixed seeds and a
 * bounded operation count: random writes, discards, write-zeroes and
 * compressed writes through qcow2 and through a raw reference image,
 * compared byte for byte every 100 operations and at the end, for cluster
 * sizes 512, 4K, 64K and 2M, v2 and v3, without and with backing files
 * (raw, qcow2, and a 2-deep chain). The full matrix with more operations:
 * tests/qcow2/run-scribbler.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define SCRIBBLER_NO_MAIN
#include "../qcow2/scribbler.c"

static void run(uint32_t cs, int version, enum scribble_backing b, int variant)
{
	char dir[64];
	snprintf(dir, sizeof(dir), "/var/tmp/kestrel-scribble-XXXXXX");
	assert_non_null(mkdtemp(dir));
	struct scribble_cfg c = { 0 };
	c.dir = dir;
	c.cluster_size = cs;
	c.version = version;
	c.backing = b;
	c.size = cs == (2u << 20) ? (40ull << 20) + 4096 : (8ull << 20) + 1536;
	c.ops = 400;
	c.seed = 0x5eed0000u + cs + (unsigned)version * 7 + (unsigned)b * 131 + (unsigned)variant * 1009;
	c.check_every = 100;
	c.qemu_check = true;
	if (variant == 1) {
		c.zstd = true;
		c.lazy = true;
		c.refcount_bits = cs == 512 ? 64 : 2;
	} else if (variant == 2) {
		c.ext_l2 = true;
	} else if (variant == 3) {
		c.direct = true;
	}
	char msg[1024] = "";
	int r = scribble_run(&c, msg, sizeof(msg));
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	if (r)
		fail_msg("cs=%u v%d backing=%d variant=%d: %s", cs, version, b, variant, msg);
}

#define CASE(name, cs, v, b, variant)          \
	static void name(void **state)          \
	{                                       \
		(void)state;                    \
		run(cs, v, b, variant);         \
	}

CASE(s512_v2_none, 512, 2, SB_NONE, 0)
CASE(s512_v3_chain, 512, 3, SB_CHAIN, 0)
CASE(s512_v3_raw_zstd_rb64, 512, 3, SB_RAW, 1)
CASE(s4k_v2_qcow2, 4096, 2, SB_QCOW2, 0)
CASE(s4k_v3_none_lazy_rb2, 4096, 3, SB_NONE, 1)
CASE(s4k_v3_chain, 4096, 3, SB_CHAIN, 0)
CASE(s64k_v2_chain, 65536, 2, SB_CHAIN, 0)
CASE(s64k_v3_raw, 65536, 3, SB_RAW, 0)
CASE(s64k_v3_qcow2_extl2, 65536, 3, SB_QCOW2, 2)
CASE(s64k_v3_none_zstd, 65536, 3, SB_NONE, 1)
CASE(s2m_v2_raw, 2u << 20, 2, SB_RAW, 0)
CASE(s2m_v3_chain_extl2, 2u << 20, 3, SB_CHAIN, 2)
CASE(s2m_v3_none, 2u << 20, 3, SB_NONE, 0)
CASE(s4k_v3_qcow2_direct, 4096, 3, SB_QCOW2, 3)
CASE(s64k_v2_chain_direct, 65536, 2, SB_CHAIN, 3)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(s512_v2_none),       cmocka_unit_test(s512_v3_chain),
		cmocka_unit_test(s512_v3_raw_zstd_rb64), cmocka_unit_test(s4k_v2_qcow2),
		cmocka_unit_test(s4k_v3_none_lazy_rb2), cmocka_unit_test(s4k_v3_chain),
		cmocka_unit_test(s64k_v2_chain),      cmocka_unit_test(s64k_v3_raw),
		cmocka_unit_test(s64k_v3_qcow2_extl2), cmocka_unit_test(s64k_v3_none_zstd),
		cmocka_unit_test(s2m_v2_raw),         cmocka_unit_test(s2m_v3_chain_extl2),
		cmocka_unit_test(s2m_v3_none),        cmocka_unit_test(s4k_v3_qcow2_direct),
		cmocka_unit_test(s64k_v2_chain_direct),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
