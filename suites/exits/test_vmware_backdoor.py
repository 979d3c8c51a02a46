"""The VMware backdoor KVM offers with kvm.enable_vmware_backdoor=Y: its I/O port and pseudo
performance counters are reachable from CPL3 although the TSS I/O bitmap and CR4.PCE deny them
(kvm-unit-tests vmware_backdoors).

Documentation/admin-guide/kernel-parameters.txt, kvm.enable_vmware_backdoor: "Support VMware
backdoor PV interface". VMware's interface: IN from port 5658h (magic 564D5868h in EAX, command in
ECX) is allowed at any privilege level and answered by the hypervisor (here: user space, through
KVM_EXIT_IO, api.rst 5); RDPMC of the pseudo counters 10000h (host TSC), 10001h (real time) and
10002h (apparent time) is allowed at any privilege level. Everything else keeps the SDM's rules:
IN at CPL > IOPL with the port's bit set (or no bitmap) raises #GP(0) (SDM Vol. 1 19.5.2); RDPMC
at CPL > 0 with CR4.PCE = 0, or of a counter that does not exist, raises #GP(0) (SDM Vol. 2B RDPMC).
kvmtest's TSS has no I/O bitmap and CR4.PCE is 0; kvmtest's CPL3 modes start with IOPL 3, so the port
check clears IOPL first. Then every other port and counter is denied at CPL3 (those two checks hold
with or without the backdoor and run on every host).
"""

import pytest

from kvmtest.exits import IoExit
from kvmtest.fingerprint import kvm_modules
from kvmtest.guest.mode_select import select
from kvmtest.x86 import RFLAGS_IOPL

BACKDOOR_PORT = 0x5658
OTHER_PORT = 0x1234
VMWARE_MAGIC = 0x564D5868
CMD_GETVERSION = 0x0A
PSEUDO_PMCS = {"HOST_TSC": 0x10000, "REAL_TIME": 0x10001, "APPARENT_TIME": 0x10002}
ANSWER = 0x13579BDF

needs_backdoor = pytest.mark.skipif(
    kvm_modules().get("kvm", {}).get("enable_vmware_backdoor", "N") not in ("Y", "1"),
    reason="the VMware backdoor needs the kvm module parameter enable_vmware_backdoor=Y")


@needs_backdoor
@pytest.mark.modes(*select(long=True, code_bits=64))
def test_backdoor_port_reaches_user_space_from_any_cpl(guest, mode):
    """IN EAX, DX from port 5658h with the VMware magic and GETVERSION exits as KVM_EXIT_IO (in,
    port 5658h, 4 bytes) at CPL0 and at CPL3 despite the missing I/O permission, and the guest's
    EAX gets what user space answered."""
    g = guest(mode, f"mov eax, {VMWARE_MAGIC:#x}\nmov ecx, {CMD_GETVERSION:#x}\nmov edx, {BACKDOOR_PORT:#x}\n"
                    "in eax, dx\nGUEST_SYNC eax\nGUEST_DONE")
    event = g.run()
    assert isinstance(event, IoExit) and event.is_in and (event.port, event.size) == (BACKDOOR_PORT, 4), \
        f"{mode}: expected KVM_EXIT_IO in port {BACKDOOR_PORT:#x} size 4, got {event}"
    event.respond(ANSWER)
    assert g.run_to_done() == [ANSWER], \
        f"{mode}: expected GUEST_SYNC of the guest's EAX {ANSWER:#x}, what user space answered the KVM_EXIT_IO"


def test_other_ports_stay_denied_at_cpl3(guest):
    """IN from another port at CPL3 > IOPL 0, without an I/O bitmap, raises #GP(0) (SDM Vol. 1
    19.5.2). The guest checks IOPL itself, since at CPL3 with IOPL 3 the IN is allowed (19.5.1)."""
    g = guest("long64-cpl3", f"pushfq\npop rax\nand eax, {RFLAGS_IOPL:#x}\nGUEST_ASSERT_EQ rax, 0\n"
                             f"mov edx, {OTHER_PORT:#x}\nGUEST_ASSERT_RAISES GP(0), in eax, dx\nGUEST_DONE")
    regs = g.vcpu.get_regs()
    regs.rflags &= ~RFLAGS_IOPL    # the CPL3 modes start with IOPL 3 (kvmtest.guest.modes.initial_rflags)
    g.vcpu.set_regs(regs)
    g.run_to_done()


@needs_backdoor
@pytest.mark.modes(*select(long=True, code_bits=64))
@pytest.mark.parametrize("pmc", list(PSEUDO_PMCS))
def test_pseudo_pmcs_read_from_any_cpl(guest, mode, pmc):
    """RDPMC of the VMware pseudo counters completes at CPL0 and at CPL3 with CR4.PCE = 0."""
    g = guest(mode, f"mov ecx, {PSEUDO_PMCS[pmc]:#x}\nrdpmc\nGUEST_DONE")
    g.run_to_done()


def test_other_counters_stay_denied_at_cpl3(guest):
    """RDPMC of a counter outside the pseudo range at CPL3 with CR4.PCE = 0 raises #GP(0) (SDM
    Vol. 2B RDPMC)."""
    g = guest("long64-cpl3", "mov ecx, 0xfff\nGUEST_ASSERT_RAISES GP(0), rdpmc\nGUEST_DONE")
    g.run_to_done()
