"""The in-kernel local APIC: IDs in xAPIC and x2APIC format, the timer (one-shot, periodic,
TSC-deadline) and IPIs between vCPUs (api.rst 4.57/4.58 KVM_GET/SET_LAPIC, 7 KVM_CAP_X2APIC_API;
SDM Vol. 3A 11.4.6, 11.5.4, 11.6, 11.12)."""

import struct

import pytest

from kvmtest.guest.apic_source import FIXED_IPI_TO_ID1, X2APIC_ON, XAPIC_AP_WAITS
from kvmtest.guest.aps import run_with_waiting_aps
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_BASE_BSP,
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    APIC_DEFAULT_PHYS_BASE,
    MSR_IA32_APIC_BASE,
    MSR_IA32_TSC_DEADLINE,
    MSR_IA32_X2APIC_APICID,
    MSR_IA32_X2APIC_CUR_COUNT,
    MSR_IA32_X2APIC_EOI,
    MSR_IA32_X2APIC_ESR,
    MSR_IA32_X2APIC_ICR,
    MSR_IA32_X2APIC_ISR0,
    MSR_IA32_X2APIC_PPR,
    MSR_IA32_X2APIC_SELF_IPI,
    MSR_IA32_X2APIC_VERSION,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE


def _apic_guest(guest, source, **kw):
    g = guest("long64", f"mov rbx, {APIC:#x}\n" + source, irqchip=True, **kw)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    return g


def test_every_vcpu_leaves_reset_in_xapic_mode_with_its_id(vm):
    """Each vCPU starts with the APIC enabled in xAPIC mode at 0xFEE00000 (BSP flag on vCPU 0
    only) and APIC ID = vCPU id in bits 31:24 (SDM Vol. 3A 11.4.4, 11.4.6; selftests
    xapic_state_test)."""
    vm.create_irqchip()
    for i in range(4):
        vcpu = vm.create_vcpu(i)
        base = vcpu.get_msr(MSR_IA32_APIC_BASE)
        want = APIC | APIC_BASE_EN | (APIC_BASE_BSP if i == 0 else 0)
        assert base == want, f"vCPU {i} IA32_APIC_BASE {base:#x}, expected {want:#x}"
        (apic_id,) = struct.unpack_from("<I", bytes(vcpu.get_lapic().regs), 0x20)
        assert apic_id == i << 24, f"vCPU {i} xAPIC ID register {apic_id:#x}, expected {i << 24:#x}"


@pytest.mark.requires_cap("KVM_CAP_X2APIC_API")
@pytest.mark.requires_cpu("x2apic")
def test_x2apic_id_format_after_enabling_x2apic(vm):
    """With KVM_X2APIC_API_USE_32BIT_IDS, KVM_GET_LAPIC's ID register follows the APIC mode:
    after IA32_APIC_BASE gets EXTD (x2APIC) it holds the plain 32-bit ID (api.rst 4.57)."""
    vm.enable_cap("KVM_CAP_X2APIC_API", 1)  # KVM_X2APIC_API_USE_32BIT_IDS
    vm.create_irqchip()
    vcpu = vm.create_vcpu(3)
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    vcpu.set_msr(MSR_IA32_APIC_BASE, APIC | APIC_BASE_EN | APIC_BASE_EXTD)
    (apic_id,) = struct.unpack_from("<I", bytes(vcpu.get_lapic().regs), 0x20)
    assert apic_id == 3, f"x2APIC ID register {apic_id:#x}, expected 3"


def test_guest_reads_its_apic_id(guest):
    """The guest's own read of the xAPIC ID register (0xFEE00020) gives its vCPU id in bits
    31:24 (SDM Vol. 3A 11.4.6)."""
    g = _apic_guest(guest, "mov eax, dword ptr [rbx + 0x20]\nshr eax, 24\nGUEST_SYNC eax\nGUEST_DONE")
    assert g.run_to_done() == [0]


TIMER = """
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
    mov dword ptr [rbx + 0x3E0], 0xB            # divide by 1
    mov dword ptr [rbx + 0x320], {lvt:#x}       # LVT timer
    {arm}
    sti
wait:
    hlt
    jmp wait
timer:
    mov eax, dword ptr [rbx + 0x390]            # current count
    GUEST_SYNC rax
    mov dword ptr [rbx + 0xB0], 0               # EOI
    inc r12
    cmp r12, {count}
    jb wait_again
    GUEST_DONE
wait_again:
    iretq
"""


