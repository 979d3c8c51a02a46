"""Proof that a restored vCPU holds the saved state: read every piece back and compare.

verify() reads each ioctl's state back from the vCPU (KVM_GET_CPUID2, KVM_GET_SREGS2 or
KVM_GET_SREGS, KVM_GET_NESTED_STATE, KVM_GET_LAPIC, KVM_GET_MSRS, KVM_GET_REGS, KVM_GET_XCRS,
KVM_GET_XSAVE or KVM_GET_FPU, KVM_GET_VCPU_EVENTS, KVM_GET_DEBUGREGS, KVM_GET_MP_STATE,
KVM_GET_TSC_KHZ, the TSC offset, the kvm_run inputs) and raises StateMismatch naming the ioctl
and the fields that differ from the kvmtest.state.VcpuState (the kernel selftests' state_test
compares the same way). Setup calls have nothing to read back: the suites check them by what the
guest does. Values that run on their own are compared within bounds, each explained where it is.
field_diffs, bytes_diffs and check serve kvmtest.vm_state's VM-level comparison too.
"""

import ctypes
import time

from .abi import constants as C
from .abi import structs as S
from .msr_names import msr_name
from .state import StateMismatch, VcpuState, run_inputs
from .x86 import (
    HV_X64_MSR_TIME_REF_COUNT,
    HV_X64_MSR_VP_RUNTIME,
    MSR_IA32_TSC,
    MSR_IA32_TSC_DEADLINE,
)


def field_diffs(saved, got, prefix: str = "", skip=()) -> list[str]:
    """'path: saved X, read Y' for every scalar field (recursing into structures and arrays)
    that differs; padding and reserved fields are skipped, as are the paths in `skip`."""
    out = []
    for name, *_ in saved._fields_:
        if name.startswith(("pad", "reserved")) or f"{prefix}{name}" in skip:
            continue
        out += _value_diffs(getattr(saved, name), getattr(got, name), f"{prefix}{name}", skip)
    return out


def _value_diffs(a, b, path, skip):
    if isinstance(a, (ctypes.Structure, ctypes.Union)):
        return field_diffs(a, b, path + ".", skip)
    if isinstance(a, ctypes.Array):
        out = []
        for i in range(len(a)):
            out += _value_diffs(a[i], b[i], f"{path}[{i}]", skip)
        return out
    return [] if a == b else [f"{path}: saved {_fmt(a)}, read {_fmt(b)}"]


def _fmt(v):
    return f"{v:#x}" if isinstance(v, int) else repr(v)


def check(obj, ioctl, diffs):
    """Raise StateMismatch naming `obj` and `ioctl` if `diffs` (field_diffs' lines) is not empty."""
    if diffs:
        raise StateMismatch(obj, ioctl, diffs)


