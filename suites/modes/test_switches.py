"""Guest-driven CPU mode switches, checked after each step against the SDM and against what
KVM_GET_SREGS reports (SDM Vol. 3A 10.8.5 IA-32e mode, 10.9 protected mode, 10.9.2 back to
real mode, 2.5 control registers; api.rst 4.13)."""

from kvmtest.guest import Sync
from kvmtest.guest import layout as L
from kvmtest.guest.paging import MiB2, MiB4, PageTables
from kvmtest.memory import PageAllocator
from kvmtest.x86 import CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, MSR_IA32_EFER, PTE_P, PTE_RW


def _stage(g, name, *, cr0_set=0, cr0_clear=0, efer_set=0, efer_clear=0, cs_l=None, cs_db=None, cs_sel=None,
           cr4_set=0, cr4_clear=0):
    """Run to the guest's next GUEST_SYNC (its own CR0) and compare with KVM_GET_SREGS."""
    event = g.run()
    assert isinstance(event, Sync), f"{name}: expected GUEST_SYNC(CR0), got {event}"
    s = g.vcpu.get_sregs()
    problems = []
    if event.value & 0xFFFFFFFF != s.cr0 & 0xFFFFFFFF:
        problems.append(f"guest reads CR0 {event.value:#x}, KVM_GET_SREGS says {s.cr0:#x}")
    if s.cr0 & cr0_set != cr0_set or s.cr0 & cr0_clear:
        problems.append(f"CR0 {s.cr0:#x}: expected bits {cr0_set:#x} set and {cr0_clear:#x} clear")
    if s.cr4 & cr4_set != cr4_set or s.cr4 & cr4_clear:
        problems.append(f"CR4 {s.cr4:#x}: expected bits {cr4_set:#x} set and {cr4_clear:#x} clear")
    if s.efer & efer_set != efer_set or s.efer & efer_clear:
        problems.append(f"EFER {s.efer:#x}: expected bits {efer_set:#x} set and {efer_clear:#x} clear")
    for what, want, got in (("CS.L", cs_l, s.cs.l), ("CS.D", cs_db, s.cs.db), ("CS", cs_sel, s.cs.selector)):
        if want is not None and want != got:
            problems.append(f"{what} {got:#x}, expected {want:#x}")
    assert not problems, f"after {name}: " + "; ".join(problems)
    return s


def test_reset_to_protected_to_long_mode(guest):
    """From the reset state the guest sets CR0.PE and far-jumps to a 32-bit segment
    (protected mode, CS.D=1), then CR4.PAE, EFER.LME and CR0.PG and far-jumps to a 64-bit
    segment: EFER.LMA is set by the processor and CS.L=1 (SDM Vol. 3A 10.9.1, 10.8.5)."""
    g = guest("reset", '.include "enter_long.S"\nlong_mode:\nmov rax, cr0\nGUEST_SYNC rax\nGUEST_DONE')
    _stage(g, "entering protected mode", cr0_set=CR0_PE, cr0_clear=CR0_PG, cs_db=1, cs_l=0, cs_sel=0x18)
    s = _stage(g, "entering IA-32e mode", cr0_set=CR0_PE | CR0_PG, efer_set=EFER_LME | EFER_LMA, cs_l=1,
               cs_sel=0x08)
    assert s.cr4 & CR4_PAE, f"CR4 {s.cr4:#x} without PAE in IA-32e mode"
    g.run_to_done()


LONG_TO_COMPAT = """
    mov rax, cr0
    GUEST_SYNC rax
    FARJMP SEL_CODE32, compat
.code32
compat:
    mov eax, cr0
    GUEST_SYNC eax
    FARJMP SEL_CODE64, back64
.code64
back64:
    mov rax, cr0
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_long_mode_to_compatibility_mode_and_back(guest):
    """A far jump to a code segment with L=0, D=1 enters compatibility mode, one with L=1 returns
    to 64-bit mode; EFER.LMA stays set throughout (SDM Vol. 3A 5.2.1, 10.8.5)."""
    g = guest("long64", LONG_TO_COMPAT)
    _stage(g, "start in 64-bit mode", efer_set=EFER_LMA, cs_l=1)
    _stage(g, "far jump to a 32-bit segment", efer_set=EFER_LMA, cs_l=0, cs_db=1, cs_sel=0x18)
    _stage(g, "far jump back to the 64-bit segment", efer_set=EFER_LMA, cs_l=1, cs_sel=0x08)
    g.run_to_done()


LONG_DOWN_TO_REAL = """
    FARJMP SEL_CODE32, compat
.code32
compat:
    mov eax, cr0
    and eax, 0x7fffffff             # CR0.PG=0 in compatibility mode leaves IA-32e mode
    mov cr0, eax
    mov eax, cr0
    GUEST_SYNC eax
    FARJMP SEL_CODE16, pm16
.code16
pm16:
    mov ax, SEL_DATA16
    mov ds, ax
    mov ss, ax
    mov eax, cr0
    and eax, 0xfffffffe             # CR0.PE=0: back to real mode
    mov cr0, eax
    FARJMP 0, real
real:
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov eax, cr0
    GUEST_SYNC eax
    GUEST_DONE
