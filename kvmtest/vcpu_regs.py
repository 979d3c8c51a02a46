"""A vCPU's register and state ioctls (api.rst 4.11-4.14, 4.22-4.23, 4.31-4.34, 4.38-4.39,
4.42-4.45, 4.55-4.58, 4.80-4.81, 4.114-4.115, 4.131-4.132, 4.134): get_x returns the UAPI
structure KVM filled, set_x takes one (BadArgumentError for any other object: KVM reads
sizeof(struct) bytes from the pointer), try_set_x returns the errno instead of raising."""

import ctypes
from typing import TYPE_CHECKING

from . import validate
from .abi import constants as C
from .abi import structs as S
from .abi.buffers import nested_state_buffer, xsave_buffer
from .errors import BadArgumentError
from .fdobject import FdObject

if TYPE_CHECKING:
    from .vm import Vm


def sregs_args(sregs: "S.kvm_sregs | S.kvm_sregs2") -> str:
    """The key fields of a kvm_sregs / kvm_sregs2 for messages and the trace."""
    return (f"cr0={sregs.cr0:#x} cr3={sregs.cr3:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x} "
            f"cs={sregs.cs.selector:#x}")


class VcpuRegisters(FdObject):
    """Vcpu's register and state methods (mixed into kvmtest.vcpu.Vcpu)."""

    vm: "Vm"

    def _get(self, request: str, struct_type):
        value = struct_type()
        self.ioctl(request, value)
        return value

    def _struct(self, value, kind, ioctl: str):
        """`value` if it is the UAPI struct `ioctl` takes: KVM reads sizeof(kind) bytes from the
        pointer, so any other object would hand it memory of another size and layout."""
        return validate.instance(value, kind, f"{self.name} {ioctl}")

    # The four below are in every guest's setup: _get and _struct written out where the type is
    # exactly the UAPI struct (one Python call less each; after a VM is created every call costs).

    def get_regs(self) -> S.kvm_regs:
        """KVM_GET_REGS (api.rst 4.11): general-purpose registers, RIP and RFLAGS."""
        regs = S.kvm_regs()
        self.ioctl("KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs: S.kvm_regs) -> None:
        """KVM_SET_REGS (api.rst 4.12) from a kvm_regs."""
        if type(regs) is not S.kvm_regs:
            self._struct(regs, S.kvm_regs, "KVM_SET_REGS")
        self.ioctl("KVM_SET_REGS", regs, args=f"rip={regs.rip:#x} rflags={regs.rflags:#x}")

    def get_sregs(self) -> S.kvm_sregs:
        """KVM_GET_SREGS (api.rst 4.13): segments, descriptor tables, CR0-CR8, EFER, APIC base."""
        sregs = S.kvm_sregs()
        self.ioctl("KVM_GET_SREGS", sregs)
        return sregs

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        """KVM_SET_SREGS (api.rst 4.14) from a kvm_sregs; KvmError (EINVAL) for state KVM refuses."""
        if type(sregs) is not S.kvm_sregs:
            self._struct(sregs, S.kvm_sregs, "KVM_SET_SREGS")
        self.ioctl("KVM_SET_SREGS", sregs, args=sregs_args(sregs))

    def try_set_sregs(self, sregs: S.kvm_sregs) -> int:
        """set_sregs's twin: the errno (0 on success)."""
        self._struct(sregs, S.kvm_sregs, "KVM_SET_SREGS")
        return self.try_ioctl("KVM_SET_SREGS", sregs, args=sregs_args(sregs))

    def get_sregs2(self) -> S.kvm_sregs2:
        """KVM_GET_SREGS2 (api.rst 4.131): sregs plus the PAE PDPTRs, no interrupt bitmap."""
        return self._get("KVM_GET_SREGS2", S.kvm_sregs2)

    def set_sregs2(self, sregs2: S.kvm_sregs2) -> None:
        """KVM_SET_SREGS2 (api.rst 4.132) from a kvm_sregs2 (PDPTRs loaded with
        KVM_SREGS2_FLAGS_PDPTRS_VALID)."""
        self._struct(sregs2, S.kvm_sregs2, "KVM_SET_SREGS2")
        self.ioctl("KVM_SET_SREGS2", sregs2, args=f"{sregs_args(sregs2)} flags={sregs2.flags:#x}")

    def get_fpu(self) -> S.kvm_fpu:
        """KVM_GET_FPU (api.rst 4.22): x87 and SSE state in FXSAVE layout."""
        return self._get("KVM_GET_FPU", S.kvm_fpu)

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        """KVM_SET_FPU (api.rst 4.23) from a kvm_fpu."""
        self._struct(fpu, S.kvm_fpu, "KVM_SET_FPU")
        self.ioctl("KVM_SET_FPU", fpu)

    def get_xsave(self) -> S.kvm_xsave:
        """KVM_GET_XSAVE (api.rst 4.42): the first 4096 bytes of the XSAVE area."""
        return self._get("KVM_GET_XSAVE", S.kvm_xsave)

    def set_xsave(self, xsave: S.kvm_xsave) -> None:
        """KVM_SET_XSAVE (api.rst 4.43): a kvm_xsave, or a get_xsave2() buffer. KVM reads
        KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes (at least 4096), so a smaller buffer is refused."""
        if not (isinstance(xsave, S.kvm_xsave) or (isinstance(xsave, ctypes.Structure) and hasattr(xsave, "region"))):
            raise BadArgumentError(f"{self.name} KVM_SET_XSAVE: expected a kvm_xsave (or a get_xsave2() buffer), "
                                   f"got {xsave!r:.80}")
        needed = self._xsave_size()
        if ctypes.sizeof(xsave) < needed:
            raise BadArgumentError(f"{self.name} KVM_SET_XSAVE: a {ctypes.sizeof(xsave)}-byte buffer, but KVM reads "
                                   f"{needed} (KVM_CAP_XSAVE2); take it from get_xsave2({needed})")
        self.ioctl("KVM_SET_XSAVE", xsave)

    def get_xsave2(self, size: int):
        """KVM_GET_XSAVE2 into a buffer of `size` bytes (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2), api.rst
        4.134); KVM_SET_XSAVE takes the same buffer back. KVM writes that many bytes whatever the
        buffer, so a smaller `size` is refused rather than overrun."""
        size = validate.uint(size, 32, f"{self.name} KVM_GET_XSAVE2 size")
        needed = self._xsave_size()
        if size < needed:
            raise BadArgumentError(f"{self.name} KVM_GET_XSAVE2 size = {size}: KVM writes {needed} bytes "
                                   "(KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)), which would overrun the buffer")
        buf = xsave_buffer(size, what=f"{self.name} KVM_GET_XSAVE2")
        self.ioctl("KVM_GET_XSAVE2", buf, args=f"size={size}")
        return buf

    def _xsave_size(self) -> int:
        """The bytes KVM_GET_XSAVE2 writes and KVM_SET_XSAVE reads (api.rst 4.134, KVM_CAP_XSAVE2; a
        kernel without it uses struct kvm_xsave)."""
        return max(self.vm.check_extension("KVM_CAP_XSAVE2"), ctypes.sizeof(S.kvm_xsave))

    def get_xcrs(self) -> S.kvm_xcrs:
        """KVM_GET_XCRS (api.rst 4.44): nr_xcrs extended control registers (XCR0 first)."""
        return self._get("KVM_GET_XCRS", S.kvm_xcrs)

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        """KVM_SET_XCRS (api.rst 4.45) from a kvm_xcrs; KvmError (EINVAL) for an XCR0 the CPU refuses."""
        self._struct(xcrs, S.kvm_xcrs, "KVM_SET_XCRS")
        self.ioctl("KVM_SET_XCRS", xcrs, args=f"nr_xcrs={xcrs.nr_xcrs}")

    def try_set_xcrs(self, xcrs: S.kvm_xcrs) -> int:
        """set_xcrs's twin: the errno (0 on success)."""
        self._struct(xcrs, S.kvm_xcrs, "KVM_SET_XCRS")
        return self.try_ioctl("KVM_SET_XCRS", xcrs, args=f"nr_xcrs={xcrs.nr_xcrs}")

    def get_debugregs(self) -> S.kvm_debugregs:
        """KVM_GET_DEBUGREGS (api.rst 4.33): DR0-DR3, DR6, DR7."""
        return self._get("KVM_GET_DEBUGREGS", S.kvm_debugregs)

    def set_debugregs(self, dbg: S.kvm_debugregs) -> None:
        """KVM_SET_DEBUGREGS (api.rst 4.34) from a kvm_debugregs (flags must be 0)."""
        self._struct(dbg, S.kvm_debugregs, "KVM_SET_DEBUGREGS")
        self.ioctl("KVM_SET_DEBUGREGS", dbg, args=f"dr6={dbg.dr6:#x} dr7={dbg.dr7:#x}")

    def try_set_debugregs(self, dbg: S.kvm_debugregs) -> int:
        """set_debugregs's twin: the errno (0 on success)."""
        self._struct(dbg, S.kvm_debugregs, "KVM_SET_DEBUGREGS")
        return self.try_ioctl("KVM_SET_DEBUGREGS", dbg, args=f"dr6={dbg.dr6:#x} dr7={dbg.dr7:#x} flags={dbg.flags:#x}")

    def get_events(self) -> S.kvm_vcpu_events:
        """KVM_GET_VCPU_EVENTS (api.rst 4.31): pending and injected exception, interrupt, NMI, SMI."""
        return self._get("KVM_GET_VCPU_EVENTS", S.kvm_vcpu_events)

    def set_events(self, events: S.kvm_vcpu_events) -> None:
        """KVM_SET_VCPU_EVENTS (api.rst 4.32); `events.flags` (KVM_VCPUEVENT_VALID_*) says which
        optional fields KVM takes."""
        self._struct(events, S.kvm_vcpu_events, "KVM_SET_VCPU_EVENTS")
        self.ioctl("KVM_SET_VCPU_EVENTS", events, args=f"flags={events.flags:#x}")

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE (api.rst 4.38): the vCPU's KVM_MP_STATE_*."""
        return self._get("KVM_GET_MP_STATE", S.kvm_mp_state).mp_state

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE (api.rst 4.39) to a KVM_MP_STATE_* value (a __u32)."""
        state = validate.uint(state, 32, f"{self.name} KVM_SET_MP_STATE mp_state")
        self.ioctl("KVM_SET_MP_STATE", S.kvm_mp_state(state), args=C.MP_STATE_NAMES.name(state))

    def get_lapic(self) -> S.kvm_lapic_state:
        """KVM_GET_LAPIC (api.rst 4.57): the in-kernel local APIC's register page."""
        return self._get("KVM_GET_LAPIC", S.kvm_lapic_state)

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        """KVM_SET_LAPIC (api.rst 4.58) from a kvm_lapic_state."""
        self._struct(lapic, S.kvm_lapic_state, "KVM_SET_LAPIC")
        self.ioctl("KVM_SET_LAPIC", lapic)

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ (api.rst 4.56): the vCPU's TSC frequency in kHz."""
        return self.ioctl("KVM_GET_TSC_KHZ")

    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ on the vCPU (api.rst 4.55, KVM_CAP_TSC_CONTROL), in kHz. KVM reads the
        argument as a __u32 and takes 0 to mean the host's rate, so 0 and anything wider are
        refused here; try_set_tsc_khz passes any 32-bit value."""
        khz = validate.uint(khz, 32, f"{self.name} KVM_SET_TSC_KHZ kHz")
        if khz == 0:
            raise BadArgumentError(f"{self.name} KVM_SET_TSC_KHZ kHz = 0: no frequency (KVM would take the "
                                   "host's rate); use try_set_tsc_khz(0) to probe that")
        self.ioctl("KVM_SET_TSC_KHZ", khz, args=f"khz={khz}")

    def try_set_tsc_khz(self, khz: int) -> int:
        """set_tsc_khz's twin for any __u32 (0 included): the errno (0 on success)."""
        khz = validate.uint(khz, 32, f"{self.name} KVM_SET_TSC_KHZ kHz")
        return self.try_ioctl("KVM_SET_TSC_KHZ", khz, args=f"khz={khz}")

    def get_nested_state(self, size: int):
        """KVM_GET_NESTED_STATE (api.rst 4.114) with a buffer of `size` bytes
        (KVM_CHECK_EXTENSION(KVM_CAP_NESTED_STATE)). KVM trusts kvm_nested_state.size (a __u32) as
        the buffer's length: a wrapped size would let it write past the buffer."""
        size = validate.uint(size, 32, f"{self.name} KVM_GET_NESTED_STATE size")
        buf = nested_state_buffer(size, what=f"{self.name} KVM_GET_NESTED_STATE")
        self.ioctl("KVM_GET_NESTED_STATE", buf, args=f"size={size}")
        return buf

    def set_nested_state(self, state) -> None:
        """KVM_SET_NESTED_STATE (api.rst 4.115) from a get_nested_state() buffer, whose `size` must
        not exceed the buffer (KVM reads that many bytes)."""
        if not isinstance(state, (S.kvm_nested_state, ctypes.Structure)) or not hasattr(state, "format"):
            raise BadArgumentError(f"{self.name} KVM_SET_NESTED_STATE: expected a kvm_nested_state (from "
                                   f"get_nested_state), got {state!r:.80}")
        if state.size > ctypes.sizeof(state):
            raise BadArgumentError(f"{self.name} KVM_SET_NESTED_STATE: size = {state.size}, but the buffer holds "
                                   f"{ctypes.sizeof(state)} bytes; KVM would read past it")
        self.ioctl("KVM_SET_NESTED_STATE", state,
                   args=f"flags={state.flags:#x} format={state.format} size={state.size}")

    # --- vCPU device attributes (devices/vcpu.rst; api.rst 4.80-4.81) ------------------------------

    def _device_attr(self, group, attr, ioctl) -> tuple[int, int]:
        """kvm_device_attr: group is a __u32, attr a __u64."""
        return (validate.uint(group, 32, f"{self.name} {ioctl} group"),
                validate.uint(attr, 64, f"{self.name} {ioctl} attr"))

    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR on the vCPU fd (api.rst 4.81, devices/vcpu.rst); False where KVM refuses it."""
        group, attr = self._device_attr(group, attr, "KVM_HAS_DEVICE_ATTR")
        return self.try_ioctl("KVM_HAS_DEVICE_ATTR", S.kvm_device_attr(group=group, attr=attr),
                              args=f"group={group} attr={attr}") == 0

    def get_device_attr_u64(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR (api.rst 4.80) of a 64-bit attribute (KVM_VCPU_TSC_OFFSET, ...)."""
        group, attr = self._device_attr(group, attr, "KVM_GET_DEVICE_ATTR")
        value = ctypes.c_uint64()
        self.ioctl("KVM_GET_DEVICE_ATTR", S.kvm_device_attr(group=group, attr=attr, addr=ctypes.addressof(value)),
                   args=f"group={group} attr={attr}")
        return value.value

    def set_device_attr_u64(self, group: int, attr: int, data: int) -> None:
        """KVM_SET_DEVICE_ATTR (api.rst 4.80) of a 64-bit attribute to `data` (a u64)."""
        group, attr = self._device_attr(group, attr, "KVM_SET_DEVICE_ATTR")
        value = ctypes.c_uint64(validate.uint(data, 64, f"{self.name} KVM_SET_DEVICE_ATTR value"))
        self.ioctl("KVM_SET_DEVICE_ATTR", S.kvm_device_attr(group=group, attr=attr, addr=ctypes.addressof(value)),
                   args=f"group={group} attr={attr} value={data:#x}")