def verify(vcpu, state: VcpuState) -> None:
    """Read every piece of `vcpu`'s state back and compare it with `state` (StateMismatch)."""
    name = vcpu.name
    got = vcpu.get_cpuid()
    if len(got) != len(state.cpuid):
        check(name, "KVM_GET_CPUID2", [f"nent: saved {len(state.cpuid)}, read {len(got)}"])
    # strict=False: a count that differs is reported above; the entries both have are compared.
    check(name, "KVM_GET_CPUID2", [d for i, (a, b) in enumerate(zip(state.cpuid, got, strict=False))
                                    for d in field_diffs(a, b, f"entries[{i}](leaf {a.function:#x}.{a.index}).")])
    if isinstance(state.sregs, S.kvm_sregs2):
        check(name, "KVM_GET_SREGS2", field_diffs(state.sregs, vcpu.get_sregs2()))
    else:
        check(name, "KVM_GET_SREGS", field_diffs(state.sregs, vcpu.get_sregs()))
    if state.nested is not None:
        got = vcpu.get_nested_state(ctypes.sizeof(state.nested))
        check(name, "KVM_GET_NESTED_STATE", bytes_diffs(bytes(state.nested), bytes(got), "kvm_nested_state"))
    if state.lapic is not None:
        check(name, "KVM_GET_LAPIC", _lapic_diffs(state.lapic, vcpu.get_lapic()))
    check(name, "KVM_GET_MSRS", _msr_diffs(vcpu, state))
    check(name, "KVM_GET_REGS", field_diffs(state.regs, vcpu.get_regs()))
    if state.xcrs is not None:
        check(name, "KVM_GET_XCRS", field_diffs(state.xcrs, vcpu.get_xcrs()))
    if state.xsave is not None:
        size = ctypes.sizeof(state.xsave)
        got = vcpu.get_xsave2(size) if size > ctypes.sizeof(S.kvm_xsave) else vcpu.get_xsave()
        check(name, "KVM_GET_XSAVE", _xsave_diffs(bytes(state.xsave), bytes(got)))
    else:
        check(name, "KVM_GET_FPU", field_diffs(state.fpu, vcpu.get_fpu()))
    check(name, "KVM_GET_VCPU_EVENTS", field_diffs(state.events, vcpu.get_events()))
    check(name, "KVM_GET_DEBUGREGS", field_diffs(state.debugregs, vcpu.get_debugregs()))
    if state.mp_state is not None and vcpu.get_mp_state() != state.mp_state:
        check(name, "KVM_GET_MP_STATE", [(f"mp_state: saved {C.MP_STATE_NAMES.name(state.mp_state)}, read "
                                           f"{C.MP_STATE_NAMES.name(vcpu.get_mp_state())}")])
    if state.tsc_khz is not None and vcpu.get_tsc_khz() != state.tsc_khz:
        check(name, "KVM_GET_TSC_KHZ", [f"tsc_khz: saved {state.tsc_khz}, read {vcpu.get_tsc_khz()}"])
    if state.tsc_offset is not None:
        got = vcpu.get_device_attr_u64(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET)
        if got != state.tsc_offset:
            check(name, "KVM_GET_DEVICE_ATTR", [f"KVM_VCPU_TSC_OFFSET: saved {state.tsc_offset:#x}, read {got:#x}"])
    got = run_inputs(vcpu)
    check(name, "kvm_run", [f"{field}: saved {saved:#x}, read {got.get(field, 0):#x}"
                            for field, saved in state.run_inputs.items() if got.get(field, 0) != saved])


APIC_TMICT, APIC_TMCCT, APIC_LVTT = 0x380, 0x390, 0x320


def _apic_reg(lapic, offset) -> int:
    return int.from_bytes(bytes(lapic.regs[offset:offset + 4]), "little")


def _lapic_diffs(saved, got) -> list[str]:
    diffs = [f"APIC register {off:#05x}: saved {_apic_reg(saved, off):#010x}, read {_apic_reg(got, off):#010x}"
             for off in range(0, 0x400, 0x10) if off != APIC_TMCCT and _apic_reg(saved, off) != _apic_reg(got, off)]
    # The timer's current count runs down on its own (SDM Vol. 3A 11.5.4): one-shot it can only
    # have gone down since the save; periodic it reloads from the initial count, so it stays at or
    # below that. KVM_SET_LAPIC restarts the timer from the saved current count (lapic.c,
    # kvm_apic_set_state).
    before, after, initial = _apic_reg(saved, APIC_TMCCT), _apic_reg(got, APIC_TMCCT), _apic_reg(saved, APIC_TMICT)
    periodic = (_apic_reg(saved, APIC_LVTT) >> 17) & 3 == 1
    if after > (initial if periodic else before):
        diffs.append(f"APIC timer current count (0x390): saved {before:#x}, read {after:#x}, which is above "
                     f"{'the initial count' if periodic else 'the saved count'} a running timer can show")
    return diffs


# Hyper-V's synthetic counters HV_X64_MSR_VP_RUNTIME and HV_X64_MSR_TIME_REF_COUNT, which KVM
# lists in KVM_GET_MSR_INDEX_LIST (Hyper-V TLFS: both count in 100 ns units). Neither reads back
# what KVM_SET_MSRS wrote, by design; _msr_diffs bounds them instead, each by what KVM keeps
# behind it.
_MS_IN_100NS = 10_000


