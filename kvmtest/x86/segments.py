"""Segment- and gate-descriptor type values (the 4-bit type field), by their SDM names, and the
field offsets of the task-state segment.

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

# 32-bit TSS field offsets (SDM Vol. 3A 8.2.1, Figure 8-2); each field is 32 bits wide, a
# selector in its low 16 bits.
TSS32_LINK = 0x00          # previous task link
TSS32_ESP0 = 0x04
TSS32_SS0 = 0x08
TSS32_CR3 = 0x1C           # PDBR
TSS32_EIP = 0x20
TSS32_EFLAGS = 0x24
TSS32_ESP = 0x38
TSS32_ES = 0x48            # then CS, SS, DS, FS, GS, 4 bytes apart
TSS32_CS = 0x4C
TSS32_SS = 0x50
TSS32_DS = 0x54
TSS32_FS = 0x58
TSS32_GS = 0x5C
TSS32_LDT = 0x60           # LDT segment selector
TSS32_IOMAP_BASE = 0x66    # I/O map base address, 16 bits
TSS32_SIZE = 0x68          # 104 bytes: the smallest limit + 1 a 32-bit TSS may have (8.2.2)

# 64-bit TSS field offsets (SDM Vol. 3A 8.7, Figure 8-11); the stack pointers are 64 bits wide.
TSS64_RSP0 = 0x04
TSS64_IST1 = 0x24          # IST1-IST7, 8 bytes apart
TSS64_IOMAP_BASE = 0x66
TSS64_SIZE = 0x68
