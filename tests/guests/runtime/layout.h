/* Constants shared by the assembly and C parts of the micro-guest runtime. */
#ifndef RT_LAYOUT_H
#define RT_LAYOUT_H

#define RT_LINK_BASE        0x100000        /* PVH images are loaded at 1 MiB */
#define RT_MAX_CPUS         32
#define RT_PT_MAX_GB        64              /* identity map covers at most this */

/* GDT selectors. The order is fixed: asm, C and the AP trampoline share it. */
#define SEL_KCODE32         0x08            /* only used by the AP trampoline */
#define SEL_KCODE64         0x10
#define SEL_KDATA           0x18
#define SEL_UDATA           0x23            /* index 4, RPL 3 */
#define SEL_UCODE64         0x2b            /* index 5, RPL 3 */
#define SEL_TSS0            0x30            /* CPU n uses SEL_TSS0 + 16 * n */
#define RT_GDT_ENTRIES      (6 + 2 * RT_MAX_CPUS)

#define RT_USER_RFLAGS      0x3202          /* IOPL=3, IF=1 */

#define RT_BSP_KSTACK_SIZE  16384
#define RT_BSP_USTACK_SIZE  65536
#define RT_AP_KSTACK_SIZE   4096
#define RT_AP_USTACK_SIZE   16384

/*
 * AP start-up: the real-mode trampoline is copied to RT_TRAMP_BASE (SIPI
 * vector RT_TRAMP_BASE >> 12); the BSP leaves per-AP parameters at
 * RT_TRAMP_PARAMS, which the AP's 64-bit entry reads by absolute address.
 */
#define RT_TRAMP_BASE       0x8000
#define RT_TRAMP_PARAMS     0x8f00
#define AP_P_KSTACK         0
#define AP_P_USTACK         8
#define AP_P_FN             16
#define AP_P_ARG            24
#define AP_P_TSS_SEL        32
#define AP_P_ACK            40

#define HVM_START_MAGIC     0x336ec578

/* isa-debug-exit convention: the VMM exits with status (v << 1) | 1. */
#define PASS                0x10            /* exit status 33 */
#define FAIL                0x11            /* exit status 35 */

#endif