def _msr_diffs(vcpu, state: VcpuState) -> list[str]:
    ref_count = HV_X64_MSR_TIME_REF_COUNT in state.msrs
    clock_before = vcpu.vm.get_clock().clock if ref_count else 0
    got = vcpu.get_msrs(list(state.msrs))
    clock_after = vcpu.vm.get_clock().clock if ref_count else 0
    elapsed_ns = time.monotonic_ns() - state.saved_at_ns
    diffs = []
    for index, saved in state.msrs.items():
        now = got[index]
        if index == HV_X64_MSR_TIME_REF_COUNT:
            # The partition's reference counter is the VM's clock, not vCPU state: KVM ignores a
            # host write ("read-only, but still ignore it if host-initiated", arch/x86/kvm/hyperv.c
            # kvm_hv_set_msr_pw) and computes it from the VM's kvmclock (get_time_ref_counter:
            # kvmclock / 100, or the reference TSC page's scale and offset, which KVM derives from
            # kvmclock). So it reads this VM's KVM_GET_CLOCK around the read, in 100 ns (+-1 ms for
            # the TSC page's rounding); kvmclock itself is carried by KVM_SET_CLOCK and checked by
            # kvmtest.vm_state.
            least, most = clock_before // 100 - _MS_IN_100NS, clock_after // 100 + _MS_IN_100NS
            if not least <= now <= most:
                diffs.append(f"{msr_name(index)}: read {now:#x}, outside [{least:#x}, "
                             f"{most:#x}], this VM's KVM_GET_CLOCK in 100 ns around the read (saved {saved:#x})")
        elif index == HV_X64_MSR_VP_RUNTIME:
            # The vCPU's run time: KVM keeps it as the CPU time of the thread making the ioctl
            # plus an offset a host write sets (hyperv.c kvm_hv_set_msr: runtime_offset = data -
            # current_task_runtime_100ns()). That CPU time only grows, and by no more than the
            # time since the save (+1 ms), so it reads from the saved value up to that.
            most = saved + elapsed_ns // 100 + _MS_IN_100NS
            if not saved <= now <= most:
                diffs.append(f"{msr_name(index)}: saved {saved:#x}, read {now:#x}, outside "
                             f"[{saved:#x}, {most:#x}] ({elapsed_ns / 1e6:.1f} ms since the save, in 100 ns)")
        elif index == MSR_IA32_TSC and state.tsc_khz:
            # The TSC keeps counting: it reads at least the saved value and at most what it can
            # have counted since the save started at the vCPU's frequency (+1% and 1 ms for
            # clock granularity).
            most = saved + (elapsed_ns * state.tsc_khz * 101) // (100 * 10**6) + state.tsc_khz
            if not saved <= now <= most:
                diffs.append(f"{msr_name(index)}: saved {saved:#x}, read {now:#x}, outside [{saved:#x}, {most:#x}] "
                             f"({elapsed_ns / 1e6:.1f} ms at {state.tsc_khz} kHz since the save)")
        elif index == MSR_IA32_TSC_DEADLINE and now == 0 and saved and saved <= got.get(MSR_IA32_TSC, 0):
            continue  # the deadline passed and the timer fired, which clears the MSR (SDM Vol. 3A 11.5.4.1)
        elif now != saved:
            diffs.append(f"{msr_name(index)}: saved {saved:#x}, read {now:#x}")
    return diffs


def bytes_diffs(saved: bytes, got: bytes, what: str) -> list[str]:
    """One line naming the first differing byte of `what` (and how many more differ), or the sizes
    if only they differ; [] when equal."""
    if saved == got:  # memcmp: a memslot's whole contents compare here on every migration
        return []
    bad = [i for i in range(min(len(saved), len(got))) if saved[i] != got[i]]
    if not bad:
        return [] if len(saved) == len(got) else [f"{what} size: saved {len(saved)}, read {len(got)}"]
    first = bad[0]
    return [f"{what} byte {first:#x} (and {len(bad) - 1} more): saved {saved[first]:#04x}, read {got[first]:#04x}"]


# The XSAVE area's standard layout (SDM Vol. 1 13.4, Table 13-1): legacy region, header, components.
_XSAVE_PARTS = [(0, 24, "x87 (FCW..FDP)"), (24, 32, "MXCSR/MXCSR_MASK"), (32, 160, "x87 ST0-ST7"),
                (160, 416, "XMM0-XMM15"), (416, 512, "legacy-region reserved/available"), (512, 520, "XSTATE_BV"),
                (520, 528, "XCOMP_BV"), (528, 576, "XSAVE header reserved")]


def _xsave_diffs(saved: bytes, got: bytes) -> list[str]:
    diffs = []
    for start, end, what in _XSAVE_PARTS + [(576, len(saved), "extended components")]:
        diffs += bytes_diffs(saved[start:end], got[start:end], f"XSAVE {what} (offset {start:#x}+)")
    return diffs
