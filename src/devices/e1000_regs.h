/* Intel 82540EM (e1000): register offsets and bits, from the PCI/PCI-X
 * Family of Gigabit Ethernet Controllers Software Developer's Manual
 * (8254x), and the few internal entry points the unit tests drive.
 * Private to src/devices/e1000.c and tests/unit/test_e1000.c. */
#ifndef KESTREL_E1000_REGS_H
#define KESTREL_E1000_REGS_H

#include <stdbool.h>
#include <stdint.h>

/* ---- PCI identity ---- */
#define E1000_VENDOR        0x8086
#define E1000_DEVICE        0x100e   /* 82540EM */
#define E1000_SUBSYS_VENDOR 0x8086
#define E1000_SUBSYS        0x001e   /* PRO/1000 MT Desktop */
#define E1000_REVISION      0x02
#define E1000_CLASS         0x020000 /* Ethernet controller */
#define E1000_MMIO_SIZE     0x20000  /* BAR0 */
#define E1000_IO_SIZE       0x40     /* BAR1: IOADDR at 0, IODATA at 4 */

/* ---- registers (byte offsets in BAR0) ---- */
#define E1000_CTRL     0x0000
#define E1000_STATUS   0x0008
#define E1000_EECD     0x0010
#define E1000_EERD     0x0014
#define E1000_CTRL_EXT 0x0018
#define E1000_FLA      0x001c
#define E1000_MDIC     0x0020
#define E1000_FCAL     0x0028
#define E1000_FCAH     0x002c
#define E1000_FCT      0x0030
#define E1000_VET      0x0038
#define E1000_ICR      0x00c0
#define E1000_ITR      0x00c4
#define E1000_ICS      0x00c8
#define E1000_IMS      0x00d0
#define E1000_IMC      0x00d8
#define E1000_RCTL     0x0100
#define E1000_FCTTV    0x0170
#define E1000_TXCW     0x0178
#define E1000_RXCW     0x0180
#define E1000_TCTL     0x0400
#define E1000_TIPG     0x0410
#define E1000_AIT      0x0458
#define E1000_LEDCTL   0x0e00
#define E1000_PBA      0x1000
#define E1000_FCRTL    0x2160
#define E1000_FCRTH    0x2168
#define E1000_RDFH     0x2410
#define E1000_RDFT     0x2418
#define E1000_RDFHS    0x2420
#define E1000_RDFTS    0x2428
#define E1000_RDFPC    0x2430
#define E1000_RDBAL    0x2800
#define E1000_RDBAH    0x2804
#define E1000_RDLEN    0x2808
#define E1000_RDH      0x2810
#define E1000_RDT      0x2818
#define E1000_RDTR     0x2820
#define E1000_RXDCTL   0x2828
#define E1000_RADV     0x282c
#define E1000_RSRPD    0x2c00
#define E1000_TDFH     0x3410
#define E1000_TDFT     0x3418
#define E1000_TDFHS    0x3420
#define E1000_TDFTS    0x3428
#define E1000_TDFPC    0x3430
#define E1000_TDBAL    0x3800
#define E1000_TDBAH    0x3804
#define E1000_TDLEN    0x3808
#define E1000_TDH      0x3810
#define E1000_TDT      0x3818
#define E1000_TIDV     0x3820
#define E1000_TXDCTL   0x3828
#define E1000_TADV     0x382c
#define E1000_TSPMT    0x3830
#define E1000_STATS    0x4000   /* 64 statistics counters, 0x4000-0x40fc */
#define E1000_STATS_END 0x4100
#define E1000_RXCSUM   0x5000
#define E1000_MTA      0x5200   /* 128 entries */
#define E1000_RA       0x5400   /* 16 pairs RAL/RAH */
#define E1000_VFTA     0x5600   /* 128 entries */
#define E1000_WUC      0x5800
#define E1000_WUFC     0x5808
#define E1000_WUS      0x5810
#define E1000_MANC     0x5820
#define E1000_IPAV     0x5838
#define E1000_IP4AT    0x5840   /* 4 pairs */
#define E1000_IP6AT    0x5880   /* 4 words */
#define E1000_WUPL     0x5900
#define E1000_WUPM     0x5a00   /* 32 words */
#define E1000_FFLT     0x5f00   /* 4 pairs */
#define E1000_REGS_END 0x6000   /* registers Kestrel keeps state for */

