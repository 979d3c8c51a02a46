"""Bits of the x86 control, flags, extended-control and debug registers, by their SDM names.

Each name is the register, an underscore, and the SDM's name of the bit or field
(CR4_SMEP, EFER_NXE, RFLAGS_IF, XCR0_AVX, DR6_BS). Values are masks in the register,
not bit numbers. Pure data: nothing here reads or writes a register.
"""

# CR0 (SDM Vol. 3A 2.5 "Control Registers", Figure 2-7)
CR0_PE = 1 << 0    # protection enable
CR0_MP = 1 << 1    # monitor coprocessor
CR0_EM = 1 << 2    # emulation (x87 and SSE raise #NM / #UD)
CR0_TS = 1 << 3    # task switched
CR0_ET = 1 << 4    # extension type (reads as 1 on every processor since the Pentium 4)
CR0_NE = 1 << 5    # numeric error
CR0_WP = 1 << 16   # write protect (supervisor writes to read-only pages fault)
CR0_AM = 1 << 18   # alignment mask (with RFLAGS.AC: #AC at CPL3)
CR0_NW = 1 << 29   # not write-through
CR0_CD = 1 << 30   # cache disable
CR0_PG = 1 << 31   # paging

# CR3 flags with CR4.PCIDE = 0 (SDM Vol. 3A 4.5, Table 4-12)
CR3_PWT = 1 << 3
CR3_PCD = 1 << 4

# CR4 (SDM Vol. 3A 2.5, Figure 2-7)
CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_MCE = 1 << 6
CR4_PGE = 1 << 7
CR4_PCE = 1 << 8
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_UMIP = 1 << 11
CR4_LA57 = 1 << 12
CR4_VMXE = 1 << 13
CR4_SMXE = 1 << 14
CR4_FSGSBASE = 1 << 16
CR4_PCIDE = 1 << 17
CR4_OSXSAVE = 1 << 18
CR4_KL = 1 << 19
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
CR4_PKE = 1 << 22
CR4_CET = 1 << 23
CR4_PKS = 1 << 24

# CR8 (SDM Vol. 3A 2.5): the task-priority class, bits 3:0
CR8_TPR = 0xF

# IA32_EFER (SDM Vol. 3A 2.2.1, Table 2-1; AMD APM Vol. 2 3.1.7 for the AMD-only bits)
EFER_SCE = 1 << 0      # SYSCALL enable
EFER_LME = 1 << 8      # IA-32e (long) mode enable
EFER_LMA = 1 << 10     # IA-32e mode active (set by the processor)
EFER_NXE = 1 << 11     # execute-disable enable
EFER_SVME = 1 << 12    # AMD: secure virtual machine enable
EFER_LMSLE = 1 << 13   # AMD: long-mode segment limit enable
EFER_FFXSR = 1 << 14   # AMD: fast FXSAVE/FXRSTOR
EFER_TCE = 1 << 15     # AMD: translation cache extension

# IA32_APIC_BASE fields (SDM Vol. 3A 11.4.4, Figure 11-5; 11.12.1 for EXTD)
APIC_BASE_BSP = 1 << 8     # this processor is the bootstrap processor
APIC_BASE_EXTD = 1 << 10   # x2APIC mode
APIC_BASE_EN = 1 << 11     # APIC global enable

# IA32_PAT (SDM Vol. 3A 12.12.2, Figure 12-9): entries PA0-PA7, one byte each, each holding a memory
# type encoding (Table 12-10).
PAT_UC = 0x00              # uncacheable
PAT_WC = 0x01              # write combining
PAT_WT = 0x04              # write through
PAT_WP = 0x05              # write protected
PAT_WB = 0x06              # write back
PAT_UC_MINUS = 0x07        # UC-, uncached (overridable by an MTRR's WC)
# The value after power-up or reset, PA0-PA7 = WB, WT, UC-, UC, WB, WT, UC-, UC (12.12.4,
# Table 12-12; AMD APM Vol. 2, "PAT Register", gives the same reset value).
PAT_POWER_UP = 0x0007040600070406

