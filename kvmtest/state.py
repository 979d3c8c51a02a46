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

After a restore, kvmtest.state_verify.verify() reads every piece back (setup calls have nothing to read back: the
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
from .msr_names import msr_name
from .x86 import MSR_KVM_ASYNC_PF_INT


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
    """Everything save() read from one vCPU, in the UAPI structures KVM returned (restore() writes
    them back in api.rst's order; kvmtest.state_verify.verify() compares a vCPU with it)."""

    vcpu_id: int
    cpuid: list
    regs: S.kvm_regs
    sregs: "S.kvm_sregs2 | S.kvm_sregs"
    msrs: dict[int, int]
    events: S.kvm_vcpu_events
    debugregs: S.kvm_debugregs
    mp_state: int | None
    fpu: S.kvm_fpu | None = None          # only without KVM_CAP_XSAVE (XSAVE holds the same state)
    xsave: ctypes.Structure | None = None  # S.kvm_xsave, or a larger abi.buffers.xsave_buffer()
    xcrs: S.kvm_xcrs | None = None
    lapic: S.kvm_lapic_state | None = None
    tsc_khz: int | None = None
    tsc_offset: int | None = None
    nested: ctypes.Structure | None = None  # an abi.buffers.nested_state_buffer()
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
    the rest (api.rst 4.18: KVM stops at the first it does not read); return (index -> value,
    indices KVM refused)."""
    values, refused = {}, []
    for index in indices:
        got, err = vcpu.try_get_msrs([index])
        if err or index not in got:
            refused.append(index)
        else:
            values[index] = got[index]
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