/* Statistics (read-to-clear) */
#define E1000_CRCERRS  0x4000
#define E1000_MPC      0x4010
#define E1000_PRC64    0x405c
#define E1000_PRC127   0x4060
#define E1000_PRC255   0x4064
#define E1000_PRC511   0x4068
#define E1000_PRC1023  0x406c
#define E1000_PRC1522  0x4070
#define E1000_GPRC     0x4074
#define E1000_BPRC     0x4078
#define E1000_MPRC     0x407c
#define E1000_GPTC     0x4080
#define E1000_GORCL    0x4088
#define E1000_GORCH    0x408c
#define E1000_GOTCL    0x4090
#define E1000_GOTCH    0x4094
#define E1000_RNBC     0x40a0
#define E1000_ROC      0x40ac
#define E1000_TORL     0x40c0
#define E1000_TORH     0x40c4
#define E1000_TOTL     0x40c8
#define E1000_TOTH     0x40cc
#define E1000_TPR      0x40d0
#define E1000_TPT      0x40d4
#define E1000_PTC64    0x40d8
#define E1000_PTC127   0x40dc
#define E1000_PTC255   0x40e0
#define E1000_PTC511   0x40e4
#define E1000_PTC1023  0x40e8
#define E1000_PTC1522  0x40ec
#define E1000_MPTC     0x40f0
#define E1000_BPTC     0x40f4
#define E1000_TSCTC    0x40f8

/* CTRL */
#define E1000_CTRL_FD      0x00000001
#define E1000_CTRL_ASDE    0x00000020
#define E1000_CTRL_SLU     0x00000040
#define E1000_CTRL_SPD_1000 0x00000200
#define E1000_CTRL_RST     0x04000000
#define E1000_CTRL_VME     0x40000000
#define E1000_CTRL_PHY_RST 0x80000000

/* STATUS */
#define E1000_STATUS_FD        0x00000001
#define E1000_STATUS_LU        0x00000002
#define E1000_STATUS_SPEED_1000 0x00000080
#define E1000_STATUS_ASDV_1000 0x00000200

/* EECD: a Microwire EEPROM bit-banged through these pins */
#define E1000_EECD_SK   0x00000001   /* clock */
#define E1000_EECD_CS   0x00000002   /* chip select */
#define E1000_EECD_DI   0x00000004   /* data into the EEPROM */
#define E1000_EECD_DO   0x00000008   /* data out of the EEPROM */
#define E1000_EECD_FWE  0x00000030   /* flash write enable */
#define E1000_EECD_REQ  0x00000040   /* software requests access */
#define E1000_EECD_GNT  0x00000080   /* access granted */
#define E1000_EECD_PRES 0x00000100   /* EEPROM present */
#define E1000_EECD_SIZE 0x00000200   /* 0: 64 words (6 address bits) */
#define E1000_EE_WORDS  64
#define E1000_EE_READ_OPCODE 0x6     /* start bit + read */
#define E1000_EE_CHECKSUM_WORD 0x3f
#define E1000_EE_SUM    0xbaba

/* EERD (82540 layout) */
#define E1000_EERD_START 0x00000001
#define E1000_EERD_DONE  0x00000010
#define E1000_EERD_ADDR_SHIFT 8
#define E1000_EERD_DATA_SHIFT 16

/* CTRL_EXT */
#define E1000_CTRL_EXT_EE_RST 0x00002000

/* MDIC */
#define E1000_MDIC_DATA_MASK 0x0000ffff
#define E1000_MDIC_REG_SHIFT 16
#define E1000_MDIC_PHY_SHIFT 21
#define E1000_MDIC_OP_WRITE  0x04000000
#define E1000_MDIC_OP_READ   0x08000000
#define E1000_MDIC_READY     0x10000000
#define E1000_MDIC_INT_EN    0x20000000
#define E1000_MDIC_ERROR     0x40000000
#define E1000_PHY_ADDR       1

/* PHY (Marvell 88E1011) registers */
#define PHY_CTRL          0x00
#define PHY_STATUS        0x01
#define PHY_ID1           0x02
#define PHY_ID2           0x03
#define PHY_AUTONEG_ADV   0x04
#define PHY_LP_ABILITY    0x05
#define PHY_AUTONEG_EXP   0x06
#define PHY_1000T_CTRL    0x09
#define PHY_1000T_STATUS  0x0a
#define PHY_EXT_STATUS    0x0f
#define M88_PHY_SPEC_CTRL 0x10
#define M88_PHY_SPEC_STATUS 0x11
#define M88_EXT_PHY_SPEC_CTRL 0x14
#define PHY_NR_REGS       32
#define MII_CR_RESET         0x8000
#define MII_CR_RESTART_AUTONEG 0x0200
#define MII_SR_LINK_STATUS   0x0004
#define MII_SR_AUTONEG_COMPLETE 0x0020
#define M88E1011_PHY_ID1  0x0141
#define M88E1011_PHY_ID2  0x0c20     /* Linux matches 0x01410c20 with the low 4 bits masked */

