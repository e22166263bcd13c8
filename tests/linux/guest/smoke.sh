# A smoke check: user space runs, system calls work.
check "user space runs /init as pid 1" [ "$$" = 1 ]
check "/proc/cpuinfo lists at least one CPU" grep -q '^processor' /proc/cpuinfo
