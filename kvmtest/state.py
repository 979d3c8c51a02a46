"""Complete vCPU state: save it from one vCPU, restore it into another, and prove the copy.

Saved: everything KVM exposes about a vCPU. CPUID (KVM_GET_CPUID2); special registers
(KVM_GET_SREGS2, which carries the PAE PDPTRs, or KVM_GET_SREGS without KVM_CAP_SREGS2);
every MSR of KVM_GET_MSR_INDEX_LIST that KVM lets user space read; general registers; XSAVE
(KVM_GET_XSAVE2 at KVM_CAP_XSAVE2's size; KVM_GET_FPU without KVM_CAP_XSAVE); XCRs; the
local APIC; vCPU events; debug registers; MP state; the TSC frequency and TSC offset
(devices/vcpu.rst KVM_VCPU_TSC_OFFSET); nested state (KVM_CAP_NESTED_STATE). Also what has no
KVM_GET_*: the vCPU's recorded setup calls (KVM_ENABLE_CAP, KVM_SET_GUEST_DEBUG; kvmtest.carried)
and the kvm_run fields KVM reads as input on the next KVM_RUN (api.rst 5: request_interrupt_window,
immediate_exit, kvm_valid_regs, and cr8, which KVM loads into CR8 on every KVM_RUN of a vCPU
without an in-kernel local APIC). What cannot be carried is refused by name (CannotCarry): an
ioctl nothing records, sync registers marked dirty in kvm_run and not yet loaded by KVM_RUN.

Restore order, each step needing the ones before it:
 0. the recorded KVM_ENABLE_CAP calls: a capability can make state restorable (MSRs of a
    paravirtual feature it turns on) or refuse some (KVM_CAP_ENFORCE_PV_FEATURE_CPUID).
 1. KVM_SET_TSC_KHZ: the TSC values restored later count at this frequency.
 2. KVM_SET_CPUID2: KVM checks later state against the guest's CPUID: KVM_SET_SREGS refuses
    CR4 bits whose feature CPUID lacks (CR4.OSXSAVE without XSAVE), KVM_SET_XSAVE components
    outside the XCR0 CPUID allows, KVM_SET_MSRS MSRs of features CPUID lacks.
 3. KVM_SET_SREGS2: IA32_APIC_BASE before the LAPIC (api.rst KVM_GET_LAPIC: the APIC ID's
    format follows the APIC mode), EFER before the MSRs and nested state.
 4. KVM_SET_NESTED_STATE: needs EFER.SVME / CR4.VMXE from step 3.
 5. KVM_SET_LAPIC before the MSRs: a write to IA32_TSC_DEADLINE is ignored unless the LVT
    timer is in TSC-deadline mode (SDM Vol. 3A 11.5.4.1), so an armed deadline restored
    before its LVT entry would be silently dropped.
 6. KVM_SET_MSRS: KVM stops at the first MSR it refuses and returns how many it set
    (api.rst 4.19); anything short of all of them raises MsrRefused naming the MSR.
 7. KVM_SET_REGS.
 8. KVM_SET_XCRS, then KVM_SET_XSAVE (or KVM_SET_FPU).
 9. KVM_SET_VCPU_EVENTS after the registers and the LAPIC: KVM_SET_REGS drops a pending
    exception (arch/x86/kvm/x86.c, __set_regs) and KVM_SET_SREGS/KVM_SET_LAPIC may queue an
    interrupt, and the saved events are what was really pending. KVM_VCPUEVENT_VALID_NMI_PENDING
    and _SIPI_VECTOR are set so nmi.pending and sipi_vector are transferred (api.rst 4.32).
10. KVM_SET_DEBUGREGS.
11. KVM_SET_MP_STATE, after the events that hold a latched INIT and the SIPI vector.
12. The recorded KVM_SET_GUEST_DEBUG calls, after the registers: KVM single-steps by setting
    RFLAGS.TF as long as RIP is where KVM_SET_GUEST_DEBUG found it (x86.c __kvm_set_rflags),
    so a later KVM_SET_REGS would move RIP away and lose the step. Then the kvm_run inputs.
13. The TSC offset (KVM_SET_DEVICE_ATTR KVM_VCPU_TSC_OFFSET) after the MSRs, since a write of
    IA32_TSC replaces the offset; kvmtest.vm_state puts KVM_SET_CLOCK before it, as the
    migration algorithm of devices/vcpu.rst does.

After a restore, verify() reads every piece back (setup calls have nothing to read back: the
suites check them by what the guest does) and raises StateMismatch naming the ioctl and
the field where it differs from what was saved (the kernel selftests' state_test compares the
same way). Values that run on their own are compared within bounds, each explained where it is.
"""