/* Interrupt causes: ICR, ICS, IMS, IMC */
#define E1000_ICR_TXDW   0x00000001
#define E1000_ICR_TXQE   0x00000002
#define E1000_ICR_LSC    0x00000004
#define E1000_ICR_RXSEQ  0x00000008
#define E1000_ICR_RXDMT0 0x00000010
#define E1000_ICR_RXO    0x00000040
#define E1000_ICR_RXT0   0x00000080
#define E1000_ICR_MDAC   0x00000200
#define E1000_ICR_VALID  0x0001f6df  /* causes an 82540 has */

/* RCTL */
#define E1000_RCTL_EN    0x00000002
#define E1000_RCTL_UPE   0x00000008
#define E1000_RCTL_MPE   0x00000010
#define E1000_RCTL_LPE   0x00000020
#define E1000_RCTL_RDMTS_SHIFT 8
#define E1000_RCTL_MO_SHIFT 12
#define E1000_RCTL_BAM   0x00008000
#define E1000_RCTL_BSIZE_SHIFT 16
#define E1000_RCTL_VFE   0x00040000
#define E1000_RCTL_BSEX  0x02000000
#define E1000_RCTL_SECRC 0x04000000

/* TCTL */
#define E1000_TCTL_EN    0x00000002

/* RAH */
#define E1000_RAH_AV     0x80000000
#define E1000_RAH_AS     0x00030000

/* Descriptors: 16 bytes, little endian. TX byte 11 is the command byte
 * (legacy CMD, data DCMD, context TUCMD), byte 12 the status byte. */
#define E1000_DESC_SIZE  16
#define E1000_TXD_CMD_EOP  0x01
#define E1000_TXD_CMD_IFCS 0x02
#define E1000_TXD_CMD_IC   0x04     /* legacy: insert checksum */
#define E1000_TXD_CMD_TCP  0x01     /* context: TCP (else UDP) */
#define E1000_TXD_CMD_IP   0x02     /* context: IPv4 (else IPv6) */
#define E1000_TXD_CMD_TSE  0x04     /* context and data: segmentation */
#define E1000_TXD_CMD_RS   0x08
#define E1000_TXD_CMD_DEXT 0x20
#define E1000_TXD_CMD_VLE  0x40
#define E1000_TXD_DTYP_CONTEXT 0x0
#define E1000_TXD_DTYP_DATA    0x1
#define E1000_TXD_STAT_DD  0x01
#define E1000_TXD_STAT_EC  0x02
#define E1000_TXD_STAT_LC  0x04
#define E1000_TXD_STAT_TU  0x08
#define E1000_TXD_POPTS_IXSM 0x01
#define E1000_TXD_POPTS_TXSM 0x02

#define E1000_RXD_STAT_DD   0x01
#define E1000_RXD_STAT_EOP  0x02
#define E1000_RXD_STAT_IXSM 0x04
#define E1000_RXD_STAT_VP   0x08
#define E1000_RXD_ERR_RXE   0x80

/* ---- internal entry points, for tests/unit/test_e1000.c ---- */

struct vm;
struct net_config;
struct net_backend;
struct pci_device;
struct net_stats;
struct e1000;

/* The device on a backend the caller made (e1000_device_ops.create makes
 * one with net_backend_create). On success the device owns `be`. Returns
 * 0 or -errno after printing one error line. */
int e1000_create_with_backend(struct vm *vm, const struct net_config *nc, struct net_backend *be,
			      struct e1000 **out);
void e1000_destroy_device(struct vm *vm, struct e1000 *e);
struct pci_device *e1000_pci(struct e1000 *e);
const struct net_stats *e1000_stats(struct e1000 *e);
/* What the loop thread does when the device's eventfd or timer fires:
 * resumes throttled TX, refills RX, re-evaluates the interrupt. */
void e1000_loop_work(struct e1000 *e);

#endif
