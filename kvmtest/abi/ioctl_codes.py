"""The Linux ioctl request encoding (include/uapi/asm-generic/ioctl.h).

x86 uses the generic layout: 8 bits number, 8 bits type, 14 bits size, 2 bits direction.
"""

import ctypes

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _size(arg) -> int:
    return arg if isinstance(arg, int) else ctypes.sizeof(arg)


def IO(type_: int, nr: int) -> int:
    """_IO(type, nr): an ioctl request with no argument."""
    return _ioc(IOC_NONE, type_, nr, 0)


def IOR(type_: int, nr: int, argtype) -> int:
    """_IOR(type, nr, argtype): the kernel writes an argument of argtype's size (a ctypes type or a size in bytes)."""
    return _ioc(IOC_READ, type_, nr, _size(argtype))


def IOW(type_: int, nr: int, argtype) -> int:
    """_IOW(type, nr, argtype): the kernel reads an argument of argtype's size."""
    return _ioc(IOC_WRITE, type_, nr, _size(argtype))


def IOWR(type_: int, nr: int, argtype) -> int:
    """_IOWR(type, nr, argtype): the kernel reads and writes an argument of argtype's size."""
    return _ioc(IOC_READ | IOC_WRITE, type_, nr, _size(argtype))


def ioc_size(request: int) -> int:
    """The argument size encoded in an ioctl request number."""
    return (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


def ioc_dir(request: int) -> int:
    """The direction bits of an ioctl request number (IOC_NONE, IOC_WRITE, IOC_READ or both)."""
    return (request >> _IOC_DIRSHIFT) & 3