import ctypes
import time
from dataclasses import dataclass, field

from .abi import constants as C
from .abi import structs as S
from .errors import KvmtestError
from .msr_names import (
    MSR_IA32_TSC,
    MSR_IA32_TSC_DEADLINE,
    MSR_KVM_ASYNC_PF_INT,
    msr_name,
)


class StateError(KvmtestError):
    """A vCPU or VM state that cannot be saved or restored whole."""


class CannotCarry(StateError):
    """State that a copy of the vCPU or VM cannot be given; names it, so nothing is dropped silently."""


class ExitAwaitsResponse(CannotCarry):
    """A vCPU stopped at an exit whose operation needs data only user space supplies (an IN, an MMIO
    read, an RDMSR, a hypercall's return value) and respond() was not called: KVM finishes it with
    that data on the next KVM_RUN, and the vCPU's state is not consistent until then (api.rst 5)."""


class MsrRefused(StateError):
    """KVM_SET_MSRS set fewer MSRs than it was given (api.rst 4.19)."""

    def __init__(self, vcpu_name: str, index: int, accepted: int, total: int, value: int):
        self.index, self.accepted, self.total = index, accepted, total
        super().__init__(f"KVM_SET_MSRS on {vcpu_name}: KVM set {accepted} of {total} saved MSRs and refused "
                         f"{msr_name(index)} = {value:#x}; the MSRs after it were not restored")


class StateMismatch(StateError):
    """A piece of restored state reads back different from what was saved."""

    def __init__(self, obj: str, ioctl: str, diffs: list[str]):
        self.ioctl, self.diffs = ioctl, diffs
        super().__init__(f"{ioctl} on {obj} after the restore differs from the saved state: " + "; ".join(diffs))


# MSRs KVM lists in KVM_GET_MSR_INDEX_LIST and reads, but will not write back on a vCPU without
# an in-kernel local APIC. Such a vCPU cannot have changed them from their reset value 0 either
# (the guest's WRMSR is refused the same way), so leaving them out of the restore loses nothing;
# save() checks the value is 0 and records the exclusion with its reason.
NEEDS_IN_KERNEL_LAPIC = {
    MSR_KVM_ASYNC_PF_INT: "KVM accepts MSR_KVM_ASYNC_PF_INT only with an in-kernel LAPIC "
                          "(arch/x86/kvm/x86.c kvm_pv_enable_async_pf_int; x86/msr.rst: it names the "
                          "LAPIC vector for 'page ready')",
}


@dataclass
class VcpuState:
    vcpu_id: int
    cpuid: list
    regs: S.kvm_regs
    sregs: "S.kvm_sregs2 | S.kvm_sregs"
    msrs: dict[int, int]
    events: S.kvm_vcpu_events
    debugregs: S.kvm_debugregs
    mp_state: int | None
    fpu: S.kvm_fpu | None = None          # only without KVM_CAP_XSAVE (XSAVE holds the same state)
    xsave: object = None                  # S.kvm_xsave, or a larger xsave_type() buffer
    xcrs: S.kvm_xcrs | None = None
    lapic: S.kvm_lapic_state | None = None
    tsc_khz: int | None = None
    tsc_offset: int | None = None
    nested: object = None                 # S.nested_state_type() buffer
    skipped_msrs: list[int] = field(default_factory=list)       # listed, but KVM_GET_MSRS refused them
    setup_calls: list = field(default_factory=list)              # Vcpu.setup_calls (kvmtest.carried)
    run_inputs: dict[str, int] = field(default_factory=dict)     # kvm_run fields KVM_RUN reads
    excluded_msrs: dict[int, str] = field(default_factory=dict)  # read, not restorable here: why
    saved_at_ns: int = 0                  # CLOCK_MONOTONIC when the save started


def _copy(obj):
    return type(obj).from_buffer_copy(bytes(obj))


def _has(vcpu, cap: str) -> int:
    return vcpu.vm.kvm.check_extension(cap)