"""


def test_long_mode_down_to_real_mode(guest):
    """The way down: clearing CR0.PG in compatibility mode deactivates IA-32e mode (EFER.LMA
    clears, SDM Vol. 3A 10.8.5.4), and clearing CR0.PE from a 16-bit segment returns to real
    mode (SDM Vol. 3A 10.9.2)."""
    g = guest("long64", LONG_DOWN_TO_REAL)
    _stage(g, "clearing CR0.PG in compatibility mode", cr0_set=CR0_PE, cr0_clear=CR0_PG, efer_clear=EFER_LMA,
           cs_l=0, cs_db=1)
    _stage(g, "clearing CR0.PE", cr0_clear=CR0_PE | CR0_PG, cs_sel=0)
    g.run_to_done()


EVERY_STEP = f"""
    cli
    lgdt [gdtr]
    mov eax, cr0
    or eax, {CR0_PE:#x}                   # CR0.PE, still running the real-mode CS
    mov cr0, eax
    FARJMP SEL_CODE16, pm16
gdtr:
    .word 0xfff
    .long GDT
pm16:
    mov ax, SEL_DATA16
    mov ds, ax
    mov ss, ax
    mov eax, cr0
    GUEST_SYNC eax
    FARJMP SEL_CODE32, pm32
.code32
pm32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, KERNEL_STACK_TOP
    mov eax, cr0
    GUEST_SYNC eax
    mov eax, cr4
    or eax, {CR4_PSE:#x}                 # CR4.PSE: 4 MiB pages
    mov cr4, eax
    mov cr3, esi                    # 32-bit paging tables (from the host)
    mov eax, cr0
    or eax, {CR0_PG:#x}                  # CR0.PG with CR4.PAE clear: 32-bit paging
    mov cr0, eax
    mov eax, cr0
    GUEST_SYNC eax
    and eax, 0x7fffffff             # paging off to change CR4.PAE (SDM 4.1.2)
    mov cr0, eax
    mov eax, cr4
    or eax, {CR4_PAE:#x}                 # CR4.PAE
    mov cr4, eax
    mov cr3, edi                    # PAE tables
    mov eax, cr0
    or eax, {CR0_PG:#x}                  # PAE paging
    mov cr0, eax
    mov eax, cr0
    GUEST_SYNC eax
    and eax, 0x7fffffff             # EFER.LME may only change with paging off (SDM 10.8.5)
    mov cr0, eax
    mov eax, KT_CR3
    mov cr3, eax
    mov ecx, {MSR_IA32_EFER:#x}
    rdmsr
    or eax, {EFER_LME:#x}                # EFER.LME
    wrmsr
    mov eax, cr0
    or eax, {CR0_PG:#x}                  # IA-32e mode, in compatibility mode (CS is still 32-bit)
    mov cr0, eax
    mov eax, cr0
    GUEST_SYNC eax
    FARJMP SEL_CODE64, long64
.code64
long64:
    mov rax, cr0
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_reset_through_every_mode_to_long_mode(guest):
    """From the reset state the guest steps through each mode in turn: 16-bit protected mode
    (CR0.PE, CS.D=0), 32-bit protected mode (CS.D=1), 32-bit paging (CR0.PG, CR4.PAE=0), PAE
    paging (CR4.PAE), IA-32e compatibility mode (EFER.LME then CR0.PG: LMA=1, CS.L=0) and
    64-bit mode (CS.L=1); after each step CR0 as the guest reads it equals KVM_GET_SREGS and
    CR0/CR4/EFER/CS are as SDM Vol. 3A 10.9.1, 4.1.1-4.1.2 and 10.8.5 give them."""
    g = guest("reset", EVERY_STEP)
    alloc = PageAllocator(g.vm, L.DATA, L.DATA_END)  # [0, 4 MiB) identity-mapped, as KT_CR3 maps it
    tables = {}
    for fmt, size in (("32", MiB4), ("pae", MiB2)):
        tables[fmt] = PageTables(g.vm, alloc, fmt)
        tables[fmt].map_range(0, 0, L.IDENTITY_SIZE, size, PTE_P | PTE_RW)
    regs = g.vcpu.get_regs()
    regs.rsi, regs.rdi = tables["32"].cr3, tables["pae"].cr3
    g.vcpu.set_regs(regs)
    _stage(g, "entering 16-bit protected mode", cr0_set=CR0_PE, cr0_clear=CR0_PG, cs_sel=0x20, cs_db=0)
    _stage(g, "far jump to a 32-bit segment", cr0_set=CR0_PE, cr0_clear=CR0_PG, cs_sel=0x18, cs_db=1)
    _stage(g, "enabling 32-bit paging", cr0_set=CR0_PE | CR0_PG, cr4_set=CR4_PSE, cr4_clear=CR4_PAE,
           efer_clear=EFER_LMA, cs_db=1)
    _stage(g, "enabling PAE paging", cr0_set=CR0_PE | CR0_PG, cr4_set=CR4_PAE, efer_clear=EFER_LMA | EFER_LME)
    _stage(g, "activating IA-32e mode", cr0_set=CR0_PE | CR0_PG, cr4_set=CR4_PAE, efer_set=EFER_LME | EFER_LMA,
           cs_l=0, cs_db=1, cs_sel=0x18)
    _stage(g, "far jump to a 64-bit segment", efer_set=EFER_LMA, cs_l=1, cs_sel=0x08)
    g.run_to_done()
