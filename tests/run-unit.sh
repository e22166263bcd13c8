#!/usr/bin/env bash
# Tier 1: runs every cmocka binary, plain and ASan+UBSan builds.
# Ends with "N passed, N failed" (counting individual test cases).
set -u
O=${1:-build}
passed=0 failed=0
for t in "$O"/tests/test_* "$O"/tests-san/test_*; do
	[ -x "$t" ] || continue
	out=$("$t" 2>&1)
	rc=$?
	p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -1)
	f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -1)
	p=${p:-0} f=${f:-0}
	# A crash (sanitizer abort, signal) before cmocka's summary is a failure.
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
	fi
	passed=$((passed + p)) failed=$((failed + f))
	if [ "$f" -ne 0 ]; then
		echo "FAIL $t"
		echo "$out" | grep -E 'ERROR|FAILED|LINE|runtime error|AddressSanitizer' | head -20
	else
		echo "PASS $t ($p cases)"
	fi
done
echo "unit: $passed passed, $failed failed"
