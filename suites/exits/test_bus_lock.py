"""Bus-lock exits: with KVM_BUS_LOCK_DETECTION_EXIT, each split-lock access exits to user space
(selftests x86/kvm_buslock_test).

api.rst 7.23 KVM_CAP_X86_BUS_LOCK_EXIT: enabled with KVM_BUS_LOCK_DETECTION_EXIT, "KVM will exit
to userspace with KVM_EXIT_X86_BUS_LOCK" when it detects a bus lock in the guest, and sets
KVM_RUN_X86_BUS_LOCK in kvm_run.flags (which user space checks whatever the exit reason). The exit
is trap-like on Intel hosts (RIP after the instruction, which has completed) and fault-like on
AMD hosts (RIP at the instruction, which runs when the vCPU is resumed). A LOCK-prefixed access
that spans two cache lines is a bus lock (SDM Vol. 3A 9.1.2.2; APM Vol. 2 "bus lock").
"""

import pytest

from kvmtest.abi import constants as C
from kvmtest.cpuid import vendor
from kvmtest.guest import layout as L

pytestmark = pytest.mark.requires_cap("KVM_CAP_X86_BUS_LOCK_EXIT")

KVM_BUS_LOCK_DETECTION_OFF = 1 << 0       # api.rst 7.23
KVM_BUS_LOCK_DETECTION_EXIT = 1 << 1
LOCKS = 100
SPLIT = L.DATA + 64 - 2   # a dword whose first two bytes end one 64-byte line, the rest start the next

SOURCE = f"""
    mov rbx, {SPLIT:#x}
    mov ecx, {LOCKS}
again:
locked:
    lock inc dword ptr [rbx]
    dec ecx
    jnz again
    GUEST_DONE
"""


def test_each_split_lock_exits_as_a_bus_lock(kvm, guest):
    """100 LOCK INCs of a dword that spans two cache lines, in a VM with
    KVM_BUS_LOCK_DETECTION_EXIT: each ends KVM_RUN with KVM_EXIT_X86_BUS_LOCK and
    KVM_RUN_X86_BUS_LOCK in kvm_run.flags, RIP after the instruction with the increment done
    (Intel) or at it with the increment still to come (AMD); after the last one the guest ends with
    the dword at 100 (api.rst 7.23)."""
    supported = kvm.check_extension("KVM_CAP_X86_BUS_LOCK_EXIT")
    if not supported & KVM_BUS_LOCK_DETECTION_EXIT:
        pytest.skip(f"KVM_CAP_X86_BUS_LOCK_EXIT is {supported:#x}: no KVM_BUS_LOCK_DETECTION_EXIT")
    trap_like = vendor(kvm.supported_cpuid()) == "GenuineIntel"
    vm = kvm.create_vm()
    try:
        vm.enable_cap("KVM_CAP_X86_BUS_LOCK_EXIT", KVM_BUS_LOCK_DETECTION_EXIT)
        g = guest("long64", SOURCE, vm=vm)
        at = g.labels["locked"]
        after = at + 3  # LOCK INC DWORD PTR [RBX] is f0 ff 03
        for i in range(LOCKS):
            event = g.run()
            flags = g.vcpu.kvm_run.flags
            rip = g.vcpu.get_regs().rip
            count = g.vm.read_u32(SPLIT)
            assert event.reason == C.KVM_EXIT_X86_BUS_LOCK and flags & C.KVM_RUN_X86_BUS_LOCK, \
                f"lock {i}: expected KVM_EXIT_X86_BUS_LOCK with KVM_RUN_X86_BUS_LOCK in flags, got {event} " \
                f"flags={flags:#x}"
            want = (after, i + 1) if trap_like else (at, i)
            assert (rip, count) == want, \
                f"lock {i}: RIP {rip:#x} and dword {count} at the bus-lock exit, expected RIP {want[0]:#x} and " \
                f"{want[1]} ({'trap' if trap_like else 'fault'}-like exit)"
        assert g.run_to_done() == [] and g.vm.read_u32(SPLIT) == LOCKS, \
            f"after the last bus-lock exit: expected GUEST_DONE with no GUEST_SYNC and the split-lock dword at " \
            f"{LOCKS}, got dword {g.vm.read_u32(SPLIT)}"
    finally:
        vm.close()
