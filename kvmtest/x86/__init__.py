"""x86 architectural names, in one namespace: `from kvmtest.x86 import CR4_SMEP, PTE_XD, GP_VECTOR`.

The names are the SDM's (the AMD APM's for AMD-only ones, KVM's documentation for KVM's
paravirtual MSRs), prefixed by what they belong to, so no name means two things:

- registers.py: CR0_*, CR3_*, CR4_*, CR8_*, EFER_*, RFLAGS_*, XCR0_*, DR6_*, DR7_* (masks), MSR fields
  (APIC_BASE_*, PAT_*, DEBUGCTL_*)
- paging.py: PTE_* (paging-structure entry bits), PFEC_* (page-fault error-code bits)
- vectors.py: DE_VECTOR ... SX_VECTOR, VECTORS ("#GP" -> 13), ERROR_CODE_VECTORS, vector_name()
- segments.py: SEG_TYPE_* (code/data descriptor types), SYS_TYPE_* (system and gate types), TSS32_*,
  TSS64_* (task-state segment field offsets)
- msr.py: MSR_* numbers (msr_names.msr_name() names them in messages)
- apic.py: APIC_* local APIC register offsets and fields
- mce.py: MCG_*, MCI_* machine-check fields, msr_ia32_mci_*(bank) bank MSR numbers
- kvm_para.py: KVM's paravirtual interface (KVM_FEATURE_*, KVM_HC_*, PVCLOCK_*, MSR control bits)

Pure data; imports nothing from kvmtest, so any layer may use it. Each group cites its SDM
section; tests/test_x86_names.py checks a sample against literals typed from the SDM.
"""

from .apic import *  # noqa: F401,F403
from .kvm_para import *  # noqa: F401,F403
from .mce import *  # noqa: F401,F403
from .msr import *  # noqa: F401,F403
from .paging import *  # noqa: F401,F403
from .registers import *  # noqa: F401,F403
from .segments import *  # noqa: F401,F403
from .vectors import *  # noqa: F401,F403
