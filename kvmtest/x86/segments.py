"""Segment- and gate-descriptor type values (the 4-bit type field), by their SDM names.

The same number means a code/data type when the descriptor's S flag is 1 and a system type
when it is 0, so the two groups have separate prefixes: SEG_TYPE_ (S = 1) and SYS_TYPE_ (S = 0).
"""

# Code- and data-segment types, S = 1 (SDM Vol. 3A 3.4.5.1, Table 3-1)
SEG_TYPE_DATA_RO = 0x0
SEG_TYPE_DATA_RO_ACCESSED = 0x1      # bit 0 of every code/data type is "accessed"
SEG_TYPE_DATA_RW = 0x2
SEG_TYPE_DATA_RW_ACCESSED = 0x3
SEG_TYPE_DATA_RO_EXPAND_DOWN = 0x4
SEG_TYPE_DATA_RW_EXPAND_DOWN = 0x6
SEG_TYPE_CODE_X = 0x8                # execute-only
SEG_TYPE_CODE_RX = 0xA               # execute/read
SEG_TYPE_CODE_RX_ACCESSED = 0xB
SEG_TYPE_CODE_X_CONFORMING = 0xC
SEG_TYPE_CODE_RX_CONFORMING = 0xE

# System-segment and gate-descriptor types, S = 0 (SDM Vol. 3A 3.5, Table 3-2). In IA-32e
# mode the 32-bit TSS and gate types mean their 64-bit forms, and the 16-bit ones are invalid.
SYS_TYPE_TSS16_AVAILABLE = 0x1
SYS_TYPE_LDT = 0x2
SYS_TYPE_TSS16_BUSY = 0x3
SYS_TYPE_CALL_GATE16 = 0x4
SYS_TYPE_TASK_GATE = 0x5
SYS_TYPE_INT_GATE16 = 0x6
SYS_TYPE_TRAP_GATE16 = 0x7
SYS_TYPE_TSS_AVAILABLE = 0x9         # 32-bit TSS (available), or 64-bit TSS in IA-32e mode
SYS_TYPE_TSS_BUSY = 0xB
SYS_TYPE_CALL_GATE = 0xC
SYS_TYPE_INT_GATE = 0xE
SYS_TYPE_TRAP_GATE = 0xF
