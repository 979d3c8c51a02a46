"""Paging-structure entry bits and page-fault error-code bits, by their SDM names.

Values are masks in a 32-bit or 64-bit entry. The same bit can mean different things at
different levels; where the SDM gives it two names, both are here on purpose (bit 7 is PS in
an entry that maps a large page or points to a table, PAT in a 4-KByte PTE).
"""

# Paging-structure entries (SDM Vol. 3A 4.3 Tables 4-4 to 4-6 for 32-bit paging, 4.4 Tables
# 4-8 to 4-11 for PAE, 4.5 Tables 4-14 to 4-20 for 4-level and 5-level paging)
PTE_P = 1 << 0        # present
PTE_RW = 1 << 1       # R/W: writes allowed
PTE_US = 1 << 2       # U/S: user-mode accesses allowed
PTE_PWT = 1 << 3      # page-level write-through
PTE_PCD = 1 << 4      # page-level cache disable
PTE_A = 1 << 5        # accessed
PTE_D = 1 << 6        # dirty (entries that map a page)
PTE_PS = 1 << 7       # page size: this entry maps a large page (PDE, PDPTE)
PTE_PAT = 1 << 7      # PAT index bit of a 4-KByte PTE (the same bit as PS, at the last level)
PTE_G = 1 << 8        # global (entries that map a page)
PTE_PAT_LARGE = 1 << 12   # PAT index bit of an entry that maps a 2/4-MByte or 1-GByte page
PTE_XD = 1 << 63      # execute-disable, with IA32_EFER.NXE = 1 (AMD: NX); not in 32-bit paging
PTE_PKEY_SHIFT = 59   # protection key, bits 62:59 of an entry that maps a page (CR4.PKE)

# Page-fault error code (SDM Vol. 3A 4.7 "Page-Fault Exceptions", Figure 4-12)
PFEC_P = 1 << 0       # 0: not present; 1: a protection violation
PFEC_W = 1 << 1       # W/R: the access was a write
PFEC_U = 1 << 2       # U/S: the access was a user-mode access
PFEC_RSVD = 1 << 3    # a reserved bit was set in a paging-structure entry
PFEC_I = 1 << 4       # I/D: the access was an instruction fetch
PFEC_PK = 1 << 5      # protection keys
PFEC_SS = 1 << 6      # shadow-stack access
PFEC_HLAT = 1 << 7    # HLAT paging
PFEC_SGX = 1 << 15    # SGX access-control violation
