"""Which calls on a Vm or Vcpu a copy of it (kvmtest.vm_state, Guest.migrate) carries, and how.

KVM has a KVM_GET_* for most state, which kvmtest.state and kvmtest.vm_state read back. Setup
has none: capabilities enabled, eventfds assigned and deassigned, KVM_SET_GUEST_DEBUG... Methods
that make such calls are @replayable: each successful call is recorded, in order, in the
object's setup_calls, and the copy makes the same calls again (so a deassign replayed after its
assign leaves the copy without it, as the original is). Methods whose effect kvmtest keeps
track of itself (memslots, a try_ twin that records) are @carried.

Every other successful ioctl on a Vm or Vcpu fd whose effect neither a KVM_GET_* nor a record
carries (a raw `vm.ioctl("KVM_SET_IDENTITY_MAP_ADDR", ...)`, say) is noted in the object's
`uncarried`, and saving it refuses naming the ioctl rather than building a copy that silently
lacks it (kvmtest.state.CannotCarry).
"""

import functools
from typing import TYPE_CHECKING

from . import ioctl as _ioctl
from .abi.numbers import IOCTLS, ioctl_name
from .errors import ClosedError

# Every KVM_GET_* name: read-only, never noted (see CarriedIoctls._note_ioctl).
_GET_IOCTLS = frozenset(name for name in IOCTLS if name.startswith("KVM_GET_"))

if TYPE_CHECKING:
    # The mixin's super() is FdObject in every class that uses it (Vm, Vcpu); telling the type
    # checker so lets it check the calls through super() without an import at run time.
    from .fdobject import FdObject as _MixinBase
else:
    _MixinBase = object

# Ioctls whose effect the saved state carries (a KVM_GET_* that kvmtest.vm_state saves reads it
# back), or that change nothing a copy could lack. KVM_GET_* themselves are all read-only.
VM_STATE_IOCTLS = frozenset({
    "KVM_CHECK_EXTENSION", "KVM_CREATE_VCPU", "KVM_GET_STATS_FD",
    "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG",     # the dirty pages are carried (VmState.memslots)
    "KVM_RESET_DIRTY_RINGS",                         # a VM with a dirty ring is refused anyway
    "KVM_SET_IRQCHIP", "KVM_IRQ_LINE", "KVM_IRQ_LINE_STATUS", "KVM_SIGNAL_MSI",  # PIC/IOAPIC/LAPIC state
    "KVM_SET_PIT2", "KVM_SET_CLOCK",
})
VCPU_STATE_IOCTLS = frozenset({
    "KVM_RUN", "KVM_TRANSLATE", "KVM_GET_STATS_FD", "KVM_HAS_DEVICE_ATTR",
    "KVM_SET_REGS", "KVM_SET_SREGS", "KVM_SET_SREGS2", "KVM_SET_FPU", "KVM_SET_XSAVE", "KVM_SET_XCRS",
    "KVM_SET_DEBUGREGS", "KVM_SET_VCPU_EVENTS", "KVM_SET_MP_STATE", "KVM_SET_LAPIC", "KVM_SET_MSRS",
    "KVM_SET_CPUID2", "KVM_SET_TSC_KHZ", "KVM_SET_NESTED_STATE",
    "KVM_INTERRUPT", "KVM_NMI", "KVM_SMI",           # kvm_vcpu_events carries them
    # x86's only vCPU attribute group is KVM_VCPU_TSC_CTRL (devices/vcpu.rst), and its one
    # attribute, KVM_VCPU_TSC_OFFSET, is saved with KVM_GET_DEVICE_ATTR.
    "KVM_SET_DEVICE_ATTR",
})


def replayable(method):
    """Record a successful call in self.setup_calls, so that a copy of the object can make the
    same calls in the same order. Calls made from inside another recorded one
    (enable_split_irqchip -> enable_cap) are not recorded twice."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        outer = not self._in_setup
        self._in_setup = True
        try:
            result = method(self, *args, **kwargs)
        finally:
            if outer:
                self._in_setup = False
        if outer:
            self.setup_calls.append((method.__name__, args, kwargs))
        return result

    return wrapper


def carried(method):
    """A method that records or tracks its own effect: its ioctls are not noted as uncarried."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._carrying += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._carrying -= 1

    return wrapper


class CarriedIoctls(_MixinBase):
    """Mixin for Vm and Vcpu (before FdObject): notes each successful ioctl that nothing carries."""

    STATE_IOCTLS: frozenset = frozenset()
    _QUIET: frozenset = _GET_IOCTLS  # names _note_ioctl never notes; per class, from its STATE_IOCTLS
    _in_setup = False
    _carrying = 0
    setup_calls: list[tuple[str, tuple, dict]]  # set by Vm and Vcpu: the @replayable calls, in order
    uncarried: list[str]                        # ditto: "IOCTL args" of each call nothing carries

    def ioctl(self, request, arg=None, *, args: str = "", hint=None, wrong_fd: bool = False) -> int:
        """FdObject.ioctl, noting the call if nothing carries it."""
        # FdObject.ioctl's body, written out: super() would cost every setup ioctl its own call.
        fd = self._fd
        if fd is None:
            raise ClosedError(f"{self.name} is closed")
        result, err = _ioctl.try_ioctl(fd, request, arg, obj=self.name, args=args, scope=self.SCOPE,
                                       wrong_fd=wrong_fd)
        if err:
            _ioctl.raise_error(err, request, obj=self.name, args=args, hint=hint, scope=self.SCOPE,
                               has_capability=self.has_capability)
        # _note_ioctl's own tests first, without its call (a name it would pass over is in _QUIET).
        if not (self._in_setup or self._carrying or request in self._QUIET):
            self._note_ioctl(request, args)
        return result

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._QUIET = _GET_IOCTLS | cls.STATE_IOCTLS

    def try_ioctl(self, request, arg=None, *, args: str = "", wrong_fd: bool = False) -> int:
        """FdObject.try_ioctl, noting a successful call if nothing carries it."""
        err = super().try_ioctl(request, arg, args=args, wrong_fd=wrong_fd)
        if not err:
            self._note_ioctl(request, args)
        return err

    def try_ioctl_result(self, request, arg=None, *, args: str = "", wrong_fd: bool = False) -> tuple[int, int]:
        """FdObject.try_ioctl_result, noting a successful call if nothing carries it."""
        result, err = super().try_ioctl_result(request, arg, args=args, wrong_fd=wrong_fd)
        if not err:
            self._note_ioctl(request, args)
        return result, err

    def _note_ioctl(self, request, args: str) -> None:
        if self._in_setup or self._carrying:
            return
        name = request if isinstance(request, str) else ioctl_name(request)
        if name.startswith("KVM_GET_") or name in self.STATE_IOCTLS:
            return
        self.uncarried.append(f"{name} {args}".rstrip())
