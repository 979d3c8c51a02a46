"""A VM-wide TSC frequency set before any vCPU exists, and vCPUs created afterwards whose TSCs run
in step (selftests x86/tsc_scaling_sync).

api.rst 4.55 KVM_SET_TSC_KHZ: with KVM_CAP_VM_TSC_CONTROL it may be issued on the VM fd, setting
the TSC frequency of the vCPUs created afterwards; KVM_GET_TSC_KHZ on each of them returns it. The
vCPUs of one VM are the processors of one machine and share one time base (the peer's expectation,
for vCPUs created together while the first one's IA32_TSC was just written): a TSC value one vCPU
read and published is never later than what another vCPU's RDTSC returns after it has seen that
value, RDTSC ordered after the load by LFENCE (SDM Vol. 2B RDTSC).
"""

import pytest

from kvmtest.guest import layout as L
from kvmtest.x86 import MSR_IA32_TSC

pytestmark = pytest.mark.requires_cap("KVM_CAP_VM_TSC_CONTROL")

TSC_KHZ = 2345678
FIRST_TSC = 200000000
VCPUS = 4
ROUNDS = 20000
LATEST = L.DATA   # the latest TSC value any vCPU published

# Each vCPU: read the latest published TSC, then its own (after LFENCE), publish its own; count the
# rounds where its TSC was behind the one it had just seen.
SOURCE = f"""
start:
    xor esi, esi
    mov edi, {ROUNDS}
    mov rbx, {LATEST:#x}
round:
    mov rcx, qword ptr [rbx]
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov qword ptr [rbx], rax
    cmp rax, rcx
    jae in_order
    inc esi
in_order:
    dec edi
    jnz round
    GUEST_SYNC rsi
    GUEST_DONE
"""


def test_vcpus_created_after_a_vm_wide_tsc_khz_run_in_step(kvm, guest):
    """KVM_SET_TSC_KHZ(2345678) on the VM, then four vCPUs, the first with IA32_TSC written by the
    host: each reports 2345678 kHz (KVM_GET_TSC_KHZ), and running together at CPL3 none ever reads
    a TSC earlier than one another vCPU published before (api.rst 4.55; SDM Vol. 2B RDTSC)."""
    vm = kvm.create_vm()
    try:
        vm.set_tsc_khz(TSC_KHZ)
        g = guest("long64-cpl3", SOURCE, vm=vm)
        g.vcpu.set_msr(MSR_IA32_TSC, FIRST_TSC)
        vcpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(VCPUS - 1)]
        khz = [v.get_tsc_khz() for v in vcpus]
        assert khz == [TSC_KHZ] * VCPUS, f"KVM_GET_TSC_KHZ of the vCPUs: {khz}, expected {TSC_KHZ} each"
        threads = [g.in_thread(v, timeout=30) for v in vcpus]
        behind = [t.join(60) for t in threads]
        assert behind == [[0]] * VCPUS, \
            f"rounds in which a vCPU's RDTSC was behind a TSC another vCPU had published: {behind}"
    finally:
        vm.close()
