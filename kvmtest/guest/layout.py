"""Where the guest builder puts things in guest physical (and, identity-mapped, virtual) memory.

Everything below 64 KiB is reachable from real mode with segment bases of zero, so the
same addresses serve every CPU mode.
"""

MEM_SIZE = 0x200000        # slot 0: guest RAM at 0
IDENTITY_SIZE = 0x400000   # paged modes identity-map [0, 4 MiB): RAM plus room for test slots
IVT = 0x0000               # real-mode interrupt vector table (to 0x400)
# Exception records, one per vCPU (kvmtest.guest.exc_records, guests/handlers*.S): vCPU n's is
# EXC_RECORD_SIZE bytes at EXC_INFO + n * EXC_RECORD_SIZE. Guest code reaches its own through GS
# (the builder sets vCPU n's GS base to n * EXC_RECORD_SIZE), so gs:[EXC_*] is the field below in
# the running vCPU's record; vCPU 0's GS base is 0, so its fields are at these very addresses.
EXC_INFO = 0x0400
EXC_RESUME = EXC_INFO + 0x00   # nonzero: resume here instead of reporting the exception
EXC_VECTOR = EXC_INFO + 0x08   # last caught vector (0xFF = none)
EXC_ERROR_CODE = EXC_INFO + 0x10
EXC_RIP = EXC_INFO + 0x18
EXC_CR2 = EXC_INFO + 0x20
EXC_COUNT = EXC_INFO + 0x28
EXC_RECORD_SIZE = 0x40     # a multiple of 16: in real mode GS = base / 16 reaches it
EXC_RECORDS_MAX = 8        # records for vCPUs 0-7, to 0x600
LOW_DATA = 0x0600          # to GDT: free below 64 KiB, where real-mode code with base 0 reaches
GDT = 0x1000
IDT = 0x2000
TSS = 0x3000
TSS_SIZE = 0x68            # 104 bytes; the I/O map base points past the limit (no bitmap)
HANDLERS = 0x4000          # exception stubs and the common handler (to 0x6000)
KERNEL_STACK_TOP = 0x7000
USER_STACK_TOP = 0x8000
CODE = 0x8000              # the test's code (to 0x10000)
CODE_END = 0x10000
DATA = 0x10000             # 64 KiB the test may use freely
DATA_END = 0x20000
PAGE_TABLES = 0x20000      # page-table pool, to the end of RAM
MMIO_BASE = 0x40000000     # unbacked; identity-mapped in paged modes, so accesses exit as MMIO.
MMIO_SIZE = 0x200000       # Below 2 GiB so 64-bit code can address it with a disp32.
PROTOCOL_MMIO = MMIO_BASE + MMIO_SIZE - 0x1000  # the protocol's channel at CPL3 (see protocol.py)

# GDT selectors (index * 8). SYSCALL/SYSRET need kernel CS, kernel SS = CS+8, and user
# CS32, user SS, user CS64 in that order (SDM Vol. 2B SYSRET; APM Vol. 2 6.1.1).
SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_CODE32 = 0x18
SEL_CODE16 = 0x20
SEL_DATA16 = 0x28
SEL_USER_CODE32 = 0x30
SEL_USER_DATA = 0x38
SEL_USER_CODE64 = 0x40
SEL_TSS = 0x48             # 16 bytes in long mode (0x48 and 0x50)
SEL_USER_CODE16 = 0x58
GDT_ENTRIES = 0x60 // 8    # the test may add descriptors from here on
