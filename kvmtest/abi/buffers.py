"""Builders for the variable-length UAPI structures (a header, then a flexible array).

Each returns a ctypes object sized for its entries, with the header's count set and every
entry checked first: a wrong entry is one BadArgumentError naming the structure, the entry's
position and what was wrong, never a ctypes TypeError or a value wrapped into a field.
`what` prefixes the messages with the caller's context ("vm0/vcpu0 KVM_SET_MSRS").

- kvm_msrs (KVM_GET_MSRS / KVM_SET_MSRS, api.rst 4.18-4.19): msrs_buffer
- kvm_cpuid2 (KVM_SET_CPUID2, KVM_GET_CPUID2, KVM_GET_SUPPORTED_CPUID, api.rst 4.46): cpuid2_buffer
- kvm_msr_list (KVM_GET_MSR_INDEX_LIST, api.rst 4.3): msr_list_buffer
- kvm_irq_routing (KVM_SET_GSI_ROUTING, api.rst 4.52): irq_routing_buffer
- kvm_nested_state (KVM_GET/SET_NESTED_STATE, api.rst 4.114): nested_state_buffer
- kvm_xsave of KVM_CAP_XSAVE2's size (KVM_GET_XSAVE2, api.rst 4.134): xsave_buffer

Not imported by kvmtest.abi itself: the ABI layer stays data, these raise kvmtest's errors.
"""

import ctypes
from collections.abc import Iterable, Mapping

from .. import validate
from ..errors import BadArgumentError
from . import structs as S

# A count is a __u32 in every header; more entries than that cannot be described.
_MAX_COUNT = (1 << 32) - 1


def _entries(entries, what: str, kind: str) -> list:
    """`entries` as a list; a string, bytes, a single structure or a non-iterable is refused by name."""
    if isinstance(entries, (str, bytes, ctypes.Structure)) or not isinstance(entries, Iterable):
        raise BadArgumentError(f"{what}: expected a list of {kind}, got {entries!r:.80}")
    return list(entries)


def _count(n: int, what: str, field: str) -> int:
    return validate.int_in(n, 0, _MAX_COUNT, f"{what} {field}")


def msrs_buffer(entries: Mapping[int, int] | Iterable[int], *, what: str = "kvm_msrs"):
    """A kvm_msrs holding `entries`: a mapping MSR index -> value (KVM_SET_MSRS) or an iterable
    of MSR indices whose data is left 0 for KVM to fill (KVM_GET_MSRS). nmsrs is the number of
    entries. Indices are __u32 and values __u64; the first that is not is refused by name
    ("<what> index = 0x100000174", "<what> value of MSR 0x174 = -0x1")."""
    if isinstance(entries, Mapping):
        pairs = []
        for index, data in entries.items():
            index = validate.uint(index, 32, f"{what} index")
            pairs.append((index, validate.uint(data, 64, f"{what} value of MSR {index:#x}")))
    else:
        pairs = [(index, 0) for index in validate.uints(entries, 32, f"{what} index")]
    _count(len(pairs), what, "nmsrs")
    buf = S.msrs_type(len(pairs))()
    buf.nmsrs = len(pairs)
    for i, (index, data) in enumerate(pairs):
        buf.entries[i].index, buf.entries[i].data = index, data
    return buf


def cpuid2_buffer(entries: Iterable[S.kvm_cpuid_entry2] = (), *, nent: int | None = None,
                  what: str = "kvm_cpuid2"):
    """A kvm_cpuid2 holding copies of `entries` (kvm_cpuid_entry2 each), for KVM_SET_CPUID2; or,
    with `nent`, room for nent entries and the header's nent set to it, for the ioctls that fill
    the array (KVM_GET_CPUID2, KVM_GET_SUPPORTED_CPUID: E2BIG while nent is too small). `entries`
    given with `nent` must fit in it."""
    entries = _entries(entries, what, "kvm_cpuid_entry2")
    for i, e in enumerate(entries):
        if not isinstance(e, S.kvm_cpuid_entry2):
            raise BadArgumentError(f"{what} entry {i}: expected a kvm_cpuid_entry2, got {e!r:.80}")
    room = len(entries) if nent is None else _count(nent, what, "nent")
    if len(entries) > room:
        raise BadArgumentError(f"{what}: {len(entries)} entries do not fit nent = {room}")
    _count(room, what, "nent")
    buf = S.cpuid2_type(room)()
    buf.nent = room
    if entries:  # one copy of them all: every guest's vCPU gets a table (7 us, entry by entry 50)
        packed = b"".join(map(bytes, entries))
        ctypes.memmove(ctypes.addressof(buf) + type(buf).entries.offset, packed, len(packed))
    return buf


def msr_list_buffer(nmsrs: int, *, room: int | None = None, what: str = "kvm_msr_list"):
    """A kvm_msr_list whose header says `nmsrs` with room for `room` indices (default nmsrs), for
    KVM_GET_MSR_INDEX_LIST and KVM_GET_MSR_FEATURE_INDEX_LIST. A header that claims less room than
    the array has (nmsrs < room) is what api.rst 4.3's E2BIG case is probed with; one that claims
    more would let KVM write past the buffer and is refused."""
    nmsrs = _count(nmsrs, what, "nmsrs")
    room = nmsrs if room is None else _count(room, what, "room")
    if nmsrs > room:
        raise BadArgumentError(f"{what}: nmsrs = {nmsrs} claims more indices than the {room} the buffer holds; "
                               "KVM would write past it")
    buf = S.msr_list_type(room)()
    buf.nmsrs = nmsrs
    return buf


def irq_routing_buffer(entries: Iterable[S.kvm_irq_routing_entry], *, what: str = "kvm_irq_routing"):
    """A kvm_irq_routing holding copies of `entries` (kvm_irq_routing_entry each; nr set, flags 0
    as api.rst 4.52 requires), for KVM_SET_GSI_ROUTING."""
    entries = _entries(entries, what, "kvm_irq_routing_entry")
    for i, e in enumerate(entries):
        validate.instance(e, S.kvm_irq_routing_entry, f"{what} entry {i}")
    _count(len(entries), what, "nr")
    table = S.irq_routing_type(len(entries))(nr=len(entries))
    for i, e in enumerate(entries):
        table.entries[i] = e
    return table


def nested_state_buffer(size: int, *, what: str = "kvm_nested_state"):
    """A kvm_nested_state of `size` bytes in all with its `size` field set (KVM_GET_NESTED_STATE
    writes up to that many; api.rst 4.114). KVM trusts the field as the buffer's length, so it is
    a checked __u32 and never more than the buffer."""
    size = validate.uint(size, 32, f"{what} size")
    return S.nested_state_type(size)(size=size)


def xsave_buffer(size: int, *, what: str = "kvm_xsave"):
    """A kvm_xsave of at least `size` bytes (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2), never less than
    4096), for KVM_GET_XSAVE2 (api.rst 4.134), which writes that many bytes."""
    size = validate.uint(size, 32, f"{what} size")
    return S.xsave_type(size)()
