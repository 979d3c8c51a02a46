"""A VM's Xen HVM emulation setup: KVM_XEN_HVM_CONFIG (api.rst 4.28; the features on offer are
KVM_CAP_XEN_HVM's bits, 8.30). With KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, Xen hypercalls (VMCALL or
VMMCALL, or a call into the hypercall page KVM fills when the guest writes the configured MSR)
exit to user space as KVM_EXIT_XEN (kvmtest.exits.XenExit)."""

from . import validate
from .abi import structs as S
from .carried import carried, replayable
from .errors import BadArgumentError
from .fdobject import FdObject


def xen_hvm_config_struct(flags, msr, blob_addr_32, blob_addr_64, blob_size_32,
                          blob_size_64) -> tuple[S.kvm_xen_hvm_config, str]:
    """A kvm_xen_hvm_config (flags and msr are __u32, the blob addresses __u64, their sizes __u8)
    and its text for messages."""
    where = "KVM_XEN_HVM_CONFIG"
    for name, value in (("flags", flags), ("msr", msr), ("blob_addr_32", blob_addr_32), ("blob_addr_64", blob_addr_64),
                        ("blob_size_32", blob_size_32), ("blob_size_64", blob_size_64)):
        if isinstance(value, bool):  # True is no flag word, MSR index or address: not 1 in disguise
            raise BadArgumentError(f"{where} {name} = {value!r}: expected an integer, not a bool")
    arg = S.kvm_xen_hvm_config(
        flags=validate.uint(flags, 32, f"{where} flags"), msr=validate.uint(msr, 32, f"{where} msr"),
        blob_addr_32=validate.uint(blob_addr_32, 64, f"{where} blob_addr_32"),
        blob_addr_64=validate.uint(blob_addr_64, 64, f"{where} blob_addr_64"),
        blob_size_32=validate.uint(blob_size_32, 8, f"{where} blob_size_32"),
        blob_size_64=validate.uint(blob_size_64, 8, f"{where} blob_size_64"))
    text = f"flags={arg.flags:#x} msr={arg.msr:#x}"
    if arg.blob_addr_32 or arg.blob_addr_64 or arg.blob_size_32 or arg.blob_size_64:
        text += (f" blob_addr_32={arg.blob_addr_32:#x} blob_addr_64={arg.blob_addr_64:#x} "
                 f"blob_size_32={arg.blob_size_32} blob_size_64={arg.blob_size_64}")
    return arg, text


class VmXen(FdObject):
    """Vm's Xen HVM methods (mixed into kvmtest.vm.Vm)."""

    setup_calls: list
    _in_setup: bool

    @replayable
    def configure_xen_hvm(self, flags: int, msr: int = 0, *, blob_addr_32: int = 0, blob_addr_64: int = 0,
                          blob_size_32: int = 0, blob_size_64: int = 0) -> None:
        """KVM_XEN_HVM_CONFIG (api.rst 4.28): KVM_XEN_HVM_CONFIG_* `flags`, the MSR whose write (the
        page's GPA) gives the guest its hypercall page (0: none), and the user-space blobs KVM copies
        into that page (addresses in this process, sizes in pages), which must all be 0 with
        KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL: KVM then writes the page itself. Recorded for a copy of
        the VM. KvmError (MissingCapabilityError without KVM_CAP_XEN_HVM) if KVM refuses."""
        arg, text = xen_hvm_config_struct(flags, msr, blob_addr_32, blob_addr_64, blob_size_32, blob_size_64)
        self.ioctl("KVM_XEN_HVM_CONFIG", arg, args=text)

    @carried  # records itself
    def try_configure_xen_hvm(self, flags: int, msr: int = 0, *, blob_addr_32: int = 0, blob_addr_64: int = 0,
                              blob_size_32: int = 0, blob_size_64: int = 0) -> int:
        """configure_xen_hvm's twin: the errno (0 on success, recorded like configure_xen_hvm's)."""
        arg, text = xen_hvm_config_struct(flags, msr, blob_addr_32, blob_addr_64, blob_size_32, blob_size_64)
        err = self.try_ioctl("KVM_XEN_HVM_CONFIG", arg, args=text)
        if not err and not self._in_setup:
            blobs = {k: getattr(arg, k) for k in ("blob_addr_32", "blob_addr_64", "blob_size_32", "blob_size_64")}
            self.setup_calls.append(("configure_xen_hvm", (arg.flags, arg.msr), blobs))
        return err
