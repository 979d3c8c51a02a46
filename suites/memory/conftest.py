"""Helpers shared by the memory suite: guest source in each code size."""

import pytest

# Modes with 32-bit addressing over flat segments, where any guest physical address below
# 4 GiB is reachable (identity-mapped in the paged modes).
FLAT_MODES = ["pm32", "paging32", "pae", "long64", "compat32", "pm32-cpl3", "long64-cpl3", "compat32-cpl3"]


def ptr_reg(mode: str) -> str:
    """The register that holds addresses in the mode's code size."""
    return "rbx" if mode.startswith("long64") else "ebx"


@pytest.fixture
def ptr():
    return ptr_reg