def test_one_shot_timer_fires_once_and_stops_at_zero(guest):
    """A one-shot LAPIC timer delivers its vector once; afterwards the current count is 0 and is
    not reloaded (SDM Vol. 3A 11.5.4; kvm-unit-tests apic.c)."""
    g = _apic_guest(guest, TIMER.format(lvt=0x30, arm="mov dword ptr [rbx + 0x380], 100000", count=1))
    g.set_idt_gate(0x30, "timer")
    assert g.run_to_done() == [0], "the one-shot timer's current count after it fired"


def test_periodic_timer_fires_repeatedly(guest):
    """A periodic LAPIC timer (LVT bit 17) delivers its vector again after each period: three
    interrupts arrive, one after another (SDM Vol. 3A 11.5.4)."""
    g = _apic_guest(guest, TIMER.format(lvt=0x20030, arm="mov dword ptr [rbx + 0x380], 200000", count=3))
    g.set_idt_gate(0x30, "timer")
    assert len(g.run_to_done()) == 3


@pytest.mark.requires_cpu("tsc_deadline")
def test_tsc_deadline_timer_fires_and_clears_the_msr(guest):
    """In TSC-deadline mode (LVT timer bits 18:17 = 10b) writing IA32_TSC_DEADLINE arms the timer;
    it fires once the TSC passes the deadline and the MSR reads 0 afterwards (SDM Vol. 3A
    11.5.4.1)."""
    arm = ("rdtsc\nshl rdx, 32\nor rax, rdx\nadd rax, 200000\nmov rdx, rax\nshr rdx, 32\n"
           f"mov ecx, {MSR_IA32_TSC_DEADLINE:#x}\nwrmsr")
    read_back = f"    mov ecx, {MSR_IA32_TSC_DEADLINE:#x}\n    rdmsr\n    GUEST_SYNC rax\n    GUEST_DONE\n"
    src = TIMER.format(lvt=0x40030, arm=arm, count=1).replace("    GUEST_DONE\n", read_back, 1)
    g = _apic_guest(guest, src)
    g.set_idt_gate(0x30, "timer")
    leaf1 = [e for e in g.vcpu.get_cpuid() if e.function == 1][0]
    assert leaf1.ecx & (1 << 24), "CPUID.1:ECX.TSC_DEADLINE not set for the vCPU"
    values = g.run_to_done()
    assert values[-1] == 0, f"IA32_TSC_DEADLINE after the interrupt: {values[-1]:#x}, expected 0"


def test_fixed_ipi_between_vcpus(guest):
    """A fixed IPI written to the ICR by vCPU 0 reaches vCPU 1's handler for that vector
    (SDM Vol. 3A 11.6.1; kvm-unit-tests apic.c, selftests xapic_ipi_test)."""
    g = _apic_guest(guest, FIXED_IPI_TO_ID1)
    g.set_idt_gate(0x40, "ap_ipi")
    got = run_with_waiting_aps(g, 1)
    assert got == {0: [], 1: [0x40]}, f"GUEST_SYNC values after the IPI by vCPU: {got}; vCPU 1 must take vector 0x40"


EN_EXTD = APIC_BASE_EN | APIC_BASE_EXTD   # IA32_APIC_BASE in x2APIC mode (SDM Vol. 3A 11.12.1)
TO_X2APIC_THEN = f"""
    mov ecx, {MSR_IA32_APIC_BASE:#x}
    rdmsr
    or eax, {EN_EXTD:#x}            # EN | EXTD: xAPIC -> x2APIC is a valid transition
    wrmsr
    GUEST_SYNC eax
    and eax, ~{APIC_BASE_EXTD:#x}   # x2APIC -> xAPIC directly: invalid
    GUEST_ASSERT_RAISES GP(0), wrmsr
    GUEST_DONE
"""


