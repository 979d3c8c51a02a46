"""Exception vectors by their mnemonics (SDM Vol. 3A 6.3.1, Table 6-1; AMD APM Vol. 2 8.2 for
#HV, #VC and #SX).

The NAME_VECTOR spellings are those of <asm/kvm.h> (DE_VECTOR ... VE_VECTOR), where KVM's
UAPI defines them; the rest follow the same pattern. NMI is an interrupt, not an exception,
and has no '#' in its mnemonic.
"""

DE_VECTOR = 0     # divide error
DB_VECTOR = 1     # debug
NMI_VECTOR = 2    # non-maskable interrupt
BP_VECTOR = 3     # breakpoint (INT3)
OF_VECTOR = 4     # overflow (INTO)
BR_VECTOR = 5     # BOUND range exceeded
UD_VECTOR = 6     # invalid opcode
NM_VECTOR = 7     # device not available
DF_VECTOR = 8     # double fault
TS_VECTOR = 10    # invalid TSS
NP_VECTOR = 11    # segment not present
SS_VECTOR = 12    # stack-segment fault
GP_VECTOR = 13    # general protection
PF_VECTOR = 14    # page fault
MF_VECTOR = 16    # x87 floating-point error
AC_VECTOR = 17    # alignment check
MC_VECTOR = 18    # machine check
XM_VECTOR = 19    # SIMD floating-point exception
VE_VECTOR = 20    # virtualization exception
CP_VECTOR = 21    # control protection
HV_VECTOR = 28    # AMD: hypervisor injection
VC_VECTOR = 29    # AMD: VMM communication
SX_VECTOR = 30    # AMD: security exception

# "#GP" -> 13, as messages and guest macros spell them.
VECTORS: dict[str, int] = {("" if name == "NMI_VECTOR" else "#") + name.removesuffix("_VECTOR"): value
                           for name, value in dict(globals()).items() if name.endswith("_VECTOR")}
VECTOR_NAMES: dict[int, str] = {value: name for name, value in VECTORS.items()}

# Vectors whose delivery pushes an error code (SDM Vol. 3A 6.13 "Error Code"; APM Vol. 2 8.2
# for #VC and #SX).
ERROR_CODE_VECTORS = frozenset({DF_VECTOR, TS_VECTOR, NP_VECTOR, SS_VECTOR, GP_VECTOR, PF_VECTOR, AC_VECTOR,
                                CP_VECTOR, VC_VECTOR, SX_VECTOR})


def vector_name(vector: int) -> str:
    """'#GP' for 13, 'NMI' for 2, 'vector 32' for a vector without a mnemonic."""
    return VECTOR_NAMES.get(vector, f"vector {vector}")
