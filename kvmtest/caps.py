"""Capability arguments: a KVM_CAP_* name (with or without the prefix) or number, checked.

Below Kvm and Vm, which both take capabilities by name (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP;
api.rst 4.4, 4.37), so neither has to import the other.
"""

from . import validate
from .abi import structs as S
from .abi.capabilities import CAPABILITIES, CAPABILITY_NAMES
from .errors import BadArgumentError


def cap_number(cap: int | str) -> int:
    """A capability's number, from the number (a __u32, as KVM_ENABLE_CAP's `cap` field and
    KVM_CHECK_EXTENSION's argument take it) or its name ("KVM_CAP_IRQCHIP" or "IRQCHIP").
    BadArgumentError for an unknown name or anything else."""
    if isinstance(cap, int) and not isinstance(cap, bool):
        return validate.uint(cap, 32, "capability number")
    if not isinstance(cap, str):
        raise BadArgumentError(f"capability {cap!r}: expected a KVM_CAP_* name or number")
    name = cap if cap.startswith("KVM_CAP_") else f"KVM_CAP_{cap}"
    if name not in CAPABILITIES:
        raise BadArgumentError(f"unknown capability {cap!r}")
    return CAPABILITIES[name]


def cap_name(cap: int | str) -> str:
    """The KVM_CAP_* name of a capability given by name or number ("KVM_CAP_unknown(n)" for a
    number kvmtest does not know)."""
    return CAPABILITY_NAMES.name(cap_number(cap))


def enable_cap_struct(cap: int | str, *args: int, flags: int = 0) -> S.kvm_enable_cap:
    """A kvm_enable_cap for KVM_ENABLE_CAP (api.rst 4.37): `cap` by name or number, up to four
    u64 `args` and `flags` (a __u32, "has to be 0 for now"); BadArgumentError naming the
    capability for a fifth argument or a value that does not fit its field."""
    name = cap_name(cap)
    if len(args) > 4:
        raise BadArgumentError(f"KVM_ENABLE_CAP {name}: {len(args)} args, but kvm_enable_cap.args holds 4")
    ec = S.kvm_enable_cap(cap=cap_number(cap), flags=validate.uint(flags, 32, f"KVM_ENABLE_CAP {name} flags"))
    for i, a in enumerate(args):
        ec.args[i] = validate.uint(a, 64, f"KVM_ENABLE_CAP {name} args[{i}]")
    return ec


def enable_cap_args(cap: int | str, args: tuple, flags: int) -> str:
    """KVM_ENABLE_CAP's arguments for messages and the trace ("KVM_CAP_X args=0x1 flags=0x0")."""
    text = cap_name(cap)
    if args:
        text += " args=" + ",".join(hex(a) for a in args)
    return text + (f" flags={flags:#x}" if flags else "")
