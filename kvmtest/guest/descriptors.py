"""Pure encoders for segment, system and gate descriptors and the TSS (SDM Vol. 3A 3.4.5, 7.2, 6.11).

The type-field values are kvmtest.x86's SEG_TYPE_* (code and data) and SYS_TYPE_* (system, gates).
"""

import struct
from dataclasses import dataclass

from ..abi.structs import kvm_segment
from ..x86 import (
    SEG_TYPE_CODE_RX_ACCESSED,
    SEG_TYPE_DATA_RW_ACCESSED,
    SYS_TYPE_TSS_AVAILABLE,
    SYS_TYPE_TSS_BUSY,
    TSS32_CR3,
    TSS32_ES,
    TSS32_ESP,
    TSS32_ESP0,
    TSS32_IOMAP_BASE,
    TSS32_LINK,
    TSS32_SIZE,
    TSS64_IOMAP_BASE,
    TSS64_IST1,
    TSS64_RSP0,
    TSS64_SIZE,
)


@dataclass(frozen=True)
class Descriptor:
    """A code, data or system segment descriptor. `limit` is the raw 20-bit field."""

    base: int = 0
    limit: int = 0xFFFFF
    type: int = SEG_TYPE_DATA_RW_ACCESSED
    s: int = 1
    dpl: int = 0
    p: int = 1
    avl: int = 0
    l: int = 0  # noqa: E741 -- the SDM's name of the 64-bit code flag (kvm_segment.l too)
    db: int = 1
    g: int = 1

    def encode(self) -> bytes:
        """8 bytes (SDM Vol. 3A Figure 3-8)."""
        if not 0 <= self.limit <= 0xFFFFF:
            raise ValueError(f"descriptor limit {self.limit:#x} does not fit in 20 bits")
        low = (self.limit & 0xFFFF) | ((self.base & 0xFFFFFF) << 16)
        high = (self.type | (self.s << 4) | (self.dpl << 5) | (self.p << 7)) << 40
        high |= ((self.limit >> 16) & 0xF) << 48
        high |= (self.avl << 52) | (self.l << 53) | (self.db << 54) | (self.g << 55)
        high |= ((self.base >> 24) & 0xFF) << 56
        return struct.pack("<Q", low | high)

    def encode_system64(self) -> bytes:
        """16-byte system descriptor for long mode (SDM Vol. 3A Figure 8-4)."""
        return self.encode() + struct.pack("<II", (self.base >> 32) & 0xFFFFFFFF, 0)

    @property
    def byte_limit(self) -> int:
        """The segment limit in bytes: the 20-bit `limit` scaled by 4 KiB with the low 12 bits set when
        G=1 (SDM Vol. 3A 3.4.5), as kvm_segment.limit holds it."""
        return (self.limit << 12) | 0xFFF if self.g else self.limit

    def to_kvm_segment(self, selector: int) -> kvm_segment:
        """The kvm_segment that loading `selector` (pointing at this descriptor) produces."""
        return kvm_segment(base=self.base, limit=self.byte_limit, selector=selector, type=self.type,
                           present=self.p, dpl=self.dpl, db=self.db, s=self.s, l=self.l, g=self.g,
                           avl=self.avl, unusable=0)

    @classmethod
    def decode(cls, raw: bytes) -> "Descriptor":
        """The Descriptor an 8-byte GDT/LDT entry `raw` encodes (the inverse of encode(); SDM Vol. 3A
        Figure 3-8)."""
        (v,) = struct.unpack("<Q", raw[:8])
        return cls(base=((v >> 16) & 0xFFFFFF) | (((v >> 56) & 0xFF) << 24),
                   limit=(v & 0xFFFF) | (((v >> 48) & 0xF) << 16), type=(v >> 40) & 0xF, s=(v >> 44) & 1,
                   dpl=(v >> 45) & 3, p=(v >> 47) & 1, avl=(v >> 52) & 1, l=(v >> 53) & 1,
                   db=(v >> 54) & 1, g=(v >> 55) & 1)


def code64(dpl=0) -> Descriptor:
    """A 64-bit code segment (L=1, D=0; execute/read, accessed) at privilege level `dpl`."""
    return Descriptor(type=SEG_TYPE_CODE_RX_ACCESSED, dpl=dpl, l=1, db=0)


def code32(dpl=0) -> Descriptor:
    """A flat 32-bit code segment (base 0, 4 GiB, D=1; execute/read, accessed) at `dpl`."""
    return Descriptor(type=SEG_TYPE_CODE_RX_ACCESSED, dpl=dpl)


def code16(dpl=0) -> Descriptor:
    """A 16-bit code segment (D=0, 64 KiB byte-granular limit; execute/read, accessed) at `dpl`."""
    return Descriptor(type=SEG_TYPE_CODE_RX_ACCESSED, dpl=dpl, db=0, limit=0xFFFF, g=0)


