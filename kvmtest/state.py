"""Complete vCPU state: save from one vCPU, restore into another (as live migration does).

Order of restore follows what the kernel's selftests and VMMs do: CPUID first, then
special registers, MSRs, general registers, FPU/XSAVE and XCRs, events, debug registers,
LAPIC and MP state (api.rst 4.13-4.45; selftests state_test).
"""

import ctypes
from dataclasses import dataclass, field

from .abi import structs as S


def _copy(obj):
    return type(obj).from_buffer_copy(bytes(obj))


@dataclass
class VcpuState:
    cpuid: list
    regs: S.kvm_regs
    sregs: S.kvm_sregs
    fpu: S.kvm_fpu
    msrs: dict[int, int]
    events: S.kvm_vcpu_events
    debugregs: S.kvm_debugregs
    mp_state: int | None
    xsave: S.kvm_xsave | None = None
    xcrs: S.kvm_xcrs | None = None
    lapic: S.kvm_lapic_state | None = None
    skipped_msrs: list[int] = field(default_factory=list)


def readable_msrs(vcpu, indices: list[int]) -> tuple[dict[int, int], list[int]]:
    """Read every MSR KVM lets us read; return (values, indices KVM refused)."""
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
    """Everything KVM exposes about a vCPU, read while it is not running."""
    kvm = vcpu.vm.kvm
    msrs, refused = readable_msrs(vcpu, kvm.msr_index_list())
    has = kvm.check_extension
    state = VcpuState(
        cpuid=[_copy(e) for e in vcpu.get_cpuid()],
        regs=vcpu.get_regs(), sregs=vcpu.get_sregs(), fpu=vcpu.get_fpu(), msrs=msrs,
        events=vcpu.get_events(), debugregs=vcpu.get_debugregs(),
        mp_state=vcpu.get_mp_state() if has("KVM_CAP_MP_STATE") else None,
        skipped_msrs=refused,
    )
    if has("KVM_CAP_XSAVE"):
        state.xsave = vcpu.get_xsave()
    if has("KVM_CAP_XCRS"):
        state.xcrs = vcpu.get_xcrs()
    if getattr(vcpu.vm, "irqchip", False):
        state.lapic = vcpu.get_lapic()
    return state


def restore(vcpu, state: VcpuState) -> None:
    vcpu.set_cpuid(state.cpuid)
    vcpu.set_sregs(state.sregs)
    if state.msrs:
        vcpu.set_msrs(state.msrs)
    vcpu.set_regs(state.regs)
    if state.xsave is not None:
        vcpu.set_xsave(state.xsave)
    else:
        vcpu.set_fpu(state.fpu)
    if state.xcrs is not None and state.xcrs.nr_xcrs:
        vcpu.set_xcrs(state.xcrs)
    events = _copy(state.events)
    vcpu.set_events(events)
    vcpu.set_debugregs(state.debugregs)
    if state.lapic is not None:
        vcpu.set_lapic(state.lapic)
    if state.mp_state is not None:
        vcpu.set_mp_state(state.mp_state)


def copy_memory(src_vm, dst_vm) -> None:
    """Give dst_vm the same slots as src_vm, holding the same bytes."""
    for slot in src_vm.memslots.values():
        new = dst_vm.add_memory(slot.gpa, slot.size, slot=slot.slot, flags=slot.flags)
        ctypes.memmove(new.mapping.addr, slot.mapping.addr, slot.size)