# IA32_DEBUGCTL fields (SDM Vol. 3B 18.4.1, Vol. 4 Table 2-2)
DEBUGCTL_LBR = 1 << 0
DEBUGCTL_BTF = 1 << 1      # single-step on branches
DEBUGCTL_BLD = 1 << 2      # bus-lock detection: #DB after a bus lock

# RFLAGS (SDM Vol. 1 3.4.3, Figure 3-8; Vol. 3A 2.3 for the system flags)
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1   # reserved, always 1
RFLAGS_PF = 1 << 2
RFLAGS_AF = 1 << 4
RFLAGS_ZF = 1 << 6
RFLAGS_SF = 1 << 7
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_OF = 1 << 11
RFLAGS_IOPL = 3 << 12   # the 2-bit I/O privilege level field (this mask is also IOPL = 3)
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18
RFLAGS_VIF = 1 << 19
RFLAGS_VIP = 1 << 20
RFLAGS_ID = 1 << 21

# XCR0 state components (SDM Vol. 1 13.1 "XSAVE-Supported Features and State-Component
# Bitmaps", 13.3 "Enabling the XSAVE Feature Set")
XCR0_X87 = 1 << 0
XCR0_SSE = 1 << 1
XCR0_AVX = 1 << 2
XCR0_BNDREGS = 1 << 3
XCR0_BNDCSR = 1 << 4
XCR0_OPMASK = 1 << 5
XCR0_ZMM_HI256 = 1 << 6
XCR0_HI16_ZMM = 1 << 7
XCR0_PKRU = 1 << 9
XCR0_TILECFG = 1 << 17
XCR0_TILEDATA = 1 << 18

# DR6 (SDM Vol. 3B 18.2.3 "Debug Status Register (DR6)")
DR6_B0 = 1 << 0        # breakpoint 0 condition detected (B1-B3 follow)
DR6_B1 = 1 << 1
DR6_B2 = 1 << 2
DR6_B3 = 1 << 3
DR6_BLD = 1 << 11      # bus-lock detected (active low: cleared when it is reported)
DR6_BD = 1 << 13       # debug-register access detected
DR6_BS = 1 << 14       # single step
DR6_BT = 1 << 15       # task switch
DR6_RTM = 1 << 16      # RTM region (active low)
# DR6 with no debug condition reported: the reserved bits that read as 1 and the active-low BLD
# and RTM bits set; the power-up and reset value (SDM Vol. 3A Table 10-1: FFFF0FF0H).
DR6_INIT = 0xFFFF0FF0

# DR7 (SDM Vol. 3B 18.2.4 "Debug Control Register (DR7)")
DR7_L0 = 1 << 0        # breakpoint 0 enabled locally (G0, L1, G1, ... follow in pairs)
DR7_G0 = 1 << 1
DR7_L1 = 1 << 2
DR7_G1 = 1 << 3
DR7_L2 = 1 << 4
DR7_G2 = 1 << 5
DR7_L3 = 1 << 6
DR7_G3 = 1 << 7
DR7_LE = 1 << 8
DR7_GE = 1 << 9
DR7_RTM = 1 << 11
DR7_GD = 1 << 13       # general detect: MOV DR raises #DB
# DR7 with no breakpoint enabled: bit 10 reads as 1; the power-up and reset value
# (SDM Vol. 3A Table 10-1: 00000400H).
DR7_INIT = 1 << 10
DR7_RW0_SHIFT = 16     # R/W0 (bits 17:16); R/Wn at 16 + 4n: 00 execute, 01 write, 11 read/write
DR7_LEN0_SHIFT = 18    # LEN0 (bits 19:18); LENn at 18 + 4n: 00 1 byte, 01 2, 11 4, 10 8 bytes