@pytest.mark.requires_cpu("x2apic")
def test_apic_mode_transitions(guest):
    """xAPIC -> x2APIC by setting IA32_APIC_BASE.EXTD is allowed; x2APIC -> xAPIC without going
    through disabled raises #GP(0) (SDM Vol. 3A 11.12.5, Figure 11-27; kvm-unit-tests apic.c)."""
    g = guest("long64", TO_X2APIC_THEN, irqchip=True)
    assert g.expect_sync() & EN_EXTD == EN_EXTD
    g.run_to_done()
    assert g.vcpu.get_msr(MSR_IA32_APIC_BASE) & EN_EXTD == EN_EXTD, "the refused transition changed IA32_APIC_BASE"


def test_enabling_x2apic_without_the_cpuid_bit_is_gp(guest):
    """Setting IA32_APIC_BASE.EXTD when CPUID.1:ECX.x2APIC is clear raises #GP(0) (SDM Vol. 3A
    11.12.1; kvm-unit-tests apic.c test_enable_x2apic)."""
    g = guest("long64", f"mov ecx, {MSR_IA32_APIC_BASE:#x}\nrdmsr\nor eax, {EN_EXTD:#x}\n"
                        "GUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE", irqchip=True)
    table = g.kvm.supported_cpuid_copy()
    for e in table:
        if e.function == 1:
            e.ecx &= ~(1 << 21)
    g.vcpu.set_cpuid(table)
    g.run_to_done()


ICR_MODES = {"fixed": 0x000, "lowest": 0x100, "nmi": 0x400}
ICR_VECTORS = [0x20, 0x31, 0x42, 0x8F, 0xF0, 0xFE]


def test_icr_reads_back_what_was_written_in_xapic_mode(guest):
    """Writing the xAPIC ICR (high then low, to an APIC ID no vCPU has) and reading it back gives
    the value written, delivery-status bit 12 aside, for every delivery mode and vector tried
    (SDM Vol. 3A 11.6.1; selftests xapic_state_test test_icr)."""
    lines = ["mov dword ptr [rbx + 0xF0], 0x1FF", "mov dword ptr [rbx + 0x310], 0x55000000"]
    expected = []
    for mode in ICR_MODES.values():
        for vector in ICR_VECTORS:
            value = mode | vector | 0x4000  # level: assert
            lines += [f"mov dword ptr [rbx + 0x300], {value:#x}", "mov eax, dword ptr [rbx + 0x300]",
                      "and eax, ~0x1000", "GUEST_SYNC eax", "mov eax, dword ptr [rbx + 0x310]", "GUEST_SYNC eax"]
            expected += [value, 0x55000000]
    g = _apic_guest(guest, "\n".join(lines) + "\nGUEST_DONE")
    assert g.run_to_done() == expected


