"""A vCPU's event injection, debugging and per-vCPU controls: KVM_INTERRUPT (api.rst 4.16),
KVM_NMI (4.64), KVM_SMI (4.96), KVM_X86_SETUP_MCE / KVM_X86_SET_MCE (KVM_CAP_MCE),
KVM_KVMCLOCK_CTRL (KVM_CAP_KVMCLOCK_CTRL), KVM_SET_GUEST_DEBUG (4.87), KVM_TRANSLATE (4.15),
KVM_ENABLE_CAP on the vCPU (4.37) and KVM_GET_STATS_FD (4.133)."""

import ctypes

from . import validate
from .abi import structs as S
from .caps import enable_cap_args, enable_cap_struct
from .carried import carried, replayable
from .errors import BadArgumentError
from .fdobject import FdObject
from .stats import Stats


class VcpuEvents(FdObject):
    """Vcpu's event, debug and control methods (mixed into kvmtest.vcpu.Vcpu)."""

    setup_calls: list
    _in_setup: bool

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT (api.rst 4.16): queue external interrupt `vector` (a __u32; user-space
        irqchip only: ENXIO with an in-kernel PIC, EEXIST while one is queued)."""
        vector = validate.uint(vector, 32, f"{self.name} KVM_INTERRUPT irq")
        self.ioctl("KVM_INTERRUPT", S.kvm_interrupt(vector), args=f"irq={vector}")

    def try_interrupt(self, vector: int) -> int:
        """interrupt's twin: the errno (0 on success)."""
        vector = validate.uint(vector, 32, f"{self.name} KVM_INTERRUPT irq")
        return self.try_ioctl("KVM_INTERRUPT", S.kvm_interrupt(vector), args=f"irq={vector}")

    def nmi(self) -> None:
        """KVM_NMI (api.rst 4.64): queue an NMI on this vCPU."""
        self.ioctl("KVM_NMI")

    def smi(self) -> None:
        """KVM_SMI (api.rst 4.96, KVM_CAP_X86_SMM): queue an SMI on this vCPU."""
        self.ioctl("KVM_SMI")

    def _mcg_cap(self, mcg_cap) -> tuple[ctypes.c_uint64, str]:
        mcg_cap = validate.uint(mcg_cap, 64, f"{self.name} KVM_X86_SETUP_MCE mcg_cap")
        return ctypes.c_uint64(mcg_cap), f"mcg_cap={mcg_cap:#x}"

    def setup_mce(self, mcg_cap: int) -> None:
        """KVM_X86_SETUP_MCE (api.rst, KVM_CAP_MCE): give the vCPU machine-check banks; `mcg_cap`
        (a u64) is laid out as IA32_MCG_CAP: bank count in bits 7:0, MCG_*_P capabilities above,
        each of which must be in Kvm.mce_cap_supported(). EINVAL for a bank count above
        KVM_CHECK_EXTENSION(KVM_CAP_MCE) or an unsupported capability."""
        arg, text = self._mcg_cap(mcg_cap)
        self.ioctl("KVM_X86_SETUP_MCE", arg, args=text)

    def try_setup_mce(self, mcg_cap: int) -> int:
        """setup_mce's twin: the errno (0 on success)."""
        arg, text = self._mcg_cap(mcg_cap)
        return self.try_ioctl("KVM_X86_SETUP_MCE", arg, args=text)

    def _mce(self, bank, status, addr, misc, mcg_status) -> tuple[S.kvm_x86_mce, str]:
        what = f"{self.name} KVM_X86_SET_MCE"
        mce = S.kvm_x86_mce(status=validate.uint(status, 64, f"{what} status"),
                            addr=validate.uint(addr, 64, f"{what} addr"),
                            misc=validate.uint(misc, 64, f"{what} misc"),
                            mcg_status=validate.uint(mcg_status, 64, f"{what} mcg_status"),
                            bank=validate.uint(bank, 8, f"{what} bank"))
        return mce, f"bank={mce.bank} status={mce.status:#x} mcg_status={mce.mcg_status:#x}"

    def set_mce(self, bank: int, status: int, *, addr: int = 0, misc: int = 0, mcg_status: int = 0) -> None:
        """KVM_X86_SET_MCE (api.rst, KVM_CAP_MCE): report a machine-check error in `bank` (a u8)
        with IA32_MCi_STATUS `status`, IA32_MCi_ADDR `addr`, IA32_MCi_MISC `misc` and
        IA32_MCG_STATUS `mcg_status` (u64 each). An uncorrected error (MCI_STATUS_UC) is injected as
        #MC, a corrected one only stored in the bank. EINVAL for a bank beyond setup_mce's count or
        a status without MCI_STATUS_VAL."""
        mce, text = self._mce(bank, status, addr, misc, mcg_status)
        self.ioctl("KVM_X86_SET_MCE", mce, args=text)

    def try_set_mce(self, bank: int, status: int, *, addr: int = 0, misc: int = 0, mcg_status: int = 0) -> int:
        """set_mce's twin: the errno (0 on success)."""
        mce, text = self._mce(bank, status, addr, misc, mcg_status)
        return self.try_ioctl("KVM_X86_SET_MCE", mce, args=text)

    def kvmclock_ctrl(self) -> None:
        """KVM_KVMCLOCK_CTRL (api.rst, KVM_CAP_KVMCLOCK_CTRL): tell the guest this vCPU was paused
        by the host: KVM sets PVCLOCK_GUEST_STOPPED in the flags of its kvmclock structure."""
        self.ioctl("KVM_KVMCLOCK_CTRL")

    def try_kvmclock_ctrl(self) -> int:
        """kvmclock_ctrl's twin: the errno (0 on success)."""
        return self.try_ioctl("KVM_KVMCLOCK_CTRL")

    @replayable  # no KVM_GET_GUEST_DEBUG: a copy of the vCPU makes the same call (kvmtest.state)
    def set_guest_debug(self, control: int, debugreg=(0,) * 8) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst 4.87): KVM_GUESTDBG_* `control` (a __u32); `debugreg` fills
        kvm_guest_debug_arch.debugreg[8] (DR0-DR3, then DR7 at index 7 on x86), u64 each."""
        control = validate.uint(control, 32, f"{self.name} KVM_SET_GUEST_DEBUG control")
        debugreg = validate.uints(debugreg, 64, f"{self.name} KVM_SET_GUEST_DEBUG debugreg", indexed=True)
        if len(debugreg) > len(S.kvm_guest_debug_arch().debugreg):
            raise BadArgumentError(f"{self.name} KVM_SET_GUEST_DEBUG: {len(debugreg)} debugreg values, but "
                                   "kvm_guest_debug_arch.debugreg holds 8")
        dbg = S.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            dbg.arch.debugreg[i] = value
        self.ioctl("KVM_SET_GUEST_DEBUG", dbg, args=f"control={control:#x}")

    def translate(self, gva: int) -> S.kvm_translation:
        """KVM_TRANSLATE (api.rst 4.15): how the vCPU's current mode translates linear address `gva`
        (valid, physical_address, writeable, usermode)."""
        gva = validate.uint(gva, 64, f"{self.name} KVM_TRANSLATE linear address")
        tr = S.kvm_translation(linear_address=gva)
        self.ioctl("KVM_TRANSLATE", tr, args=f"gva={gva:#x}")
        return tr

    @replayable  # no way to read a vCPU capability back: a copy of the vCPU enables it again
    def enable_cap(self, cap, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the vCPU (api.rst 4.37, section 6): `cap` by name or number with up to
        four u64 arguments; recorded for a copy of the vCPU."""
        self.ioctl("KVM_ENABLE_CAP", enable_cap_struct(cap, *args, flags=flags), args=enable_cap_args(cap, args, flags))

    @carried  # records itself
    def try_enable_cap(self, cap, *args: int, flags: int = 0) -> int:
        """enable_cap's twin: the errno (0 on success, recorded like enable_cap's)."""
        err = self.try_ioctl("KVM_ENABLE_CAP", enable_cap_struct(cap, *args, flags=flags),
                             args=enable_cap_args(cap, args, flags))
        if not err and not self._in_setup:
            self.setup_calls.append(("enable_cap", (cap, *args), {"flags": flags}))
        return err

    def stats(self) -> Stats:
        """KVM_GET_STATS_FD on the vCPU (api.rst 4.133): a kvmtest.stats.Stats owning the new fd."""
        return Stats(self.ioctl("KVM_GET_STATS_FD"), f"{self.name}/stats")
