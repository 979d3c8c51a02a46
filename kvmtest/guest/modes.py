"""The CPU modes a guest can start in, and the register state that puts a vCPU there.

Names are the ids tests are parametrized with: real, pm16, pm32, paging32, pae, long64,
compat32, long64-la57, and -cpl3 variants of the protected modes. `reset` leaves the vCPU
in the architectural reset state so the guest switches modes itself.
"""

import os
from dataclasses import dataclass

from ..abi.structs import kvm_segment, kvm_sregs
from ..errors import UnknownModeError
from . import descriptors as D
from . import layout as L
from .paging import GiB1, KiB4, MiB2, MiB4

# Control register and EFER bits (SDM Vol. 3A 2.5, 2.2.1)
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR4_MCE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10
CR4_UMIP, CR4_LA57, CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE = 1 << 11, 1 << 12, 1 << 16, 1 << 17, 1 << 18
CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 20, 1 << 21, 1 << 22
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
RFLAGS_FIXED, RFLAGS_TF, RFLAGS_IF, RFLAGS_IOPL3, RFLAGS_AC = 0x2, 1 << 8, 1 << 9, 3 << 12, 1 << 18

RESET_CR0 = CR0_CD | CR0_NW | CR0_ET  # SDM Vol. 3A Table 10-1: 0x60000010


@dataclass(frozen=True)
class CpuMode:
    name: str
    code_bits: int          # bitness of the test's code
    handler_bits: int       # bitness of the exception handlers (the IDT's format)
    paging: str | None = None   # None, "32", "pae", "4level", "5level"
    cpl: int = 0
    protected: bool = True
    long: bool = False
    requires: str | None = None  # a CPUID feature name the mode needs (see kvmtest.cpuid)

    @property
    def page_sizes(self) -> tuple[int, ...]:
        return {None: (), "32": (KiB4, MiB4), "pae": (KiB4, MiB2), "4level": (KiB4, MiB2, GiB1),
                "5level": (KiB4, MiB2, GiB1)}[self.paging]

    @property
    def user(self) -> bool:
        return self.cpl == 3


def _mode(name, bits, hbits, paging=None, **kw):
    return CpuMode(name, bits, hbits, paging, **kw)


_BASE = [
    _mode("real", 16, 16, protected=False),
    _mode("pm16", 16, 16),
    _mode("pm32", 32, 32),
    _mode("paging32", 32, 32, "32"),
    _mode("pae", 32, 32, "pae"),
    _mode("long64", 64, 64, "4level", long=True),
    _mode("compat32", 32, 64, "4level", long=True),
    _mode("long64-la57", 64, 64, "5level", long=True, requires="la57"),
]
MODES: dict[str, CpuMode] = {m.name: m for m in _BASE}
for _m in _BASE:
    if _m.protected and _m.name != "pm16" and not _m.requires:
        _u = CpuMode(f"{_m.name}-cpl3", _m.code_bits, _m.handler_bits, _m.paging, 3, True, _m.long)
        MODES[_u.name] = _u
RESET = CpuMode("reset", 16, 16, protected=False)
MODES["reset"] = RESET

# The modes every applicable check runs in (reset is for mode-switch tests only).
ALL_MODES = [n for n in MODES if n != "reset"]
CPL0_MODES = [n for n in ALL_MODES if not MODES[n].user]


# Modes whose code addresses any guest physical address below 4 GiB through flat segments
# (identity-mapped in the paged ones): real mode and pm16 stop at 64 KiB segments.
FLAT_MODES = [n for n in ALL_MODES if MODES[n].code_bits != 16 and not MODES[n].requires]
# Every mode a guest can start in on any x86-64 host (LA57 needs a CPU feature).
COMMON_MODES = [n for n in ALL_MODES if not MODES[n].requires]


