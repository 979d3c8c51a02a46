"""What a guest says when something went wrong: failure messages, vCPU state dumps, and the
per-vCPU exception records its handlers wrote.

GuestDiagnostics is the base of kvmtest.guest.builder.Guest (through
kvmtest.guest.runloop.GuestRunLoop); it reads the attributes the builder sets, listed on the class.
Every message names the vCPU it is about: a failure on vCPU 1 dumps vCPU 1's registers.
"""

from typing import TYPE_CHECKING

from .. import ioctl as _ioctl
from ..abi.structs import kvm_regs
from ..errors import BadArgumentError, GuestFailure, KvmtestError
from ..vcpu import describe_mode
from . import exc_records
from .modes import CpuMode

if TYPE_CHECKING:
    from ..vcpu import Vcpu
    from ..vm import Vm

TRACE_LINES = 12  # recent ioctls and exits a failure message ends with


class GuestDiagnostics:
    """Failure messages, register dumps and exception records of a guest's vCPUs."""

    # Set by the builder (kvmtest.guest.builder.Guest):
    name: str
    mode: CpuMode            # the mode the guest (its first vCPU) started in
    vm: "Vm"
    vcpu: "Vcpu"             # the first vCPU
    _vcpu_modes: dict[int, CpuMode]   # vCPU id -> the mode the builder set it up in

    def _own_vcpu(self, vcpu):
        """`vcpu` if it is one of this guest's vCPUs, the first vCPU for None; else BadArgumentError."""
        if vcpu is None:
            return self.vcpu
        if not any(vcpu is v for v in self.vm.vcpus):
            raise BadArgumentError(f"{self.name}: vcpu {vcpu!r:.80} is not one of this guest's vCPUs "
                                   f"({', '.join(v.name for v in self.vm.vcpus) or 'none'})")
        return vcpu

    def _record_index(self, vcpu) -> int:
        """The exception record `vcpu` writes (kvmtest.guest.exc_records): its own for a vCPU the
        builder set up, vCPU 0's for one the test created (its GS base is 0 from reset)."""
        return vcpu.id if vcpu.id in self._vcpu_modes else 0

    def exception_record(self, vcpu=None) -> dict[str, int]:
        """What the handlers recorded for `vcpu`'s last caught exception (GUEST_ASSERT_RAISES):
        {vector, error_code, rip, cr2, count} (kvmtest.guest.exc_records). Default: the first vCPU."""
        return exc_records.read(self.vm, self._record_index(self._own_vcpu(vcpu)))

    def state(self, vcpu=None, regs: kvm_regs | None = None) -> str:
        """`vcpu`'s mode, registers and segment state, for failure reports (default: the first
        vCPU). `regs`, when given, are the registers to show (those a protocol exit was read
        with); the segment and control registers are read now with KVM_GET_SREGS."""
        vcpu = vcpu or self.vcpu
        try:
            regs = regs if regs is not None else vcpu.get_regs()
            sregs = vcpu.get_sregs()
        except KvmtestError as e:
            return f"({vcpu.name} state unreadable: {e})"
        mode = self._vcpu_modes.get(vcpu.id)
        return describe_state(mode.name if mode else "set by the test", regs, sregs, vcpu.name)

    def _trace(self) -> str:
        return "recent ioctls and exits:\n  " + "\n  ".join(_ioctl.recent(TRACE_LINES))

    def failure(self, message: str, regs: kvm_regs | None = None, vcpu=None) -> GuestFailure:
        """A GuestFailure (for the caller to raise) naming the guest, its mode and `message`,
        followed by `vcpu`'s state (default: the first vCPU; `regs` as in state()) and the
        recent ioctl trace."""
        return GuestFailure(f"{self.name} ({self.mode.name}): {message}\n{self.state(vcpu, regs)}\n{self._trace()}")


def describe_state(mode_name: str, regs, sregs, vcpu_name: str | None = None) -> str:
    """One vCPU's state in two lines: the mode the builder set (`mode_name`) and the one KVM's
    sregs describe, RIP, RFLAGS, the general-purpose registers, CS, SS and the control registers
    (kvm_regs / kvm_sregs as KVM_GET_REGS / KVM_GET_SREGS return them)."""
    whose = f", {vcpu_name}" if vcpu_name else ""
    gprs = " ".join(f"{n}={getattr(regs, n):#x}" for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"))
    return (f"guest state (mode {mode_name}{whose}, KVM says {describe_mode(sregs)}): rip={regs.rip:#x} "
            f"rflags={regs.rflags:#x} {gprs}\n  cs={sregs.cs.selector:#x}(base {sregs.cs.base:#x} "
            f"l={sregs.cs.l} db={sregs.cs.db} dpl={sregs.cs.dpl}) ss={sregs.ss.selector:#x} "
            f"cr0={sregs.cr0:#x} cr2={sregs.cr2:#x} cr3={sregs.cr3:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x}")


def fmt_value(v) -> str:
    """An operand value for messages: hex for an int, repr otherwise."""
    return f"{v:#x}" if isinstance(v, int) else repr(v)