def data(dpl=0) -> Descriptor:
    """A flat read/write data segment (base 0, 4 GiB, B=1; accessed) at `dpl`."""
    return Descriptor(type=SEG_TYPE_DATA_RW_ACCESSED, dpl=dpl)


def data16(dpl=0) -> Descriptor:
    """A 16-bit read/write data segment (B=0, 64 KiB byte-granular limit; accessed) at `dpl`."""
    return Descriptor(type=SEG_TYPE_DATA_RW_ACCESSED, dpl=dpl, db=0, limit=0xFFFF, g=0)


def tss(base: int, limit: int, busy: bool = True) -> Descriptor:
    """A TSS descriptor for a TSS at `base` with byte limit `limit`: busy, the type LTR leaves
    (SDM Vol. 3A, "TSS Descriptor"), unless `busy` is False."""
    type_ = SYS_TYPE_TSS_BUSY if busy else SYS_TYPE_TSS_AVAILABLE
    return Descriptor(base=base, limit=limit, type=type_, s=0, db=0, g=0)


def gate(offset: int, selector: int, type_: int, dpl: int = 0, *, bits: int = 32, ist: int = 0,
         param_count: int = 0) -> bytes:
    """Interrupt/trap/call gate: 8 bytes for 16/32-bit IDTs and GDTs, 16 bytes in long mode."""
    attrs = type_ | (dpl << 5) | 0x80
    if bits == 64:
        return struct.pack("<HHBBHII", offset & 0xFFFF, selector, ist & 7, attrs, (offset >> 16) & 0xFFFF,
                           (offset >> 32) & 0xFFFFFFFF, 0)
    if offset >> 32:
        raise ValueError(f"gate offset {offset:#x} does not fit a {bits}-bit gate")
    return struct.pack("<HHBBH", offset & 0xFFFF, selector, param_count & 0x1F, attrs, (offset >> 16) & 0xFFFF)


def ivt_entry(segment: int, offset: int) -> bytes:
    """Real-mode interrupt vector: offset then segment (SDM Vol. 3A 20.1.4)."""
    return struct.pack("<HH", offset & 0xFFFF, segment & 0xFFFF)


def tss32(esp0: int, ss0: int, iomap_base: int = TSS32_SIZE) -> bytes:
    """104-byte 32-bit TSS (SDM Vol. 3A 8.2.1, Figure 8-2); only the fields kvmtest uses are set."""
    t = bytearray(TSS32_SIZE)
    struct.pack_into("<II", t, TSS32_ESP0, esp0, ss0)
    struct.pack_into("<H", t, TSS32_IOMAP_BASE, iomap_base)
    return bytes(t)


def tss32_task(eip: int, esp: int, *, cs: int, data: int, eflags: int = 0x2, cr3: int = 0, link: int = 0,
               segments: dict[str, int] | None = None) -> bytes:
    """104-byte 32-bit TSS of a task a task switch starts (SDM Vol. 3A 8.2.1, Figure 8-2): EIP, EFLAGS,
    ESP, CS, and `data` in ES, SS, DS, FS and GS unless `segments` names one ("es", "ss", "ds", "fs",
    "gs"), CR3 (read only with paging on), the previous-task link; no I/O permission bitmap."""
    t = bytearray(TSS32_SIZE)
    selectors = {"es": data, "cs": cs, "ss": data, "ds": data, "fs": data, "gs": data, **(segments or {})}
    struct.pack_into("<I", t, TSS32_LINK, link)
    struct.pack_into("<III", t, TSS32_CR3, cr3, eip, eflags)     # CR3, EIP, EFLAGS are adjacent
    struct.pack_into("<I", t, TSS32_ESP, esp)
    for i, name in enumerate(("es", "cs", "ss", "ds", "fs", "gs")):
        struct.pack_into("<I", t, TSS32_ES + 4 * i, selectors[name])
    struct.pack_into("<H", t, TSS32_IOMAP_BASE, TSS32_SIZE)
    return bytes(t)


def tss64(rsp0: int, ist: tuple[int, ...] = (), iomap_base: int = TSS64_SIZE) -> bytes:
    """104-byte 64-bit TSS (SDM Vol. 3A 8.7, Figure 8-11)."""
    t = bytearray(TSS64_SIZE)
    struct.pack_into("<Q", t, TSS64_RSP0, rsp0)
    for i, stack in enumerate(ist[:7]):
        struct.pack_into("<Q", t, TSS64_IST1 + 8 * i, stack)
    struct.pack_into("<H", t, TSS64_IOMAP_BASE, iomap_base)
    return bytes(t)
