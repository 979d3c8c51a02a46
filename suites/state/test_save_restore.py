"""Save a running vCPU's complete state, rebuild it in a fresh VM, and the guest carries on as
if nothing happened (api.rst 4.11-4.45 get/set pairs; selftests state_test; kvmtest.state)."""

import pytest

from kvmtest.exits import IntrExit, IoExit
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES, with_sse_enabled
from kvmtest.x86 import MSR_IA32_SYSENTER_ESP

MODES_TESTED = select(cpl=0, paging=(False, "4level")) + select(sample="per-code-size", cpl=3, order="widest")


def _checks(mode):
    """Guest code: load registers and memory, stop for the host, then check them itself."""
    wide = MODES[mode].code_bits == 64
    set_regs = "\n".join(f"mov e{r}, {v:#x}" for r, v in (("bx", 0x1B1B1B1B), ("cx", 0xC1C1C1C1),
                                                           ("dx", 0xD1D1D1D1), ("si", 0x51515151)))
    check = "\n".join(f"cmp e{r}, {v:#x}\njne bad" for r, v in (("bx", 0x1B1B1B1B), ("cx", 0xC1C1C1C1),
                                                                ("dx", 0xD1D1D1D1), ("si", 0x51515151)))
    ptr = "rdi" if wide else "edi"
    extra_set = "mov r12, 0x1212121212121212" if wide else ""
    extra_check = "mov rax, 0x1212121212121212\ncmp r12, rax\njne bad" if wide else ""
    return f"""
        mov {ptr}, 0x600
        mov dword ptr [{ptr}], 0xFEEDFACE
        {set_regs}
        {extra_set}
        GUEST_SYNC 1
        {check}
        {extra_check}
        cmp dword ptr [{ptr}], 0xFEEDFACE
        jne bad
        GUEST_DONE
    bad:
        GUEST_FAIL "a register or memory changed across save and restore"
    """


@pytest.mark.modes(*MODES_TESTED)
def test_guest_continues_after_restore_into_a_new_vm(guest, mode):
    """Registers, memory, segment state and mode survive save -> new VM -> restore: the guest's
    own checks after the restore pass and it reaches GUEST_DONE."""
    g = guest(mode, _checks(mode))
    assert g.expect_sync() == 1
    before = g.vcpu.get_sregs()
    g.migrate()
    after = g.vcpu.get_sregs()
    assert (after.cr0, after.cr3, after.cr4, after.efer, after.cs.selector) == \
        (before.cr0, before.cr3, before.cr4, before.efer, before.cs.selector), "special registers differ after restore"
    g.run_to_done()


@pytest.mark.modes(*select(long=True, cpl=0) + select(protected=False))
def test_msrs_survive_save_and_restore(guest, mode):
    """An MSR the guest wrote before the save reads back the same after the restore (the MSR
    list of KVM_GET_MSR_INDEX_LIST is saved and restored, api.rst 4.3, 4.18, 4.19)."""
    g = guest(mode, f"""
        mov ecx, {MSR_IA32_SYSENTER_ESP:#x}
        mov eax, 0x5A5A5000
        xor edx, edx
        wrmsr
        GUEST_SYNC 1
        mov ecx, {MSR_IA32_SYSENTER_ESP:#x}
        rdmsr
        GUEST_SYNC eax
        GUEST_DONE""")
    assert g.expect_sync() == 1
    g.migrate()
    assert g.run_to_done() == [0x5A5A5000]


def test_xmm_registers_survive_save_and_restore(guest):
    """SSE state set by the guest survives KVM_GET/SET_XSAVE (or FPU) into a new VM (api.rst 4.42,
    4.43). CPL3, where MOVQ needs no emulation on any backend; SSE enabled in CR0/CR4 as the SDM
    requires (MOVQ raises #UD while CR4.OSFXSR is 0)."""
    g = guest("long64-cpl3", """
        mov rax, 0x0123456789ABCDEF
        movq xmm3, rax
        GUEST_SYNC 1
        movq rax, xmm3
        GUEST_SYNC rax
        GUEST_DONE""")
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))
    assert g.expect_sync() == 1
    g.migrate()
    assert g.run_to_done() == [0x0123456789ABCDEF]


@pytest.mark.modes(sample="per-code-size", cpl=0)
def test_pending_in_is_completed_before_the_save(guest, mode):
    """An IN exit is completed by KVM_RUN with immediate_exit set (it returns EINTR at once,
    having stored the host's data into the guest register), so the saved state already holds
    the IN's result (api.rst 5 "immediate_exit"; selftests: complete IO before migrating)."""
    g = guest(mode, "in eax, 0x40\nGUEST_SYNC eax\nGUEST_DONE")
    g.expect_exit(IoExit, port=0x40, size=4).respond(0xC0DE1234)
    g.vcpu.kvm_run.immediate_exit = 1
    completed = g.vcpu.run()
    assert isinstance(completed, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {completed}"
    g.migrate()
    assert g.run_to_done() == [0xC0DE1234]
