"""IA32_APERF and IA32_MPERF: absent (RDMSR raises #GP) unless enumerated, and, with
KVM_X86_DISABLE_EXITS_APERFMPERF, the host's own counters (selftests x86/aperfmperf_test).

SDM Vol. 4 Table 2-2: IA32_MPERF (E7H) and IA32_APERF (E8H) exist if CPUID.06H:ECX[0] = 1; SDM Vol.
2B RDMSR: an MSR the processor does not implement raises #GP(0). KVM_GET_SUPPORTED_CPUID leaves
that bit clear unless the counters can be passed through. api.rst 7.13 KVM_CAP_X86_DISABLE_EXITS,
KVM_X86_DISABLE_EXITS_APERFMPERF: the guest's RDMSR of IA32_APERF/IA32_MPERF is no longer
intercepted and reads the counters of the host CPU it runs on, which the host reads through
/dev/cpu/N/msr (both count up).
"""

import os

import pytest

from kvmtest.cpuid import set_feature
from kvmtest.guest.msr_source import rdmsr64

MSR_IA32_MPERF, MSR_IA32_APERF = 0xE7, 0xE8
KVM_X86_DISABLE_EXITS_APERFMPERF = 1 << 4   # arch/x86/include/uapi/asm/kvm.h
READS = 50


@pytest.mark.parametrize("msr", [pytest.param(MSR_IA32_MPERF, id="IA32_MPERF"),
                                 pytest.param(MSR_IA32_APERF, id="IA32_APERF")])
def test_aperf_mperf_raise_gp_when_not_enumerated(kvm, guest, msr):
    """With CPUID.06H:ECX[0] clear in the vCPU's CPUID (and the exits not disabled), RDMSR of
    IA32_MPERF or IA32_APERF raises #GP(0) (SDM Vol. 4 Table 2-2, Vol. 2B RDMSR)."""
    g = guest("long64", f"mov ecx, {msr:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    table = kvm.supported_cpuid_copy()
    set_feature(table, "aperfmperf", False)
    g.vcpu.set_cpuid(table)
    g.run_to_done()


def _host_msr(fd, msr):
    return int.from_bytes(os.pread(fd, 8, msr), "little")


def test_with_the_exits_disabled_the_guest_reads_the_host_counters(kvm, guest):
    """With KVM_X86_DISABLE_EXITS_APERFMPERF enabled before the vCPU exists and the vCPU thread on
    one host CPU, each guest RDMSR of IA32_APERF and IA32_MPERF lies strictly between the host
    CPU's readings (through /dev/cpu/N/msr) taken before and after it (api.rst 7.13)."""
    if not kvm.check_extension("KVM_CAP_X86_DISABLE_EXITS") & KVM_X86_DISABLE_EXITS_APERFMPERF:
        pytest.skip("KVM_CAP_X86_DISABLE_EXITS does not offer KVM_X86_DISABLE_EXITS_APERFMPERF")
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    path = f"/dev/cpu/{cpu}/msr"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        pytest.skip(f"cannot read the host's MSRs through {path}: {e.strerror} (msr module not loaded?)")
    vm = kvm.create_vm()
    try:
        os.sched_setaffinity(0, {cpu})
        vm.enable_cap("KVM_CAP_X86_DISABLE_EXITS", KVM_X86_DISABLE_EXITS_APERFMPERF)
        g = guest("long64", f"""
        again:
            {rdmsr64(MSR_IA32_APERF)}
            GUEST_SYNC rax
            {rdmsr64(MSR_IA32_MPERF)}
            GUEST_SYNC rax
            jmp again
        """, vm=vm)
        for i in range(READS):
            before = _host_msr(fd, MSR_IA32_APERF), _host_msr(fd, MSR_IA32_MPERF)
            aperf, mperf = g.run().value, g.run().value
            after = _host_msr(fd, MSR_IA32_APERF), _host_msr(fd, MSR_IA32_MPERF)
            assert before[0] < aperf < after[0] and before[1] < mperf < after[1], \
                f"read {i}: guest IA32_APERF {aperf:#x} / IA32_MPERF {mperf:#x}, host CPU {cpu} before " \
                f"{before[0]:#x} / {before[1]:#x}, after {after[0]:#x} / {after[1]:#x}"
    finally:
        os.sched_setaffinity(0, allowed)
        os.close(fd)
        vm.close()
