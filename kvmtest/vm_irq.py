"""A VM's in-kernel interrupt controllers and timer: KVM_CREATE_IRQCHIP and the split irqchip,
KVM_GET/SET_IRQCHIP, GSI routing, KVM_IRQ_LINE_STATUS, KVM_SIGNAL_MSI, KVM_IRQFD and the i8254
PIT (api.rst 4.24-4.27, 4.52, 4.71-4.73, 4.75; KVM_CAP_SPLIT_IRQCHIP)."""

from typing import TYPE_CHECKING

from . import validate
from .abi import constants as C
from .abi import structs as S
from .abi.buffers import irq_routing_buffer
from .carried import carried, replayable
from .errors import BadArgumentError
from .fdobject import FdObject


def eventfd_number(obj, what: str) -> int:
    """The fd of an EventFd (or any fd-owning object), or a plain int fd (0 to 2^31-1);
    BadArgumentError naming `what` for anything else."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        return validate.int_in(obj, 0, (1 << 31) - 1, f"{what} fd")
    fd = getattr(obj, "fd", None)
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise BadArgumentError(f"{what}: expected an EventFd or an fd number, got {obj!r}")
    return fd


class VmIrq(FdObject):
    """Vm's irqchip, routing, MSI, irqfd and PIT methods (mixed into kvmtest.vm.Vm)."""

    irqchip: bool
    split_irqchip_routes: int | None
    pit_flags: int | None
    setup_calls: list
    _in_setup: bool

    # A declaration for the type checker only (hence noqa: D102): kvmtest.vm provides and documents it in Vm.
    if TYPE_CHECKING:
        def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> None: ...  # noqa: D102

    @replayable
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP (api.rst 4.24): in-kernel PIC, IOAPIC and a local APIC for every vCPU
        created after it. KvmError if KVM refuses (EEXIST for a second one)."""
        self.ioctl("KVM_CREATE_IRQCHIP")
        self.irqchip = True

    @carried  # records itself
    def try_create_irqchip(self) -> int:
        """create_irqchip's twin: the errno (0 on success, recorded for a copy of the VM as
        create_irqchip's is)."""
        err = self.try_ioctl("KVM_CREATE_IRQCHIP")
        if not err:
            self.irqchip = True
            if not self._in_setup:
                self.setup_calls.append(("create_irqchip", (), {}))
        return err

    def _chip_id(self, chip_id, ioctl: str) -> int:
        return validate.uint(chip_id, 32, f"{self.name} {ioctl} chip_id")

    def get_irqchip(self, chip_id: int) -> S.kvm_irqchip:
        """KVM_GET_IRQCHIP (api.rst 4.26): the state of one in-kernel chip (KVM_IRQCHIP_PIC_MASTER,
        _PIC_SLAVE or _IOAPIC; a kvm_pic_state or kvm_ioapic_state in `chip`)."""
        chip_id = self._chip_id(chip_id, "KVM_GET_IRQCHIP")
        chip = S.kvm_irqchip(chip_id=chip_id)
        self.ioctl("KVM_GET_IRQCHIP", chip, args=f"chip={C.IRQCHIP_NAMES.name(chip_id)}")
        return chip

    def try_get_irqchip(self, chip_id: int) -> int:
        """get_irqchip's twin: the errno (0 on success); the state read is discarded."""
        chip_id = self._chip_id(chip_id, "KVM_GET_IRQCHIP")
        return self.try_ioctl("KVM_GET_IRQCHIP", S.kvm_irqchip(chip_id=chip_id),
                              args=f"chip={C.IRQCHIP_NAMES.name(chip_id)}")

    def set_irqchip(self, chip: S.kvm_irqchip) -> None:
        """KVM_SET_IRQCHIP (api.rst 4.27): load the chip `chip.chip_id` names from a kvm_irqchip."""
        validate.instance(chip, S.kvm_irqchip, f"{self.name} KVM_SET_IRQCHIP")
        self.ioctl("KVM_SET_IRQCHIP", chip, args=f"chip={C.IRQCHIP_NAMES.name(chip.chip_id)}")

    @replayable
    def enable_split_irqchip(self, ioapic_routes: int = 24) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) (api.rst 7, KVM_CAP_SPLIT_IRQCHIP): local APICs in the
        kernel, PIC and IOAPIC left to user space; the first `ioapic_routes` GSI routes (MSI) stand
        for the user IOAPIC's pins and report their level-triggered EOIs as KVM_EXIT_IOAPIC_EOI."""
        self.enable_cap("KVM_CAP_SPLIT_IRQCHIP", ioapic_routes)
        self.irqchip = True
        self.split_irqchip_routes = ioapic_routes

    @replayable
    def set_gsi_routing(self, entries: "list[S.kvm_irq_routing_entry]") -> None:
        """KVM_SET_GSI_ROUTING (api.rst 4.52): replace the whole routing table with `entries`
        (kvm_irq_routing_entry each; see msi_route, irqchip_route)."""
        table = irq_routing_buffer(entries, what=f"{self.name} KVM_SET_GSI_ROUTING")
        self.ioctl("KVM_SET_GSI_ROUTING", table, args=f"nr={table.nr}")

    @staticmethod
    def msi_route(gsi: int, address: int, data: int) -> S.kvm_irq_routing_entry:
        """A GSI route to the MSI message `address` (u64, split into address_lo/hi) / `data` (u32)."""
        gsi = validate.uint(gsi, 32, "MSI route gsi")
        address, data = validate.uint(address, 64, "MSI route address"), validate.uint(data, 32, "MSI route data")
        e = S.kvm_irq_routing_entry(gsi=gsi, type=C.KVM_IRQ_ROUTING_MSI)
        e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data = address & 0xFFFFFFFF, address >> 32, data
        return e

    @staticmethod
    def irqchip_route(gsi: int, chip: int, pin: int) -> S.kvm_irq_routing_entry:
        """A GSI route to pin `pin` of in-kernel chip `chip` (KVM_IRQCHIP_*)."""
        gsi = validate.uint(gsi, 32, "irqchip route gsi")
        chip, pin = validate.uint(chip, 32, "irqchip route irqchip"), validate.uint(pin, 32, "irqchip route pin")
        e = S.kvm_irq_routing_entry(gsi=gsi, type=C.KVM_IRQ_ROUTING_IRQCHIP)
        e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
        return e

    def irq_line(self, irq: int, level: int) -> int:
        """KVM_IRQ_LINE_STATUS (api.rst 4.25) for GSI `irq` at `level` (1 asserted, 0 deasserted):
        returns the status (>0 delivered, 0 masked, <0 coalesced)."""
        irq = validate.uint(irq, 32, f"{self.name} KVM_IRQ_LINE_STATUS irq")
        level = validate.uint(level, 32, f"{self.name} KVM_IRQ_LINE_STATUS level")
        lvl = S.kvm_irq_level(irq=irq, level=level)
        self.ioctl("KVM_IRQ_LINE_STATUS", lvl, args=f"irq={irq} level={level}")
        return lvl.status

    def _msi(self, address, data, flags, devid) -> tuple[S.kvm_msi, str]:
        what = f"{self.name} KVM_SIGNAL_MSI"
        address = validate.uint(address, 64, f"{what} address")
        msi = S.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32,
                        data=validate.uint(data, 32, f"{what} data"), flags=validate.uint(flags, 32, f"{what} flags"),
                        devid=validate.uint(devid, 32, f"{what} devid"))
        return msi, f"address={address:#x} data={msi.data:#x}" + (f" flags={flags:#x}" if flags else "")

    def signal_msi(self, address: int, data: int, *, flags: int = 0, devid: int = 0) -> int:
        """KVM_SIGNAL_MSI (api.rst 4.71): inject the MSI message `address` (u64) / `data` (u32) into
        the in-kernel irqchip; returns >0 delivered, 0 blocked by the guest. KvmError otherwise."""
        msi, text = self._msi(address, data, flags, devid)
        return self.ioctl("KVM_SIGNAL_MSI", msi, args=text)

    def try_signal_msi(self, address: int, data: int, *, flags: int = 0, devid: int = 0) -> int:
        """signal_msi's twin: the errno (0 when KVM took the message, delivered or blocked)."""
        msi, text = self._msi(address, data, flags, devid)
        return self.try_ioctl("KVM_SIGNAL_MSI", msi, args=text)

    def _irqfd(self, efd, gsi, resample=None, deassign=False) -> tuple[S.kvm_irqfd, str]:
        """A kvm_irqfd (gsi is a __u32) and its text for messages."""
        gsi = validate.uint(gsi, 32, f"{self.name} KVM_IRQFD gsi")
        arg = S.kvm_irqfd(fd=eventfd_number(efd, "KVM_IRQFD"), gsi=gsi)
        if resample is not None:
            arg.flags, arg.resamplefd = C.KVM_IRQFD_FLAG_RESAMPLE, eventfd_number(resample, "KVM_IRQFD resample")
        if deassign:
            arg.flags = C.KVM_IRQFD_FLAG_DEASSIGN
        return arg, f"gsi={gsi}{' resample' if resample is not None else ''}{' deassign' if deassign else ''}"

    @replayable
    def assign_irqfd(self, efd, gsi: int, *, resample=None) -> None:
        """KVM_IRQFD (api.rst 4.75): signalling `efd` raises `gsi`; with `resample` (an EventFd) the
        GSI is level-triggered and KVM signals `resample` at its EOI (KVM_IRQFD_FLAG_RESAMPLE)."""
        arg, text = self._irqfd(efd, gsi, resample)
        self.ioctl("KVM_IRQFD", arg, args=text)

    @carried  # records itself
    def try_assign_irqfd(self, efd, gsi: int, *, resample=None) -> int:
        """assign_irqfd's twin: the errno (0 on success, recorded for a copy of the VM)."""
        arg, text = self._irqfd(efd, gsi, resample)
        err = self.try_ioctl("KVM_IRQFD", arg, args=text)
        if not err and not self._in_setup:
            self.setup_calls.append(("assign_irqfd", (efd, gsi), {"resample": resample}))
        return err

    @replayable
    def deassign_irqfd(self, efd, gsi: int) -> None:
        """KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN (api.rst 4.75): detach `efd` from `gsi`."""
        arg, text = self._irqfd(efd, gsi, deassign=True)
        self.ioctl("KVM_IRQFD", arg, args=text)

    @carried  # records itself
    def try_deassign_irqfd(self, efd, gsi: int) -> int:
        """deassign_irqfd's twin: the errno (0 on success, recorded for a copy of the VM)."""
        arg, text = self._irqfd(efd, gsi, deassign=True)
        err = self.try_ioctl("KVM_IRQFD", arg, args=text)
        if not err and not self._in_setup:
            self.setup_calls.append(("deassign_irqfd", (efd, gsi), {}))
        return err

    @replayable
    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2 (api.rst 4.71): the in-kernel i8254, after KVM_CREATE_IRQCHIP; `flags`
        is kvm_pit_config.flags (KVM_PIT_SPEAKER_DUMMY). KvmError if KVM refuses (EEXIST twice)."""
        flags = validate.uint(flags, 32, f"{self.name} KVM_CREATE_PIT2 flags")
        self.ioctl("KVM_CREATE_PIT2", S.kvm_pit_config(flags=flags), args=f"flags={flags:#x}")
        self.pit_flags = flags

    @carried  # records itself
    def try_create_pit2(self, flags: int = 0) -> int:
        """create_pit2's twin: the errno (0 on success, recorded for a copy of the VM)."""
        flags = validate.uint(flags, 32, f"{self.name} KVM_CREATE_PIT2 flags")
        err = self.try_ioctl("KVM_CREATE_PIT2", S.kvm_pit_config(flags=flags), args=f"flags={flags:#x}")
        if not err:
            self.pit_flags = flags
            if not self._in_setup:
                self.setup_calls.append(("create_pit2", (flags,), {}))
        return err

    @replayable  # no way to read the mode back: a copy of the VM sets it again
    def set_pit_reinject(self, reinject: bool) -> None:
        """KVM_REINJECT_CONTROL (api.rst 4.99, KVM_CAP_REINJECT_CONTROL): the PIT's tick mode,
        reinject (True: missed ticks are queued) or not; ENXIO before KVM_CREATE_PIT2."""
        self.ioctl("KVM_REINJECT_CONTROL", self._reinject(reinject), args=f"pit_reinject={int(bool(reinject))}")

    @carried  # records itself
    def try_set_pit_reinject(self, reinject: bool) -> int:
        """set_pit_reinject's twin: the errno (0 on success, recorded for a copy of the VM)."""
        err = self.try_ioctl("KVM_REINJECT_CONTROL", self._reinject(reinject),
                             args=f"pit_reinject={int(bool(reinject))}")
        if not err and not self._in_setup:
            self.setup_calls.append(("set_pit_reinject", (reinject,), {}))
        return err

    def _reinject(self, reinject) -> S.kvm_reinject_control:
        if not isinstance(reinject, bool):
            raise BadArgumentError(f"{self.name} KVM_REINJECT_CONTROL: reinject = {reinject!r}, expected True or False")
        return S.kvm_reinject_control(pit_reinject=int(reinject))

    def get_pit2(self) -> S.kvm_pit_state2:
        """KVM_GET_PIT2 (api.rst 4.72): the three PIT channels and the flags."""
        pit = S.kvm_pit_state2()
        self.ioctl("KVM_GET_PIT2", pit)
        return pit

    def set_pit2(self, pit: S.kvm_pit_state2) -> None:
        """KVM_SET_PIT2 (api.rst 4.73): load the PIT from a kvm_pit_state2."""
        validate.instance(pit, S.kvm_pit_state2, f"{self.name} KVM_SET_PIT2")
        self.ioctl("KVM_SET_PIT2", pit, args=f"flags={pit.flags:#x} " + " ".join(
            f"ch{i}=mode{c.mode}/count{c.count:#x}/gate{c.gate}" for i, c in enumerate(pit.channels)))
