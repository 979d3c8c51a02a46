"""The raw KVM ABI: structures, constants and ioctl numbers. Pure data, no system calls.

kvmtest.abi.buffers (not imported here: it raises kvmtest's errors) builds the variable-length
structures with their entries checked.
"""

from . import capabilities, constants, numbers, structs  # noqa: F401
from .capabilities import *  # noqa: F401,F403
from .constants import *  # noqa: F401,F403
from .numbers import IOCTLS, IoctlDef, ioctl_name  # noqa: F401
from .structs import *  # noqa: F401,F403
