"""How a VM's guest writes and MSR accesses reach user space without an exit, or with one:
ioeventfds (api.rst 4.59 KVM_IOEVENTFD), coalesced MMIO/PIO zones (4.116
KVM_(UN)REGISTER_COALESCED_MMIO) and the MSR filter (4.126 KVM_X86_SET_MSR_FILTER)."""

import ctypes

from . import validate
from .abi import constants as C
from .abi import structs as S
from .carried import carried, replayable
from .errors import BadArgumentError
from .fdobject import FdObject
from .vm_irq import eventfd_number


def ioeventfd_struct(efd, addr, length, pio, datamatch, deassign) -> tuple[S.kvm_ioeventfd, str]:
    """A kvm_ioeventfd (api.rst 4.59; addr and datamatch are __u64, len a __u32) and its text for
    messages. KVM_IOEVENTFD_FLAG_DATAMATCH is set when `datamatch` is not None."""
    addr, length = validate.uint(addr, 64, "KVM_IOEVENTFD addr"), validate.uint(length, 32, "KVM_IOEVENTFD len")
    if datamatch is not None:
        datamatch = validate.uint(datamatch, 64, "KVM_IOEVENTFD datamatch")
    flags = (C.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (C.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0) \
        | (C.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
    arg = S.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length,
                          fd=eventfd_number(efd, "KVM_IOEVENTFD"), flags=flags)
    text = f"{'port' if pio else 'gpa'}={addr:#x} len={length}" + \
        (f" datamatch={datamatch:#x}" if datamatch is not None else "") + (" deassign" if deassign else "")
    return arg, text


class VmIo(FdObject):
    """Vm's ioeventfd, coalesced MMIO and MSR filter methods (mixed into kvmtest.vm.Vm)."""

    setup_calls: list
    _in_setup: bool

    @replayable
    def assign_ioeventfd(self, efd, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None) -> None:
        """KVM_IOEVENTFD (api.rst 4.59): a guest write of `length` bytes (0, 1, 2, 4, 8) to `addr`
        (a port with pio) signals `efd` instead of exiting; with `datamatch` only writes of that
        value do."""
        arg, text = ioeventfd_struct(efd, addr, length, pio, datamatch, False)
        self.ioctl("KVM_IOEVENTFD", arg, args=text)

    @carried  # records itself
    def try_deassign_ioeventfd(self, efd, addr: int, length: int, *, pio: bool = False,
                               datamatch: int | None = None) -> int:
        """KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN; returns the errno (0 on success). A
        deassign that succeeded is recorded like deassign_ioeventfd's, so a copy of the VM, which
        replays the assign, replays this too."""
        arg, text = ioeventfd_struct(efd, addr, length, pio, datamatch, True)
        err = self.try_ioctl("KVM_IOEVENTFD", arg, args=text)
        if not err and not self._in_setup:
            self.setup_calls.append(("deassign_ioeventfd", (efd, addr, length), {"pio": pio, "datamatch": datamatch}))
        return err

    @replayable
    def deassign_ioeventfd(self, efd, addr: int, length: int, *, pio: bool = False,
                           datamatch: int | None = None) -> None:
        """KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN (api.rst 4.59): detach the ioeventfd
        assigned with the same arguments; KvmError (ENOENT) if there is none."""
        arg, text = ioeventfd_struct(efd, addr, length, pio, datamatch, True)
        self.ioctl("KVM_IOEVENTFD", arg, args=text)

    @replayable
    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO (api.rst 4.116): writes to the zone [addr, addr+size) (ports
        with pio) are queued in the ring (Vcpu.drain_coalesced_ring) instead of exiting."""
        addr, size = self._coalesced_zone(addr, size, "KVM_REGISTER_COALESCED_MMIO")
        self.ioctl("KVM_REGISTER_COALESCED_MMIO", S.kvm_coalesced_mmio_zone(addr=addr, size=size, pio=int(pio)),
                   args=f"{'port' if pio else 'gpa'}={addr:#x} size={size:#x}")

    @replayable
    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """KVM_UNREGISTER_COALESCED_MMIO (api.rst 4.116): writes to the zone exit again."""
        addr, size = self._coalesced_zone(addr, size, "KVM_UNREGISTER_COALESCED_MMIO")
        self.ioctl("KVM_UNREGISTER_COALESCED_MMIO", S.kvm_coalesced_mmio_zone(addr=addr, size=size, pio=int(pio)),
                   args=f"{'port' if pio else 'gpa'}={addr:#x} size={size:#x}")

    def _coalesced_zone(self, addr, size, ioctl) -> tuple[int, int]:
        """kvm_coalesced_mmio_zone: addr is a __u64, size a __u32."""
        return (validate.uint(addr, 64, f"{self.name} {ioctl} addr"),
                validate.uint(size, 32, f"{self.name} {ioctl} size"))

    @replayable
    def set_msr_filter(self, ranges: "list[tuple[int, int, list[bool]]]", *, default_deny: bool = False) -> None:
        """KVM_X86_SET_MSR_FILTER (api.rst 4.126) with `ranges` of (KVM_MSR_FILTER_READ/WRITE flags,
        first MSR, allowed: one bool per MSR from the first), at most 16; MSRs outside every range
        follow the default (deny with default_deny)."""
        flags = C.KVM_MSR_FILTER_DEFAULT_DENY if default_deny else C.KVM_MSR_FILTER_DEFAULT_ALLOW
        filt, _bitmaps, text = self._msr_filter(ranges, flags)  # the bitmaps live until KVM has copied them
        self.ioctl("KVM_X86_SET_MSR_FILTER", filt, args=text)

    def try_set_msr_filter(self, ranges: "list[tuple[int, int, list[bool]]]", *, default_deny: bool = False,
                           filter_flags: int | None = None) -> int:
        """set_msr_filter's twin for negative tests: the errno (0 on success). `filter_flags`, when
        given, is kvm_msr_filter.flags as is (a __u32, undefined bits included) instead of the
        default_deny choice; a range's flags already pass as given."""
        if filter_flags is None:
            filter_flags = C.KVM_MSR_FILTER_DEFAULT_DENY if default_deny else C.KVM_MSR_FILTER_DEFAULT_ALLOW
        filter_flags = validate.uint(filter_flags, 32, "KVM_X86_SET_MSR_FILTER flags")
        filt, _bitmaps, text = self._msr_filter(ranges, filter_flags)  # the bitmaps live until KVM has copied them
        return self.try_ioctl("KVM_X86_SET_MSR_FILTER", filt, args=text)

    @staticmethod
    def _msr_filter(ranges, flags: int) -> "tuple[S.kvm_msr_filter, list, str]":
        """A kvm_msr_filter with `flags` and `ranges` (see set_msr_filter), the bitmaps it points to
        (keep them alive until KVM has copied them) and its text for messages."""
        filt = S.kvm_msr_filter(flags=flags)
        if isinstance(ranges, (str, bytes)) or not hasattr(ranges, "__len__"):
            raise BadArgumentError(f"KVM_X86_SET_MSR_FILTER: expected a list of ranges, got {ranges!r:.80}")
        if len(ranges) > len(filt.ranges):
            raise BadArgumentError(f"KVM_X86_SET_MSR_FILTER takes at most {len(filt.ranges)} ranges, got {len(ranges)}")
        for i, rng in enumerate(ranges):
            if not (isinstance(rng, tuple) and len(rng) == 3 and isinstance(rng[0], int) and isinstance(rng[1], int)
                    and not isinstance(rng[2], (str, bytes)) and hasattr(rng[2], "__len__")):
                raise BadArgumentError(f"KVM_X86_SET_MSR_FILTER range {i}: expected (flags, first MSR, "
                                       f"[allowed per MSR]), got {rng!r}")
            # kvm_msr_filter_range: flags, base and nmsrs are __u32.
            validate.uint(rng[0], 32, f"KVM_X86_SET_MSR_FILTER range {i} flags")
            validate.uint(rng[1], 32, f"KVM_X86_SET_MSR_FILTER range {i} base")
            validate.uint(len(rng[2]), 32, f"KVM_X86_SET_MSR_FILTER range {i} nmsrs")
        bitmaps = []
        # strict=False: kvm_msr_filter has KVM_MSR_FILTER_MAX_RANGES slots, the caller fills the first few.
        for r, (range_flags, base, allowed) in zip(filt.ranges, ranges, strict=False):
            buf = (ctypes.c_uint8 * max(1, (len(allowed) + 7) // 8))()
            for i, ok in enumerate(allowed):
                buf[i // 8] |= int(bool(ok)) << (i % 8)
            bitmaps.append(buf)
            r.flags, r.base, r.nmsrs, r.bitmap = range_flags, base, len(allowed), ctypes.addressof(buf)
        text = f"flags={flags:#x} " + " ".join(
            f"[flags={rf:#x} {base:#x}+{len(allowed)}]" for rf, base, allowed in ranges)
        return filt, bitmaps, text
