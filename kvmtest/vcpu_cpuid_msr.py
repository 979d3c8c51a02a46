"""A vCPU's MSRs and CPUID (api.rst 4.18 KVM_GET_MSRS, 4.19 KVM_SET_MSRS, 4.46 and
KVM_SET_CPUID2 / KVM_GET_CPUID2; KVM_CAP_ENFORCE_PV_FEATURE_CPUID). MSRs are given as index ->
value dicts; CPUID tables as lists of kvm_cpuid_entry2."""

import errno
from typing import TYPE_CHECKING

from . import ioctl as _ioctl
from . import validate
from .abi import structs as S
from .abi.buffers import cpuid2_buffer, msrs_buffer
from .abi.constants import KVM_MAX_CPUID_ENTRIES
from .errors import BadArgumentError, KvmError, KvmtestError
from .fdobject import FdObject

if TYPE_CHECKING:
    from .vm import Vm

KVM_CPUID_FEATURES = 0x40000001  # the KVM feature leaf (Documentation/virt/kvm/x86/cpuid.rst)


def _msr_names(indices) -> str:
    return "msrs=" + ",".join(hex(i) for i in indices)


class VcpuMsrCpuid(FdObject):
    """Vcpu's MSR and CPUID methods (mixed into kvmtest.vcpu.Vcpu)."""

    vm: "Vm"
    _cpuid_nent: int | None  # entries last given to KVM_SET_CPUID2, a hint for get_cpuid()

    # A declaration for the type checker only (hence noqa: D102): kvmtest.vcpu_events provides and
    # documents it in Vcpu.
    if TYPE_CHECKING:
        def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> None: ...  # noqa: D102

    # --- MSRs ---------------------------------------------------------------------------------

    def try_get_msrs(self, indices: list[int]) -> tuple[dict[int, int], int]:
        """KVM_GET_MSRS (api.rst 4.18) without raising: (index -> value for the MSRs KVM read, errno).
        KVM stops at the first MSR it does not read and returns how many it read, so the dict
        holds the first that many of `indices`."""
        buf = msrs_buffer(indices, what=f"{self.name} KVM_GET_MSRS")
        indices = [buf.entries[i].index for i in range(buf.nmsrs)]
        n, err = self.try_ioctl_result("KVM_GET_MSRS", buf, args=_msr_names(indices))
        if err:
            return {}, err
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}, 0

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS (api.rst 4.18): index -> value for every MSR in `indices` (__u32 each).
        KvmError naming the first refused MSR if KVM reads fewer than asked for."""
        buf = msrs_buffer(indices, what=f"{self.name} KVM_GET_MSRS")
        indices = [buf.entries[i].index for i in range(buf.nmsrs)]
        n = self.ioctl("KVM_GET_MSRS", buf, args=_msr_names(indices))
        if n != len(indices):
            refused = f"; MSR {indices[n]:#x} was refused" if 0 <= n < len(indices) else ""
            raise KvmError(errno.EINVAL, "KVM_GET_MSRS", self.name, _msr_names(indices),
                           f"read {n} of {len(indices)} MSRs{refused}")
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def get_msr(self, index: int) -> int:
        """The value of one MSR (get_msrs([index]))."""
        return self.get_msrs([index])[index]

    def set_msrs(self, values: dict[int, int]) -> int:
        """KVM_SET_MSRS (api.rst 4.19) of an index -> value dict (__u32 -> __u64); returns how many MSRs
        KVM accepted: it stops at the first it refuses."""
        validate.mapping(values, f"{self.name} KVM_SET_MSRS values (MSR index -> value)")
        buf = msrs_buffer(values, what=f"{self.name} KVM_SET_MSRS")
        return self.ioctl("KVM_SET_MSRS", buf, args=_msr_names(values))

    def set_msr(self, index: int, value: int) -> None:
        """Set one MSR; KvmError (EINVAL) if KVM refuses it."""
        if self.set_msrs({index: value}) != 1:
            raise KvmError(errno.EINVAL, "KVM_SET_MSRS", self.name, f"msr={index:#x} data={value:#x}",
                           "KVM accepted 0 of 1 MSRs")

    # --- CPUID --------------------------------------------------------------------------------

    def set_cpuid(self, entries) -> None:
        """KVM_SET_CPUID2 (api.rst KVM_SET_CPUID2): give the vCPU exactly `entries` (kvm_cpuid_entry2 each)."""
        buf = cpuid2_buffer(entries, what=f"{self.name} KVM_SET_CPUID2")
        self.ioctl("KVM_SET_CPUID2", buf, args=f"nent={buf.nent}")
        self._cpuid_nent = buf.nent

    def try_set_cpuid(self, entries) -> int:
        """set_cpuid's twin: the errno (0 on success)."""
        buf = cpuid2_buffer(entries, what=f"{self.name} KVM_SET_CPUID2")
        err = self.try_ioctl("KVM_SET_CPUID2", buf, args=f"nent={buf.nent}")
        if not err:
            self._cpuid_nent = buf.nent
        return err

    def try_get_cpuid(self, nent: int):
        """KVM_GET_CPUID2 (api.rst KVM_GET_CPUID2) once, with room for `nent` entries (0 to
        KVM_MAX_CPUID_ENTRIES): (the kvm_cpuid2 buffer as KVM left it, errno). E2BIG while nent is
        below the vCPU's entry count. get_cpuid() gives the entries themselves."""
        nent = validate.int_in(nent, 0, KVM_MAX_CPUID_ENTRIES, f"{self.name} KVM_GET_CPUID2 nent")
        buf = cpuid2_buffer(nent=nent, what=f"{self.name} KVM_GET_CPUID2")
        return buf, self.try_ioctl("KVM_GET_CPUID2", buf, args=f"nent={nent}")

    def get_cpuid(self, nent: int | None = None) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_CPUID2 (api.rst KVM_GET_CPUID2): exactly the entries the vCPU has, in KVM's order.

        KVM fails with E2BIG while nent is below the vCPU's entry count, so the count is the
        smallest nent that succeeds; it is found that way rather than read from the nent KVM
        writes back, which some kernels (6.1) leave as passed, so that a 256-entry buffer
        would come back with its unused, zeroed entries. The count last given to
        KVM_SET_CPUID2 is tried first (two calls); otherwise a binary search. `nent` caps the
        search (default and most: KVM_MAX_CPUID_ENTRIES).
        """
        limit = KVM_MAX_CPUID_ENTRIES if nent is None else validate.uint(nent, 32, f"{self.name} get_cpuid nent")
        if not 1 <= limit <= KVM_MAX_CPUID_ENTRIES:
            raise BadArgumentError(f"{self.name} get_cpuid nent = {limit}: must be 1 to "
                                   f"{KVM_MAX_CPUID_ENTRIES} (KVM_MAX_CPUID_ENTRIES)")

        def fits(n: int):
            buf, err = self.try_get_cpuid(n)
            if err not in (0, errno.E2BIG):
                raise KvmError(err, "KVM_GET_CPUID2", self.name, f"nent={n}", "", _ioctl.recent())
            return buf if not err else None

        hint = self._cpuid_nent
        if hint is not None and hint <= limit:
            buf = fits(hint)
            if buf is not None and (hint == 0 or fits(hint - 1) is None):
                return [buf.entries[i] for i in range(hint)]
        best = fits(limit)
        if best is None:
            raise KvmError(errno.E2BIG, "KVM_GET_CPUID2", self.name, f"nent={limit}",
                           f"the vCPU has more than {limit} CPUID entries", _ioctl.recent())
        low, high = 0, limit  # fits(high) succeeded; the count lies in [low, high]
        while low < high:
            mid = (low + high) // 2
            buf = fits(mid)
            if buf is None:
                low = mid + 1
            else:
                high, best = mid, buf
        return [best.entries[i] for i in range(high)]

    def enforce_pv_features(self, features: int) -> None:
        """Give the vCPU KVM's supported CPUID with only `features` in the KVM feature leaf
        (0x40000001 EAX) and enable KVM_CAP_ENFORCE_PV_FEATURE_CPUID, so paravirtual MSRs and
        hypercalls outside `features` are refused (api.rst 7 KVM_CAP_ENFORCE_PV_FEATURE_CPUID)."""
        table = self.vm.kvm.supported_cpuid_copy()
        leaf = next((e for e in table if e.function == KVM_CPUID_FEATURES), None)
        if leaf is None:
            raise KvmtestError(f"{self.name}: KVM_GET_SUPPORTED_CPUID has no KVM feature leaf "
                               f"{KVM_CPUID_FEATURES:#x} to restrict")
        leaf.eax = validate.uint(features, 32, f"{self.name} KVM feature leaf {KVM_CPUID_FEATURES:#x} EAX")
        self.set_cpuid(table)
        self.enable_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID", 1)
