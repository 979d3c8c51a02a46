"""Shared set-up of the paging area.

Every check here runs guest paging, which the host's MMU virtualizes (two-dimensional paging,
EPT or NPT, or shadow page tables), so its outcome can depend on that mode: each test is marked
`mmu_dependent`, and its reports name the host's MMU mode (kvmtest.markers)."""

import pytest


def pytest_itemcollected(item):
    """Mark each test collected in this directory (a conftest's collection hooks see only the
    items below it)."""
    item.add_marker(pytest.mark.mmu_dependent)