BROADCAST = """
    mov dword ptr [rbx + 0xF0], 0x1FF
    GUEST_SYNC 1
    mov dword ptr [rbx + 0x300], 0x000C4040     # fixed, vector 0x40, all excluding self
    GUEST_DONE
""" + XAPIC_AP_WAITS + """
ap_ipi:
    mov eax, dword ptr [rbx + 0x20]
    shr eax, 24
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_ipi_to_all_excluding_self_reaches_every_other_vcpu(guest):
    """An ICR write with destination shorthand "all excluding self" delivers the vector to every
    other vCPU, each seeing its own APIC ID in its handler (SDM Vol. 3A 11.6.1; kvm-unit-tests
    smptest with smp=3)."""
    g = _apic_guest(guest, BROADCAST)
    g.set_idt_gate(0x40, "ap_ipi")
    got = run_with_waiting_aps(g, 2)
    assert got == {0: [], 1: [1], 2: [2]}, \
        f"GUEST_SYNC values by vCPU (the APIC ID each handler read): {got}; expected vCPUs 1 and 2 only, each once"


FROM_DISABLED = f"""
    mov ecx, {MSR_IA32_APIC_BASE:#x}
    rdmsr
    and eax, ~{EN_EXTD:#x}          # EN=0, EXTD=0: disabled
    wrmsr
    or eax, {APIC_BASE_EXTD:#x}     # EXTD alone (EN=0) is an invalid state
    GUEST_ASSERT_RAISES GP(0), wrmsr
    and eax, ~{APIC_BASE_EXTD:#x}
    or eax, {APIC_BASE_EN:#x}       # disabled -> xAPIC is valid
    wrmsr
    rdmsr
    GUEST_SYNC eax
    GUEST_DONE
"""


@pytest.mark.requires_cpu("x2apic")
def test_disabled_apic_transitions(guest):
    """From xAPIC the APIC can be disabled (EN=0); EXTD without EN is invalid and raises #GP(0);
    disabled -> xAPIC is valid (SDM Vol. 3A 11.12.5, Figure 11-27)."""
    g = guest("long64", FROM_DISABLED, irqchip=True)
    (base,) = g.run_to_done()
    assert base & EN_EXTD == APIC_BASE_EN, f"IA32_APIC_BASE {base:#x} after disabled -> xAPIC"



@pytest.mark.requires_cpu("x2apic")
def test_x2apic_icr_reads_back_as_one_64bit_msr(guest):
    """In x2APIC mode the ICR is MSR 0x830, written and read as one 64-bit value with the
    destination in bits 63:32 (SDM Vol. 3A 11.12.9; selftests xapic_state_test test_icr)."""
    g = guest("long64", X2APIC_ON + f"""
        mov ecx, {MSR_IA32_X2APIC_ICR:#x}
        mov eax, 0x4042
        mov edx, 0x55
        wrmsr
        rdmsr
        and eax, ~0x1000
        GUEST_SYNC eax
        GUEST_SYNC edx
        GUEST_DONE""", irqchip=True)
    assert g.run_to_done() == [0x4042, 0x55]


# (instruction, MSR, value written) -> each must raise #GP(0) in x2APIC mode
X2APIC_GP = {
    "rdmsr-eoi-write-only": ("rdmsr", MSR_IA32_X2APIC_EOI, 0),
    "rdmsr-self-ipi-write-only": ("rdmsr", MSR_IA32_X2APIC_SELF_IPI, 0),
    "wrmsr-id-read-only": ("wrmsr", MSR_IA32_X2APIC_APICID, 0),
    "wrmsr-version-read-only": ("wrmsr", MSR_IA32_X2APIC_VERSION, 0),
    "wrmsr-ppr-read-only": ("wrmsr", MSR_IA32_X2APIC_PPR, 0),
    "wrmsr-isr-read-only": ("wrmsr", MSR_IA32_X2APIC_ISR0, 0),
    "wrmsr-current-count-read-only": ("wrmsr", MSR_IA32_X2APIC_CUR_COUNT, 0),
    "rdmsr-dfr-absent": ("rdmsr", 0x80E, 0),    # xAPIC DFR (0xE0): no x2APIC MSR
    "rdmsr-icr2-absent": ("rdmsr", 0x831, 0),   # xAPIC ICR high (0x310): the x2APIC ICR is one MSR
    "wrmsr-eoi-non-zero": ("wrmsr", MSR_IA32_X2APIC_EOI, 1),
    "wrmsr-esr-non-zero": ("wrmsr", MSR_IA32_X2APIC_ESR, 1),
    "wrmsr-self-ipi-reserved-bits": ("wrmsr", MSR_IA32_X2APIC_SELF_IPI, 0x140),
}


@pytest.mark.requires_cpu("x2apic")
@pytest.mark.parametrize("case", sorted(X2APIC_GP))
def test_x2apic_msr_access_rules(guest, case):
    """In x2APIC mode RDMSR of a write-only register (EOI, SELF IPI), WRMSR of a read-only one
    (ID, version, PPR, ISR, current count), any access to a register x2APIC does not have (DFR,
    ICR high half at 0x831), a non-zero write to EOI or ESR and a write to SELF IPI's reserved
    bits 31:8 raise #GP(0) (SDM Vol. 3A 11.12.1.2 Table 11-6, 11.12.1.3, 11.12.11)."""
    insn, msr, value = X2APIC_GP[case]
    g = guest("long64", X2APIC_ON + f"""
        mov ecx, {msr:#x}
        mov eax, {value:#x}
        xor edx, edx
        GUEST_ASSERT_RAISES GP(0), {insn}
        GUEST_DONE""", irqchip=True)
    g.run_to_done()


IN_SERVICE = """
    mov dword ptr [rbx + 0xF0], 0x1FF
    sti
    mov dword ptr [rbx + 0x300], 0x00044050     # self IPI, fixed, vector 0x50 (priority class 5)
1:  hlt
    jmp 1b
high:
    mov eax, dword ptr [rbx + 0x120]
    GUEST_SYNC rax                              # ISR[95:64]: bit 16 is vector 0x50
    mov eax, dword ptr [rbx + 0xA0]
    GUEST_SYNC rax                              # PPR
    mov dword ptr [rbx + 0x300], 0x00044040     # self IPI, vector 0x40 (class 4): must wait
    sti
    nop
    nop
    GUEST_SYNC 0x1                              # still in the 0x50 handler (re-entry is a
    nop                                         # delivery point: 0x40 must not come here)
    cli
    mov dword ptr [rbx + 0xB0], 0               # EOI for 0x50
    GUEST_SYNC 0x2
    sti                                         # now 0x40 is deliverable
    nop
    nop
    GUEST_FAIL "vector 0x40 was not delivered after the EOI of 0x50"
low:
    GUEST_SYNC 0x40
    mov dword ptr [rbx + 0xB0], 0
    GUEST_DONE
"""


def test_in_service_vector_sets_isr_ppr_and_holds_lower_classes(guest):
    """While the handler of vector 0x50 runs, its ISR bit is set and PPR[7:4] is its priority
    class 5; an interrupt of a lower class (vector 0x40) requested meanwhile is held even with
    IF=1 and is delivered only after the EOI (SDM Vol. 3A 11.8.3.1, 11.8.4, 11.8.5)."""
    g = _apic_guest(guest, IN_SERVICE)
    g.set_idt_gate(0x50, "high")
    g.set_idt_gate(0x40, "low")
    isr, ppr, *order = g.run_to_done()
    assert isr & (1 << 16), f"ISR bit for in-service vector 0x50 clear: ISR[95:64]={isr:#x}"
    assert ppr & 0xF0 == 0x50, f"PPR while vector 0x50 is in service: expected class 0x50, got {ppr:#x}"
    assert order == [0x1, 0x2, 0x40], \
        f"order of events {[hex(v) for v in order]}, expected the 0x40 handler only after the EOI of 0x50"


LOGICAL_FLAT = """
    mov dword ptr [rbx + 0xF0], 0x1FF
    GUEST_SYNC 1
    mov dword ptr [rbx + 0x310], 0x0A000000     # logical destination: LDR bits 1 and 3
    mov dword ptr [rbx + 0x300], 0x00004840     # fixed, logical, vector 0x40, assert
    mov dword ptr [rbx + 0x310], 0x02000000     # then physical APIC ID 2 ...
    mov dword ptr [rbx + 0x300], 0x00004030     # ... vector 0x30, so the left-out AP wakes too
    GUEST_DONE
ap:
    mov rbx, 0xFEE00000
    mov eax, dword ptr [rbx + 0x20]
    shr eax, 24
    mov ecx, eax
    mov eax, 1
    shl eax, cl
    shl eax, 24
    mov dword ptr [rbx + 0xD0], eax             # LDR: logical ID bit = APIC ID (flat model)
    mov dword ptr [rbx + 0xE0], 0xFFFFFFFF      # DFR: flat
    mov dword ptr [rbx + 0xF0], 0x1FF
    GUEST_SYNC 2
    sti
1:  hlt
    jmp 1b
ap_logical:
    GUEST_SYNC 0x40
    GUEST_DONE
ap_other:
    GUEST_SYNC 0x30
    GUEST_DONE
"""


def test_logical_flat_ipi_reaches_exactly_the_vcpus_in_the_mask(guest):
    """In the flat logical model (DFR[31:28]=1111b) an IPI in logical destination mode goes to
    every local APIC whose LDR[31:24] shares a bit with the ICR destination field: mask 1010b
    reaches the APs with logical IDs 1 and 3, not the one with 2 (SDM Vol. 3A 11.6.2.2;
    kvm-unit-tests apic.c logical flat IPI)."""
    g = _apic_guest(guest, LOGICAL_FLAT)
    g.set_idt_gate(0x40, "ap_logical")
    g.set_idt_gate(0x30, "ap_other")
    got = run_with_waiting_aps(g, 3)
    assert got == {0: [], 1: [0x40], 2: [0x30], 3: [0x40]}, \
        f"vectors each AP took first (APIC ID -> vectors): {got}; expected 0x40 for IDs 1 and 3 only"