def readable_msrs(vcpu, indices: list[int]) -> tuple[dict[int, int], list[int]]:
    """Read every MSR KVM lets us read, one KVM_GET_MSRS each so that one refusal does not hide
    the rest; return (values, indices KVM refused)."""
    values, refused = {}, []
    for index in indices:
        buf = S.msrs_type(1)()
        buf.nmsrs = 1
        buf.entries[0].index = index
        n, err = vcpu.try_ioctl_result("KVM_GET_MSRS", buf, args=f"msrs={index:#x}")
        if err or n != 1:
            refused.append(index)
        else:
            values[index] = buf.entries[0].data
    return values, refused


def save(vcpu) -> VcpuState:
    """Everything KVM exposes about a stopped vCPU (see the module docstring)."""
    if vcpu.uncarried:
        raise CannotCarry(f"{vcpu.name} was set up through ioctls kvmtest neither records nor reads back, so a "
                          f"copy would lack them: {'; '.join(vcpu.uncarried)} (kvmtest.carried)")
    dirty = vcpu.kvm_run.kvm_dirty_regs
    if dirty:
        raise CannotCarry(f"{vcpu.name}: kvm_run.kvm_dirty_regs = {dirty:#x}: registers written into kvm_run.s "
                          "that KVM loads only at the next KVM_RUN (api.rst 5, KVM_CAP_SYNC_REGS); run the vCPU "
                          "or clear kvm_dirty_regs before saving it")
    started = time.monotonic_ns()
    msrs, refused = readable_msrs(vcpu, vcpu.vm.kvm.msr_index_list())
    excluded = {}
    if not vcpu.vm.irqchip:
        for index, reason in NEEDS_IN_KERNEL_LAPIC.items():
            if index in msrs:
                value = msrs.pop(index)
                if value:
                    raise StateError(f"{vcpu.name}: {msr_name(index)} = {value:#x} on a vCPU without an in-kernel "
                                     f"LAPIC, which cannot be restored: {reason}")
                excluded[index] = reason
    state = VcpuState(
        vcpu_id=vcpu.id,
        cpuid=[_copy(e) for e in vcpu.get_cpuid()],
        regs=vcpu.get_regs(),
        sregs=vcpu.get_sregs2() if _has(vcpu, "KVM_CAP_SREGS2") else vcpu.get_sregs(),
        msrs=msrs, events=vcpu.get_events(), debugregs=vcpu.get_debugregs(),
        mp_state=vcpu.get_mp_state() if _has(vcpu, "KVM_CAP_MP_STATE") else None,
        skipped_msrs=refused, excluded_msrs=excluded, saved_at_ns=started,
        setup_calls=list(vcpu.setup_calls), run_inputs=run_inputs(vcpu),
    )
    if _has(vcpu, "KVM_CAP_XSAVE"):
        size = _has(vcpu, "KVM_CAP_XSAVE2")
        state.xsave = vcpu.get_xsave2(size) if size else vcpu.get_xsave()
    else:
        state.fpu = vcpu.get_fpu()
    if _has(vcpu, "KVM_CAP_XCRS"):
        state.xcrs = vcpu.get_xcrs()
    if vcpu.vm.irqchip:
        state.lapic = vcpu.get_lapic()
    if _has(vcpu, "KVM_CAP_GET_TSC_KHZ"):
        state.tsc_khz = vcpu.get_tsc_khz()
    if vcpu.has_device_attr(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET):
        state.tsc_offset = vcpu.get_device_attr_u64(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET)
    nested_size = _has(vcpu, "KVM_CAP_NESTED_STATE")
    if nested_size:
        state.nested = vcpu.get_nested_state(nested_size)
    return state


def run_inputs(vcpu) -> dict[str, int]:
    """The kvm_run fields KVM reads on the next KVM_RUN (api.rst 5). cr8 only without an in-kernel
    local APIC: KVM loads it into CR8 at every KVM_RUN then (and ignores it otherwise)."""
    run = vcpu.kvm_run
    inputs = {name: getattr(run, name) for name in ("request_interrupt_window", "immediate_exit", "kvm_valid_regs")}
    if not vcpu.vm.irqchip:
        inputs["cr8"] = run.cr8
    return inputs


# Recorded vCPU setup calls replayed after the registers rather than before everything (step 12).
_AFTER_REGISTERS = {"set_guest_debug"}


def _replay(vcpu, calls) -> None:
    for name, args, kwargs in calls:
        getattr(vcpu, name)(*args, **kwargs)


