"""Guest building: CPU modes, descriptor and page-table encoders, the guest/host protocol."""

from .builder import Guest  # noqa: F401
from .modes import ALL_MODES, CPL0_MODES, MODES, get_mode  # noqa: F401
from .protocol import Done, Sync  # noqa: F401
