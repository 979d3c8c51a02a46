"""Local APIC register offsets and fields (SDM Vol. 3A 11.4.1 Table 11-1 "Local APIC Register
Address Map", 11.5.1 Figure 11-8 LVT, 11.6.1 Figure 11-12 ICR, 11.9 SVR).

Offsets are from the APIC base (the xAPIC page, and the byte offsets of kvm_lapic_state.regs,
api.rst KVM_GET_LAPIC); in x2APIC mode register offset R is MSR 0x800 + (R >> 4) (11.12.1.2).
"""

APIC_DEFAULT_PHYS_BASE = 0xFEE00000   # IA32_APIC_BASE's base after reset (11.4.4)

APIC_ID = 0x020
APIC_LVR = 0x030          # version
APIC_TPR = 0x080          # task priority
APIC_PPR = 0x0A0          # processor priority
APIC_EOI = 0x0B0
APIC_LDR = 0x0D0
APIC_SVR = 0x0F0          # spurious-interrupt vector register
APIC_ISR = 0x100          # in-service register, 8 x 32 bits at 0x100-0x170
APIC_TMR = 0x180          # trigger-mode register, 0x180-0x1F0
APIC_IRR = 0x200          # interrupt-request register, 0x200-0x270
APIC_ESR = 0x280
APIC_LVT_CMCI = 0x2F0     # corrected machine-check interrupt (17.5.1)
APIC_ICR = 0x300          # interrupt command, bits 31:0
APIC_ICR2 = 0x310         # interrupt command, bits 63:32 (destination in 31:24)
APIC_LVT_TIMER = 0x320
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TMICT = 0x380        # timer initial count
APIC_TMCCT = 0x390        # timer current count
APIC_TDCR = 0x3E0         # timer divide configuration

APIC_SVR_ENABLE = 1 << 8           # APIC software enable (11.9, Figure 11-23)
APIC_LVT_MASKED = 1 << 16          # LVT mask bit (Figure 11-8)
APIC_ICR_LEVEL_ASSERT = 1 << 14    # ICR level: assert (Figure 11-12)
APIC_ICR_DEST_SELF = 1 << 18       # ICR destination shorthand 01b: self
APIC_ICR_DEST_ALL_BUT_SELF = 3 << 18
APIC_ICR_DM_NMI = 4 << 8           # ICR delivery mode 100b: NMI
