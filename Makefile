# Kestrel build. `make` builds the VMM and the micro-guests; `make test` runs
# every test tier (see README.md).
CC      ?= gcc
O       ?= build
VERSION := 0.1.0

WARN    := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 $(WARN) -Isrc -D_GNU_SOURCE -DKESTREL_VERSION='"$(VERSION)"' -MMD -MP
LDLIBS  := -lpthread -lutil -luring -lz -lzstd -lslirp

SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRCS  := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
LIB_OBJS  := $(LIB_SRCS:%.c=$(O)/obj/%.o)
SAN_OBJS  := $(LIB_SRCS:%.c=$(O)/san/%.o)
TEST_SRCS := $(sort $(wildcard tests/unit/test_*.c))
TESTS     := $(TEST_SRCS:tests/unit/%.c=$(O)/tests/%)
SAN_TESTS := $(TEST_SRCS:tests/unit/%.c=$(O)/tests-san/%)

.PHONY: all kestrel guests unit-tests test test-unit test-guests test-qemu test-linux test-distro test-long bench bench-virtio bench-img bench-net bench-linux test-net clean
all: kestrel guests unit-tests $(O)/netpeer $(O)/kvmprobe

kestrel: $(O)/kestrel

$(O)/kestrel: $(O)/obj/src/main.o $(O)/libkestrel.a
	@echo "  LD      $@"
	@$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The VMM itself with ASan+UBSan, for the lifecycle tests.
$(O)/kestrel-san: $(O)/san/src/main.o $(O)/libkestrel-san.a
	@echo "  LD-SAN  $@"
	@$(CC) $(CFLAGS) $(SAN_FLAGS) -o $@ $^ $(LDLIBS)

$(O)/libkestrel.a: $(LIB_OBJS)
	@rm -f $@
	@ar rcs $@ $^

$(O)/libkestrel-san.a: $(SAN_OBJS)
	@rm -f $@
	@ar rcs $@ $^

$(O)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c -o $@ $<

$(O)/san/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC-SAN  $<"
	@$(CC) $(CFLAGS) $(SAN_FLAGS) -c -o $@ $<

$(O)/tests/%: tests/unit/%.c $(O)/libkestrel.a
	@mkdir -p $(dir $@)
	@echo "  TEST    $@"
	@$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(O)/libkestrel.a -lcmocka $(LDLIBS)

$(O)/tests-san/%: tests/unit/%.c $(O)/libkestrel-san.a
	@mkdir -p $(dir $@)
	@echo "  TEST    $@"
	@$(CC) $(CFLAGS) $(SAN_FLAGS) -Itests/unit -o $@ $< $(O)/libkestrel-san.a -lcmocka $(LDLIBS)

unit-tests: $(TESTS) $(SAN_TESTS) $(O)/kestrel-san

# The host end of the networking tests and benchmarks (tests/net/).
$(O)/netpeer: tests/net/netpeer.c tests/net/netproto.h
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) $(CFLAGS) -o $@ $<

# tools/kvmhost's probe: does /dev/kvm run guest ring 0 natively?
$(O)/kvmprobe: tools/kvmhost/probe.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) $(CFLAGS) -o $@ $<

guests:
	$(MAKE) -C tests/guests OUT=$(abspath $(O))/guests

# The README's test command. Runs every tier and ends with "N passed, N failed".
test: all
	tests/run-all.sh

test-unit: unit-tests
	tests/run-unit.sh $(O)

# Micro-guests run directly on any KVM that runs them (see tools/kvmhost).
test-guests: kestrel guests
	tools/kvmhost/kvmhost --micro -- tests/guests/run-kestrel.sh

test-qemu: guests
	tests/guests/run-qemu.sh

test-net: kestrel guests $(O)/netpeer
	tools/kvmhost/kvmhost --micro -- tests/net/test-net-guests.sh

# Tier 3 alone: its images are made on this host, the guests boot where
# KVM runs Linux (directly, or in tools/kvmhost's outer VM).
test-linux: all
	tests/linux/prepare.sh
	tools/kvmhost/kvmhost -- tests/run-all.sh --tiers 3

# The debootstrap'd Debian 12 boot (tests/linux/test-linux-distro.sh); not
# in `make test` yet: a boot takes minutes in the outer VM.
test-distro: kestrel
	tests/linux/mkdistro.sh
	tools/kvmhost/kvmhost --timeout 7200 -- tests/linux/test-linux-distro.sh

# Long runs, not part of `make test`: the full qcow2-vs-raw scribbler matrix.
test-long: all
	tests/qcow2/run-scribbler.sh

# Benchmarks print figures; they assert nothing. Each runs Kestrel and QEMU
# side by side where KVM runs their guests (tools/kvmhost).
bench: kestrel guests
	tools/kvmhost/kvmhost -- bench/bench-foundation.sh

bench-virtio: kestrel guests
	tools/kvmhost/kvmhost -- bench/bench-virtio-blk.sh

bench-img: kestrel
	bench/bench-img.sh

bench-net: kestrel guests $(O)/netpeer
	tools/kvmhost/kvmhost -- bench/bench-net.sh

# bench-linux builds its initramfs here, then runs itself through kvmhost.
bench-linux: kestrel
	bench/bench-linux.sh

clean:
	rm -rf $(O)
	$(MAKE) -C tests/guests clean OUT=$(abspath $(O))/guests

-include $(LIB_OBJS:.o=.d) $(SAN_OBJS:.o=.d) $(O)/obj/src/main.d $(O)/san/src/main.d
