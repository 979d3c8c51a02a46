"""The raw KVM ABI: structures, constants and ioctl numbers. Pure data, no system calls."""

from . import constants, numbers, structs  # noqa: F401
from .constants import *  # noqa: F401,F403
from .numbers import IOCTLS, IoctlDef, ioctl_name  # noqa: F401
from .structs import *  # noqa: F401,F403
