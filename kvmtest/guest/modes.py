"""The CPU modes a guest can start in, and the register state that puts a vCPU there.

Names are the ids tests are parametrized with: real, pm16, pm32, paging32, pae, long64,
compat32, long64-la57, and -cpl3 variants of the protected modes. `reset` leaves the vCPU
in the architectural reset state so the guest switches modes itself.
"""

import functools
from dataclasses import dataclass

from ..abi.structs import kvm_segment, kvm_sregs
from ..accelerator import under_tcg
from ..errors import UnknownModeError
from ..x86 import (
    CR0_CD,
    CR0_EM,
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_LA57,
    CR4_OSFXSR,
    CR4_OSXMMEXCPT,
    CR4_PAE,
    CR4_PSE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    RFLAGS_FIXED,
    RFLAGS_IOPL,
    SEG_TYPE_CODE_RX_ACCESSED,
    SEG_TYPE_DATA_RW_ACCESSED,
    SYS_TYPE_LDT,
    SYS_TYPE_TSS_AVAILABLE,
    SYS_TYPE_TSS_BUSY,
)
from . import descriptors as D
from . import layout as L
from .paging import GiB1, KiB4, MiB2, MiB4

RESET_CR0 = CR0_CD | CR0_NW | CR0_ET  # SDM Vol. 3A Table 10-1: 0x60000010


@dataclass(frozen=True)
class CpuMode:
    """A CPU mode as a bundle of properties the builder and suites select by: code size of the
    test (`code_bits`) and of the exception handlers (`handler_bits`, the IDT's gate format),
    paging form (`paging`: None, "32", "pae", "4level", "5level"), privilege level (`cpl`),
    protected or real mode, long mode, a CPUID feature it needs (`requires`), and whether the guest
    starts from the reset state and switches modes itself (`from_reset`)."""
    name: str
    code_bits: int          # bitness of the test's code
    handler_bits: int       # bitness of the exception handlers (the IDT's format)
    paging: str | None = None   # None, "32", "pae", "4level", "5level"
    cpl: int = 0
    protected: bool = True
    long: bool = False
    requires: str | None = None  # a CPUID feature name the mode needs (see kvmtest.cpuid)
    # The vCPU stays in the architectural reset state at the reset vector (SDM Vol. 3A 10.1.4)
    # and the guest switches modes itself, with the GDT and 4-level tables the builder lays out.
    from_reset: bool = False

    @property
    def uses_gdt(self) -> bool:
        """Whether the builder lays out its GDT: for every protected mode, and for a guest that
        starts at reset, which loads it itself (guests/enter_long.S)."""
        return self.protected or self.from_reset

    @property
    def page_table_format(self) -> str | None:
        """The page tables the builder lays out: the mode's own paging, or for a guest starting
        at reset the 4-level tables it switches to (at the symbol KT_CR3)."""
        return "4level" if self.from_reset else self.paging

    @property
    def handler_code_selector(self) -> int:
        """The GDT code selector of IDT gates in this mode's handler size (unused in real mode)."""
        return {64: L.SEL_CODE64, 32: L.SEL_CODE32, 16: L.SEL_CODE16}[self.handler_bits]

    def shares_tables_with(self, other: "CpuMode") -> bool:
        """Whether vCPUs in this mode and `other` can share one guest's IDT and page tables:
        the same gate format and the same paging form (long64 and compat32 can, pm32 and pae not)."""
        return self.handler_bits == other.handler_bits and self.paging == other.paging

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """The page sizes in bytes this mode's paging can map (4 KiB and the large pages of SDM Vol. 3A
        chapter 4: 4 MiB with 32-bit paging, 2 MiB with PAE, 2 MiB and 1 GiB with 4/5-level); () without
        paging."""
        return {None: (), "32": (KiB4, MiB4), "pae": (KiB4, MiB2), "4level": (KiB4, MiB2, GiB1),
                "5level": (KiB4, MiB2, GiB1)}[self.paging]

    @property
    def user(self) -> bool:
        """Whether the test's code runs at CPL3."""
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
RESET = CpuMode("reset", 16, 16, protected=False, from_reset=True)
MODES["reset"] = RESET

# The modes every applicable check runs in (reset is for mode-switch tests only).
ALL_MODES = [n for n in MODES if not MODES[n].from_reset]
CPL0_MODES = [n for n in ALL_MODES if not MODES[n].user]
# Checks choose among these by property, not by name: kvmtest.guest.mode_select.


def regs_for(mode: "str | CpuMode") -> dict[str, str]:
    """Register names at the mode's natural width: rax.. in 64-bit code, eax.. otherwise
    (16-bit code uses the 32-bit names with an operand-size prefix)."""
    prefix = "r" if get_mode(mode).code_bits == 64 else "e"
    return {r: prefix + r for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")}


def get_mode(name: str | CpuMode) -> CpuMode:
    """The CpuMode named `name` (a CpuMode is returned as it is); UnknownModeError listing the
    modes kvmtest defines for any other name."""
    if isinstance(name, CpuMode):
        return name
    if name not in MODES:
        raise UnknownModeError(f"unknown CPU mode {name!r}; kvmtest defines: {', '.join(MODES)}")
    return MODES[name]


def gdt_entries() -> dict[int, bytes]:
    """The GDT every protected-mode guest gets (selector -> encoded descriptor); a new dict each
    call, the descriptors encoded once per process."""
    return dict(_gdt_entries())


@functools.cache
def _gdt_entries() -> dict[int, bytes]:
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
    return not under_tcg()


def keep_tr_loadable(sregs: kvm_sregs) -> kvm_sregs:
    """`sregs` as a guest about to run gets them: under TCG with TR's busy type made available (see
    tr_loaded_busy), elsewhere unchanged. For the mode's own state (mode_sregs keeps the busy type
    LTR leaves, which ioctl round-trip checks write) and for state read back with KVM_GET_SREGS,
    which on SVM always reports TR busy (arch/x86/kvm/svm/svm.c svm_get_segment sets the bit).
    Guest.set_sregs applies it to every KVM_SET_SREGS for a guest's vCPU; call that, not this."""
    if not tr_loaded_busy() and sregs.tr.type == SYS_TYPE_TSS_BUSY:
        sregs.tr.type = SYS_TYPE_TSS_AVAILABLE
    return sregs


def _real_segment(selector=0, code=False) -> kvm_segment:
    return kvm_segment(base=selector << 4, limit=0xFFFF, selector=selector,
                       type=SEG_TYPE_CODE_RX_ACCESSED if code else SEG_TYPE_DATA_RW_ACCESSED, present=1, s=1)


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
    sregs.tr = D.tss(L.TSS, L.TSS_SIZE - 1, busy=True).to_kvm_segment(L.SEL_TSS)
    sregs.ldt = kvm_segment(selector=0, type=SYS_TYPE_LDT, present=0, unusable=1)
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
    """RFLAGS a guest in `mode` starts with: the fixed bit 1, and IOPL 3 at CPL3 so that the
    protocol's OUT works without an I/O permission bitmap (SDM Vol. 1, "I/O Privilege Level")."""
    # IOPL 3 at CPL3 so the guest/host protocol's OUT works without an I/O bitmap.
    return RFLAGS_FIXED | (RFLAGS_IOPL if mode.user else 0)  # IOPL = 3: both bits


def initial_stack(mode: CpuMode) -> int:
    """The guest virtual address RSP starts at in `mode`: the top of the user stack at CPL3,
    else of the kernel stack (kvmtest.guest.layout)."""
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
