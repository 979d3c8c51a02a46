"""Loads the kvmtest plugin when kvmtest is used from a checkout without being installed
(an installed kvmtest registers it through its pytest11 entry point)."""

import os
from importlib.metadata import entry_points

import pytest

# Registers the hypothesis profiles (kvmtest-fast, kvmtest-deep) before hypothesis's own plugin
# reads --hypothesis-profile (suites/emulator).
import kvmtest.differential.profiles  # noqa: F401


def _plugin_autoloaded() -> bool:
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.name == "kvmtest" for ep in entry_points(group="pytest11"))


# pytester drives pytest in kvmtest's own tests and in the suites that check reporting.
pytest_plugins = ["pytester"] + ([] if _plugin_autoloaded() else ["kvmtest.plugin"])


@pytest.fixture
def pytester(pytester, monkeypatch):
    """pytester's sessions run in a temporary directory, not in this checkout, where kvmtest's
    plugin stays dormant (kvmtest.plugin.activation): ask for it, as a user would, and load it where
    kvmtest is used without being installed."""
    monkeypatch.setenv("KVMTEST_PLUGIN", "1")
    if not _plugin_autoloaded():
        # Not installed (e.g. PYTHONPATH pointing at a checkout): no entry point loads the plugin into
        # the inner session, and its temporary directory has no conftest that would.
        monkeypatch.setenv("PYTEST_PLUGINS", "kvmtest.plugin")
    return pytester


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """An unknown --hypothesis-profile is one usage error naming the profiles there are, before
    hypothesis's own plugin turns it into an INTERNALERROR traceback."""
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    name = config.getoption("hypothesis_profile", None)
    if name is None:
        return
    try:
        settings.get_profile(name)
    except InvalidArgument:
        raise pytest.UsageError(f"--hypothesis-profile={name!r}: no such profile; kvmtest's are "
                                f"kvmtest-fast (default) and kvmtest-deep") from None