def restore(vcpu, state: VcpuState, *, tsc_offset: bool = True) -> int:
    """Write `state` into `vcpu` in the order of the module docstring; returns how many MSRs
    KVM_SET_MSRS set, which is all of them (MsrRefused otherwise). `tsc_offset=False` leaves
    step 13 to the caller (kvmtest.vm_state, after KVM_SET_CLOCK)."""
    _replay(vcpu, [c for c in state.setup_calls if c[0] not in _AFTER_REGISTERS])
    if state.tsc_khz is not None and _has(vcpu, "KVM_CAP_GET_TSC_KHZ") and vcpu.get_tsc_khz() != state.tsc_khz:
        if not _has(vcpu, "KVM_CAP_TSC_CONTROL"):
            raise StateError(f"{vcpu.name}: the saved vCPU's TSC ran at {state.tsc_khz} kHz, this one at "
                             f"{vcpu.get_tsc_khz()} kHz, and KVM_CAP_TSC_CONTROL (KVM_SET_TSC_KHZ) is not available")
        vcpu.set_tsc_khz(state.tsc_khz)
    vcpu.set_cpuid(state.cpuid)
    if isinstance(state.sregs, S.kvm_sregs2):
        vcpu.set_sregs2(state.sregs)
    else:
        vcpu.set_sregs(state.sregs)
    if state.nested is not None:
        vcpu.set_nested_state(state.nested)
    if state.lapic is not None:
        vcpu.set_lapic(state.lapic)
    accepted = vcpu.set_msrs(state.msrs) if state.msrs else 0
    if accepted != len(state.msrs):
        index = list(state.msrs)[accepted]
        raise MsrRefused(vcpu.name, index, accepted, len(state.msrs), state.msrs[index])
    vcpu.set_regs(state.regs)
    if state.xcrs is not None and state.xcrs.nr_xcrs:
        vcpu.set_xcrs(state.xcrs)
    if state.xsave is not None:
        vcpu.set_xsave(state.xsave)
    else:
        vcpu.set_fpu(state.fpu)
    events = _copy(state.events)
    events.flags |= C.KVM_VCPUEVENT_VALID_NMI_PENDING | C.KVM_VCPUEVENT_VALID_SIPI_VECTOR
    vcpu.set_events(events)
    vcpu.set_debugregs(state.debugregs)
    if state.mp_state is not None:
        vcpu.set_mp_state(state.mp_state)
    _replay(vcpu, [c for c in state.setup_calls if c[0] in _AFTER_REGISTERS])
    run = vcpu.kvm_run
    for name, value in state.run_inputs.items():
        setattr(run, name, value)
    if tsc_offset:
        restore_tsc_offset(vcpu, state)
    return accepted


def restore_tsc_offset(vcpu, state: VcpuState) -> None:
    """Step 13. Same host, so the saved offset keeps the guest's TSC counting on as if the vCPU
    never stopped (devices/vcpu.rst's formula with t_0 = t_1 and k_1 - k_0 = the pause)."""
    if state.tsc_offset is None:
        return
    if not vcpu.has_device_attr(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET):
        raise StateError(f"{vcpu.name}: the saved vCPU had a TSC offset ({state.tsc_offset:#x}) and this one has no "
                         "KVM_VCPU_TSC_OFFSET attribute to take it")
    vcpu.set_device_attr_u64(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET, state.tsc_offset)


# --- verification -------------------------------------------------------------------------------


def field_diffs(saved, got, prefix: str = "", skip=()) -> list[str]:
    """'path: saved X, read Y' for every scalar field (recursing into structures and arrays)
    that differs; padding and reserved fields are skipped, as are the paths in `skip`."""
    out = []
    for name, ftype, *_ in saved._fields_:
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
    if diffs:
        raise StateMismatch(obj, ioctl, diffs)


def verify(vcpu, state: VcpuState) -> None:
    """Read every piece of `vcpu`'s state back and compare it with `state` (StateMismatch)."""
    name = vcpu.name
    got = vcpu.get_cpuid()
    if len(got) != len(state.cpuid):
        check(name, "KVM_GET_CPUID2", [f"nent: saved {len(state.cpuid)}, read {len(got)}"])
    check(name, "KVM_GET_CPUID2", [d for i, (a, b) in enumerate(zip(state.cpuid, got))
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


def _msr_diffs(vcpu, state: VcpuState) -> list[str]:
    got = vcpu.get_msrs(list(state.msrs))
    elapsed_ns = time.monotonic_ns() - state.saved_at_ns
    diffs = []
    for index, saved in state.msrs.items():
        now = got[index]
        if index == MSR_IA32_TSC and state.tsc_khz:
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
