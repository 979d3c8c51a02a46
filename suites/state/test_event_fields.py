"""Every field of struct kvm_vcpu_events against a real event or what the guest observes
(api.rst 4.31/4.32 KVM_GET/SET_VCPU_EVENTS, 7 KVM_CAP_EXCEPTION_PAYLOAD,
KVM_CAP_X86_TRIPLE_FAULT_EVENT; SDM Vol. 3A 6.7.1 NMI blocking, 6.8.3 interrupt shadow,
8.4.4 SIPI).

Either KVM reports a field after something really happened (KVM queued an exception during
KVM_RUN, the guest ran STI, took an NMI, returned with IRET) or user space sets the field and
the guest shows that it took effect (vector delivered, CR2 loaded, AP started at the vector).
"""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import DebugExit, IntrExit, IoExit, MmioExit, MsrExit
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select

UNKNOWN_MSR = 0x4B564D7F


@pytest.mark.requires_cap("KVM_CAP_X86_USER_SPACE_MSR")
@pytest.mark.parametrize("payload_cap", [False, True], ids=["no-payload-cap", "payload-cap"])
def test_exception_queued_by_kvm_is_reported_before_its_delivery(guest, kvm, payload_cap):
    """A real exception caught between its queueing and its delivery: the guest's RDMSR of an
    unknown MSR exits to user space, which answers with msr.error = 1 ("an exception is
    injected", api.rst 5 KVM_EXIT_X86_RDMSR); KVM_RUN with immediate_exit completes the RDMSR
    and returns before entering the guest. KVM_GET_VCPU_EVENTS then reports #GP (nr 13) with
    has_error_code = 1 and error_code 0 (SDM Vol. 2B RDMSR: #GP(0)): as exception.injected
    without KVM_CAP_EXCEPTION_PAYLOAD ("set for either pending or injected exceptions"), as
    exception.pending with injected = 0 once the capability is enabled (api.rst 7
    KVM_CAP_EXCEPTION_PAYLOAD). The next KVM_RUN delivers it: the guest's handler sees #GP(0)."""
    if payload_cap and not kvm.check_extension("KVM_CAP_EXCEPTION_PAYLOAD"):
        pytest.skip("needs KVM_CAP_EXCEPTION_PAYLOAD")
    g = guest("long64", f"mov ecx, {UNKNOWN_MSR:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    g.vm.enable_cap("KVM_CAP_X86_USER_SPACE_MSR", C.KVM_MSR_EXIT_REASON_UNKNOWN)
    if payload_cap:
        g.vm.enable_cap("KVM_CAP_EXCEPTION_PAYLOAD", 1)
    g.expect_exit(MsrExit, index=UNKNOWN_MSR).respond(error=True)
    g.vcpu.kvm_run.immediate_exit = 1
    stopped = g.vcpu.run()
    assert isinstance(stopped, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {stopped}"
    ex = g.vcpu.get_events().exception
    got = {"nr": ex.nr, "has_error_code": ex.has_error_code, "error_code": ex.error_code}
    want = {"nr": 13, "has_error_code": 1, "error_code": 0}
    if payload_cap:
        got.update(injected=ex.injected, pending=ex.pending)
        want.update(injected=0, pending=1)
    else:
        got["injected"], want["injected"] = ex.injected, 1
    assert got == want, f"KVM_GET_VCPU_EVENTS exception after the refused RDMSR: {got}; expected {want}"
    g.run_to_done()


PF_PAYLOAD = 0x0000_7F00_1234_5678


@pytest.mark.requires_cap("KVM_CAP_EXCEPTION_PAYLOAD")
def test_pending_page_fault_with_payload_loads_cr2_on_delivery(guest):
    """With KVM_CAP_EXCEPTION_PAYLOAD, a #PF made pending with KVM_SET_VCPU_EVENTS
    (KVM_VCPUEVENT_VALID_PAYLOAD, exception.pending, exception_has_payload, exception_payload =
    the faulting address) is delivered with CR2 = the payload (api.rst 7 KVM_CAP_EXCEPTION_PAYLOAD:
    the #PF payload is the faulting linear address): the guest's handler reads CR2 and the error
    code that were set, KVM_GET_SREGS reports that CR2 afterwards, and not before the delivery."""
    g = guest("long64", "GUEST_ASSERT_RAISES PF(0x6), GUEST_SYNC 1\nGUEST_SYNC 2\nGUEST_DONE")
    g.vm.enable_cap("KVM_CAP_EXCEPTION_PAYLOAD", 1)
    assert g.expect_sync() == 1
    ev = g.vcpu.get_events()
    ev.flags = C.KVM_VCPUEVENT_VALID_PAYLOAD
    ev.exception.pending, ev.exception.injected, ev.exception.nr = 1, 0, 14
    ev.exception.has_error_code, ev.exception.error_code = 1, 0x6
    ev.exception_has_payload, ev.exception_payload = 1, PF_PAYLOAD
    g.vcpu.set_events(ev)
    before = g.vcpu.get_sregs().cr2
    assert before != PF_PAYLOAD, "CR2 holds the payload before the #PF was delivered"
    assert g.expect_sync() == 2
    rec = g.exception_record()
    cr2 = g.vcpu.get_sregs().cr2
    assert (rec["cr2"], rec["error_code"], cr2) == (PF_PAYLOAD, 0x6, PF_PAYLOAD), \
        f"#PF with payload {PF_PAYLOAD:#x}: the handler read CR2 {rec['cr2']:#x} error code {rec['error_code']:#x}, " \
        f"KVM_GET_SREGS cr2 {cr2:#x}"
    g.run_to_done()


NOT_PRESENT = 0x80001234   # PML4 entry 0 covers it, no PDPT entry does (as in test_control_fields.py)


@pytest.mark.parametrize("payload_cap", [False, True], ids=["no-payload-cap", "payload-cap"])
def test_page_fault_queued_by_kvm_reports_its_address(guest, kvm, payload_cap):
    """A #PF KVM raises itself, caught before its delivery: the guest's MOVSB reads MMIO (the
    source) and writes a not-present page (the destination); KVM_EXIT_MMIO comes for the read
    (KVM's instruction emulator reads the source first; the SDM leaves the order open, and a
    fault taken first would fail expect_exit, not pass), and KVM_RUN with immediate_exit
    finishes the instruction, whose write faults, and returns before entering the guest. With
    KVM_CAP_EXCEPTION_PAYLOAD, KVM_GET_VCPU_EVENTS reports it pending (not injected) with
    KVM_VCPUEVENT_VALID_PAYLOAD (api.rst 4.31), and the faulting linear address is either the
    payload (exception_has_payload = 1, CR2 not loaded yet) or already in CR2
    (exception_has_payload = 0): api.rst 7 KVM_CAP_EXCEPTION_PAYLOAD promises the deferred CR2
    only for a #PF in L2, and this guest is L1 (Linux 6.1's kvm_multiple_exception loads CR2 at
    once outside guest mode; later kernels keep it in the payload). Without the
    capability the payload fields are not valid and the address is already in CR2 for
    KVM_GET_SREGS. Either way the error code is 0x2 (write, not present, CPL0: SDM Vol. 3A 4.7)
    and the guest's handler then reads that address from CR2 (SDM Vol. 3A 6.15, interrupt 14)."""
    if payload_cap and not kvm.check_extension("KVM_CAP_EXCEPTION_PAYLOAD"):
        pytest.skip("needs KVM_CAP_EXCEPTION_PAYLOAD")
    g = guest("long64", f"""
        mov rsi, {L.MMIO_BASE:#x}
        mov rdi, {NOT_PRESENT:#x}
        GUEST_ASSERT_RAISES PF(0x2), movsb
        GUEST_SYNC 1
        GUEST_DONE""")
    if payload_cap:
        g.vm.enable_cap("KVM_CAP_EXCEPTION_PAYLOAD", 1)
    cr2_before = g.vcpu.get_sregs().cr2
    assert cr2_before != NOT_PRESENT, f"CR2 holds {NOT_PRESENT:#x} before the guest ran"
    g.expect_exit(MmioExit, phys_addr=L.MMIO_BASE, is_write=False).respond(0x5A)
    g.vcpu.kvm_run.immediate_exit = 1
    stopped = g.vcpu.run()
    assert isinstance(stopped, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {stopped}"
    ev = g.vcpu.get_events()        # before KVM_GET_SREGS, in the order a save reads them
    cr2 = g.vcpu.get_sregs().cr2
    ex = ev.exception
    got = {"nr": ex.nr, "has_error_code": ex.has_error_code, "error_code": ex.error_code, "cr2": cr2}
    want = {"nr": 14, "has_error_code": 1, "error_code": 0x2}
    if payload_cap:
        got.update(pending=ex.pending, injected=ex.injected,
                   valid_payload=bool(ev.flags & C.KVM_VCPUEVENT_VALID_PAYLOAD),
                   exception_has_payload=ev.exception_has_payload)
        want.update(pending=1, injected=0, valid_payload=True)
        if ev.exception_has_payload:        # deferred: the address waits in the payload, CR2 is untouched
            got.update(exception_payload=ev.exception_payload)
            want.update(exception_has_payload=1, exception_payload=NOT_PRESENT, cr2=cr2_before)
        else:                               # delivered when queued (allowed for L1): the address is in CR2
            want.update(exception_has_payload=0, cr2=NOT_PRESENT)
    else:
        got.update(injected=ex.injected, valid_payload=bool(ev.flags & C.KVM_VCPUEVENT_VALID_PAYLOAD))
        want.update(injected=1, valid_payload=False, cr2=NOT_PRESENT)
    assert got == want, f"KVM_GET_VCPU_EVENTS / KVM_GET_SREGS with the #PF on {NOT_PRESENT:#x} queued: " \
                        f"{_hexed(got)}; expected {_hexed(want)}"
    g.vcpu.kvm_run.immediate_exit = 0
    assert g.expect_sync() == 1
    rec = g.exception_record()
    assert (rec["cr2"], rec["error_code"]) == (NOT_PRESENT, 0x2), \
        f"the guest's #PF handler read CR2 {rec['cr2']:#x}, error code {rec['error_code']:#x}; " \
        f"expected {NOT_PRESENT:#x} and 0x2"
    g.run_to_done()


def _hexed(fields):
    return {k: v if isinstance(v, bool) else hex(v) for k, v in fields.items()}


INTERRUPT_GUEST = """
    GUEST_SYNC 1
spin:
    nop
    jmp spin
handler:
    GUEST_SYNC 0x41
    GUEST_DONE
"""


@pytest.mark.modes(*select(long=True, cpl=0) + select(protected=False))
def test_injected_interrupt_set_by_the_host_is_delivered(guest, mode):
    """An external interrupt set with KVM_SET_VCPU_EVENTS (interrupt.injected = 1, nr = 0x41) is
    one already accepted: interrupt_bitmap of KVM_GET_SREGS shows it (api.rst 4.13), and KVM_RUN
    delivers it through IDT vector 0x41 although the guest runs with EFLAGS.IF = 0 (api.rst 4.32)."""
    g = guest(mode, INTERRUPT_GUEST)
    g.set_idt_gate(0x41, "handler")
    assert g.expect_sync() == 1
    ev = g.vcpu.get_events()
    ev.flags = 0
    ev.interrupt.injected, ev.interrupt.nr, ev.interrupt.soft = 1, 0x41, 0
    g.vcpu.set_events(ev)
    sregs = g.vcpu.get_sregs()
    bits = [v for v in range(256) if sregs.interrupt_bitmap[v // 64] >> (v % 64) & 1]
    assert bits == [0x41], f"interrupt_bitmap after KVM_SET_VCPU_EVENTS interrupt.nr=0x41: {[hex(b) for b in bits]}"
    assert g.run_to_done() == [0x41], "the injected vector's handler did not run"


@pytest.mark.modes(*select(code_bits=64, cpl=0) + select(protected=False))
def test_interrupt_shadow_after_sti_is_reported(guest, mode):
    """Single-stepping with KVM_GUESTDBG_SINGLESTEP (api.rst 4.87) stops after STI, while STI's
    interrupt shadow covers the next instruction (SDM Vol. 2B STI; Vol. 3A 6.8.3):
    KVM_GET_VCPU_EVENTS flags KVM_VCPUEVENT_VALID_SHADOW and interrupt.shadow =
    KVM_X86_SHADOW_INT_STI there; one instruction later the shadow is gone (api.rst 4.31)."""
    g = guest(mode, "cli\nsti\nafter_sti: nop\nafter_nop: nop\nGUEST_DONE")
    g.vcpu.set_guest_debug(C.KVM_GUESTDBG_ENABLE | C.KVM_GUESTDBG_SINGLESTEP)
    shadows = {}
    for _ in range(3):
        g.expect_exit(DebugExit)
        ev = g.vcpu.get_events()
        assert ev.flags & C.KVM_VCPUEVENT_VALID_SHADOW, f"KVM_GET_VCPU_EVENTS flags {ev.flags:#x} without VALID_SHADOW"
        shadows[g.vcpu.get_regs().rip] = ev.interrupt.shadow
    at_sti, after = shadows.get(g.labels["after_sti"]), shadows.get(g.labels["after_nop"])
    assert (at_sti, after) == (C.KVM_X86_SHADOW_INT_STI, 0), \
        f"interrupt.shadow right after STI: {at_sti}, one instruction later: {after}; expected " \
        f"{C.KVM_X86_SHADOW_INT_STI} (KVM_X86_SHADOW_INT_STI) then 0 (stops: " \
        + ", ".join(f"{rip:#x}: {s}" for rip, s in shadows.items()) + ")"
    g.vcpu.set_guest_debug(0)
    g.run_to_done()


NMI_GUEST = """
    GUEST_SYNC 1
spin:
    nop
    jmp spin
nmi_handler:
    GUEST_SYNC 2
    mov ax, ss
    push rax
    lea rax, [rsp + 8]
    push rax
    pushfq
    mov ax, cs
    push rax
    mov rax, after_iret
    push rax
    iretq
after_iret:
    GUEST_SYNC 3
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_USER_NMI")
def test_nmi_fields_follow_kvm_nmi_its_delivery_and_iret(guest):
    """nmi.pending, nmi.masked and nmi.injected through a real NMI: after KVM_NMI (api.rst 4.64)
    the NMI is pending; inside the NMI handler it is no longer pending and NMIs are blocked
    (masked = 1) until the next IRET (SDM Vol. 3A 6.7.1); after the handler's IRETQ masked is 0."""
    g = guest("long64", NMI_GUEST)
    g.set_idt_gate(2, "nmi_handler")
    assert g.expect_sync() == 1
    g.vcpu.nmi()
    states = [_nmi(g)]
    assert g.expect_sync() == 2, "the NMI handler did not run"
    states.append(_nmi(g))
    assert g.expect_sync() == 3
    states.append(_nmi(g))
    want = [(0, 1, 0), (0, 0, 1), (0, 0, 0)]
    assert states == want, f"nmi (injected, pending, masked) after KVM_NMI, in the handler, after IRETQ: {states}; " \
                           f"expected {want}"
    g.run_to_done()


def test_nmi_injected_set_by_the_host_runs_the_nmi_handler(guest):
    """nmi.injected = 1 written with KVM_SET_VCPU_EVENTS is an NMI being delivered (api.rst
    4.32): the next KVM_RUN runs the guest's NMI handler (IDT vector 2), where NMIs are blocked
    (nmi.masked = 1, SDM Vol. 3A 6.7.1)."""
    g = guest("long64", NMI_GUEST)
    g.set_idt_gate(2, "nmi_handler")
    assert g.expect_sync() == 1
    ev = g.vcpu.get_events()
    ev.flags, ev.nmi.injected = 0, 1
    g.vcpu.set_events(ev)
    assert g.expect_sync() == 2, "the NMI set as injected did not run the NMI handler"
    assert _nmi(g) == (0, 0, 1), f"nmi (injected, pending, masked) inside the handler: {_nmi(g)}"
    assert g.expect_sync() == 3
    g.run_to_done()


def _nmi(g):
    n = g.vcpu.get_events().nmi
    return n.injected, n.pending, n.masked


SIPI_VECTOR = 0x0A                 # start-up at 0A00:0000, linear 0xA000 (inside the code area)
AP_CODE = f"""
    GUEST_DONE
.code16
.org {SIPI_VECTOR << 12:#x}
ap_entry:
    mov ax, cs
    GUEST_SYNC ax
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
@pytest.mark.requires_cap("KVM_CAP_MP_STATE")
def test_sipi_vector_set_by_the_host_starts_the_ap_there(guest):
    """sipi_vector written with KVM_SET_VCPU_EVENTS (KVM_VCPUEVENT_VALID_SIPI_VECTOR) is the
    start-up vector of an AP put in KVM_MP_STATE_SIPI_RECEIVED (api.rst 4.32, 4.38/4.39): the
    AP starts in real mode at CS = vector << 8, IP = 0 (SDM Vol. 3A 8.4.4.1, 11.6.1)."""
    g = guest("long64", AP_CODE, irqchip=True)
    ap = g.vm.create_vcpu(1)
    ap.set_cpuid(g.kvm.cached_supported_cpuid())
    ev = ap.get_events()
    ev.flags, ev.sipi_vector = C.KVM_VCPUEVENT_VALID_SIPI_VECTOR, SIPI_VECTOR
    ap.set_events(ev)
    ap.set_mp_state(C.KVM_MP_STATE_SIPI_RECEIVED)
    seen = g.run_to_done(vcpu=ap)
    assert seen == [SIPI_VECTOR << 8], \
        f"the AP started with CS {[hex(s) for s in seen]}, expected {SIPI_VECTOR << 8:#x}"


@pytest.mark.parametrize("cap,flag", [("KVM_CAP_EXCEPTION_PAYLOAD", C.KVM_VCPUEVENT_VALID_PAYLOAD),
                                      ("KVM_CAP_X86_TRIPLE_FAULT_EVENT", C.KVM_VCPUEVENT_VALID_TRIPLE_FAULT)],
                         ids=["payload", "triple-fault"])
def test_get_vcpu_events_flags_follow_the_enabled_capabilities(kvm, vm, cap, flag):
    """KVM_GET_VCPU_EVENTS sets KVM_VCPUEVENT_VALID_PAYLOAD "whenever KVM_CAP_EXCEPTION_PAYLOAD is
    enabled" (api.rst 4.31) and KVM_VCPUEVENT_VALID_TRIPLE_FAULT once
    KVM_CAP_X86_TRIPLE_FAULT_EVENT is (api.rst 7): neither before its capability is enabled."""
    if not kvm.check_extension(cap):
        pytest.skip(f"needs {cap}")
    vcpu = vm.create_vcpu()
    before = vcpu.get_events().flags
    vm.enable_cap(cap, 1)
    after = vcpu.get_events().flags
    assert (bool(before & flag), bool(after & flag)) == (False, True), \
        f"KVM_GET_VCPU_EVENTS flags {before:#x} before and {after:#x} after enabling {cap}: bit {flag:#x} should " \
        "appear only after"


SMBASE_ENTRY = 0x30000 + 0x8000    # default SMBASE 0x30000, entry at SMBASE + 0x8000 (SDM Vol. 3B 32.5)


@pytest.mark.requires_cap("KVM_CAP_X86_SMM")
def test_smi_fields_follow_kvm_smi_and_smm_entry(guest):
    """After KVM_SMI (api.rst KVM_SMI) KVM_GET_VCPU_EVENTS reports smi.pending = 1, smi.smm = 0;
    the next KVM_RUN enters SMM at SMBASE + 0x8000 (SDM Vol. 3B 32.5), where an OUT exits with
    smi.smm = 1, smi.pending = 0 and KVM_RUN_X86_SMM in kvm_run.flags (api.rst 4.31, 5 "flags").
    A vCPU in SMM uses the memslots of address space 1 (bits 16-31 of the slot id, api.rst 4.35;
    x86 kvm_arch_vcpu_memslots_id), so the guest's RAM is mapped there too, as SMRAM aliasing it."""
    g = guest("long64", "spin: nop\njmp spin")
    assert g.kvm.check_extension("KVM_CAP_MULTI_ADDRESS_SPACE") >= 2, \
        "KVM_CAP_X86_SMM without a second address space (KVM_CAP_MULTI_ADDRESS_SPACE < 2) for SMRAM"
    ram = g.vm.memslot(0)
    g.vm.add_memory(ram.gpa, ram.size, slot=1 << 16, mapping=ram.mapping, offset=ram.offset)
    g.vm.write(SMBASE_ENTRY, bytes([0xE6, 0x10, 0xF4]))      # out 0x10, al; hlt (16-bit SMM code)
    g.vcpu.smi()
    queued = g.vcpu.get_events()
    assert (queued.smi.pending, queued.smi.smm) == (1, 0), \
        f"after KVM_SMI: smi.pending={queued.smi.pending} smm={queued.smi.smm}; expected 1 and 0"
    g.expect_exit(IoExit, port=0x10)
    inside = g.vcpu.get_events()
    assert (inside.smi.pending, inside.smi.smm) == (0, 1), \
        f"in SMM: smi.pending={inside.smi.pending} smm={inside.smi.smm}; expected 0 and 1"
    assert g.vcpu.kvm_run.flags & C.KVM_RUN_X86_SMM, f"kvm_run.flags {g.vcpu.kvm_run.flags:#x} in SMM"
