/* The iovec helpers the block layer and the network share. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "core/iov.h"

static void test_copy_across_pieces(void **state)
{
	(void)state;
	char a[3], b[1], c[5];
	memset(a, '.', sizeof(a));
	memset(b, '.', sizeof(b));
	memset(c, '.', sizeof(c));
	struct iovec v[4] = { { a, 3 }, { b, 0 }, { b, 1 }, { c, 5 } };
	assert_int_equal(iov_size(v, 4), 9);
	iov_from_buf(v, 4, 2, "WXYZ", 4);
	assert_memory_equal(a, "..W", 3);
	assert_memory_equal(b, "X", 1);
	assert_memory_equal(c, "YZ...", 5);
	char out[9] = { 0 };
	iov_to_buf(v, 4, 1, out, 5);
	assert_memory_equal(out, ".WXYZ", 5);
	/* Past the end: clipped, nothing outside is touched. */
	iov_memset(v, 4, 7, '#', 100);
	assert_memory_equal(c, "YZ.##", 5);
	iov_memset(v, 4, 50, '!', 3);
	assert_memory_equal(c, "YZ.##", 5);
}

static void test_slice(void **state)
{
	(void)state;
	char buf[16];
	struct iovec v[3] = { { buf, 4 }, { buf + 4, 4 }, { buf + 8, 8 } };
	struct iovec out[3];
	assert_int_equal(iov_slice(v, 3, 2, 8, out), 3);
	assert_ptr_equal(out[0].iov_base, buf + 2);
	assert_int_equal(out[0].iov_len, 2);
	assert_int_equal(out[1].iov_len, 4);
	assert_ptr_equal(out[2].iov_base, buf + 8);
	assert_int_equal(out[2].iov_len, 2);
	assert_int_equal(iov_slice(v, 3, 4, 4, out), 1);
	assert_ptr_equal(out[0].iov_base, buf + 4);
	assert_int_equal(iov_slice(v, 3, 16, 4, out), 0);
	assert_int_equal(iov_slice(v, 3, 0, 0, out), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_copy_across_pieces),
		cmocka_unit_test(test_slice),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
