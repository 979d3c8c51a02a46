"""Machine-check architecture: the global and per-bank MSRs and their fields (SDM Vol. 3B 16.3
"Machine-Check MSRs": 16.3.1.1 IA32_MCG_CAP, 16.3.1.2 IA32_MCG_STATUS, 16.3.2.2 IA32_MCi_STATUS,
16.3.2.5 IA32_MCi_CTL2; 16.5 CMCI; 16.6.2 the UCR error classes).

Bank i's four MSRs are IA32_MCi_CTL/STATUS/ADDR/MISC at 0x400 + 4i ... 0x403 + 4i and its
IA32_MCi_CTL2 at 0x280 + i (SDM Vol. 4 Table 2-2), given here as functions of the bank.
"""

# IA32_MCG_CAP (Figure 16-2)
MCG_CAP_COUNT = 0xFF          # bits 7:0: number of reporting banks
MCG_CTL_P = 1 << 8            # IA32_MCG_CTL present
MCG_EXT_P = 1 << 9
MCG_CMCI_P = 1 << 10          # corrected machine-check interrupt (CMCI) and IA32_MCi_CTL2 present
MCG_TES_P = 1 << 11
MCG_SER_P = 1 << 24           # software error recovery (UCR classes, MCi_STATUS S and AR)
MCG_ELOG_P = 1 << 26
MCG_LMCE_P = 1 << 27

# IA32_MCG_STATUS (Figure 16-3)
MCG_STATUS_RIPV = 1 << 0      # restart IP valid
MCG_STATUS_EIPV = 1 << 1      # error IP valid
MCG_STATUS_MCIP = 1 << 2      # machine check in progress

# IA32_MCi_STATUS (Figure 16-6)
MCI_STATUS_VAL = 1 << 63
MCI_STATUS_OVER = 1 << 62
MCI_STATUS_UC = 1 << 61
MCI_STATUS_EN = 1 << 60
MCI_STATUS_MISCV = 1 << 59
MCI_STATUS_ADDRV = 1 << 58
MCI_STATUS_PCC = 1 << 57
MCI_STATUS_S = 1 << 56
MCI_STATUS_AR = 1 << 55

# IA32_MCi_CTL2 (17.5.1): bits 14:0 the corrected-error threshold, bit 30 CMCI_EN, the rest reserved
MCI_CTL2_CMCI_THRESHOLD = 0x7FFF
MCI_CTL2_CMCI_EN = 1 << 30


def msr_ia32_mci_ctl(bank: int) -> int:
    """IA32_MCi_CTL of `bank` (0x400 + 4 * bank)."""
    return 0x400 + 4 * bank


def msr_ia32_mci_status(bank: int) -> int:
    """IA32_MCi_STATUS of `bank` (0x401 + 4 * bank)."""
    return 0x401 + 4 * bank


def msr_ia32_mci_addr(bank: int) -> int:
    """IA32_MCi_ADDR of `bank` (0x402 + 4 * bank)."""
    return 0x402 + 4 * bank


def msr_ia32_mci_misc(bank: int) -> int:
    """IA32_MCi_MISC of `bank` (0x403 + 4 * bank)."""
    return 0x403 + 4 * bank


def msr_ia32_mci_ctl2(bank: int) -> int:
    """IA32_MCi_CTL2 of `bank` (0x280 + bank)."""
    return 0x280 + bank
