"""The read-back bounds kvmtest.state_verify puts on MSRs that do not read back what was written:
Hyper-V's partition reference counter (the VM's kvmclock in 100 ns, a host write ignored) and
the vCPU run time (CPU time since the restore's write, added to the saved value). No KVM needed:
a stand-in vCPU answers KVM_GET_MSRS and KVM_GET_CLOCK."""

import time
from types import SimpleNamespace

from kvmtest.state import VcpuState
from kvmtest.state_verify import _msr_diffs
from kvmtest.x86 import HV_X64_MSR_TIME_REF_COUNT, HV_X64_MSR_VP_RUNTIME

MS = 10_000  # 1 ms in the counters' 100 ns units


class _Vcpu:
    """KVM_GET_MSRS gives `msrs`; each KVM_GET_CLOCK gives the next of `clocks` (ns)."""

    def __init__(self, msrs, clocks=()):
        self.msrs, clocks = msrs, list(clocks)
        self.vm = SimpleNamespace(get_clock=lambda: SimpleNamespace(clock=clocks.pop(0)))

    def get_msrs(self, indices):
        return {i: self.msrs[i] for i in indices}


def _state(msrs, saved_ago_ns=0):
    return VcpuState(vcpu_id=0, cpuid=[], regs=None, sregs=None, msrs=msrs, events=None, debugregs=None,
                     mp_state=None, saved_at_ns=time.monotonic_ns() - saved_ago_ns)


def test_reference_counter_is_compared_with_the_vms_kvmclock_not_the_saved_value():
    # KVM_GET_CLOCK reads 5.000 s before and 5.002 s after the MSR read: the counter is due in
    # [50_000_000 - 1 ms, 50_020_000 + 1 ms] whatever was saved (a host write is ignored).
    state = _state({HV_X64_MSR_TIME_REF_COUNT: 123})
    assert _msr_diffs(_Vcpu({HV_X64_MSR_TIME_REF_COUNT: 50_010_000}, [5_000_000_000, 5_002_000_000]), state) == []
    assert _msr_diffs(_Vcpu({HV_X64_MSR_TIME_REF_COUNT: 50_020_000 + MS}, [5_000_000_000, 5_002_000_000]),
                      state) == []
    for wrong in (123, 50_000_000 - MS - 1, 50_020_000 + MS + 1):
        diffs = _msr_diffs(_Vcpu({HV_X64_MSR_TIME_REF_COUNT: wrong}, [5_000_000_000, 5_002_000_000]), state)
        assert len(diffs) == 1 and "HV_X64_MSR_TIME_REF_COUNT" in diffs[0] and "KVM_GET_CLOCK" in diffs[0], diffs


def test_vp_runtime_counts_on_from_the_saved_value_by_at_most_the_time_since_the_save():
    saved = 0x2A1FBFD2
    state = _state({HV_X64_MSR_VP_RUNTIME: saved}, saved_ago_ns=50_000_000)  # saved 50 ms ago
    assert _msr_diffs(_Vcpu({HV_X64_MSR_VP_RUNTIME: saved}), state) == []
    assert _msr_diffs(_Vcpu({HV_X64_MSR_VP_RUNTIME: saved + 50 * MS}), state) == []
    for wrong in (saved - 1, saved + 1000 * MS):  # gone back; a second of CPU time in about 50 ms
        diffs = _msr_diffs(_Vcpu({HV_X64_MSR_VP_RUNTIME: wrong}), state)
        assert len(diffs) == 1 and "HV_X64_MSR_VP_RUNTIME" in diffs[0], diffs


def test_other_msrs_still_read_back_exactly():
    state = _state({0x175: 0x5A5A5000})
    assert _msr_diffs(_Vcpu({0x175: 0x5A5A5000}), state) == []
    assert _msr_diffs(_Vcpu({0x175: 0x5A5A5001}), state) == ["IA32_SYSENTER_ESP (0x175): saved 0x5a5a5000, read "
                                                            "0x5a5a5001"]