def regs_for(mode: "str | CpuMode") -> dict[str, str]:
    """Register names at the mode's natural width: rax.. in 64-bit code, eax.. otherwise
    (16-bit code uses the 32-bit names with an operand-size prefix)."""
    prefix = "r" if get_mode(mode).code_bits == 64 else "e"
    return {r: prefix + r for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")}


def get_mode(name: str | CpuMode) -> CpuMode:
    if isinstance(name, CpuMode):
        return name
    if name not in MODES:
        raise UnknownModeError(f"unknown CPU mode {name!r}; kvmtest defines: {', '.join(MODES)}")
    return MODES[name]


def gdt_entries() -> dict[int, bytes]:
    """The GDT every protected-mode guest gets (selector -> encoded descriptor)."""
    tss = D.tss(L.TSS, L.TSS_SIZE - 1, busy=True)
    return {
        L.SEL_CODE64: D.code64().encode(),
        L.SEL_DATA: D.data().encode(),
        L.SEL_CODE32: D.code32().encode(),
        L.SEL_CODE16: D.code16().encode(),
        L.SEL_DATA16: D.data16().encode(),
        L.SEL_USER_CODE32: D.code32(dpl=3).encode(),
        L.SEL_USER_DATA: D.data(dpl=3).encode(),
        L.SEL_USER_CODE64: D.code64(dpl=3).encode(),
        L.SEL_TSS: tss.encode_system64(),
        L.SEL_USER_CODE16: D.code16(dpl=3).encode(),
    }


def tr_loaded_busy() -> bool:
    """Whether KVM_SET_SREGS loads TR with the busy TSS type (11), as LTR leaves it (SDM Vol. 3A 7.2.4)
    and VMX requires of guest state (SDM Vol. 3C 27.3.1.2): everywhere except under QEMU's TCG.

    QEMU's 32-bit stack switch (target/i386/tcg/seg_helper.c, get_ss_esp_from_tss) aborts the
    whole emulator ("qemu: fatal: invalid tss type") when TR's cached type is busy, so every
    exception from CPL3 in 32-bit protected mode would kill the VM under `kvmtest run --kernel`
    on TCG. There TR is loaded with the available type (9) instead: SVM, the only virtualization
    QEMU's TCG emulates, does not check TR's type on VMRUN (APM Vol. 2 15.5.1), and no guest
    instruction reads TR's cached type (STR reads the selector, LAR the descriptor in the GDT,
    which stays busy). Reports name the accelerator, so every verdict says it ran this way.
    """
    return os.environ.get("KVMTEST_ACCELERATOR") != "tcg"


def keep_tr_loadable(sregs: kvm_sregs) -> kvm_sregs:
    """Make `sregs`, as KVM_GET_SREGS read them, safe to write back under TCG: KVM on SVM always
    reports TR busy (arch/x86/kvm/svm/svm.c svm_get_segment sets the busy bit), so a get/set round
    trip would load the busy type that tr_loaded_busy() avoids. Elsewhere `sregs` is left as read."""
    if not tr_loaded_busy() and sregs.tr.type == D.TSS_BUSY:
        sregs.tr.type = D.TSS_AVAILABLE
    return sregs


def _real_segment(selector=0, code=False) -> kvm_segment:
    return kvm_segment(base=selector << 4, limit=0xFFFF, selector=selector,
                       type=D.CODE_RX_ACCESSED if code else D.DATA_RW_ACCESSED, present=1, s=1)


def mode_sregs(mode: CpuMode, sregs: kvm_sregs, cr3: int = 0, nx: bool = False) -> kvm_sregs:
    """Fill `sregs` (as read from a fresh vCPU) for `mode`; returns it."""
    if not mode.protected:
        sregs.cs = _real_segment(code=True)
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, _real_segment())
        sregs.idt.base, sregs.idt.limit = L.IVT, 0x3FF
        sregs.cr0 = RESET_CR0
        return sregs
    user = mode.user
    if mode.long:
        code_sel = (L.SEL_USER_CODE64 if user else L.SEL_CODE64) if mode.code_bits == 64 else \
            (L.SEL_USER_CODE32 if user else L.SEL_CODE32)
    else:
        code_sel = {16: L.SEL_CODE16, 32: L.SEL_USER_CODE32 if user else L.SEL_CODE32}[mode.code_bits]
    data_sel = L.SEL_USER_DATA if user else (L.SEL_DATA16 if mode.code_bits == 16 else L.SEL_DATA)
    gdt = gdt_entries()
    rpl = 3 if user else 0
    sregs.cs = D.Descriptor.decode(gdt[code_sel]).to_kvm_segment(code_sel | rpl)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, D.Descriptor.decode(gdt[data_sel]).to_kvm_segment(data_sel | rpl))
    sregs.tr = D.tss(L.TSS, L.TSS_SIZE - 1, busy=tr_loaded_busy()).to_kvm_segment(L.SEL_TSS)
    sregs.ldt = kvm_segment(selector=0, type=D.LDT, present=0, unusable=1)
    sregs.gdt.base, sregs.gdt.limit = L.GDT, 0xFFF  # the whole page: tests may add descriptors
    gate_size = 16 if mode.handler_bits == 64 else 8
    sregs.idt.base, sregs.idt.limit = L.IDT, 256 * gate_size - 1
    cr0 = CR0_PE | CR0_ET | CR0_NE
    cr4 = 0
    efer = 0
    if mode.paging:
        cr0 |= CR0_PG | CR0_WP
        cr4 |= {"32": CR4_PSE, "pae": CR4_PAE, "4level": CR4_PAE, "5level": CR4_PAE | CR4_LA57}[mode.paging]
        if nx and mode.paging != "32":
            efer |= EFER_NXE
    if mode.long:
        efer |= EFER_LME | EFER_LMA
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = cr0, cr3, cr4, efer
    return sregs


def initial_rflags(mode: CpuMode) -> int:
    # IOPL 3 at CPL3 so the guest/host protocol's OUT works without an I/O bitmap.
    return RFLAGS_FIXED | (RFLAGS_IOPL3 if mode.user else 0)


def initial_stack(mode: CpuMode) -> int:
    return L.USER_STACK_TOP if mode.user else L.KERNEL_STACK_TOP


def with_sse_enabled(sregs: kvm_sregs) -> kvm_sregs:
    """sregs with what the SDM requires before SSE/SSE2 instructions run: CR0.EM=0 and CR0.MP=1,
    CR4.OSFXSR=1 and CR4.OSXMMEXCPT=1 (SDM Vol. 3A, "Initialization of the SSE/SSE2/SSE3/SSSE3
    Extensions"; Vol. 2: every SSE instruction raises #UD while CR4.OSFXSR is 0 or CR0.EM is 1).
    A backend that runs guest code natively under the host's own CR4 may let SSE through without
    these; upstream KVM does not, so every guest that uses SSE must set them."""
    sregs.cr0 = (sregs.cr0 | CR0_MP) & ~CR0_EM
    sregs.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT
    return sregs
