"""The base every UAPI structure derives from, and the kernel's integer type names."""

from ctypes import (
    Structure,
    Union,
    c_int16,
    c_int32,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
)

# <linux/types.h> names, so that field lists read like the header.
u8, u16, u32, u64, s16, s32 = c_uint8, c_uint16, c_uint32, c_uint64, c_int16, c_int32


class KvmStruct(Structure):
    """A ctypes Structure with a readable repr for failure messages: every non-padding field
    by name, integers in hex, nested structures recursively."""

    def __repr__(self):
        parts = []
        for name, *_ in self._fields_:
            if name.startswith(("pad", "reserved")):
                continue
            value = getattr(self, name)
            if isinstance(value, int):
                parts.append(f"{name}={value:#x}")
            elif isinstance(value, (Structure, Union)):
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
