"""Binary statistics file descriptors (api.rst 4.133 KVM_GET_STATS_FD).

The fd holds a header, an id string, descriptors and data; all are read with pread.
"""

import ctypes
import os
import struct
from dataclasses import dataclass

from .abi import constants as C
from .abi.structs import kvm_stats_desc, kvm_stats_header
from .errors import KvmtestError
from .fdobject import FdObject


@dataclass(frozen=True)
class StatDescriptor:
    """One kvm_stats_desc of a stats fd (api.rst 4.133): the statistic's name, flags (type, unit,
    base), exponent, `size` (how many u64 values) and `offset` into the data block, and
    `bucket_size` for linear histograms."""
    name: str
    flags: int
    exponent: int
    size: int
    offset: int
    bucket_size: int

    @property
    def type(self) -> int:
        """The KVM_STATS_TYPE_* field of flags: cumulative, instant, peak, linear or log histogram."""
        return (self.flags & C.KVM_STATS_TYPE_MASK) >> C.KVM_STATS_TYPE_SHIFT

    @property
    def unit(self) -> int:
        """The unit field of flags, shifted down: 0 none, 1 bytes, 2 seconds, 3 cycles, 4 boolean
        (KVM_STATS_UNIT_*; abi.constants.STATS_UNITS)."""
        return (self.flags & C.KVM_STATS_UNIT_MASK) >> C.KVM_STATS_UNIT_SHIFT

    @property
    def base(self) -> int:
        """The base field of flags, shifted down: 0 for POW10, 1 for POW2, the base `exponent` applies to
        (KVM_STATS_BASE_*)."""
        return (self.flags & C.KVM_STATS_BASE_MASK) >> C.KVM_STATS_BASE_SHIFT


class Stats(FdObject):
    """A stats fd. Owns the fd; `read()` returns {name: value or list of values}.

    Everything is read with pread (no mapping); after close() every read raises ClosedError,
    and a short read (a header promising more than the fd holds) is one KvmtestError.
    """

    def __init__(self, fd: int, name: str):
        super().__init__(fd, name)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _pread(self, length: int, offset: int, what: str) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise KvmtestError(f"{self.name}: {what}: read {len(data)} of {length} bytes at offset {offset:#x}")
        return data

    def _parse(self) -> None:
        self.header = kvm_stats_header.from_buffer_copy(self._pread(ctypes.sizeof(kvm_stats_header), 0, "header"))
        h = self.header
        self.id = self._pread(h.name_size, h.id_offset, "id string").split(b"\0", 1)[0].decode(errors="replace")
        desc_size = ctypes.sizeof(kvm_stats_desc) + h.name_size
        blob = self._pread(desc_size * h.num_desc, h.desc_offset, f"{h.num_desc} descriptors")
        self.descriptors = []
        for i in range(h.num_desc):
            chunk = blob[i * desc_size: (i + 1) * desc_size]
            d = kvm_stats_desc.from_buffer_copy(chunk[: ctypes.sizeof(kvm_stats_desc)])
            name = chunk[ctypes.sizeof(kvm_stats_desc):].split(b"\0", 1)[0].decode(errors="replace")
            self.descriptors.append(StatDescriptor(name, d.flags, d.exponent, d.size, d.offset, d.bucket_size))
        self.by_name = {d.name: d for d in self.descriptors}

    def read(self) -> dict[str, int | list[int]]:
        """All values in one pread of the data block."""
        size = max((d.offset + 8 * d.size for d in self.descriptors), default=0)
        data = self._pread(size, self.header.data_offset, "data block")
        values = {}
        for d in self.descriptors:
            items = struct.unpack_from(f"<{d.size}Q", data, d.offset)
            values[d.name] = items[0] if d.size == 1 else list(items)
        return values

    def value(self, name: str) -> int | list[int]:
        """Statistic `name` read now: one integer, or a list of `size` u64 values (a histogram).
        KeyError for a name this fd does not have; KvmtestError for a short read."""
        if name not in self.by_name:
            raise KeyError(f"{self.name} has no statistic {name!r} (it has {len(self.by_name)})")
        d = self.by_name[name]
        raw = self._pread(8 * d.size, self.header.data_offset + d.offset, f"statistic {name!r}")
        items = struct.unpack(f"<{d.size}Q", raw)
        return items[0] if d.size == 1 else list(items)
