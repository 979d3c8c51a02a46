"""MONITOR and MWAIT under KVM's two MWAIT quirks, the vCPU's CPUID.01H:ECX.MONITOR[3] and the
guest's IA32_MISC_ENABLE.MWAIT[18] (selftests x86/monitor_mwait_test).

SDM Vol. 2B MONITOR/MWAIT: "#UD If CPUID.01H:ECX.MONITOR[bit 3] = 0". SDM Vol. 4 Table 2-2,
IA32_MISC_ENABLE bit 18 (ENABLE MONITOR FSM): with it 0 the MONITOR feature flag is clear and
MONITOR/MWAIT raise #UD. api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2:
- KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS (in force by default): KVM emulates intercepted
  MONITOR/MWAIT as NOPs whatever the guest's CPUID says; disabled (and
  KVM_X86_DISABLE_EXITS_MWAIT not set), KVM injects #UD when guest CPUID lacks MONITOR/MWAIT;
- KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT (in force by default): KVM leaves CPUID alone on writes of
  IA32_MISC_ENABLE; disabled, a write of bit 18 sets or clears the MONITOR/MWAIT bit of the guest's
  CPUID, as on the processor the SDM describes.
So MONITOR and MWAIT raise #UD exactly when the MWAIT quirk is off and MONITOR/MWAIT are disabled;
otherwise they complete (as NOPs). Each case runs in a fresh VM (quirks are per VM, set before
vCPUs run); with the MISC_ENABLE quirk in force the vCPU's CPUID is set to agree with bit 18.
"""

import itertools

import pytest

from kvmtest.cpuid import set_feature
from kvmtest.guest import layout as L
from kvmtest.x86 import MSR_IA32_MISC_ENABLE

pytestmark = pytest.mark.requires_cap("KVM_CAP_DISABLE_QUIRKS2")

KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT = 1 << 4   # arch/x86/include/uapi/asm/kvm.h
KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS = 1 << 6
MISC_ENABLE_MWAIT = 1 << 18


def _cases():
    for mwait_quirk_off, misc_quirk_off, disabled, cpuid_clear in itertools.product((False, True), repeat=4):
        # With the MISC_ENABLE quirk in force bit 18 does not reach CPUID: only a CPUID that agrees
        # with it describes one processor.
        if not misc_quirk_off and cpuid_clear != disabled:
            continue
        name = "-".join([f"mwait-quirk-{'off' if mwait_quirk_off else 'on'}",
                         f"misc-quirk-{'off' if misc_quirk_off else 'on'}",
                         "mwait-disabled" if disabled else "mwait-enabled",
                         "cpuid-clear" if cpuid_clear else "cpuid-set"])
        yield pytest.param(mwait_quirk_off, misc_quirk_off, disabled, cpuid_clear, id=name)


def _source(disabled: bool, faults: bool) -> str:
    update = f"and eax, {~MISC_ENABLE_MWAIT & 0xFFFFFFFF:#x}" if disabled else f"or eax, {MISC_ENABLE_MWAIT:#x}"
    monitor = f"mov eax, {L.DATA:#x}\nxor ecx, ecx\nxor edx, edx\n"
    mwait = "xor eax, eax\nxor ecx, ecx\n"
    run = (f"{monitor}GUEST_ASSERT_RAISES UD, monitor\n{mwait}GUEST_ASSERT_RAISES UD, mwait\n" if faults
           else f"{monitor}monitor\n{mwait}mwait\n")
    return f"""
    mov ecx, {MSR_IA32_MISC_ENABLE:#x}
    rdmsr
    {update}
    wrmsr
    mov eax, 1
    xor ecx, ecx
    cpuid
    shr ecx, 3
    and ecx, 1
    GUEST_ASSERT_EQ ecx, {0 if disabled else 1}
    {run}
    GUEST_DONE
"""


@pytest.mark.parametrize("mwait_quirk_off,misc_quirk_off,disabled,cpuid_clear", list(_cases()))
def test_monitor_mwait_fault_only_when_disabled_and_the_quirk_is_off(kvm, guest, mwait_quirk_off, misc_quirk_off,
                                                                    disabled, cpuid_clear):
    """The guest sets or clears IA32_MISC_ENABLE.MWAIT; its CPUID then reports MONITOR/MWAIT as
    enabled exactly when bit 18 is set; MONITOR and MWAIT raise #UD when MONITOR/MWAIT are
    disabled and KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS is off, and complete otherwise (SDM Vol. 2B
    MONITOR/MWAIT, Vol. 4 IA32_MISC_ENABLE[18]; api.rst 7.31)."""
    quirks = (KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS if mwait_quirk_off else 0) | \
             (KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT if misc_quirk_off else 0)
    supported = kvm.check_extension("KVM_CAP_DISABLE_QUIRKS2")
    if quirks & ~supported:
        pytest.skip(f"KVM_CAP_DISABLE_QUIRKS2 offers {supported:#x}, which lacks quirks {quirks & ~supported:#x}")
    vm = kvm.create_vm()
    try:
        vm.enable_cap("KVM_CAP_DISABLE_QUIRKS2", quirks)
        g = guest("long64", _source(disabled, faults=mwait_quirk_off and disabled), vm=vm)
        table = kvm.supported_cpuid_copy()
        set_feature(table, "monitor", not cpuid_clear)
        set_feature(table, "sse3", True)  # SDM Vol. 4: bit 18 may be changed only where SSE3 is enumerated
        g.vcpu.set_cpuid(table)
        g.run_to_done()
    finally:
        vm.close()
